"""Tests for fedqjax.diffusion.heldout: stratified timesteps, the held-out
set and loss (analytic models and the SMALL U-Net)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedqjax import diffusion as dm
from tests.support.diffusion import (
  FAST,
  RES,
  SCHED,
  SMALL,
  T_SMALL,
  patterns,
  shifted_point_denoiser,
)


def test_heldout_timesteps_cover_every_stratum_once():
  T = 1000
  t = dm.stratified_timesteps(jax.random.key(0), T, 100)
  np.testing.assert_array_equal(
    t // 10, np.arange(100)
  )  # strata [10 i, 10 i + 10)
  i = np.arange(7)
  t7 = dm.stratified_timesteps(jax.random.key(1), T, 7)
  assert np.all((np.floor(i * T / 7) <= t7) & (t7 < (i + 1) * T / 7)), t7
  t2 = dm.stratified_timesteps(
    jax.random.key(2), 50, 100
  )  # n = 2T: each t twice
  np.testing.assert_array_equal(np.bincount(t2, minlength=50), np.full(50, 2))
  assert not np.array_equal(
    t, dm.stratified_timesteps(jax.random.key(3), T, 100)
  )


def test_heldout_set_is_deterministic_subset():
  images = np.arange(12, dtype=np.float32).reshape(12, 1, 1, 1) * np.ones(
    (1, 2, 2, 1), np.float32
  )
  a = dm.heldout_set(images, 100, jax.random.key(5), 5)
  b = dm.heldout_set(jnp.asarray(images), 100, jax.random.key(5), 5)
  chex.assert_trees_all_equal(a, b)
  chex.assert_shape([a.x0, a.noise], (5, 2, 2, 1))
  assert a.t.dtype == jnp.int32 and a.noise.dtype == jnp.float32
  ids = np.asarray(a.x0[:, 0, 0, 0]).astype(int)
  assert len(set(ids)) == 5 and np.all(
    images[ids] == np.asarray(a.x0)
  )  # distinct images
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
  apply_fn = shifted_point_denoiser(0.3)
  f = jax.jit(dm.heldout_loss, static_argnames=("apply_fn", "batch_size"))
  assert float(f(jnp.float32(1.0), apply_fn, hs, SCHED)) < 1e-8
  zero = float(f(jnp.float32(0.0), apply_fn, hs, SCHED))
  np.testing.assert_allclose(
    zero, np.mean(np.asarray(hs.noise, np.float64) ** 2), rtol=1e-6
  )
  wrong = shifted_point_denoiser(0.0)  # eps off by sqrt(ab_t / (1 - ab_t)) 0.3
  one = float(f(jnp.float32(1.0), wrong, hs, SCHED))
  chunked = float(f(jnp.float32(1.0), wrong, hs, SCHED, batch_size=3))
  t = np.asarray(hs.t)
  ratio = (
    np.asarray(SCHED.sqrt_alpha_bars, np.float64)[t]
    / np.asarray(SCHED.sqrt_one_minus_alpha_bars, np.float64)[t]
  )
  np.testing.assert_allclose(one, np.mean(ratio**2) * 0.09, rtol=1e-5)
  np.testing.assert_allclose(chunked, one, rtol=1e-6)
  with pytest.raises(ValueError, match="batch_size=0 is invalid"):
    dm.heldout_loss(1.0, apply_fn, hs, SCHED, batch_size=0)


def test_heldout_loss_on_unet(trained):
  """On the SMALL U-Net: bitwise deterministic; equal to a direct NumPy
  recomputation (at init and after training); lower after 40 steps of
  train_centralized (seen: 0.985 -> 0.200; asserted: < 0.6x init)."""
  variables, _ = trained
  model, sched = (
    SMALL.make(),
    dm.linear_schedule(),
  )  # train_centralized's schedule
  init = dm.init_unet(
    SMALL,
    jax.random.split(jax.random.key(0, impl="rbg"))[0],
    (RES, RES, 1),
    compiler_options=FAST,
  )  # the fixture's initial parameters
  hs = dm.heldout_set(
    patterns(24, RES, seed=2), sched.num_timesteps, jax.random.key(9), 24
  )
  f = jax.jit(
    lambda p: dm.heldout_loss(p, model.apply, hs, sched, batch_size=16),
    compiler_options=FAST,
  )
  fwd = jax.jit(
    lambda p, x, t: model.apply(p, x, t, train=False), compiler_options=FAST
  )
  ab = np.asarray(sched.alpha_bars, np.float64)[np.asarray(hs.t)][
    :, None, None, None
  ]
  noise = np.asarray(hs.noise, np.float64)
  x_t = np.sqrt(ab) * np.asarray(hs.x0, np.float64) + np.sqrt(1 - ab) * noise
  got = {}
  for name, p in (("init", init), ("trained", variables)):
    got[name] = f(p)
    assert (
      np.asarray(got[name]).tobytes() == np.asarray(f(p)).tobytes()
    )  # bitwise
    eps = np.asarray(fwd(p, jnp.asarray(x_t, jnp.float32), hs.t), np.float64)
    np.testing.assert_allclose(
      float(got[name]), np.mean((eps - noise) ** 2), rtol=1e-5
    )
  print(
    f"held-out loss: init {float(got['init']):.4f}, after 40 steps "
    f"{float(got['trained']):.4f}"
  )
  assert float(got["trained"]) < 0.6 * float(got["init"])
