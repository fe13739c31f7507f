"""Tests for fedqjax.diffusion.vlb: the variational bound in bits/dim
against its closed form for point data and the exact eps model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedqjax import diffusion as dm
from tests.support.diffusion import SCHED, T_SMALL, shifted_point_denoiser


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

  sc = {k: np.asarray(v, np.float64) for k, v in vars(SCHED).items()}
  bt, T = sc["posterior_variance"], T_SMALL
  s2 = (
    np.append(bt[1], sc["betas"][1:])
    if variance == "large"
    else np.append(bt[1], bt[1:])
  )
  kl_ts, w = dm.kl_timesteps(T, t_stride)
  kl = 0.5 * (-1 + np.log(s2[kl_ts] / bt[kl_ts]) + bt[kl_ts] / s2[kl_ts])
  a = (1 / 255) / np.sqrt(s2[0])
  edge = np.abs(x_star) > 0.999
  dec = np.where(edge, -np.log(norm.cdf(a)), -np.log(2 * norm.cdf(a) - 1))
  ab_t = sc["alpha_bars"][-1]
  prior = 0.5 * (-1 - np.log1p(-ab_t) + (1 - ab_t) + ab_t * x_star**2)
  return (np.mean(prior + dec) + np.sum(w * kl)) / np.log(2)


@pytest.mark.parametrize(
  "T,s", [(100, 1), (100, 10), (1000, 32), (1000, 7), (10, 20)]
)
def test_kl_timesteps_cover_each_t_once(T, s):
  """Head t < s with weight 1, then one t per block of s; the blocks tile 1..T-1."""
  ts, w = dm.kl_timesteps(T, s)
  assert (
    w.sum() == T - 1
    and np.all(np.diff(ts) > 0)
    and ts[0] == 1
    and ts[-1] <= T - 1
  )
  covered = np.concatenate(
    [
      np.arange(t - (int(wi) - 1) // 2, t - (int(wi) - 1) // 2 + int(wi))
      for t, wi in zip(ts, w)
    ]
  )
  np.testing.assert_array_equal(covered, np.arange(1, T))
  assert len(ts) <= s + T // max(s, 1)


@pytest.mark.parametrize(
  "t_stride,variance", [(1, "large"), (1, "small"), (10, "large")]
)
def test_vlb_bits_per_dim_closed_form(t_stride, variance):
  x_star = np.array([-1.0, 2 * 70 / 255 - 1, 2 * 200 / 255 - 1, 1.0]).reshape(
    1, 2, 2, 1
  )
  x0 = jnp.asarray(np.broadcast_to(x_star, (3, 2, 2, 1)), jnp.float32)
  apply_fn = shifted_point_denoiser(jnp.asarray(x_star, jnp.float32))
  f = jax.jit(
    dm.vlb_bits_per_dim,
    static_argnames=("apply_fn", "t_stride", "variance", "batch_size"),
  )
  got = float(
    f(
      jnp.float32(1.0),
      apply_fn,
      x0,
      SCHED,
      jax.random.key(0),
      t_stride=t_stride,
      variance=variance,
      batch_size=2,
    )
  )
  want = _vlb_point_closed_form(x_star.ravel(), t_stride, variance)
  print(
    f"bound ({variance}, t_stride {t_stride}): {got:.6f} bits/dim (closed form {want:.6f})"
  )
  np.testing.assert_allclose(got, want, rtol=1e-4)
  # The subsample stays close to the full sum here (seen: 2.9892 vs 2.9925 at t_stride 10).
  np.testing.assert_allclose(
    want, _vlb_point_closed_form(x_star.ravel(), 1, variance), rtol=0.01
  )
  # A wrong model (eps predicts the data at 0) pays for it in the KL terms.
  worse = float(
    f(
      jnp.float32(1.0),
      shifted_point_denoiser(0.0),
      x0,
      SCHED,
      jax.random.key(0),
      t_stride=t_stride,
      variance=variance,
    )
  )
  assert worse > want + 1.0


def test_vlb_bits_per_dim_errors():
  with pytest.raises(ValueError, match="variance='big' is invalid"):
    dm.vlb_bits_per_dim(
      1.0, None, jnp.zeros((1, 2)), SCHED, jax.random.key(0), variance="big"
    )
  with pytest.raises(
    ValueError, match="t_stride=100 is invalid; valid: 1..T-1=99"
  ):
    dm.vlb_bits_per_dim(
      1.0, None, jnp.zeros((1, 2)), SCHED, jax.random.key(0), t_stride=100
    )
