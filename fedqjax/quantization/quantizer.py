"""The quantizer: unbiased stochastic min-max and QSGD on one flat vector.

Implements docs/model.md sec. 2 ("On-demand Quantization for Green Federated
Generative Diffusion in Mobile Edge Networks", https://arxiv.org/abs/2403.04430)
and its QSGD variant (Alistarh et al., NeurIPS 2017,
https://arxiv.org/abs/1610.02132) on an update pytree raveled into ONE float32
vector [d] with static bucket segments (one bucket per leaf, or chunks of
`bucket_size` entries within each leaf). Every traced function is O(1) ops in
the number of leaves: segment min/max/sum, one gather of the per-bucket
statistics per entry, one elementwise pass; only `pack` / `unpack` touch leaves.

Per bucket v with n entries, s = 2^b - 1:
  min-max: lo = min v, hi = max v, Δ = (hi - lo)/s, x = (v - lo)/Δ,
           q = floor(x) + [U < x - floor(x)], Q = lo + q Δ;
           Var Q_i = f_i (1 - f_i) Δ² <= Δ²/4 (f_i = x_i - floor x_i).
  QSGD:    x = s |v| / ||v||, same rounding, Q = sign(v) ||v|| q / s;
           Var Q_i <= ||v||² / (4 s²).
Both are unbiased, E[Q(v)] = v. Bounds and bit-widths: `bits.py`.

Conventions:
  * bits: int scalar, traced or concrete, in 1..32; 32 is the exact float32
    passthrough (a `jnp.where`, so clients with different bits share one
    trace). Traced bits are clipped to [1, 32]; concrete ones are validated.
  * Random stream: U are 24-bit uniforms from a counter hash (`mix32`, C.
    Wellons' lowbias32, applied twice) of the entry index keyed by 64 bits of
    `jax.random.bits(key, (2,))`: memory-bound, no threefry rounds per entry.
  * Numerics (float32): ranges are halves 0.5 hi - 0.5 lo and QSGD divides by
    max |v| before the norm, so any finite input (even ±3e38) gives finite
    output. A min-max bucket whose half range is 0 in float32 (hi = lo, or a
    range below 2^-125 that XLA:CPU flushes to zero) is constant: sent as lo.
    A QSGD norm above 3.4e38 saturates at the float32 maximum (biased there).
    XLA:CPU flushes denormal results to 0, so outputs may leave a bucket's
    range by less than 2^-126. For b > 24 the grid is finer than float32.
  * Programs: each traced method but `payload_bits` is one jitted program
    per quantizer, so eager calls and jit run the same compiled code. The
    min-max float ops are the round's historical ones in the same order: its
    random stream and results are unchanged bit for bit in every client loop
    (vmap, unrolled scan, map; tested against a frozen copy). XLA compiles
    them per program (a division by a broadcast may become a product with
    the reciprocal; LLVM may contract a product and a sum into an FMA), so a
    vmapped min-max quantize agrees with per-client calls to float32
    rounding; QSGD has no such pattern and agrees bit for bit. The codec's
    decoder reproduces a single-client `quantize` bit for bit.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fedqjax.quantization import bits as bits_lib
from fedqjax.quantization import layout as layout_lib
from fedqjax.quantization import validate as V
from fedqjax.typing import Array, ArrayLike, PRNGKey, PyTree

F32_MAX = float(np.finfo(np.float32).max)


def mix32(x: Array) -> Array:
  """lowbias32 integer finalizer (C. Wellons, 2018): a uint32 bijection."""
  x = x ^ (x >> 16)
  x = x * jnp.uint32(0x7FEB352D)
  x = x ^ (x >> 15)
  x = x * jnp.uint32(0x846CA68B)
  return x ^ (x >> 16)


def uniform_hash(key: PRNGKey, n: int) -> Array:
  """[n] uniforms in [0, 1) with 24 random bits, keyed by 64 bits of `key`."""
  k = jax.random.bits(key, (2,), jnp.uint32)
  idx = jax.lax.iota(jnp.uint32, n)
  bits = mix32(mix32(idx ^ k[0]) + k[1])
  return (bits >> 8).astype(jnp.float32) * jnp.float32(2.0**-24)


@dataclasses.dataclass(frozen=True)
class Quantizer:
  """A quantizer bound to one pytree layout; hashable (a jit static argument).

  Build it with `make_quantizer`. Its fields are static: the method, the
  bucket size, and the template's treedef, leaf shapes and dtypes; bucket
  sizes derive from them (kept out of the fields so hashing stays O(leaves)).
  """

  method: str
  bucket_size: int | None
  treedef: Any
  shapes: tuple[tuple[int, ...], ...]
  dtypes: tuple[Any, ...]

  @functools.cached_property
  def leaf_sizes(self) -> tuple[int, ...]:
    return tuple(int(math.prod(s)) for s in self.shapes)

  @property
  def num_entries(self) -> int:
    """d: entries of the packed vector."""
    return sum(self.leaf_sizes)

  @functools.cached_property
  def bucket_sizes(self) -> np.ndarray:
    """n_j in flat order, int64 [nb] (read-only); empty leaves have none."""
    return layout_lib.bucket_sizes(self.leaf_sizes, self.bucket_size)

  @property
  def num_buckets(self) -> int:
    """nb: buckets in the packed vector."""
    return int(self.bucket_sizes.size)

  # -- Layout -----------------------------------------------------------------

  def pack(self, tree: PyTree) -> Array:
    """Leaves raveled in tree order and concatenated: float32 [d]."""
    leaves, treedef = jax.tree.flatten(tree)
    layout_lib.check_leaves(leaves, treedef, self.treedef, self.shapes)
    if not leaves:
      return jnp.zeros((0,), jnp.float32)
    return jnp.concatenate([jnp.ravel(x).astype(jnp.float32) for x in leaves])

  def unpack(self, flat: ArrayLike) -> PyTree:
    """Inverse of `pack`: the template's shapes and dtypes."""
    layout_lib.check_flat_shape(flat, self.num_entries)
    out, i = [], 0
    for shape, dtype, n in zip(self.shapes, self.dtypes, self.leaf_sizes):
      out.append(flat[i : i + n].reshape(shape).astype(dtype))
      i += n
    return jax.tree.unflatten(self.treedef, out)

  # -- Traced maths (one jitted program each; all arguments may be traced) ----

  def quantize(self, flat: ArrayLike, bits: ArrayLike, key: PRNGKey) -> Array:
    """Dequantized Q_b(flat), float32 [d]; E[result] = flat; 32 = exact copy.

    Raises:
      ValueError: concrete bits not an integer in [1, 32], or concrete flat
        of the wrong shape or with NaN / inf.
    """
    V.validate_flat(flat, self.num_entries)
    layout_lib.check_scalar_bits(bits)
    return _quantize(self, flat, bits, key)

  def bits_for(
    self,
    flat: ArrayLike,
    eps: ArrayLike,
    b_min: ArrayLike = 1,
    b_max: ArrayLike = V.MAX_BITS,
  ) -> Array:
    """On-demand bits: the least b in [b_min, 32] with bound(b) <= eps ||flat||^2.

    Capped at b_max (then the budget may be missed). int32 scalar.
    """
    V.validate_flat(flat, self.num_entries)
    V.validate_eps(eps)
    V.validate_bits(b_min, "b_min")
    V.validate_bits(b_max, "b_max")
    return _bits_for(self, flat, eps, b_min, b_max)

  def error_bound(self, flat: ArrayLike, bits: ArrayLike) -> Array:
    """sum_j n_j R_j^2 / (4 s^2) >= E||Q_b(flat) - flat||^2; 0 at 32 bits."""
    V.validate_flat(flat, self.num_entries)
    layout_lib.check_scalar_bits(bits)
    return _error_bound(self, flat, bits)

  def payload_bits(self, bits: ArrayLike) -> Array:
    """Upload size S(b) in bits, float32, same shape as `bits` (see bits.py)."""
    V.validate_bits(bits)
    return bits_lib.payload_bits(
      self.num_entries, self.num_buckets, bits, self.method
    )


