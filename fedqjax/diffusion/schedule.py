"""DDPM noise schedule and forward process (Ho et al. 2020, https://arxiv.org/abs/2006.11239).

Timesteps are 0-indexed: index t in [0, T) is the paper's step t + 1, so the
paper's t ~ U{1..T} is `randint(0, T)` here and alpha_bars[0] = 1 - beta_1.
All tables are computed in float64 NumPy (as diffusion_tf does) and stored as
float32; T is the static length of the arrays, so a schedule is an ordinary
pytree that can be passed through jit without retracing for a fixed T.
"""

from __future__ import annotations

import flax.struct
import jax.numpy as jnp
import numpy as np

from fedqjax.typing import Array, ArrayLike


@flax.struct.dataclass
class NoiseSchedule:
  """Precomputed DDPM tables, each a [T] float32 array.

  Attributes:
    betas: beta_t.
    alphas: 1 - beta_t.
    alpha_bars: prod_{s<=t} alpha_s.
    alpha_bars_prev: alpha_bars shifted right with alpha_bar_{-1} = 1.
    sqrt_alpha_bars, sqrt_one_minus_alpha_bars: q(x_t | x_0) coefficients.
    sqrt_recip_alpha_bars, sqrt_recipm1_alpha_bars: x_0 = a x_t - b eps.
    posterior_variance: beta_tilde_t of q(x_{t-1} | x_t, x_0).
    posterior_log_variance_clipped: log beta_tilde_t with entry 0 set to
      entry 1 (beta_tilde_0 = 0), as in diffusion_tf.
    posterior_mean_coef1, posterior_mean_coef2: mean = c1 x_0 + c2 x_t.
  """

  betas: Array
  alphas: Array
  alpha_bars: Array
  alpha_bars_prev: Array
  sqrt_alpha_bars: Array
  sqrt_one_minus_alpha_bars: Array
  sqrt_recip_alpha_bars: Array
  sqrt_recipm1_alpha_bars: Array
  posterior_variance: Array
  posterior_log_variance_clipped: Array
  posterior_mean_coef1: Array
  posterior_mean_coef2: Array

  @property
  def num_timesteps(self) -> int:
    """T (static: the arrays' length)."""
    return self.betas.shape[0]


def schedule_from_betas(betas: np.ndarray) -> NoiseSchedule:
  """Builds every table from [T] betas in float64, then casts to float32."""
  betas = np.asarray(betas, dtype=np.float64)
  if betas.ndim != 1 or betas.size < 2 or not np.all((betas > 0) & (betas < 1)):
    raise ValueError(
      f"betas must be a 1-D array of length >= 2 in (0, 1), got {betas!r}"
    )
  alphas = 1.0 - betas
  ab = np.cumprod(alphas)
  ab_prev = np.append(1.0, ab[:-1])
  post_var = betas * (1.0 - ab_prev) / (1.0 - ab)
  tables = dict(
    betas=betas,
    alphas=alphas,
    alpha_bars=ab,
    alpha_bars_prev=ab_prev,
    sqrt_alpha_bars=np.sqrt(ab),
    sqrt_one_minus_alpha_bars=np.sqrt(1.0 - ab),
    sqrt_recip_alpha_bars=np.sqrt(1.0 / ab),
    sqrt_recipm1_alpha_bars=np.sqrt(1.0 / ab - 1.0),
    posterior_variance=post_var,
    posterior_log_variance_clipped=np.log(np.append(post_var[1], post_var[1:])),
    posterior_mean_coef1=betas * np.sqrt(ab_prev) / (1.0 - ab),
    posterior_mean_coef2=(1.0 - ab_prev) * np.sqrt(alphas) / (1.0 - ab),
  )
  return NoiseSchedule(
    **{k: jnp.asarray(v, dtype=jnp.float32) for k, v in tables.items()}
  )


def linear_schedule(
  T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02
) -> NoiseSchedule:
  """Linear betas of Ho et al. (1e-4 -> 0.02 over T = 1000 steps).

  Raises:
    ValueError: if T < 2 or the betas are not in (0, 1).
  """
  if not isinstance(T, (int, np.integer)) or T < 2:
    raise ValueError(f"T must be an int >= 2, got {T!r}")
  if not 0.0 < beta_start <= beta_end < 1.0:
    raise ValueError(
      f"need 0 < beta_start <= beta_end < 1, got {beta_start!r}, {beta_end!r}"
    )
  return schedule_from_betas(
    np.linspace(beta_start, beta_end, int(T), dtype=np.float64)
  )


def _bcast(v: Array, x: Array) -> Array:
  """[B] -> [B, 1, ..., 1] matching x's rank."""
  return v.reshape(v.shape[:1] + (1,) * (x.ndim - 1))


def q_sample(
  schedule: NoiseSchedule, x0: ArrayLike, t: ArrayLike, noise: ArrayLike
) -> Array:
  """Draws x_t ~ q(x_t | x_0) = N(sqrt(ab_t) x_0, (1 - ab_t) I).

  Args:
    schedule: noise schedule.
    x0: [B, ...] clean data.
    t: [B] integer timesteps in [0, T).
    noise: [B, ...] standard normal noise.

  Returns:
    [B, ...] float32 noisy data.
  """
  x0 = jnp.asarray(x0, jnp.float32)
  t = jnp.asarray(t)
  return _bcast(schedule.sqrt_alpha_bars[t], x0) * x0 + _bcast(
    schedule.sqrt_one_minus_alpha_bars[t], x0
  ) * jnp.asarray(noise, jnp.float32)


def predict_x0_from_eps(
  schedule: NoiseSchedule, x_t: Array, t: Array, eps: Array
) -> Array:
  """x_0 = x_t / sqrt(ab_t) - sqrt(1/ab_t - 1) eps, with t: [B]."""
  return (
    _bcast(schedule.sqrt_recip_alpha_bars[t], x_t) * x_t
    - _bcast(schedule.sqrt_recipm1_alpha_bars[t], x_t) * eps
  )
