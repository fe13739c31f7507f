"""Centralized DDPM training on one dataset (Ho et al. 2020, https://arxiv.org/abs/2006.11239).

A reference point for the federated runs and a smoke test of the model: Adam
on L_simple with minibatches drawn uniformly with replacement. Two drivers:
a Python loop over one jitted step (default) and one jitted `lax.scan` over
all steps. On XLA:CPU (jax 0.10.2) a rolled scan of the train step is much
slower than the same step jitted alone: 7.6x for a 16x16 two-level U-Net at
batch 8 (77 vs 582 ms/step), 30x at xla_backend_optimization_level=0; the
culprit is the kernel-gradient convolution inside a while body (jax-ml/jax
#12868: a lone conv-grad step in a scan ran 29x slower). The loop is therefore
the default; `scan_unroll=steps` restores the speed at a compile time that
grows with the unroll (see benchmarks/diffusion.py).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedqjax.diffusion.losses import loss_and_grad
from fedqjax.diffusion.schedule import NoiseSchedule, linear_schedule
from fedqjax.diffusion.unet import UNetConfig
from fedqjax.typing import Array, Params, PRNGKey

Carry = Tuple[Params, optax.OptState]


def make_train_step(
  apply_fn: Callable[..., Array],
  tx: optax.GradientTransformation,
  schedule: NoiseSchedule,
) -> Callable[[Carry, Array, PRNGKey], Tuple[Carry, Array]]:
  """One optimizer step of L_simple on a given minibatch.

  The one DDPM step of the project: `train_centralized` and the federated
  client both call it; each draws its own minibatch (the client from its
  padded data) and passes it in.

  Args:
    apply_fn: a Flax module's `apply` (see `ddpm_loss`).
    tx: the optimizer.
    schedule: noise schedule.

  Returns:
    `step((params, opt_state), x0 [B, H, W, C], key) -> ((params, opt_state),
    loss)`; `key` draws t, the noise and dropout (`ddpm_loss`).
  """

  def step(carry: Carry, x0: Array, key: PRNGKey) -> Tuple[Carry, Array]:
    params, opt_state = carry
    loss, grads = loss_and_grad(params, apply_fn, x0, key, schedule)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), loss

  return step


def _draw_then_step(step, batch_size: int):
  """(carry, images [N, ...], key) -> step on B images drawn with replacement."""

  def run(carry: Carry, images: Array, key: PRNGKey) -> Tuple[Carry, Array]:
    k_idx, k_loss = jax.random.split(key)
    idx = jax.random.randint(k_idx, (batch_size,), 0, images.shape[0])  # [B]
    return step(carry, images[idx], k_loss)

  return run


def init_unet(
  unet_config: UNetConfig,
  key: PRNGKey,
  image_shape: Tuple[int, int, int],
  *,
  compiler_options: Optional[Mapping[str, Any]] = None,
) -> Params:
  """Jitted init of the U-Net's variables ({'params': ...}) for [H, W, C] images."""
  unet_config.check_image_shape(tuple(image_shape))
  model = unet_config.make()
  x = jnp.zeros((1, *image_shape), jnp.float32)
  t = jnp.zeros((1,), jnp.int32)
  init = jax.jit(
    lambda k: model.init({"params": k}, x, t, train=False),
    compiler_options=compiler_options,
  )
  return init(key)


def _checked_images(steps, batch_size, images) -> Array:
  """Validates steps and batch_size; images as float32 [N, H, W, C]."""
  for name, v in (("steps", steps), ("batch_size", batch_size)):
    if not isinstance(v, (int, np.integer)) or v < 1:
      raise ValueError(f"{name}={v!r} is invalid; valid: an int >= 1")
  images = jnp.asarray(images, jnp.float32)
  if images.ndim != 4:
    raise ValueError(
      f"images.shape={images.shape} is invalid; valid: [N, H, W, C]"
    )
  return images


def _run_steps(
  step, carry, images, keys, use_scan, scan_unroll, compiler_options
) -> Tuple[Carry, Array]:
  """One step per key: a jitted `lax.scan`, or a Python loop over the jitted
  step; (final carry, losses [steps])."""
  if use_scan:
    run = jax.jit(
      lambda c, imgs, ks: jax.lax.scan(
        lambda c, k: step(c, imgs, k), c, ks, unroll=scan_unroll
      ),
      compiler_options=compiler_options,
    )
    return run(carry, images, keys)
  step_j = jax.jit(step, compiler_options=compiler_options)
  losses = []
  for i in range(keys.shape[0]):
    carry, loss = step_j(carry, images, keys[i])
    losses.append(loss)
  return carry, jnp.stack(losses)


def train_centralized(
  unet_config: UNetConfig,
  images: Array,
  *,
  steps: int,
  batch_size: int,
  lr: float,
  key: PRNGKey,
  schedule: Optional[NoiseSchedule] = None,
  use_scan: bool = False,
  scan_unroll: int | bool = 1,
  compiler_options: Optional[Mapping[str, Any]] = None,
  init_params: Optional[Params] = None,
) -> Tuple[Params, np.ndarray]:
  """Trains a U-Net on `images` with Adam.

  Args:
    unet_config: the model.
    images: [N, H, W, C] float images in [-1, 1].
    steps: number of optimizer steps.
    batch_size: minibatch size (drawn with replacement).
    lr: Adam learning rate.
    key: root PRNG key (split into init and per-step keys).
    schedule: noise schedule (default `linear_schedule()`, T = 1000).
    use_scan: run all steps in one jitted `lax.scan` instead of a Python
      loop over a jitted step.
    scan_unroll: `unroll` for the scan.
    compiler_options: XLA options for the jitted functions, e.g.
      {'xla_backend_optimization_level': 0} compiles ~3x faster on CPU at
      similar step time for small models.
    init_params: start from these variables instead of a fresh init.

  Returns:
    (variables {'params': ...}, losses [steps] as NumPy float32).
  """
  images = _checked_images(steps, batch_size, images)
  schedule = linear_schedule() if schedule is None else schedule
  k_init, k_train = jax.random.split(key)
  params = (
    init_unet(
      unet_config, k_init, images.shape[1:], compiler_options=compiler_options
    )
    if init_params is None
    else init_params
  )
  tx = optax.adam(lr)
  step = _draw_then_step(
    make_train_step(unet_config.make().apply, tx, schedule), batch_size
  )
  carry = (params, tx.init(params))
  keys = jax.random.split(k_train, steps)  # [steps] keys
  carry, losses = _run_steps(
    step, carry, images, keys, use_scan, scan_unroll, compiler_options
  )
  return carry[0], np.asarray(losses, np.float32)
