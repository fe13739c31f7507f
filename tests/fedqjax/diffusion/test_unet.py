"""Tests for fedqjax.diffusion.unet: the DDPM U-Net and UNetConfig.

Shape tests of the tiny and paper models use `jax.eval_shape` (no compile);
the SMALL model's short training run is the session fixture `trained`.
"""

import dataclasses
import hashlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from fedqjax import diffusion as dm
from fedqjax.diffusion.unet import UNet
from tests.support.diffusion import FAST, RES, SMALL, abstract_init, patterns
from tests.support.federated import TINY


def _num_params(variables):
  return sum(
    int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(variables)
  )


def test_paper_model_param_count():
  variables = abstract_init(dm.UNet(), (1, 32, 32, 3))
  n = _num_params(variables)
  print(f"paper UNet parameters at 32x32x3: {n}")
  assert abs(n - 35.7e6) / 35.7e6 < 0.01  # Ho et al. report 35.7M


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("shape", [(2, 32, 32, 3), (2, 28, 28, 1)])
def test_tiny_shapes_and_dtypes(shape, dtype):
  model = dm.UNetConfig.tiny(dtype=dtype).make()
  variables = abstract_init(model, shape)
  assert all(
    x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(variables)
  )
  out = jax.eval_shape(
    lambda v: model.apply(
      v,
      jnp.zeros(shape),
      jnp.zeros(shape[:1], jnp.int32),
      train=True,
      rngs={"dropout": jax.random.key(1)},
    ),
    variables,
  )
  assert out.shape == shape and out.dtype == jnp.float32
  # Attention at 16 exists at 32x32 (16x16 level) but not at 28x28 (14x14).
  has_attn = any(
    "attn_0" in k and k.startswith("down") for k in variables["params"]
  )
  assert has_attn == (shape[1] == 32)


def test_bfloat16_compute_close_to_float32(trained):
  variables, _ = trained
  x = jnp.asarray(patterns(4, RES, seed=1)) * 0.7
  t = jnp.array([0, 10, 500, 999])
  models = [
    dataclasses.replace(SMALL, dtype=d).make() for d in ("float32", "bfloat16")
  ]
  outs = [
    jax.jit(
      lambda v, x, t, m=m: m.apply(v, x, t, train=False), compiler_options=FAST
    )(variables, x, t)
    for m in models
  ]
  assert outs[1].dtype == jnp.float32
  rel = float(jnp.linalg.norm(outs[1] - outs[0]) / jnp.linalg.norm(outs[0]))
  assert rel < 0.05, rel  # bf16 has ~3 significant digits


def _tree_digest(variables):
  """sha256 of the sorted (path, shape, dtype) rows of a parameter tree."""
  rows = sorted(
    f"{jax.tree_util.keystr(p)}:{tuple(x.shape)}:{x.dtype}"
    for p, x in jax.tree_util.tree_leaves_with_path(variables)
  )
  return hashlib.sha256("\n".join(rows).encode()).hexdigest()[:16], len(rows)


@pytest.mark.parametrize(
  "config,shape,digest,leaves",
  [
    (dm.UNetConfig.tiny(), (1, 32, 32, 3), "5df8b808a8e8ae98", 182),
    (dm.UNetConfig.tiny(), (1, 28, 28, 1), "79368230fbab74d4", 152),
    (dm.UNetConfig(), (1, 32, 32, 3), "f1e66b21d8ab9fad", 328),
    (TINY, (1, 8, 8, 1), "d2b32944f2e163f1", 74),
  ],
)
def test_param_tree_unchanged_since_unet_took_one_config(
  config, shape, digest, leaves
):
  """Same parameter names, shapes and dtypes as the UNet that re-declared
  every UNetConfig field (digests recorded from it, commit 906dd7c), so
  checkpoints stay interchangeable."""
  assert _tree_digest(abstract_init(UNet(config), shape)) == (digest, leaves)
  assert _tree_digest(abstract_init(config.make(), shape)) == (digest, leaves)


def test_resolution_error_names_constraint():
  rule = "valid: a positive multiple of 2\\*\\*\\(len\\(ch_mult\\)-1\\)=8"
  with pytest.raises(ValueError, match=f"resolution=28 .*{rule}"):
    abstract_init(dm.UNet(), (1, 28, 28, 1))
  with pytest.raises(ValueError, match=f"resolution=28 .*{rule}"):
    dm.UNetConfig().check_image_shape((28, 28, 1))
  with pytest.raises(
    ValueError, match=f"^UNetConfig.resolution=28 is invalid; {rule}"
  ):
    dm.UNetConfig(resolution=28)
  dm.UNetConfig.tiny().check_image_shape((28, 28, 1))


@pytest.mark.parametrize(
  "field,value",
  [
    ("num_groups", 12),
    ("ch", 0),
    ("ch_mult", ()),
    ("num_res_blocks", 0),
    ("dropout", 1.0),
    ("dtype", "int8"),
    ("resolution", 28),
    ("out_ch", -1),
    ("attn_resolutions", (0,)),
    ("conv_impl", "fwd_form"),
    ("resamp_with_conv", 1),
  ],
)
def test_bad_config_names_field(field, value):
  """Errors name the UNetConfig field (never a config-file path)."""
  with pytest.raises(
    ValueError, match=f"^UNetConfig\\.{field}=.* is invalid; valid: "
  ):
    dm.UNetConfig(**{field: value})


def test_unet_takes_one_config():
  assert [
    f.name
    for f in dataclasses.fields(dm.UNet)
    if f.name not in ("parent", "name")
  ] == ["config"]
  assert dm.UNet() == dm.UNetConfig().make() == UNet(config=dm.UNetConfig())
  with pytest.raises(TypeError, match="UNetConfig"):
    abstract_init(UNet({"ch": 8}), (1, 8, 8, 1))


def test_config_from_configdict():
  cd = ml_collections.ConfigDict(
    dict(dm.UNetConfig.tiny().to_dict(), dtype="bfloat16", resolution=32)
  )
  cfg = dm.UNetConfig.from_dict(cd.to_dict())
  assert cfg == dm.UNetConfig.tiny(dtype="bfloat16", resolution=32)
  assert cfg.ch_mult == (1, 2, 2) and isinstance(cfg.attn_resolutions, tuple)
  assert hash(cfg) == hash(dm.UNetConfig.from_dict(cfg.to_dict()))
  assert (
    cfg.make().config is cfg
    and dm.UNetConfig(dtype=jnp.bfloat16).dtype == "bfloat16"
  )
  with pytest.raises(ValueError, match="unknown UNetConfig field.*'chh'"):
    dm.UNetConfig.from_dict({"chh": 3})


@pytest.mark.parametrize("impl", ["winograd", "fwd_form"])
def test_unknown_conv_impl_is_rejected(impl):
  with pytest.raises(
    ValueError,
    match=f"UNetConfig.conv_impl='{impl}' is invalid; valid: xla, im2col",
  ):
    dm.UNetConfig.tiny(conv_impl=impl)
