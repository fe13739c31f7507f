"""Tests for fedqjax.diffusion.sampling: DDPM and DDIM against the exact
moments of Gaussian data with its optimal denoiser.

Statistical tests state their failure probability; seeds are fixed, so they
are deterministic in practice.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedqjax import diffusion as dm
from tests.support.diffusion import SCHED, T_SMALL, abstract_init


def gauss_eps(params, x, t):
  """Optimal eps for data N(m, s2 I), params = (m, s2); s2 = 0 is a point mass.

  x_t ~ N(sqrt(ab) m, ab s2 + 1 - ab), so E[eps | x_t] =
  sqrt(1 - ab) (x_t - sqrt(ab) m) / (ab s2 + 1 - ab).
  """
  m, s2 = params
  ab = SCHED.alpha_bars[t].reshape((-1,) + (1,) * (x.ndim - 1))
  return jnp.sqrt(1 - ab) * (x - jnp.sqrt(ab) * m) / (ab * s2 + 1 - ab)


def _exact_moments(m, s2, *, ddim_steps=None, eta=1.0):
  """Exact output mean/var of a sampler with gauss_eps (every step is affine in x)."""
  s = {k: np.asarray(v, np.float64) for k, v in vars(SCHED).items()}
  ab = s["alpha_bars"]
  eps = lambda x, t: (
    np.sqrt(1 - ab[t]) * (x - np.sqrt(ab[t]) * m) / (ab[t] * s2 + 1 - ab[t])
  )
  if ddim_steps is None:  # ancestral, posterior ('small') variance
    steps = [
      (t, s["posterior_variance"][t] if t > 0 else 0.0)
      for t in range(T_SMALL - 1, -1, -1)
    ]

    def f(x, t):
      x0 = (x - np.sqrt(1 - ab[t]) * eps(x, t)) / np.sqrt(ab[t])
      return (
        s["posterior_mean_coef1"][t] * x0 + s["posterior_mean_coef2"][t] * x
      )
  else:
    ts = dm.ddim_timesteps(T_SMALL, ddim_steps)
    prev = dict(zip(ts, list(ts[1:]) + [-1]))
    abp = lambda t: ab[prev[t]] if prev[t] >= 0 else 1.0
    sig2 = lambda t: eta**2 * (1 - abp(t)) / (1 - ab[t]) * (1 - ab[t] / abp(t))
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
  assert abs(float(x.mean()) - mean) < 6 * np.sqrt(var / n), (
    float(x.mean()),
    mean,
  )
  assert abs(float(x.var()) - var) < 6 * var * np.sqrt(2 / n), (
    float(x.var()),
    var,
  )


M, S2 = 0.2, 0.1**2
SHAPE = (
  4096,
  2,
  2,
  1,
)  # 16384 iid scalars; |m| + 6 s < 1, so the final clip is inactive


def _gauss_params(m, s2):
  # One parameter structure for every sampler test, so they share compiles.
  return (
    jnp.broadcast_to(jnp.asarray(m, jnp.float32), (1,) + SHAPE[1:]),
    jnp.float32(s2),
  )


def test_ddpm_and_ddim_eta1_match():
  """DDIM(eta=1, all T steps) is DDPM with posterior variance: same noise, same samples;
  and both have the exact moments of the affine recursion."""
  params = _gauss_params(M, S2)
  key = jax.random.key(42)
  x_ddpm = dm.ddpm_sample(
    gauss_eps, params, SCHED, key, SHAPE, clip_denoised=False, variance="small"
  )
  x_ddim = dm.ddim_sample(
    gauss_eps,
    params,
    SCHED,
    key,
    SHAPE,
    num_steps=T_SMALL,
    eta=1.0,
    clip_denoised=False,
  )
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
  x = dm.ddim_sample(
    gauss_eps,
    params,
    SCHED,
    jax.random.key(7),
    SHAPE,
    num_steps=num_steps,
    eta=eta,
    clip_denoised=False,
  )
  _check_moments(x, *_exact_moments(M, S2, ddim_steps=num_steps, eta=eta))


def test_point_mass_is_recovered_and_deterministic():
  """For data = one point x*, x0-prediction is exact: DDIM(eta=0) and DDPM return x*."""
  x_star = jnp.array([-0.9, -0.2, 0.4, 0.95])
  params = _gauss_params(x_star.reshape((1,) + SHAPE[1:]), 0.0)
  want = jnp.broadcast_to(params[0], SHAPE)
  ddim = lambda p, k: dm.ddim_sample(
    gauss_eps, p, SCHED, k, SHAPE, num_steps=10, eta=0.0, clip_denoised=False
  )
  a, b = ddim(params, jax.random.key(0)), ddim(params, jax.random.key(0))
  chex.assert_trees_all_equal(a, b)
  np.testing.assert_allclose(a, want, atol=1e-4)
  c = dm.ddpm_sample(
    gauss_eps,
    params,
    SCHED,
    jax.random.key(1),
    SHAPE,
    clip_denoised=False,
    variance="small",
  )
  np.testing.assert_allclose(c, want, atol=1e-4)
  # The output is clipped to [-1, 1] even when the data lies outside.
  d = ddim((params[0] * 2, params[1]), jax.random.key(0))
  assert float(jnp.abs(d).max()) <= 1.0 and float(jnp.abs(d).min()) > 0.3


def test_samplers_do_not_retrace():
  eps = chex.assert_max_traces(
    lambda p, x, t: gauss_eps(p, x, t), n=2
  )  # one per sampler
  for i in range(3):
    params = (jnp.float32(0.1 * i), jnp.float32(0.01))
    dm.ddim_sample(
      eps, params, SCHED, jax.random.key(i), (4, 3), num_steps=5, eta=0.1 * i
    )
    dm.ddpm_sample(eps, params, SCHED, jax.random.key(i), (4, 3))


def test_sampler_with_unet_traces():
  tiny = dm.UNetConfig.tiny()
  assert dm.eps_fn_from_module(tiny.make()) == dm.eps_fn_from_module(
    tiny.make()
  )
  model = tiny.make()
  variables = abstract_init(model, (1, 32, 32, 3))
  out = jax.eval_shape(
    lambda v: dm.ddim_sample(
      dm.eps_fn_from_module(model),
      v,
      SCHED,
      jax.random.key(0),
      (2, 32, 32, 3),
      num_steps=4,
    ),
    variables,
  )
  assert out.shape == (2, 32, 32, 3) and out.dtype == jnp.float32
