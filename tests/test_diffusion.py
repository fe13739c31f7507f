"""Tests for fedqjax.diffusion (DDPM U-Net, schedule, loss, samplers, FLOPs, training).

Compiling a U-Net is slow on a small CPU, so the tests use a 16x16 two-level
model, compile it with `xla_backend_optimization_level=0` (about 3x faster to
compile, similar step time), initialize with an 'rbg' key (XLA compiles
threefry initializers slowly) and share one short training run through a
module-scoped fixture. Shape tests of the tiny and paper models use
`jax.eval_shape` (no compile). Statistical tests state their failure
probability; seeds are fixed, so they are deterministic in practice.
"""
import dataclasses
import hashlib

import chex
import jax
import jax.numpy as jnp
import math

import ml_collections
import numpy as np
import optax
import pytest

from fedqjax import diffusion as dm
from fedqjax.diffusion.unet import UNet

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
  model = dm.UNetConfig.tiny(dtype=dtype).make()
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
  models = [dataclasses.replace(SMALL, dtype=d).make() for d in ("float32", "bfloat16")]
  outs = [jax.jit(lambda v, x, t, m=m: m.apply(v, x, t, train=False),
                  compiler_options=FAST)(variables, x, t) for m in models]
  assert outs[1].dtype == jnp.float32
  rel = float(jnp.linalg.norm(outs[1] - outs[0]) / jnp.linalg.norm(outs[0]))
  assert rel < 0.05, rel  # bf16 has ~3 significant digits


def _tree_digest(variables):
  """sha256 of the sorted (path, shape, dtype) rows of a parameter tree."""
  rows = sorted(f"{jax.tree_util.keystr(p)}:{tuple(x.shape)}:{x.dtype}"
                for p, x in jax.tree_util.tree_leaves_with_path(variables))
  return hashlib.sha256("\n".join(rows).encode()).hexdigest()[:16], len(rows)


@pytest.mark.parametrize("config,shape,digest,leaves", [
    (dm.UNetConfig.tiny(), (1, 32, 32, 3), "5df8b808a8e8ae98", 182),
    (dm.UNetConfig.tiny(), (1, 28, 28, 1), "79368230fbab74d4", 152),
    (dm.UNetConfig(), (1, 32, 32, 3), "f1e66b21d8ab9fad", 328),
    (dm.UNetConfig(ch=8, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(),
                   dropout=0.0, num_groups=4), (1, 8, 8, 1), "d2b32944f2e163f1", 74),
])
def test_param_tree_unchanged_since_unet_took_one_config(config, shape, digest, leaves):
  """Same parameter names, shapes and dtypes as the UNet that re-declared
  every UNetConfig field (digests recorded from it, commit 906dd7c), so
  checkpoints stay interchangeable."""
  assert _tree_digest(_abstract_init(UNet(config), shape)) == (digest, leaves)
  assert _tree_digest(_abstract_init(config.make(), shape)) == (digest, leaves)


def test_resolution_error_names_constraint():
  rule = "valid: a positive multiple of 2\\*\\*\\(len\\(ch_mult\\)-1\\)=8"
  with pytest.raises(ValueError, match=f"resolution=28 .*{rule}"):
    _abstract_init(dm.UNet(), (1, 28, 28, 1))
  with pytest.raises(ValueError, match=f"resolution=28 .*{rule}"):
    dm.UNetConfig().check_image_shape((28, 28, 1))
  with pytest.raises(ValueError, match=f"^UNetConfig.resolution=28 is invalid; {rule}"):
    dm.UNetConfig(resolution=28)
  dm.UNetConfig.tiny().check_image_shape((28, 28, 1))


@pytest.mark.parametrize("field,value", [
    ("num_groups", 12), ("ch", 0), ("ch_mult", ()), ("num_res_blocks", 0), ("dropout", 1.0),
    ("dtype", "int8"), ("resolution", 28), ("out_ch", -1), ("attn_resolutions", (0,)),
    ("conv_impl", "fwd_form"), ("resamp_with_conv", 1)])
def test_bad_config_names_field(field, value):
  """Errors name the UNetConfig field (never a config-file path)."""
  with pytest.raises(ValueError, match=f"^UNetConfig\\.{field}=.* is invalid; valid: "):
    dm.UNetConfig(**{field: value})


