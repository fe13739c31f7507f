"""Tests for fedqjax.diffusion.schedule: the linear noise schedule and q_sample.

Statistical tests state their failure probability; seeds are fixed, so they
are deterministic in practice.
"""

import jax
import jax.numpy as jnp
import numpy as np

from fedqjax import diffusion as dm


def test_linear_schedule_matches_float64():
  s = dm.linear_schedule()
  betas = np.linspace(1e-4, 0.02, 1000, dtype=np.float64)
  ab = np.cumprod(1 - betas)
  assert s.num_timesteps == 1000 and s.alpha_bars.dtype == jnp.float32
  np.testing.assert_allclose(s.alpha_bars, ab, rtol=1e-6)
  np.testing.assert_allclose(
    s.posterior_variance[1:],
    betas[1:] * (1 - ab[:-1]) / (1 - ab[1:]),
    rtol=1e-6,
  )
  assert np.all(np.diff(np.asarray(s.alpha_bars)) < 0)
  np.testing.assert_allclose(
    s.alpha_bars[-1], 4.04e-5, rtol=0.01
  )  # ~0: x_T ~ N(0, I)


def test_q_sample_statistics():
  """Mean/var of x_t at fixed x0 match sqrt(ab) x0 and 1 - ab.

  n = 2**16 draws per t; a 6-standard-error tolerance fails with p < 1e-8 per
  check.
  """
  s = dm.linear_schedule()
  n = 2**16
  for t in (0, 250, 999):
    x0 = jnp.full((n, 1), 0.6)
    noise = jax.random.normal(jax.random.key(t), (n, 1))
    xt = dm.q_sample(s, x0, jnp.full((n,), t), noise)
    ab = float(np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))[t])
    var = 1 - ab
    assert abs(float(xt.mean()) - np.sqrt(ab) * 0.6) < 6 * np.sqrt(var / n)
    assert abs(float(xt.var()) - var) < 6 * var * np.sqrt(2 / n)
