"""Tests for fedqjax.diffusion.flops: lowered-HLO FLOPs per image."""

import pytest

from fedqjax import diffusion as dm
from tests.support.diffusion import RES, SMALL


def test_flops_small_model():
  """Lowered-HLO FLOPs (no compile); fwd+bwd is 2-4x a forward pass, and
  the count scales with the number of pixels."""
  train = dm.train_flops_per_image(SMALL, (RES, RES, 1), compiled=False)
  sample = dm.sample_flops_per_image(SMALL, (RES, RES, 1), compiled=False)
  print(
    f"SMALL model FLOPs/image: train {train:.3e}, sampling step {sample:.3e}"
  )
  assert 1e7 < sample < train and 2.0 < train / sample < 4.0
  # Convolutions dominate: twice the side, ~4x the FLOPs (3.997 measured);
  # a count that ignored the image (parameters only, a constant) fails.
  big = (2 * RES, 2 * RES, 1)
  assert (
    3.9 < dm.train_flops_per_image(SMALL, big, compiled=False) / train < 4.1
  )
  assert (
    3.9 < dm.sample_flops_per_image(SMALL, big, compiled=False) / sample < 4.1
  )


def _prologue_flops(image_shape, compiled):
  """XLA's count of what a sampler does once: split the key, draw x_T and
  clip the result (its loop body comes on top)."""
  import jax
  import jax.numpy as jnp

  from fedqjax.diffusion import flops as F

  key = jax.eval_shape(lambda: jax.random.key(0))

  def prologue(k):
    a, b = jax.random.split(k)
    x = jax.random.normal(a, (1, *image_shape), jnp.float32)
    return jnp.clip(x, -1.0, 1.0), b

  return F._flops(prologue, (F._cpu_struct(key.shape, key.dtype),), compiled)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
@pytest.mark.parametrize("compiled", [True, False])
def test_sampling_step_flops_is_the_samplers_loop_body(sampler, compiled):
  """The step count + the one-off prologue equals XLA's count of the whole
  jitted sampler (XLA counts its while loop once: 2 and 50 DDIM steps, T =
  100 and 1000 DDPM steps, count the same); the step is the forward plus
  0.05-1% (update arithmetic and the step's noise draw: ~100 FLOPs/pixel).
  A step without the update or the draw is off by ~25k FLOPs and fails."""
  from fedqjax.diffusion import flops as F

  shape = (RES, RES, 1)
  step = F.sampling_step_flops(SMALL, shape, sampler, compiled=compiled)
  fwd = dm.sample_flops_per_image(SMALL, shape, compiled=compiled)
  program = F.sampler_program_flops(
    SMALL, shape, sampler, 2, num_timesteps=100, compiled=compiled
  )
  again = F.sampler_program_flops(
    SMALL, shape, sampler, 50, num_timesteps=1000, compiled=compiled
  )
  # The loop body counted once, whatever the steps (a few FLOPs of fusion).
  assert abs(again - program) <= 1e-6 * program
  prologue = _prologue_flops(shape, compiled)
  update = step - fwd if compiled else 1e4  # lowered fwd is not comparable
  print(f"{sampler} compiled={compiled}: step {step:.0f}, forward {fwd:.0f}")
  assert abs(program - step - prologue) <= 0.01 * update
  if compiled:
    assert 5e-4 < step / fwd - 1 < 0.01
  else:  # the lowered forward is unfused; the step is within 1% of it
    assert abs(step / fwd - 1) < 0.01


def test_sampling_step_flops_ddim_one_step_program():
  """With one step XLA removes the loop and fuses the body with the
  prologue: the whole sampler is still step + prologue within 0.1%."""
  from fedqjax.diffusion import flops as F

  shape = (RES, RES, 1)
  step = F.sampling_step_flops(SMALL, shape, "ddim")
  one = F.sampler_program_flops(SMALL, shape, "ddim", 1)
  assert abs(one - step - _prologue_flops(shape, True)) < 1e-3 * step


def test_sampling_steps_add_up_when_unrolled():
  """Unrolled (no while loop, so XLA counts every step), 4 steps cost 2
  steps + 2 x the step count: per-step FLOPs x steps is the total."""
  import jax

  from fedqjax.diffusion import flops as F

  shape = (RES, RES, 1)
  step_fn, args = F.sampling_step_fn(SMALL, shape, "ddim")
  consts, carry = args[:-2], args[-2:]

  def unrolled(k):
    def run(*xs):
      c = tuple(xs[-2:])
      for _ in range(k):
        c = step_fn(*xs[:-2], *c)
      return c

    return run

  with jax.default_device(jax.devices("cpu")[0]):
    two = F._flops(unrolled(2), (*consts, *carry), False)
    four = F._flops(unrolled(4), (*consts, *carry), False)
  step = F.sampling_step_flops(SMALL, shape, "ddim", compiled=False)
  assert abs((four - two) - 2 * step) < 1e-4 * step
  assert abs(two - 2 * step) < 1e-4 * step


def test_sampling_step_flops_rejects_unknown_sampler():
  from fedqjax.diffusion import flops as F

  with pytest.raises(ValueError, match="sampler='plms' is invalid"):
    F.sampling_step_flops(SMALL, (RES, RES, 1), "plms")
