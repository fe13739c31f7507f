"""Held-out DDPM denoising loss: a quality measure that moves long before
samples look like images (Ho et al. 2020, https://arxiv.org/abs/2006.11239).

A `HeldoutSet` fixes everything random in L_simple: n test images, one
timestep per image, stratified over [0, T) (t_i = floor((i + u_i) T / n),
one uniform u_i per stratum), and one noise draw per image. The loss of a
parameter set on it is then a deterministic function of the parameters, so
runs, rounds, schemes and seeds are compared on the same draws, and its
Monte Carlo error over t is far below that of a random-t training loss.
"""

from __future__ import annotations

from typing import Callable, Optional

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from fedqjax.diffusion.schedule import NoiseSchedule, q_sample
from fedqjax.typing import Array, ArrayLike, Params, PRNGKey


@flax.struct.dataclass
class HeldoutSet:
  """Fixed (x0, t, noise) triples.

  Attributes:
    x0: [n, H, W, C] clean images in [-1, 1].
    t: [n] int32 timesteps, one per stratum of [0, T).
    noise: [n, H, W, C] float32 standard normal noise.
  """

  x0: Array
  t: Array
  noise: Array


def stratified_timesteps(key: PRNGKey, T: int, n: int) -> np.ndarray:
  """t_i = floor((i + u_i) T / n), u_i ~ U[0, 1): [n] int32, one per stratum.

  Stratum i is [i T / n, (i + 1) T / n); with n <= T every timestep range of
  width T / n holds exactly one t, with n = m T every timestep appears m
  times. Computed in float64 on the host (exact strata).
  """
  u = np.asarray(
    jax.random.uniform(key, (n,), jnp.float32), np.float64
  )  # [n] in [0, 1)
  t = np.floor((np.arange(n, dtype=np.float64) + u) * T / n)
  return np.clip(t, 0, T - 1).astype(np.int32)


def heldout_set(
  images: ArrayLike, schedule_T: int, key: PRNGKey, num: int
) -> HeldoutSet:
  """A deterministic held-out set of `num` images with stratified t and fixed noise.

  Args:
    images: [N, H, W, C] test images in [-1, 1].
    schedule_T: T, the number of diffusion steps.
    key: PRNG key; the set is a deterministic function of (images, T, key, num).
    num: n, the set size, in [1, N].

  Returns:
    HeldoutSet of n images: a key-chosen subset of `images` in key-chosen
    order (a random permutation's first n, so the image-to-stratum pairing
    does not follow the data's order; all of them when n = N).

  Raises:
    ValueError: on a wrong image rank, T < 1 or num outside [1, N].
  """
  shape = np.shape(images)
  if len(shape) != 4:
    raise ValueError(f"images.shape={shape!r} is invalid; valid: [N, H, W, C]")
  if not isinstance(schedule_T, (int, np.integer)) or schedule_T < 1:
    raise ValueError(
      f"schedule_T={schedule_T!r} is invalid; valid: an int >= 1"
    )
  if not isinstance(num, (int, np.integer)) or not 1 <= num <= shape[0]:
    raise ValueError(
      f"num={num!r} is invalid; valid: 1..{shape[0]} (the number of images)"
    )
  k_sub, k_t, k_noise = jax.random.split(key, 3)
  idx = np.asarray(jax.random.permutation(k_sub, shape[0]))[:num]  # [n]
  x0 = jnp.asarray(np.asarray(images, np.float32)[idx])  # [n, H, W, C]
  return HeldoutSet(
    x0=x0,
    t=jnp.asarray(stratified_timesteps(k_t, int(schedule_T), int(num))),
    noise=jax.random.normal(k_noise, x0.shape, jnp.float32),
  )


def heldout_loss(
  params: Params,
  apply_fn: Callable[..., Array],
  heldout: HeldoutSet,
  schedule: NoiseSchedule,
  batch_size: Optional[int] = None,
) -> Array:
  """Mean ||eps_theta(x_t, t) - noise||^2 over a held-out set (train=False).

  Averaged over images, pixels and channels, like `ddpm_loss`: a predictor
  of eps = 0 scores ~1. Pure and jittable (`apply_fn` and `batch_size`
  static).

  Args:
    params: model variables ({'params': ...}).
    apply_fn: `apply_fn(params, x, t, train=False) -> eps` (a Flax
      module's `apply`).
    heldout: the fixed set (`heldout_set`).
    schedule: noise schedule with T matching the set's timesteps.
    batch_size: None evaluates all n images at once; otherwise chunks of
      this size under `lax.map` (the last chunk zero-padded; padding is
      dropped before the mean), bounding memory.

  Returns:
    float32 scalar.

  Raises:
    ValueError: if batch_size is not None or a positive int.
  """
  if batch_size is not None and (
    not isinstance(batch_size, (int, np.integer)) or batch_size < 1
  ):
    raise ValueError(
      f"batch_size={batch_size!r} is invalid; valid: None or an int >= 1"
    )

  def per_image(x0: Array, t: Array, noise: Array) -> Array:  # [b, ...] -> [b]
    eps = apply_fn(params, q_sample(schedule, x0, t, noise), t, train=False)
    err = jnp.square(eps.astype(jnp.float32) - noise)
    return jnp.mean(err.reshape(err.shape[0], -1), axis=1)

  return jnp.mean(
    map_in_chunks(per_image, (heldout.x0, heldout.t, heldout.noise), batch_size)
  )


def map_in_chunks(
  fn: Callable[..., Array], xs: tuple, batch_size: Optional[int]
) -> Array:
  """fn(*xs) -> [n] evaluated on chunks of `batch_size` rows under `lax.map`.

  Pads the last chunk with zero rows and drops their outputs, so the result
  is fn's on all n rows; None (or batch_size >= n) is one call.
  """
  n = xs[0].shape[0]
  if batch_size is None or batch_size >= n:
    return fn(*xs)
  pad = -n % batch_size
  chunk = lambda a: jnp.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1)).reshape(
    (-1, batch_size) + a.shape[1:]
  )  # [n_chunks, b, ...]
  out = jax.lax.map(
    lambda c: fn(*c), tuple(chunk(a) for a in xs)
  )  # [n_chunks, b]
  return out.reshape(-1)[:n]