def make_quantizer(
  template: PyTree, method: str = "minmax", bucket_size: int | None = None
) -> Quantizer:
  """Builds the quantizer of `template`'s layout (shapes only are read).

  Args:
    template: pytree of float arrays or `jax.ShapeDtypeStruct`s.
    method: "minmax" (docs/model.md sec. 2) or "qsgd".
    bucket_size: entries per bucket within each leaf (the last one partial);
      None = one bucket per leaf.

  Raises:
    ValueError: unknown method, bad bucket_size, or a non-float leaf.
  """
  V.check_method(method)
  V.check_bucket_size(bucket_size)
  treedef, shapes, dtypes = layout_lib.template_layout(template)
  return Quantizer(
    method,
    None if bucket_size is None else int(bucket_size),
    treedef,
    shapes,
    dtypes,
  )


# ----------------------------------------------------------------------------
# Traced kernels. `seg` is the bucket id of every entry; per-bucket arrays are
# [nb] and are gathered per entry ([d]) before any elementwise use.


def _segments(qz: Quantizer) -> Array:
  """Bucket id of every entry, int32 [d].

  A binary search of iota in the [nb] bucket ends, as the round has always
  built it. XLA constant-folds it into a [d] constant (compile time linear
  in d); building it differently changes XLA's float decisions downstream
  in some client loops, i.e. the round's numerics.
  """
  ends = np.cumsum(qz.bucket_sizes).astype(np.int32)
  idx = jax.lax.iota(jnp.int32, qz.num_entries)
  return jnp.searchsorted(
    jnp.asarray(ends), idx, side="right", method="scan_unrolled"
  ).astype(jnp.int32)


