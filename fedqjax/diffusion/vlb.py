"""DDPM variational bound in bits/dim (Ho et al. 2020, https://arxiv.org/abs/2006.11239, Eq. 5).

  L = D_KL(q(x_T | x_0) || N(0, I))                            (prior, L_T)
    + sum_{t>1} D_KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t))  (L_{t-1})
    - log p(x_0 | x_1)                                          (decoder, L_0)

with p(x_{t-1} | x_t) = N(mu_theta(x_t, t), sigma_t^2 I) built from the eps
prediction, fixed variances as in the samplers ('large': sigma_t^2 = beta_t,
first entry beta_tilde_1, diffusion_tf's CIFAR-10 choice; 'small': sigma_t^2 =
beta_tilde_t), and the discretized Gaussian decoder over 256 levels (data on
the grid 2k/255 - 1, edges open to +-inf). Each KL term is an expectation
over x_t ~ q(x_t | x_0), estimated with one noise draw per (image, t), as in
diffusion_tf's `calc_bpd_loop`. Terms are averaged over dimensions and
divided by ln 2: bits/dim. 0-indexed here: index t is the paper's t + 1, so
the KL terms are t = 1..T-1 and the decoder is t = 0.

Cost: one forward pass per image per evaluated t. The KL terms fall
steeply with t (most of the bound sits in the first few steps), so
`t_stride = s` evaluates every t < s exactly and, above, one t per block of
s consecutive timesteps (its middle) weighted by the block's length: about
s + T / s passes per image instead of T (62 at T = 1000, s = 32); s = 1 is
the full bound. The prior and decoder terms are always exact.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import log_ndtr, ndtr

from fedqjax.diffusion.heldout import map_in_chunks
from fedqjax.diffusion.schedule import (
  NoiseSchedule,
  predict_x0_from_eps,
  q_sample,
)
from fedqjax.typing import Array, ArrayLike, Params, PRNGKey


def normal_kl(
  mean1: Array, logvar1: Array, mean2: Array, logvar2: Array
) -> Array:
  """Elementwise KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) in nats."""
  return 0.5 * (
    -1.0
    + logvar2
    - logvar1
    + jnp.exp(logvar1 - logvar2)
    + jnp.square(mean1 - mean2) * jnp.exp(-logvar2)
  )


def discretized_gaussian_log_likelihood(
  x: Array, mean: Array, log_scale: Array
) -> Array:
  """Elementwise log P(bin of x) under N(mean, e^{2 log_scale}), 256 bins on [-1, 1].

  Bins have width 2/255 around the grid values; the end bins extend to -inf
  and +inf (Ho et al., Eq. 13). Exact normal CDFs (log_ndtr in the tails).
  """
  centered = x - mean
  inv = jnp.exp(-log_scale)
  plus, minus = inv * (centered + 1.0 / 255.0), inv * (centered - 1.0 / 255.0)
  log_delta = jnp.log(jnp.maximum(ndtr(plus) - ndtr(minus), 1e-12))
  return jnp.where(
    x < -0.999,
    log_ndtr(plus),
    jnp.where(x > 0.999, log_ndtr(-minus), log_delta),
  )


def kl_timesteps(T: int, t_stride: int) -> tuple[np.ndarray, np.ndarray]:
  """The KL terms' evaluated timesteps and weights (see module doc).

  Returns:
    (ts [S] int32 ascending in [1, T), weights [S] float64 summing to T - 1):
    weight 1 for t < t_stride, else the length of the block of t_stride
    timesteps starting at a multiple of t_stride whose middle t is.
  """
  head = np.arange(1, min(t_stride, T))
  starts = np.arange(t_stride if t_stride > 1 else 1, T, t_stride)
  lengths = np.minimum(starts + t_stride, T) - starts
  ts = np.concatenate([head, starts + (lengths - 1) // 2]).astype(np.int32)
  return ts, np.concatenate([np.ones(len(head)), lengths]).astype(np.float64)


def _model_log_variance(schedule: NoiseSchedule, variance: str) -> Array:
  if variance == "small":
    return schedule.posterior_log_variance_clipped
  return jnp.log(
    jnp.concatenate([schedule.posterior_variance[1:2], schedule.betas[1:]])
  )


def _mean_dims(v: Array) -> Array:
  return jnp.mean(v.reshape(v.shape[0], -1), axis=1)  # [b, ...] -> [b]


def _term_at(
  params, apply_fn, schedule, log_var, clip_denoised, t, x0, noise
) -> Array:
  """L_{t} per image (nats/dim): the decoder NLL at t = 0, else the KL term."""
  tb = jnp.full((x0.shape[0],), t, jnp.int32)
  x_t = q_sample(schedule, x0, tb, noise)
  eps = apply_fn(params, x_t, tb, train=False).astype(jnp.float32)
  x0_hat = predict_x0_from_eps(schedule, x_t, tb, eps)
  if clip_denoised:
    x0_hat = jnp.clip(x0_hat, -1.0, 1.0)
  c1, c2 = schedule.posterior_mean_coef1[t], schedule.posterior_mean_coef2[t]
  mean_model = c1 * x0_hat + c2 * x_t
  kl = normal_kl(
    c1 * x0 + c2 * x_t,
    schedule.posterior_log_variance_clipped[t],
    mean_model,
    log_var[t],
  )
  nll = -discretized_gaussian_log_likelihood(x0, mean_model, 0.5 * log_var[t])
  return _mean_dims(jnp.where(t == 0, nll, kl))


def _check_settings(variance: str, t_stride, schedule: NoiseSchedule) -> None:
  if variance not in ("large", "small"):
    raise ValueError(
      f"variance={variance!r} is invalid; valid: 'large', 'small'"
    )
  T = schedule.num_timesteps
  if not isinstance(t_stride, (int, np.integer)) or not 1 <= t_stride <= T - 1:
    raise ValueError(f"t_stride={t_stride!r} is invalid; valid: 1..T-1={T - 1}")


def _weighted_timesteps(T: int, t_stride) -> tuple[Array, Array]:
  """Evaluated timesteps and weights: the decoder (t = 0, weight 1), then
  the KL terms of `kl_timesteps`; int32 [S + 1] and float32 [S + 1]."""
  kl_ts, kl_w = kl_timesteps(T, int(t_stride))
  ts = jnp.asarray(
    np.concatenate([[0], kl_ts]), jnp.int32
  )  # [S + 1], t = 0: decoder
  weights = jnp.asarray(np.concatenate([[1.0], kl_w]), jnp.float32)
  return ts, weights


def vlb_bits_per_dim(
  params: Params,
  apply_fn: Callable[..., Array],
  x0: ArrayLike,
  schedule: NoiseSchedule,
  key: PRNGKey,
  *,
  t_stride: int = 1,
  variance: str = "large",
  clip_denoised: bool = True,
  batch_size: Optional[int] = None,
) -> Array:
  """The DDPM bound -log p(x_0) <= L of Eq. 5, in bits/dim, averaged over images.

  Args:
    params: model variables.
    apply_fn: `apply_fn(params, x, t, train=False) -> eps`.
    x0: [n, H, W, C] images on the 256-level grid in [-1, 1].
    schedule: noise schedule (T = its length).
    key: PRNG key for the q(x_t | x_0) draws (noise at t: fold_in(key, t)).
    t_stride: s; the KL terms at every t < s and at one t per block of s
      above (see module doc); 1 is the full bound, T forward passes per
      image.
    variance: the model's fixed variance, 'large' or 'small' (as ddpm_sample).
    clip_denoised: clip the x_0 prediction to [-1, 1] (as diffusion_tf).
    batch_size: images per forward pass (`lax.map` chunks); None: all.

  Returns:
    float32 scalar, mean over images of the bound in bits/dim.

  Raises:
    ValueError: on a bad variance, t_stride or image rank.
  """
  _check_settings(variance, t_stride, schedule)
  T = schedule.num_timesteps
  x0 = jnp.asarray(x0, jnp.float32)
  if x0.ndim < 2:
    raise ValueError(
      f"x0.shape={x0.shape} is invalid; valid: [n, ...] (e.g. [n, H, W, C])"
    )
  log_var = _model_log_variance(schedule, variance)
  ts, weights = _weighted_timesteps(T, t_stride)

  def add_term(total, tw):
    t, w = tw
    noise = jax.random.normal(jax.random.fold_in(key, t), x0.shape, jnp.float32)
    fn = lambda x, z: _term_at(
      params, apply_fn, schedule, log_var, clip_denoised, t, x, z
    )
    return total + w * map_in_chunks(fn, (x0, noise), batch_size), None

  ab_T = schedule.alpha_bars[-1]
  prior = _mean_dims(
    normal_kl(jnp.sqrt(ab_T) * x0, jnp.log1p(-ab_T), 0.0, 0.0)
  )  # [n]
  total, _ = jax.lax.scan(add_term, prior, (ts, weights))
  return jnp.mean(total) / math.log(2.0)
