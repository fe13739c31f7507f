"""DDPM training objective and EMA (Ho et al. 2020, https://arxiv.org/abs/2006.11239).

The simplified loss L_simple = E_{t, x_0, eps} ||eps - eps_theta(x_t, t)||^2
(Algorithm 1), averaged over every pixel and channel. `apply_fn` follows a
Flax module's `apply`: `apply_fn(variables, x, t, train=..., rngs={'dropout': k})`
with `variables = {'params': ...}`, so the round engine can grad, vmap and scan
`ddpm_loss` over clients without knowing the model.
"""

from __future__ import annotations

from typing import Callable, Tuple

import jax
import jax.numpy as jnp

from fedqjax.diffusion.schedule import NoiseSchedule, q_sample
from fedqjax.typing import Array, Params, PRNGKey, PyTree

ApplyFn = Callable[..., Array]


def ddpm_loss(
  params: Params,
  apply_fn: ApplyFn,
  batch_x0: Array,
  key: PRNGKey,
  schedule: NoiseSchedule,
  *,
  train: bool = True,
) -> Array:
  """Eps-prediction MSE of a minibatch.

  Args:
    params: model variables ({'params': ...} for a Flax module's `apply`).
    apply_fn: `apply_fn(params, x, t, train=bool, rngs={'dropout': key}) -> eps`.
    batch_x0: [B, H, W, C] clean images in [-1, 1].
    key: PRNG key, split into (t, noise, dropout) keys.
    schedule: noise schedule; t ~ U{0, ..., T-1} (the paper's U{1..T}).
    train: passed to the model (dropout on/off).

  Returns:
    Scalar float32 loss. An untrained paper model (zero-initialized output
    convolution) gives ~1 = E[eps^2].
  """
  k_t, k_noise, k_drop = jax.random.split(key, 3)
  b = batch_x0.shape[0]
  t = jax.random.randint(k_t, (b,), 0, schedule.num_timesteps)  # [B]
  noise = jax.random.normal(
    k_noise, batch_x0.shape, jnp.float32
  )  # [B, H, W, C]
  x_t = q_sample(schedule, batch_x0, t, noise)
  eps = apply_fn(params, x_t, t, train=train, rngs={"dropout": k_drop})
  return jnp.mean(jnp.square(eps.astype(jnp.float32) - noise))


def loss_and_grad(
  params: Params,
  apply_fn: ApplyFn,
  batch_x0: Array,
  key: PRNGKey,
  schedule: NoiseSchedule,
  *,
  train: bool = True,
) -> Tuple[Array, Params]:
  """(ddpm_loss, its gradient w.r.t. params); same arguments as `ddpm_loss`."""
  return jax.value_and_grad(ddpm_loss)(
    params, apply_fn, batch_x0, key, schedule, train=train
  )


def ema_decay(
  step: int | Array, max_decay: float, warmup: float = 10.0
) -> Array:
  """Warm-up EMA decay min(max_decay, (1 + step) / (warmup + step)).

  `step` counts the EMA updates already made (0 for the first). The weight
  of the initial parameters after R updates is prod_{r<R} decay_r. Each
  decay is at most the warm-up ratio, so for warmup = 10 that weight is at
  most prod_{r<R} (1 + r) / (10 + r) = 1 / C(R + 9, 9) (1.1e-5 at R = 10)
  whatever the cap: below 1% for every R >= 3 (1.8% at R = 2) and any
  max_decay < 1. A fixed decay of 0.999 would leave 0.999^R (90% after
  100 updates).

  Args:
    step: update count, a Python int or a traced integer scalar.
    max_decay: the decay cap, in [0, 1).
    warmup: w >= 1; the decay is (1 + step) / (w + step) until it reaches
      the cap.

  Returns:
    float32 scalar decay.

  Raises:
    ValueError: if max_decay or warmup (given as Python numbers) are out of
      range.
  """
  if isinstance(max_decay, (int, float)) and not 0.0 <= max_decay < 1.0:
    raise ValueError(f"max_decay={max_decay!r} is invalid; valid: [0, 1)")
  if isinstance(warmup, (int, float)) and not warmup >= 1.0:
    raise ValueError(f"warmup={warmup!r} is invalid; valid: >= 1")
  s = jnp.asarray(step, jnp.float32)
  return jnp.minimum(
    jnp.float32(max_decay), (1.0 + s) / (jnp.float32(warmup) + s)
  )


def ema_update(
  ema_params: PyTree, params: PyTree, decay: float | Array
) -> PyTree:
  """Exponential moving average: decay * ema + (1 - decay) * params, leafwise.

  Keeps each EMA leaf's dtype; `decay` may be traced.
  """
  return jax.tree_util.tree_map(
    lambda e, p: (decay * e + (1.0 - decay) * p).astype(e.dtype),
    ema_params,
    params,
  )
