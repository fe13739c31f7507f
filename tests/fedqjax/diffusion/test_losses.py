"""Tests for fedqjax.diffusion.losses: the DDPM loss and the EMA."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedqjax import diffusion as dm
from tests.support.diffusion import SCHED


def test_ema_update():
  ema = {"a": jnp.ones(3), "b": {"c": jnp.zeros(2)}}
  new = dm.ema_update(ema, {"a": jnp.zeros(3), "b": {"c": jnp.ones(2)}}, 0.9)
  chex.assert_trees_all_close(
    new, {"a": jnp.full(3, 0.9), "b": {"c": jnp.full(2, 0.1)}}
  )


def _log_init_weight_closed_form(max_decay, R):
  """log prod_{r<R} min(max_decay, (1 + r) / (10 + r)): the ratio rises with r,
  so the first r* steps are uncapped (product 1 / C(r* + 9, 9)), the rest capped."""
  r_star = next(r for r in range(10**6) if (1 + r) / (10 + r) > max_decay)
  m = min(R, r_star)
  return max(R - r_star, 0) * math.log(max_decay) - math.log(
    math.comb(m + 9, 9)
  )


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
  closed = [
    _log_init_weight_closed_form(max_decay, r)
    for r in (1, 10, 11, 100, 1000, R)
  ]
  np.testing.assert_allclose(
    log_w[[0, 9, 10, 99, 999, R - 1]], closed, rtol=1e-9
  )
  w = np.exp(log_w)
  assert w[9:].max() < 0.01, w[9:].max()

  def body(ema, s):
    ema = dm.ema_update(
      ema,
      {"a": jnp.zeros(3), "b": jnp.zeros((2, 2))},
      dm.ema_decay(s, max_decay),
    )
    return ema, ema["a"][0]

  ema, traj = jax.jit(
    lambda: jax.lax.scan(
      body, {"a": jnp.ones(3), "b": jnp.ones((2, 2))}, jnp.arange(R)
    )
  )()
  traj = np.asarray(traj, np.float64)
  big = (
    w > 1e-30
  )  # float32 keeps relative accuracy (R roundings ~ 1e-3) above that
  np.testing.assert_allclose(traj[big], w[big], rtol=2e-3)
  assert traj[9:].max() < 0.01 and np.all(
    np.asarray(ema["b"]) == np.float32(traj[-1])
  )


def test_ema_decay_values_and_errors():
  assert float(dm.ema_decay(0, 0.999)) == np.float32(
    0.1
  )  # first update keeps 10% of init
  assert float(dm.ema_decay(10**6, 0.999)) == np.float32(0.999)
  assert float(dm.ema_decay(jnp.int32(5), 0.999, warmup=2.0)) == np.float32(
    6 / 7
  )
  with pytest.raises(ValueError, match="max_decay=1.0 is invalid"):
    dm.ema_decay(0, 1.0)
  with pytest.raises(ValueError, match="warmup=0.5 is invalid"):
    dm.ema_decay(0, 0.9, warmup=0.5)


def test_ddpm_loss_with_analytic_model():
  """ddpm_loss of the optimal denoiser of point data is ~0; of eps=0 it is ~1."""
  s = SCHED
  x0 = jnp.full((64, 4, 4, 1), 0.3)

  def apply_fn(params, x, t, *, train, rngs):
    del train, rngs
    return (
      params
      * (x - s.sqrt_alpha_bars[t][:, None, None, None] * 0.3)
      / s.sqrt_one_minus_alpha_bars[t][:, None, None, None]
    )

  f = jax.jit(dm.loss_and_grad, static_argnums=1)
  loss, g = f(jnp.float32(1.0), apply_fn, x0, jax.random.key(0), s)
  assert float(loss) < 1e-6 and abs(float(g)) < 1e-4
  # eps = 0: L = mean of 1024 squared normals, std 0.044; 0.25 is 5.6 std.
  assert (
    abs(float(f(jnp.float32(0.0), apply_fn, x0, jax.random.key(0), s)[0]) - 1)
    < 0.25
  )