def test_unet_takes_one_config():
  assert [f.name for f in dataclasses.fields(dm.UNet) if f.name not in ("parent", "name")] \
      == ["config"]
  assert dm.UNet() == dm.UNetConfig().make() == UNet(config=dm.UNetConfig())
  with pytest.raises(TypeError, match="UNetConfig"):
    _abstract_init(UNet({"ch": 8}), (1, 8, 8, 1))


def test_config_from_configdict():
  cd = ml_collections.ConfigDict(dict(dm.UNetConfig.tiny().to_dict(), dtype="bfloat16",
                                      resolution=32))
  cfg = dm.UNetConfig.from_dict(cd.to_dict())
  assert cfg == dm.UNetConfig.tiny(dtype="bfloat16", resolution=32)
  assert cfg.ch_mult == (1, 2, 2) and isinstance(cfg.attn_resolutions, tuple)
  assert hash(cfg) == hash(dm.UNetConfig.from_dict(cfg.to_dict()))
  assert cfg.make().config is cfg and dm.UNetConfig(dtype=jnp.bfloat16).dtype == "bfloat16"
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


def _log_init_weight_closed_form(max_decay, R):
  """log prod_{r<R} min(max_decay, (1 + r) / (10 + r)): the ratio rises with r,
  so the first r* steps are uncapped (product 1 / C(r* + 9, 9)), the rest capped."""
  r_star = next(r for r in range(10 ** 6) if (1 + r) / (10 + r) > max_decay)
  m = min(R, r_star)
  return max(R - r_star, 0) * math.log(max_decay) - math.log(math.comb(m + 9, 9))


@pytest.mark.parametrize("max_decay", [0.9, 0.999, 0.9999])
def test_ema_decay_forgets_the_initialization(max_decay):
  """The initial parameters' weight in the EMA after R updates is < 1% for
  every R in 10..10000: in closed form, as a float64 cumulative product, and
  through the real ema_update (EMA starts at ones, every later params are
  zeros, so the EMA is exactly that weight)."""
  R = 10_000
  steps = np.arange(R)
  d = np.asarray(jax.jit(jax.vmap(lambda s: dm.ema_decay(s, max_decay)))(steps))
  assert d.dtype == np.float32
  d64 = np.minimum(max_decay, (1.0 + steps) / (10.0 + steps))
  np.testing.assert_allclose(d, d64, rtol=1e-6)
  log_w = np.cumsum(np.log(d64))  # log_w[R - 1]: log weight after R updates
  closed = [_log_init_weight_closed_form(max_decay, r) for r in (1, 10, 11, 100, 1000, R)]
  np.testing.assert_allclose(log_w[[0, 9, 10, 99, 999, R - 1]], closed, rtol=1e-9)
  w = np.exp(log_w)
  assert w[9:].max() < 0.01, w[9:].max()

  def body(ema, s):
    ema = dm.ema_update(ema, {"a": jnp.zeros(3), "b": jnp.zeros((2, 2))},
                        dm.ema_decay(s, max_decay))
    return ema, ema["a"][0]
  ema, traj = jax.jit(lambda: jax.lax.scan(
      body, {"a": jnp.ones(3), "b": jnp.ones((2, 2))}, jnp.arange(R)))()
  traj = np.asarray(traj, np.float64)
  big = w > 1e-30  # float32 keeps relative accuracy (R roundings ~ 1e-3) above that
  np.testing.assert_allclose(traj[big], w[big], rtol=2e-3)
  assert traj[9:].max() < 0.01 and np.all(np.asarray(ema["b"]) == np.float32(traj[-1]))


def test_ema_decay_values_and_errors():
  assert float(dm.ema_decay(0, 0.999)) == np.float32(0.1)  # first update keeps 10% of init
  assert float(dm.ema_decay(10 ** 6, 0.999)) == np.float32(0.999)
  assert float(dm.ema_decay(jnp.int32(5), 0.999, warmup=2.0)) == np.float32(6 / 7)
  with pytest.raises(ValueError, match="max_decay=1.0 is invalid"):
    dm.ema_decay(0, 1.0)
  with pytest.raises(ValueError, match="warmup=0.5 is invalid"):
    dm.ema_decay(0, 0.9, warmup=0.5)


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


def _shifted_point_denoiser(point):
  """apply_fn whose eps is exact for data = `point`, scaled by a scalar param."""
  s = _SCHED

  def apply_fn(params, x, t, *, train, rngs=None):
    del train, rngs
    bc = lambda v: v.reshape((-1,) + (1,) * (x.ndim - 1))
    return params * (x - bc(s.sqrt_alpha_bars[t]) * point) / bc(s.sqrt_one_minus_alpha_bars[t])
  return apply_fn


