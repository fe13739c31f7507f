"""The U-Net's alternative convolution (fedqjax.diffusion.conv) equals lax's."""

import chex
import jax
import jax.numpy as jnp
import pytest

from fedqjax import diffusion
from fedqjax.diffusion.conv import CONV_IMPLS, im2col_conv

IMPLS = {"im2col": im2col_conv}


def _lax(x, w, strides, padding):
  return jax.lax.conv_general_dilated(
    x, w, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
  )


@pytest.mark.parametrize("impl", sorted(IMPLS))
@pytest.mark.parametrize(
  "shape,kernel,strides,padding",
  [
    ((2, 8, 8, 3), (3, 3), (1, 1), "SAME"),
    ((2, 8, 8, 3), (3, 3), (2, 2), "SAME"),  # the U-Net's downsampling
    ((1, 7, 9, 4), (3, 3), (2, 2), "SAME"),  # odd sizes, asymmetric padding
    ((2, 6, 6, 2), (3, 3), (1, 1), "VALID"),
    ((2, 6, 5, 2), (1, 1), (1, 1), "SAME"),
    ((1, 6, 6, 2), (3, 2), (1, 2), ((2, 0), (1, 3))),  # explicit padding
  ],
)
def test_matches_lax_forward_and_gradients(
  impl, shape, kernel, strides, padding
):
  kx, kw = jax.random.split(jax.random.PRNGKey(0))
  x = jax.random.normal(kx, shape)
  w = jax.random.normal(kw, kernel + (shape[-1], 5))
  conv = IMPLS[impl]
  got = conv(x, w, strides, padding)
  want = _lax(x, w, strides, padding)
  chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-5)

  def loss(conv):
    return lambda x, w: jnp.sum(jnp.sin(conv(x, w, strides, padding)))

  g_got = jax.grad(loss(conv), argnums=(0, 1))(x, w)
  g_want = jax.grad(loss(_lax), argnums=(0, 1))(x, w)
  chex.assert_trees_all_close(g_got, g_want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("impl", sorted(IMPLS))
def test_per_client_weights_in_vmap_and_in_a_rolled_loop(impl):
  """Each client's own convolution and gradients, vmapped or lax.mapped."""
  x = jax.random.normal(jax.random.PRNGKey(1), (3, 2, 8, 8, 4))
  w = jax.random.normal(jax.random.PRNGKey(2), (3, 3, 3, 4, 6))
  grad = lambda conv: jax.grad(
    lambda a, b: jnp.sum(jnp.tanh(conv(a, b, (1, 1), "SAME"))), (0, 1)
  )
  want = [grad(_lax)(x[k], w[k]) for k in range(3)]
  g = grad(IMPLS[impl])
  by_vmap = jax.jit(jax.vmap(g))(x, w)
  by_map = jax.jit(lambda x, w: jax.lax.map(lambda a: g(*a), (x, w)))(x, w)
  for got in (by_vmap, by_map):
    for k in range(3):
      chex.assert_trees_all_close(
        jax.tree.map(lambda t: t[k], got), want[k], rtol=1e-4, atol=1e-4
      )


@pytest.mark.parametrize("impl", sorted(IMPLS))
def test_rejects_what_it_does_not_implement(impl):
  conv = IMPLS[impl]
  x, w = jnp.zeros((1, 4, 4, 2)), jnp.zeros((3, 3, 2, 2))
  with pytest.raises(NotImplementedError, match="dilation"):
    conv(x, w, (1, 1), "SAME", rhs_dilation=(2, 2))
  with pytest.raises(NotImplementedError, match="groups"):
    conv(x, jnp.zeros((3, 3, 1, 2)), (1, 1), "SAME", feature_group_count=2)
  with pytest.raises(NotImplementedError, match="NHWC"):
    conv(x, w, (1, 1), "SAME", dimension_numbers=("NCHW", "OIHW", "NCHW"))


_UNET = dict(
  ch=8,
  ch_mult=(1, 2),
  num_res_blocks=1,
  attn_resolutions=(4,),
  dropout=0.0,
  num_groups=4,
)


def _unet_inputs():
  return (
    jax.random.normal(jax.random.PRNGKey(3), (2, 8, 8, 3)),
    jnp.array([3, 700]),
  )


def _forward(model, params):
  x, t = _unet_inputs()
  return jax.jit(lambda p: model.apply(p, x, t, train=False))(params)


def _init(model):
  return jax.jit(lambda k: model.init(k, *_unet_inputs(), train=False))(
    jax.random.PRNGKey(4)
  )


def test_conv_impls_are_xla_and_im2col():
  """Only the forms that win a measured round (benchmarks/RESULTS.md)."""
  assert sorted(CONV_IMPLS) == ["im2col", "xla"]
  assert sorted(diffusion.CONV_IMPLS) == ["im2col", "xla"]


def test_unet_im2col_shares_params_and_outputs():
  """Same parameter tree and initial values; same eps prediction (gradients
  are plain autodiff of im2col, checked per convolution above)."""
  xla = diffusion.UNetConfig(**_UNET).make()
  im2col = diffusion.UNetConfig(conv_impl="im2col", **_UNET).make()
  params = _init(xla)
  # Same names and shapes; same initial values (two compiled inits).
  chex.assert_trees_all_close(params, _init(im2col), rtol=1e-6, atol=0)
  chex.assert_trees_all_close(
    _forward(im2col, params), _forward(xla, params), rtol=1e-3, atol=1e-5
  )