def _counts(qz: Quantizer) -> Array:
  return jnp.asarray(np.asarray(qz.bucket_sizes, np.float32))  # [nb]


def _seg_kw(qz: Quantizer) -> dict:
  return dict(num_segments=qz.num_buckets, indices_are_sorted=True)


def _stochastic_round(x: Array, u: Array) -> Array:
  fl = jnp.floor(x)
  return fl + (u < x - fl).astype(jnp.float32)


def _minmax_range(qz: Quantizer, flat: Array, seg: Array):
  return (
    jax.ops.segment_min(flat, seg, **_seg_kw(qz)),
    jax.ops.segment_max(flat, seg, **_seg_kw(qz)),
  )  # [nb] each


def _minmax_grid(seg: Array, lo: Array, hi: Array):
  """Per entry (lo, half range, hi); half = (hi - lo)/2 without overflow."""
  half = 0.5 * hi - 0.5 * lo
  return lo[seg], half[seg], hi[seg]


def _minmax_x(flat: Array, grid, s: Array) -> Array:
  """x = (v - lo)/(hi - lo) s in [0, s].

  Where `safe` is a broadcast (one bucket) XLA computes the division as a
  product with 1/safe, a denormal (flushed to 0) above 2^126; p = 2^-32
  (exact) keeps it normal there, and p = 1 changes no value elsewhere.
  """
  lo_e, half_e, _ = grid
  safe = jnp.where(half_e > 0, half_e, 1.0)
  p = jnp.where(safe > 2.0**64, 2.0**-32, 1.0)
  x = ((0.5 * flat - 0.5 * lo_e) * p) / (safe * p)
  return jnp.clip(x, 0.0, 1.0) * s


def _minmax_dequant(q: Array, grid, s: Array, decoder: bool = False) -> Array:
  """Q = 2 (lo/2 + q (half/s)): no intermediate overflows.

  XLA:CPU lets LLVM contract a product and an add into one FMA, and LLVM
  contracts a product only if it has a single use. In `quantize` 0.5 lo_e
  is also used by x, so the FMA is q (half/s) + 0.5 lo_e (rounded once).
  The decoder (no x) gives 0.5 lo_e the same second use, in a select that
  never fires (levels are >= 0), so it forms the same FMA: decoded and
  traced results agree bit for bit (tested).
  """
  lo_e, half_e, hi_e = grid
  lo2_e = 0.5 * lo_e
  if decoder:
    q = jnp.where(q < 0, lo2_e, q)
  deq = 2.0 * (lo2_e + q * (half_e / s))
  deq = jnp.where(q >= s, hi_e, deq)  # top level: exactly hi
  return jnp.where(half_e > 0, deq, lo_e)  # constant bucket: lo


