"""Tests for fedqjax.diffusion (DDPM U-Net, schedule, loss, samplers, FLOPs, training).

Compiling a U-Net is slow on a small CPU, so the tests use a 16x16 two-level
model, compile it with `xla_backend_optimization_level=0` (about 3x faster to
compile, similar step time), initialize with an 'rbg' key (XLA compiles
threefry initializers slowly) and share one short training run through a
module-scoped fixture. Shape tests of the tiny and paper models use
`jax.eval_shape` (no compile). Statistical tests state their failure
probability; seeds are fixed, so they are deterministic in practice.
"""
import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from fedqjax import diffusion as dm

FAST = {"xla_backend_optimization_level": 0}
SMALL = dm.UNetConfig(ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,),
                      num_groups=8, dropout=0.0)
RES = 16
T_SMALL = 100
# Ho et al.'s betas scaled by 1000/T so that alpha_bar_T ~ 4e-5 as for T = 1000.
_SCHED = dm.linear_schedule(T=T_SMALL, beta_start=1e-3, beta_end=0.2)


def _patterns(n, res, seed=0):
  """Stripes, checkerboards and discs in {-1, 1}: [n, res, res, 1]."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[:res, :res]
  out = []
  for i in range(n):
    p = rng.integers(0, 4)
    im = [((xx + p) // 2) % 2, ((yy + p) // 2) % 2, (xx // 4 + yy // 4 + p) % 2,
          (xx - res / 2) ** 2 + (yy - res / 2) ** 2 < (3 + p) ** 2][i % 4]
    out.append(im * 2.0 - 1.0)
  return np.asarray(out, np.float32)[..., None]


def _abstract_init(model, shape):
  return jax.eval_shape(lambda: model.init({"params": jax.random.key(0)}, jnp.zeros(shape),
                                           jnp.zeros(shape[:1], jnp.int32), train=False))


def _num_params(variables):
  return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(variables))


@pytest.fixture(scope="module")
def trained():
  """40 Adam steps of the SMALL model on 64 patterns: (variables, losses)."""
  return dm.train_centralized(SMALL, _patterns(64, RES), steps=40, batch_size=8, lr=2e-3,
                              key=jax.random.key(0, impl="rbg"), compiler_options=FAST)


# ---------------------------------------------------------------- model


def test_paper_model_param_count():
  variables = _abstract_init(dm.UNet(), (1, 32, 32, 3))
  n = _num_params(variables)
  print(f"paper UNet parameters at 32x32x3: {n}")
  assert abs(n - 35.7e6) / 35.7e6 < 0.01  # Ho et al. report 35.7M


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("shape", [(2, 32, 32, 3), (2, 28, 28, 1)])
def test_tiny_shapes_and_dtypes(shape, dtype):
  model = dm.UNet.tiny(dtype=dtype)
  variables = _abstract_init(model, shape)
  assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(variables))
  out = jax.eval_shape(
      lambda v: model.apply(v, jnp.zeros(shape), jnp.zeros(shape[:1], jnp.int32), train=True,
                            rngs={"dropout": jax.random.key(1)}), variables)
  assert out.shape == shape and out.dtype == jnp.float32
  # Attention at 16 exists at 32x32 (16x16 level) but not at 28x28 (14x14).
  has_attn = any("attn_0" in k and k.startswith("down") for k in variables["params"])
  assert has_attn == (shape[1] == 32)


def test_bfloat16_compute_close_to_float32(trained):
  variables, _ = trained
  x = jnp.asarray(_patterns(4, RES, seed=1)) * 0.7
  t = jnp.array([0, 10, 500, 999])
  outs = [jax.jit(lambda v, x, t, m=SMALL.make().clone(dtype=d): m.apply(v, x, t, train=False),
                  compiler_options=FAST)(variables, x, t) for d in (jnp.float32, jnp.bfloat16)]
  assert outs[1].dtype == jnp.float32
  rel = float(jnp.linalg.norm(outs[1] - outs[0]) / jnp.linalg.norm(outs[0]))
  assert rel < 0.05, rel  # bf16 has ~3 significant digits


def test_resolution_error_names_constraint():
  with pytest.raises(ValueError, match="resolution=28.*2\\*\\*\\(len\\(ch_mult\\)-1\\)=8"):
    _abstract_init(dm.UNet(), (1, 28, 28, 1))
  with pytest.raises(ValueError, match="resolution"):
    dm.UNetConfig().check_image_shape((28, 28, 1))
  dm.UNetConfig.tiny().check_image_shape((28, 28, 1))


@pytest.mark.parametrize("field,value", [
    ("num_groups", 12), ("ch", 0), ("ch_mult", ()), ("num_res_blocks", 0), ("dropout", 1.0),
    ("dtype", "int8"), ("resolution", 28), ("out_ch", -1), ("attn_resolutions", (0,))])
def test_bad_config_names_field(field, value):
  with pytest.raises(ValueError, match=field):
    dm.UNetConfig(**{field: value})


def test_config_from_configdict():
  cd = ml_collections.ConfigDict(dict(dm.tiny_unet_kwargs(), dtype="bfloat16", resolution=32))
  cfg = dm.UNetConfig.from_dict(cd.to_dict())
  assert cfg == dm.UNetConfig.tiny(dtype="bfloat16", resolution=32)
  assert hash(cfg) == hash(dm.UNetConfig.from_dict(cfg.to_dict()))
  assert cfg.make().dtype == jnp.bfloat16 and cfg.make().ch == 32
  assert dm.UNetConfig().make() == dm.UNet()
  with pytest.raises(ValueError, match="unknown UNetConfig field.*'chh'"):
    dm.UNetConfig.from_dict({"chh": 3})


# ---------------------------------------------------------------- schedule


def test_linear_schedule_matches_float64():
  s = dm.linear_schedule()
  betas = np.linspace(1e-4, 0.02, 1000, dtype=np.float64)
  ab = np.cumprod(1 - betas)
  assert s.num_timesteps == 1000 and s.alpha_bars.dtype == jnp.float32
  np.testing.assert_allclose(s.alpha_bars, ab, rtol=1e-6)
  np.testing.assert_allclose(s.posterior_variance[1:],
                             betas[1:] * (1 - ab[:-1]) / (1 - ab[1:]), rtol=1e-6)
  assert np.all(np.diff(np.asarray(s.alpha_bars)) < 0)
  np.testing.assert_allclose(s.alpha_bars[-1], 4.04e-5, rtol=0.01)  # ~0: x_T ~ N(0, I)


def test_q_sample_statistics():
  """Mean/var of x_t at fixed x0 match sqrt(ab) x0 and 1 - ab.

  n = 2**16 draws per t; a 6-standard-error tolerance fails with p < 1e-8 per
  check.
  """
  s = dm.linear_schedule()
  n = 2 ** 16
  for t in (0, 250, 999):
    x0 = jnp.full((n, 1), 0.6)
    noise = jax.random.normal(jax.random.key(t), (n, 1))
    xt = dm.q_sample(s, x0, jnp.full((n,), t), noise)
    ab = float(np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))[t])
    var = 1 - ab
    assert abs(float(xt.mean()) - np.sqrt(ab) * 0.6) < 6 * np.sqrt(var / n)
    assert abs(float(xt.var()) - var) < 6 * var * np.sqrt(2 / n)


def test_ema_update():
  ema = {"a": jnp.ones(3), "b": {"c": jnp.zeros(2)}}
  new = dm.ema_update(ema, {"a": jnp.zeros(3), "b": {"c": jnp.ones(2)}}, 0.9)
  chex.assert_trees_all_close(new, {"a": jnp.full(3, 0.9), "b": {"c": jnp.full(2, 0.1)}})


# ---------------------------------------------------------------- loss / training


def test_fresh_model_loss_near_one(trained):
  """The zero-initialized output layer predicts eps ~ 0, so L = mean(eps^2).

  One batch has 8*16*16 = 2048 squared normals: std sqrt(2/2048) = 0.031, so
  |L - 1| < 0.15 (4.8 std) fails with p < 2e-6.
  """
  _, losses = trained
  assert abs(losses[0] - 1.0) < 0.15, losses[0]


def test_training_loss_falls(trained):
  """Mean loss of steps 30-39 is below half of steps 0-9 (seen: ~0.8 -> ~0.2)."""
  _, losses = trained
  assert np.all(np.isfinite(losses))
  first, last = losses[:10].mean(), losses[-10:].mean()
  print(f"loss first 10 steps {first:.3f}, last 10 {last:.3f}")
  assert last < 0.5 * first


def test_ddpm_loss_with_analytic_model():
  """ddpm_loss of the optimal denoiser of point data is ~0; of eps=0 it is ~1."""
  s = _SCHED
  x0 = jnp.full((64, 4, 4, 1), 0.3)

  def apply_fn(params, x, t, *, train, rngs):
    del train, rngs
    return params * (x - s.sqrt_alpha_bars[t][:, None, None, None] * 0.3) \
        / s.sqrt_one_minus_alpha_bars[t][:, None, None, None]

  f = jax.jit(dm.loss_and_grad, static_argnums=1)
  loss, g = f(jnp.float32(1.0), apply_fn, x0, jax.random.key(0), s)
  assert float(loss) < 1e-6 and abs(float(g)) < 1e-4
  # eps = 0: L = mean of 1024 squared normals, std 0.044; 0.25 is 5.6 std.
  assert abs(float(f(jnp.float32(0.0), apply_fn, x0, jax.random.key(0), s)[0]) - 1) < 0.25


# ---------------------------------------------------------------- samplers



def gauss_eps(params, x, t):
  """Optimal eps for data N(m, s2 I), params = (m, s2); s2 = 0 is a point mass.

  x_t ~ N(sqrt(ab) m, ab s2 + 1 - ab), so E[eps | x_t] =
  sqrt(1 - ab) (x_t - sqrt(ab) m) / (ab s2 + 1 - ab).
  """
  m, s2 = params
  ab = _SCHED.alpha_bars[t].reshape((-1,) + (1,) * (x.ndim - 1))
  return jnp.sqrt(1 - ab) * (x - jnp.sqrt(ab) * m) / (ab * s2 + 1 - ab)




def _exact_moments(m, s2, *, ddim_steps=None, eta=1.0):
  """Exact output mean/var of a sampler with gauss_eps (every step is affine in x)."""
  s = {k: np.asarray(v, np.float64) for k, v in vars(_SCHED).items()}
  ab = s["alpha_bars"]
  eps = lambda x, t: np.sqrt(1 - ab[t]) * (x - np.sqrt(ab[t]) * m) / (ab[t] * s2 + 1 - ab[t])
  if ddim_steps is None:  # ancestral, posterior ('small') variance
    steps = [(t, s["posterior_variance"][t] if t > 0 else 0.0) for t in range(T_SMALL - 1, -1, -1)]

    def f(x, t):
      x0 = (x - np.sqrt(1 - ab[t]) * eps(x, t)) / np.sqrt(ab[t])
      return s["posterior_mean_coef1"][t] * x0 + s["posterior_mean_coef2"][t] * x
  else:
    ts = dm.ddim_timesteps(T_SMALL, ddim_steps)
    prev = dict(zip(ts, list(ts[1:]) + [-1]))
    abp = lambda t: ab[prev[t]] if prev[t] >= 0 else 1.0
    sig2 = lambda t: eta ** 2 * (1 - abp(t)) / (1 - ab[t]) * (1 - ab[t] / abp(t))
    steps = [(t, sig2(t)) for t in ts]

    def f(x, t):
      x0 = (x - np.sqrt(1 - ab[t]) * eps(x, t)) / np.sqrt(ab[t])
      return np.sqrt(abp(t)) * x0 + np.sqrt(1 - abp(t) - sig2(t)) * eps(x, t)
  mean, var = 0.0, 1.0
  for t, v in steps:
    a, c = f(1.0, t) - f(0.0, t), f(0.0, t)
    mean, var = a * mean + c, a * a * var + v
  return mean, var


def _check_moments(x, mean, var):
  """Sample mean/var vs exact within 6 standard errors (p < 1e-8 each)."""
  n = x.size
  assert abs(float(x.mean()) - mean) < 6 * np.sqrt(var / n), (float(x.mean()), mean)
  assert abs(float(x.var()) - var) < 6 * var * np.sqrt(2 / n), (float(x.var()), var)


M, S2 = 0.2, 0.1 ** 2
SHAPE = (4096, 2, 2, 1)  # 16384 iid scalars; |m| + 6 s < 1, so the final clip is inactive


def _gauss_params(m, s2):
  # One parameter structure for every sampler test, so they share compiles.
  return (jnp.broadcast_to(jnp.asarray(m, jnp.float32), (1,) + SHAPE[1:]), jnp.float32(s2))


def test_ddpm_and_ddim_eta1_match():
  """DDIM(eta=1, all T steps) is DDPM with posterior variance: same noise, same samples;
  and both have the exact moments of the affine recursion."""
  params = _gauss_params(M, S2)
  key = jax.random.key(42)
  x_ddpm = dm.ddpm_sample(gauss_eps, params, _SCHED, key, SHAPE, clip_denoised=False,
                          variance="small")
  x_ddim = dm.ddim_sample(gauss_eps, params, _SCHED, key, SHAPE, num_steps=T_SMALL, eta=1.0,
                          clip_denoised=False)
  chex.assert_shape(x_ddpm, SHAPE)
  np.testing.assert_allclose(x_ddpm, x_ddim, atol=2e-4)
  mean, var = _exact_moments(M, S2)
  # The chain targets the data mean exactly; with only T = 100 coarse steps it
  # loses variance (each step plugs in E[x0 | x_t], not a draw), here ~36%.
  assert abs(mean - M) < 1e-4 and 0.5 < var / S2 < 1.0
  _check_moments(x_ddpm, mean, var)
  _check_moments(x_ddim, *_exact_moments(M, S2, ddim_steps=T_SMALL, eta=1.0))


@pytest.mark.parametrize("num_steps,eta", [(10, 0.0), (25, 0.5)])
def test_ddim_moments(num_steps, eta):
  params = _gauss_params(M, S2)
  x = dm.ddim_sample(gauss_eps, params, _SCHED, jax.random.key(7), SHAPE, num_steps=num_steps,
                     eta=eta, clip_denoised=False)
  _check_moments(x, *_exact_moments(M, S2, ddim_steps=num_steps, eta=eta))


def test_point_mass_is_recovered_and_deterministic():
  """For data = one point x*, x0-prediction is exact: DDIM(eta=0) and DDPM return x*."""
  x_star = jnp.array([-0.9, -0.2, 0.4, 0.95])
  params = _gauss_params(x_star.reshape((1,) + SHAPE[1:]), 0.0)
  want = jnp.broadcast_to(params[0], SHAPE)
  ddim = lambda p, k: dm.ddim_sample(gauss_eps, p, _SCHED, k, SHAPE, num_steps=10, eta=0.0,
                                     clip_denoised=False)
  a, b = ddim(params, jax.random.key(0)), ddim(params, jax.random.key(0))
  chex.assert_trees_all_equal(a, b)
  np.testing.assert_allclose(a, want, atol=1e-4)
  c = dm.ddpm_sample(gauss_eps, params, _SCHED, jax.random.key(1), SHAPE, clip_denoised=False,
                     variance="small")
  np.testing.assert_allclose(c, want, atol=1e-4)
  # The output is clipped to [-1, 1] even when the data lies outside.
  d = ddim((params[0] * 2, params[1]), jax.random.key(0))
  assert float(jnp.abs(d).max()) <= 1.0 and float(jnp.abs(d).min()) > 0.3


def test_samplers_do_not_retrace():
  eps = chex.assert_max_traces(lambda p, x, t: gauss_eps(p, x, t), n=2)  # one per sampler
  for i in range(3):
    params = (jnp.float32(0.1 * i), jnp.float32(0.01))
    dm.ddim_sample(eps, params, _SCHED, jax.random.key(i), (4, 3), num_steps=5, eta=0.1 * i)
    dm.ddpm_sample(eps, params, _SCHED, jax.random.key(i), (4, 3))


def test_sampler_with_unet_traces():
  assert dm.eps_fn_from_module(dm.UNet.tiny()) == dm.eps_fn_from_module(dm.UNet.tiny())
  model = dm.UNet.tiny()
  variables = _abstract_init(model, (1, 32, 32, 3))
  out = jax.eval_shape(lambda v: dm.ddim_sample(dm.eps_fn_from_module(model), v, _SCHED,
                                                jax.random.key(0), (2, 32, 32, 3), num_steps=4),
                       variables)
  assert out.shape == (2, 32, 32, 3) and out.dtype == jnp.float32


# ---------------------------------------------------------------- FLOPs


def test_flops_small_model():
  """Lowered-HLO FLOPs (no compile); fwd+bwd is 2-4x a forward pass."""
  train = dm.train_flops_per_image(SMALL, (RES, RES, 1), compiled=False)
  sample = dm.sample_flops_per_image(SMALL, (RES, RES, 1), compiled=False)
  print(f"SMALL model FLOPs/image: train {train:.3e}, sampling step {sample:.3e}")
  assert 1e7 < sample < train and 2.0 < train / sample < 4.0
  assert dm.train_flops_per_image(SMALL, (RES, RES, 1), compiled=False) == train  # cached
