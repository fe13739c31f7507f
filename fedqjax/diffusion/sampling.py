"""DDPM ancestral and DDIM samplers (Ho et al. 2020, https://arxiv.org/abs/2006.11239;
Song et al. 2021, https://arxiv.org/abs/2010.02502).

The model is a pluggable noise predictor `eps_fn(params, x, t) -> eps` with
x: [B, ...] and t: [B] int; `eps_fn_from_module(unet)` adapts a Flax module
(train=False), and tests pass analytic optimal denoisers. Both samplers are
jitted with `eps_fn`, `shape`, `num_steps` and the flags static: pass the same
`eps_fn` object each time (not a fresh lambda per call) to avoid retracing.

Noise is drawn per step as `fold_in(step_key, i)` for step i = 0, 1, ... (from
t = T-1 down), and x_T from a separate key, so `ddim_sample(eta=1,
num_steps=T)` and `ddpm_sample(variance='small')` consume identical noise and
agree sample by sample (they are the same Markov chain, Song et al. Sec. 4.1).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from fedqjax.diffusion.schedule import NoiseSchedule, predict_x0_from_eps
from fedqjax.typing import Array, Params, PRNGKey

EpsFn = Callable[[Params, Array, Array], Array]


@dataclasses.dataclass(frozen=True)
class _ModuleEps:
  module: Any  # a hashable flax.linen.Module

  def __call__(self, params: Params, x: Array, t: Array) -> Array:
    return self.module.apply(params, x, t, train=False)


def eps_fn_from_module(module) -> EpsFn:
  """`module.apply(params, x, t, train=False)` as a sampler `eps_fn`.

  The adapter compares equal for equal modules, so building it anew per call
  does not retrace the jitted samplers.
  """
  return _ModuleEps(module)


def _full(t: Array, batch: int) -> Array:
  return jnp.full((batch,), t, dtype=jnp.int32)


@functools.partial(
  jax.jit, static_argnames=("eps_fn", "shape", "clip_denoised", "variance")
)
def ddpm_sample(
  eps_fn: EpsFn,
  params: Params,
  schedule: NoiseSchedule,
  key: PRNGKey,
  shape: Tuple[int, ...],
  *,
  clip_denoised: bool = True,
  variance: str = "large",
) -> Array:
  """Ancestral sampling, Algorithm 2 of Ho et al., over all T steps.

  Args:
    eps_fn: noise predictor `(params, x [B, ...], t [B]) -> eps [B, ...]`.
    params: its parameters.
    schedule: noise schedule (T = its length).
    key: PRNG key; the result is a deterministic function of it.
    shape: static output shape (B, H, W, C) (any [B, ...] works).
    clip_denoised: clip the x_0 prediction to [-1, 1] at each step.
    variance: 'large' (sigma_t^2 = beta_t, Ho et al.'s CIFAR-10 choice, with
      the first entry beta_tilde_1 as in diffusion_tf) or 'small'
      (sigma_t^2 = beta_tilde_t, the true posterior variance).

  Returns:
    float32 samples of `shape`, clipped to [-1, 1].
  """
  if variance not in ("large", "small"):
    raise ValueError(f"variance must be 'large' or 'small', got {variance!r}")
  T = schedule.num_timesteps
  if variance == "small":
    log_var = schedule.posterior_log_variance_clipped
  else:
    log_var = jnp.log(
      jnp.concatenate([schedule.posterior_variance[1:2], schedule.betas[1:]])
    )
  k_init, k_steps = jax.random.split(key)
  x = jax.random.normal(k_init, shape, jnp.float32)  # x_T: [B, ...]
  b = shape[0]
  bc = lambda v: v.reshape((1,) * len(shape))

  def body(i, x):
    t = T - 1 - i
    tb = _full(t, b)
    eps = eps_fn(params, x, tb).astype(jnp.float32)
    x0 = predict_x0_from_eps(schedule, x, tb, eps)
    if clip_denoised:
      x0 = jnp.clip(x0, -1.0, 1.0)
    mean = (
      bc(schedule.posterior_mean_coef1[t]) * x0
      + bc(schedule.posterior_mean_coef2[t]) * x
    )
    z = jax.random.normal(jax.random.fold_in(k_steps, i), shape, jnp.float32)
    # No noise at the last step (t = 0): x_0 is the posterior mean.
    return mean + jnp.where(t > 0, jnp.exp(0.5 * log_var[t]), 0.0) * z

  x = jax.lax.fori_loop(0, T, body, x)
  return jnp.clip(x, -1.0, 1.0)


def ddim_timesteps(T: int, num_steps: int) -> np.ndarray:
  """num_steps distinct timesteps from T-1 down to 0, evenly spaced (static)."""
  if not 1 <= num_steps <= T:
    raise ValueError(f"num_steps must be in [1, T={T}], got {num_steps!r}")
  if num_steps == 1:
    return np.array([T - 1], np.int32)
  return np.round(np.linspace(T - 1, 0, num_steps)).astype(np.int32)


@functools.partial(
  jax.jit, static_argnames=("eps_fn", "shape", "num_steps", "clip_denoised")
)
def ddim_sample(
  eps_fn: EpsFn,
  params: Params,
  schedule: NoiseSchedule,
  key: PRNGKey,
  shape: Tuple[int, ...],
  *,
  num_steps: int,
  eta: float | Array = 0.0,
  clip_denoised: bool = True,
) -> Array:
  """DDIM sampling (Song et al., Eq. 12) on `num_steps` evenly spaced timesteps.

  sigma_t = eta * sqrt((1 - ab_prev) / (1 - ab_t)) * sqrt(1 - ab_t / ab_prev);
  eta = 0 is deterministic given x_T, eta = 1 with num_steps = T is DDPM with
  the posterior variance.

  Args:
    eps_fn: noise predictor `(params, x [B, ...], t [B]) -> eps [B, ...]`.
    params: its parameters.
    schedule: noise schedule (T = its length).
    key: PRNG key; the result is a deterministic function of it.
    shape: static output shape (B, ...).
    num_steps: static number of model evaluations, in [1, T].
    eta: stochasticity (may be traced).
    clip_denoised: clip the x_0 prediction to [-1, 1] at each step.

  Returns:
    float32 samples of `shape`, clipped to [-1, 1].
  """
  T = schedule.num_timesteps
  ts = ddim_timesteps(T, num_steps)  # [S], descending
  ts_prev = np.append(ts[1:], -1).astype(np.int32)  # -1 means ab_prev = 1
  k_init, k_steps = jax.random.split(key)
  x = jax.random.normal(k_init, shape, jnp.float32)
  b = shape[0]
  ab_all = schedule.alpha_bars

  def body(i, x):
    t, tp = jnp.asarray(ts)[i], jnp.asarray(ts_prev)[i]
    ab = ab_all[t]
    ab_prev = jnp.where(tp >= 0, ab_all[jnp.maximum(tp, 0)], 1.0)
    eps = eps_fn(params, x, _full(t, b)).astype(jnp.float32)
    x0 = (x - jnp.sqrt(1.0 - ab) * eps) / jnp.sqrt(ab)
    if clip_denoised:
      x0 = jnp.clip(x0, -1.0, 1.0)
    sigma = eta * jnp.sqrt((1.0 - ab_prev) / (1.0 - ab) * (1.0 - ab / ab_prev))
    dir_coef = jnp.sqrt(jnp.maximum(1.0 - ab_prev - sigma**2, 0.0))
    z = jax.random.normal(jax.random.fold_in(k_steps, i), shape, jnp.float32)
    return jnp.sqrt(ab_prev) * x0 + dir_coef * eps + sigma * z

  x = jax.lax.fori_loop(0, num_steps, body, x)
  return jnp.clip(x, -1.0, 1.0)