def _qsgd_stats(qz: Quantizer, flat: Array, seg: Array):
  """(|v| / max|v| per entry, 1 / r per bucket, ||v|| per bucket).

  r = ||v|| / max|v| in [1, sqrt(n)] for a non-zero bucket, so neither the
  sum of squares nor s |v| / ||v|| can overflow.
  """
  a = jnp.abs(flat)
  m = jax.ops.segment_max(a, seg, **_seg_kw(qz))  # [nb]
  # 1/m is a denormal (flushed to 0) above 2^126: scale by 2^-32 (exact)
  # above 2^64, so that 1/(m p) stays normal.
  p = jnp.where(m > 2.0**64, 2.0**-32, 1.0)
  rm = 1.0 / jnp.where(m > 0, m * p, 1.0)
  w = (a * p[seg]) * rm[seg]  # [d] in [0, 1]
  r = jnp.sqrt(jax.ops.segment_sum(w * w, seg, **_seg_kw(qz)))  # [nb]
  norm = jnp.minimum(m * r, F32_MAX)  # saturates instead of inf
  return w, 1.0 / jnp.where(r > 0, r, 1.0), norm


def _qsgd_dequant(
  q: Array, neg: Array, norm: Array, seg: Array, s: Array
) -> Array:
  step = norm * (1.0 / s)  # ||v|| / s per bucket
  mag = jnp.where(q >= s, norm[seg], q * step[seg])  # top: exactly ||v||
  return jnp.where(neg, -mag, mag)


def levels(qz: Quantizer, flat: Array, bits: Array, key: PRNGKey):
  """Integer levels q (float32 [d], in [0, s]) and what dequantizes them.

  Returns (q, lo, hi) for min-max, (q, negative mask, norm) for QSGD.
  Traced; shared by `quantize` and the codec's encoder.
  """
  seg = _segments(qz)
  u = uniform_hash(key, qz.num_entries)
  s = bits_lib.levels_f32(bits)
  if qz.method == "minmax":
    lo, hi = _minmax_range(qz, flat, seg)
    q = _stochastic_round(_minmax_x(flat, _minmax_grid(seg, lo, hi), s), u)
    return q, lo, hi
  w, rinv, norm = _qsgd_stats(qz, flat, seg)
  q = _stochastic_round(jnp.clip(w * rinv[seg], 0.0, 1.0) * s, u)
  return q, flat < 0, norm


def dequantize(
  qz: Quantizer,
  q: Array,
  a: Array,
  b: Array,
  bits: Array,
  *,
  decoder: bool = False,
) -> Array:
  """Q from `levels`' output (q, a, b) at bits < 32; traced; float32 [d].

  decoder=True is the codec's form (see `_minmax_dequant`).
  """
  seg = _segments(qz)
  s = bits_lib.levels_f32(bits)
  if qz.method == "minmax":
    return _minmax_dequant(q, _minmax_grid(seg, a, b), s, decoder)
  return _qsgd_dequant(q, a, b, seg, s)


@functools.partial(jax.jit, static_argnums=0)
def _quantize(qz: Quantizer, flat, bits, key) -> Array:
  flat = jnp.asarray(flat, jnp.float32)
  if qz.num_entries == 0:
    return flat
  q, a, b = levels(qz, flat, bits, key)
  return jnp.where(bits >= V.MAX_BITS, flat, dequantize(qz, q, a, b, bits))


def _terms(qz: Quantizer, flat: Array):
  seg = _segments(qz)
  if qz.method == "minmax":
    lo, hi = _minmax_range(qz, flat, seg)
    return bits_lib.minmax_terms(flat, lo, hi, _counts(qz))
  return bits_lib.qsgd_terms(flat, seg, qz.num_buckets, _counts(qz))


@functools.partial(jax.jit, static_argnums=0)
def _bits_for(qz: Quantizer, flat, eps, b_min, b_max) -> Array:
  if qz.num_entries == 0:
    return jnp.clip(1, b_min, b_max).astype(jnp.int32)
  a, u, _ = _terms(qz, jnp.asarray(flat, jnp.float32))
  return bits_lib.ondemand_bits(a, u, eps, b_min, b_max)


@functools.partial(jax.jit, static_argnums=0)
def _error_bound(qz: Quantizer, flat, bits) -> Array:
  if qz.num_entries == 0:
    return jnp.float32(0)
  a, _, c = _terms(qz, jnp.asarray(flat, jnp.float32))
  return bits_lib.error_bound(a, c, bits)