def test_make_train_step_is_one_step_on_the_given_batch():
  """The step uses x0 as given (no resampling) and its key as ddpm_loss's key."""
  s = _SCHED
  x0 = jnp.linspace(-0.9, 0.9, 8)[:, None, None, None] * jnp.ones((8, 4, 4, 1))
  apply_fn = _shifted_point_denoiser(0.5)
  tx = optax.sgd(0.1)
  step = jax.jit(dm.make_train_step(apply_fn, tx, s))
  key = jax.random.key(3)
  (p1, _), loss = step((jnp.float32(1.0), tx.init(jnp.float32(1.0))), x0, key)
  want_loss, g = jax.jit(dm.loss_and_grad, static_argnums=1)(jnp.float32(1.0), apply_fn, x0,
                                                              key, s)
  np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
  np.testing.assert_allclose(p1, 1.0 - 0.1 * g, rtol=1e-6)
  assert abs(float(g)) > 0.1  # a real step, not a no-op


# ---------------------------------------------------------------- held-out loss


def test_heldout_timesteps_cover_every_stratum_once():
  T = 1000
  t = dm.stratified_timesteps(jax.random.key(0), T, 100)
  np.testing.assert_array_equal(t // 10, np.arange(100))  # strata [10 i, 10 i + 10)
  i = np.arange(7)
  t7 = dm.stratified_timesteps(jax.random.key(1), T, 7)
  assert np.all((np.floor(i * T / 7) <= t7) & (t7 < (i + 1) * T / 7)), t7
  t2 = dm.stratified_timesteps(jax.random.key(2), 50, 100)  # n = 2T: each t twice
  np.testing.assert_array_equal(np.bincount(t2, minlength=50), np.full(50, 2))
  assert not np.array_equal(t, dm.stratified_timesteps(jax.random.key(3), T, 100))


def test_heldout_set_is_deterministic_subset():
  images = np.arange(12, dtype=np.float32).reshape(12, 1, 1, 1) * np.ones((1, 2, 2, 1), np.float32)
  a = dm.heldout_set(images, 100, jax.random.key(5), 5)
  b = dm.heldout_set(jnp.asarray(images), 100, jax.random.key(5), 5)
  chex.assert_trees_all_equal(a, b)
  chex.assert_shape([a.x0, a.noise], (5, 2, 2, 1))
  assert a.t.dtype == jnp.int32 and a.noise.dtype == jnp.float32
  ids = np.asarray(a.x0[:, 0, 0, 0]).astype(int)
  assert len(set(ids)) == 5 and np.all(images[ids] == np.asarray(a.x0))  # distinct images
  full = dm.heldout_set(images, 100, jax.random.key(5), 12)
  assert sorted(np.asarray(full.x0[:, 0, 0, 0]).astype(int)) == list(range(12))
  for bad in (0, 13):
    with pytest.raises(ValueError, match=f"num={bad} is invalid; valid: 1..12"):
      dm.heldout_set(images, 100, jax.random.key(5), bad)


def test_heldout_loss_with_analytic_model():
  """Exact denoiser of the data point: loss ~0; eps = 0: loss = mean(noise^2)
  exactly; chunked (lax.map, padded last chunk) equals one batch."""
  x0 = np.full((10, 4, 4, 1), 0.3, np.float32)
  hs = dm.heldout_set(x0, T_SMALL, jax.random.key(0), 10)
  apply_fn = _shifted_point_denoiser(0.3)
  f = jax.jit(dm.heldout_loss, static_argnames=("apply_fn", "batch_size"))
  assert float(f(jnp.float32(1.0), apply_fn, hs, _SCHED)) < 1e-8
  zero = float(f(jnp.float32(0.0), apply_fn, hs, _SCHED))
  np.testing.assert_allclose(zero, np.mean(np.asarray(hs.noise, np.float64) ** 2), rtol=1e-6)
  wrong = _shifted_point_denoiser(0.0)  # eps off by sqrt(ab_t / (1 - ab_t)) 0.3
  one = float(f(jnp.float32(1.0), wrong, hs, _SCHED))
  chunked = float(f(jnp.float32(1.0), wrong, hs, _SCHED, batch_size=3))
  t = np.asarray(hs.t)
  ratio = (np.asarray(_SCHED.sqrt_alpha_bars, np.float64)[t]
           / np.asarray(_SCHED.sqrt_one_minus_alpha_bars, np.float64)[t])
  np.testing.assert_allclose(one, np.mean(ratio ** 2) * 0.09, rtol=1e-5)
  np.testing.assert_allclose(chunked, one, rtol=1e-6)
  with pytest.raises(ValueError, match="batch_size=0 is invalid"):
    dm.heldout_loss(1.0, apply_fn, hs, _SCHED, batch_size=0)


def test_heldout_loss_on_unet(trained):
  """On the SMALL U-Net: bitwise deterministic; equal to a direct NumPy
  recomputation (at init and after training); lower after 40 steps of
  train_centralized (seen: 0.985 -> 0.200; asserted: < 0.6x init)."""
  variables, _ = trained
  model, sched = SMALL.make(), dm.linear_schedule()  # train_centralized's schedule
  init = dm.init_unet(SMALL, jax.random.split(jax.random.key(0, impl="rbg"))[0], (RES, RES, 1),
                      compiler_options=FAST)  # the fixture's initial parameters
  hs = dm.heldout_set(_patterns(24, RES, seed=2), sched.num_timesteps, jax.random.key(9), 24)
  f = jax.jit(lambda p: dm.heldout_loss(p, model.apply, hs, sched, batch_size=16),
              compiler_options=FAST)
  fwd = jax.jit(lambda p, x, t: model.apply(p, x, t, train=False), compiler_options=FAST)
  ab = np.asarray(sched.alpha_bars, np.float64)[np.asarray(hs.t)][:, None, None, None]
  noise = np.asarray(hs.noise, np.float64)
  x_t = np.sqrt(ab) * np.asarray(hs.x0, np.float64) + np.sqrt(1 - ab) * noise
  got = {}
  for name, p in (("init", init), ("trained", variables)):
    got[name] = f(p)
    assert np.asarray(got[name]).tobytes() == np.asarray(f(p)).tobytes()  # bitwise
    eps = np.asarray(fwd(p, jnp.asarray(x_t, jnp.float32), hs.t), np.float64)
    np.testing.assert_allclose(float(got[name]), np.mean((eps - noise) ** 2), rtol=1e-5)
  print(f"held-out loss: init {float(got['init']):.4f}, after 40 steps "
        f"{float(got['trained']):.4f}")
  assert float(got["trained"]) < 0.6 * float(got["init"])


def _vlb_point_closed_form(x_star, t_stride, variance):
  """Bits/dim of the bound for data = one grid point x* and the exact eps model.

  Then x0_hat = x*, so mu_theta = the posterior mean and every term is free of
  the noise: KL_t = 0.5 (-1 + log(s2_t / bt_t) + bt_t / s2_t) with bt_t the
  posterior variance and s2_t the model's; the decoder mean is x* (c1 = 1,
  c2 = 0 at t = 0), so -log P = -log(2 Phi(a) - 1) inside and -log Phi(a) at
  the two ends, a = (1/255) / s_0; the prior is KL(N(sqrt(ab_T) x*, 1 - ab_T)
  || N(0, 1)). Float64 from the schedule's float32 tables.
  """
  from scipy.stats import norm
  sc = {k: np.asarray(v, np.float64) for k, v in vars(_SCHED).items()}
  bt, T = sc["posterior_variance"], T_SMALL
  s2 = np.append(bt[1], sc["betas"][1:]) if variance == "large" else np.append(bt[1], bt[1:])
  kl_ts, w = dm.kl_timesteps(T, t_stride)
  kl = 0.5 * (-1 + np.log(s2[kl_ts] / bt[kl_ts]) + bt[kl_ts] / s2[kl_ts])
  a = (1 / 255) / np.sqrt(s2[0])
  edge = np.abs(x_star) > 0.999
  dec = np.where(edge, -np.log(norm.cdf(a)), -np.log(2 * norm.cdf(a) - 1))
  ab_t = sc["alpha_bars"][-1]
  prior = 0.5 * (-1 - np.log1p(-ab_t) + (1 - ab_t) + ab_t * x_star ** 2)
  return (np.mean(prior + dec) + np.sum(w * kl)) / np.log(2)


@pytest.mark.parametrize("T,s", [(100, 1), (100, 10), (1000, 32), (1000, 7), (10, 20)])
def test_kl_timesteps_cover_each_t_once(T, s):
  """Head t < s with weight 1, then one t per block of s; the blocks tile 1..T-1."""
  ts, w = dm.kl_timesteps(T, s)
  assert w.sum() == T - 1 and np.all(np.diff(ts) > 0) and ts[0] == 1 and ts[-1] <= T - 1
  covered = np.concatenate([np.arange(t - (int(wi) - 1) // 2, t - (int(wi) - 1) // 2 + int(wi))
                            for t, wi in zip(ts, w)])
  np.testing.assert_array_equal(covered, np.arange(1, T))
  assert len(ts) <= s + T // max(s, 1)


@pytest.mark.parametrize("t_stride,variance", [(1, "large"), (1, "small"), (10, "large")])
def test_vlb_bits_per_dim_closed_form(t_stride, variance):
  x_star = np.array([-1.0, 2 * 70 / 255 - 1, 2 * 200 / 255 - 1, 1.0]).reshape(1, 2, 2, 1)
  x0 = jnp.asarray(np.broadcast_to(x_star, (3, 2, 2, 1)), jnp.float32)
  apply_fn = _shifted_point_denoiser(jnp.asarray(x_star, jnp.float32))
  f = jax.jit(dm.vlb_bits_per_dim, static_argnames=("apply_fn", "t_stride", "variance",
                                                    "batch_size"))
  got = float(f(jnp.float32(1.0), apply_fn, x0, _SCHED, jax.random.key(0), t_stride=t_stride,
                variance=variance, batch_size=2))
  want = _vlb_point_closed_form(x_star.ravel(), t_stride, variance)
  print(f"bound ({variance}, t_stride {t_stride}): {got:.6f} bits/dim (closed form {want:.6f})")
  np.testing.assert_allclose(got, want, rtol=1e-4)
  # The subsample stays close to the full sum here (seen: 2.9892 vs 2.9925 at t_stride 10).
  np.testing.assert_allclose(want, _vlb_point_closed_form(x_star.ravel(), 1, variance),
                             rtol=0.01)
  # A wrong model (eps predicts the data at 0) pays for it in the KL terms.
  worse = float(f(jnp.float32(1.0), _shifted_point_denoiser(0.0), x0, _SCHED, jax.random.key(0),
                  t_stride=t_stride, variance=variance))
  assert worse > want + 1.0


def test_vlb_bits_per_dim_errors():
  with pytest.raises(ValueError, match="variance='big' is invalid"):
    dm.vlb_bits_per_dim(1.0, None, jnp.zeros((1, 2)), _SCHED, jax.random.key(0), variance="big")
  with pytest.raises(ValueError, match="t_stride=100 is invalid; valid: 1..T-1=99"):
    dm.vlb_bits_per_dim(1.0, None, jnp.zeros((1, 2)), _SCHED, jax.random.key(0), t_stride=100)


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
  tiny = dm.UNetConfig.tiny()
  assert dm.eps_fn_from_module(tiny.make()) == dm.eps_fn_from_module(tiny.make())
  model = tiny.make()
  variables = _abstract_init(model, (1, 32, 32, 3))
  out = jax.eval_shape(lambda v: dm.ddim_sample(dm.eps_fn_from_module(model), v, _SCHED,
                                                jax.random.key(0), (2, 32, 32, 3), num_steps=4),
                       variables)
  assert out.shape == (2, 32, 32, 3) and out.dtype == jnp.float32


# ---------------------------------------------------------------- FLOPs


def test_flops_small_model():
  """Lowered-HLO FLOPs (no compile); fwd+bwd is 2-4x a forward pass, and
  the count scales with the number of pixels."""
  train = dm.train_flops_per_image(SMALL, (RES, RES, 1), compiled=False)
  sample = dm.sample_flops_per_image(SMALL, (RES, RES, 1), compiled=False)
  print(f"SMALL model FLOPs/image: train {train:.3e}, sampling step {sample:.3e}")
  assert 1e7 < sample < train and 2.0 < train / sample < 4.0
  # Convolutions dominate: twice the side, ~4x the FLOPs (3.997 measured);
  # a count that ignored the image (parameters only, a constant) fails.
  big = (2 * RES, 2 * RES, 1)
  assert 3.9 < dm.train_flops_per_image(SMALL, big, compiled=False) / train < 4.1
  assert 3.9 < dm.sample_flops_per_image(SMALL, big, compiled=False) / sample < 4.1
