"""Tests for fedqjax.diffusion.centralized: the training step and the short
training run of the session fixture `trained` (40 Adam steps of SMALL).

Statistical tests state their failure probability; seeds are fixed.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedqjax import diffusion as dm
from tests.support.diffusion import SCHED, shifted_point_denoiser


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


def test_make_train_step_is_one_step_on_the_given_batch():
  """The step uses x0 as given (no resampling) and its key as ddpm_loss's key."""
  s = SCHED
  x0 = jnp.linspace(-0.9, 0.9, 8)[:, None, None, None] * jnp.ones((8, 4, 4, 1))
  apply_fn = shifted_point_denoiser(0.5)
  tx = optax.sgd(0.1)
  step = jax.jit(dm.make_train_step(apply_fn, tx, s))
  key = jax.random.key(3)
  (p1, _), loss = step((jnp.float32(1.0), tx.init(jnp.float32(1.0))), x0, key)
  want_loss, g = jax.jit(dm.loss_and_grad, static_argnums=1)(
    jnp.float32(1.0), apply_fn, x0, key, s
  )
  np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
  np.testing.assert_allclose(p1, 1.0 - 0.1 * g, rtol=1e-6)
  assert abs(float(g)) > 0.1  # a real step, not a no-op
