"""Variance bound, on-demand bit-width and payload size (docs/model.md sec. 2).

For buckets j with n_j entries and range R_j (min-max: hi_j - lo_j; QSGD:
the bucket norm ||v_j||, Alistarh et al. 2017, https://arxiv.org/abs/1610.02132)
and s = 2^b - 1 levels:
  E||Q_b(u) - u||^2 <= A / (4 s^2),   A = sum_j n_j R_j^2,
and the on-demand bit-width for a relative budget eps is the least b with
A / (4 s^2) <= eps ||u||^2, i.e. b = ceil(log2(1 + sqrt(A / (4 eps ||u||^2)))),
corrected by one step either way against float rounding. A and ||u||^2 are
computed after dividing u by k = max|u| (scale-free, no overflow for QSGD).

All functions are traced (jnp) and take the per-bucket statistics from
`quantizer.py`; the float operations of the min-max terms and of the closed
form are those the round has used since the packed quantizer (do not
reorder them: the sweep's bit-widths and energies depend on them bit for bit).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fedqjax.typing import Array, ArrayLike

MAX_BITS = 32


def levels_f32(bits: ArrayLike) -> Array:
  """s = 2^b - 1 as float32, b clipped to [1, 31] (exact for b <= 24)."""
  b = jnp.clip(bits, 1, 31).astype(jnp.uint32)
  return ((jnp.uint32(1) << b) - jnp.uint32(1)).astype(jnp.float32)


def _scale(flat: Array) -> tuple[Array, Array]:
  """(k, 1/k): k = c = max|u| (1 for a zero vector), or 2^126 above 2^126.

  1/c is a float32 denormal (flushed to 0 on XLA:CPU) for c > 2^126, so
  there the exact power of two 2^126 scales instead (|u|/k <= 4).
  """
  c = jnp.max(jnp.abs(flat))
  big = c > 2.0**126
  inv = jnp.where(big, 2.0**-126, 1.0 / jnp.where(c > 0, c, 1.0))
  return jnp.where(big, 2.0**126, c), inv


def minmax_terms(
  flat: Array, lo: Array, hi: Array, counts: Array
) -> tuple[Array, Array, Array]:
  """(A / k^2, ||u||^2 / k^2, k) for min-max: A = sum_j n_j (hi_j - lo_j)^2.

  A bucket range above the float32 maximum (hi - lo > 3.4e38) makes A inf:
  on-demand bits then choose 32 (raw), which always meets the budget.
  """
  k, inv = _scale(flat)
  a = jnp.sum(counts * jnp.square((hi - lo) * inv))
  u = jnp.sum(jnp.square(flat * inv))
  return a, u, k


def qsgd_terms(
  flat: Array, seg: Array, num_buckets: int, counts: Array
) -> tuple[Array, Array, Array]:
  """(A / k^2, ||u||^2 / k^2, k) for QSGD: A = sum_j n_j ||v_j||^2 (finite)."""
  k, inv = _scale(flat)
  sq = jnp.square(flat * inv)  # [d], each <= 16
  r2 = jax.ops.segment_sum(
    sq, seg, num_segments=num_buckets, indices_are_sorted=True
  )  # [nb]
  return jnp.sum(counts * r2), jnp.sum(sq), k


def error_bound(a: Array, c: Array, bits: ArrayLike) -> Array:
  """A / (4 s^2) in original units (a = A / c^2, c = k of the terms); 0 at 32.

  inf only if the bound itself exceeds the float32 range.
  """
  s = levels_f32(bits)
  return jnp.where(bits >= MAX_BITS, 0.0, (a / (4.0 * s * s)) * c * c)


def ondemand_bits(
  a: Array, u: Array, eps: ArrayLike, b_min: ArrayLike, b_max: ArrayLike
) -> Array:
  """Least b in [b_min, 32] with a / (4 s^2) <= eps u, capped at b_max (int32).

  (2^b - 1)^2 >= a / (4 eps u)  <=>  b >= log2(1 + sqrt(a / (4 eps u))).
  A zero or constant vector (a = 0) gets b_min; if no b < 32 meets the
  budget (eps = 0, or a = inf) the result is 32, the raw upload.
  """
  need = jnp.sqrt(a / jnp.maximum(4.0 * eps * u, 1e-37))
  b = jnp.ceil(jnp.log2(1.0 + need))
  b = jnp.clip(jnp.where(jnp.isfinite(b), b, 32.0), 1, 32).astype(jnp.int32)

  def meets(bb):
    s = levels_f32(bb)
    return (a / (4.0 * s * s) <= eps * u) | (bb >= 32)

  b = jnp.where(meets(b - 1) & (b > 1), b - 1, b)
  b = jnp.where(meets(b), b, jnp.minimum(b + 1, 32))
  b = jnp.where(a == 0, 1, b)  # constant buckets: any b is exact
  return jnp.clip(b, b_min, b_max).astype(jnp.int32)


def payload_bits(
  num_entries: int, num_buckets: int, bits: ArrayLike, method: str
) -> Array:
  """Upload size in bits, float32, shape of `bits`; S(32) = 32 d.

  min-max: S(b) = d b + 64 nb (b-bit levels, float32 lo and hi per bucket);
  QSGD:    S(b) = d (b + 1) + 32 nb (b-bit levels + a sign bit per entry,
           one float32 norm per bucket).
  float32 arithmetic: exact below 2^24 bits, relative error < 1e-7 above.
  """
  d = jnp.float32(num_entries)
  nb = jnp.float32(num_buckets)
  b = jnp.asarray(bits).astype(jnp.float32)
  if method == "minmax":
    quant = d * b + 64.0 * nb
  else:
    quant = d * (b + 1.0) + 32.0 * nb
  return jnp.where(b >= MAX_BITS, 32.0 * d, quant)
