"""Unbiased stochastic quantization of client uploads, on-demand bit-widths, codec.

Implements section 2 of the fedqjax system model (design/MODEL.md) for
"On-demand Quantization for Green Federated Generative Diffusion in Mobile Edge
Networks", https://arxiv.org/abs/2403.04430, and the QSGD variant of Alistarh
et al., "QSGD: Communication-Efficient SGD via Gradient Quantization and
Encoding", NeurIPS 2017, https://arxiv.org/abs/1610.02132.

Min-max quantizer, per bucket v (n entries), lo = min v, hi = max v,
s = 2^b - 1, Δ = (hi - lo)/s, x = (v - lo)/Δ:
  q = floor(x) + [U < x - floor(x)],  Q(v) = lo + q·Δ,   E[Q(v)] = v,
  Var Q(v_i) = f_i(1 - f_i)Δ²,  E‖Q(v) - v‖² ≤ Σ_j n_j (hi_j - lo_j)² / (4 s²).
QSGD quantizer: per bucket norm ‖v‖, x = s|v|/‖v‖, same stochastic rounding,
Q(v) = sign(v)·‖v‖·q/s; per-entry variance ≤ ‖v‖²/(4 s²).

Conventions the round engine relies on:
  * `bits` is a traced int scalar; 32 means "no quantization" (exact float32
    passthrough, selected with `jnp.where`, so clients with different bits share
    one trace). Inside jit bits are clipped to [1, 32]; outside jit out-of-range
    bits raise ValueError. NaN/inf inputs raise outside jit and propagate inside.
  * `quantize_tree` splits `key` into one key per leaf (`jax.random.split(key,
    num_leaves)`, leaf order of `jax.tree_util.tree_leaves`); `encode` uses the
    same split, so `decode(encode(t, b, k)) == quantize_tree(t, b, k)` bitwise
    (same backend).
  * Payload in bits (`payload_bits`, int32): min-max S(b) = d·b + 64·nb (two
    float32 lo/hi per bucket); QSGD S(b) = d·(b + 1) + 32·nb (b level bits + one
    sign bit per entry, one float32 norm per bucket); S(32) = 32·d for both.
    d = number of entries, nb = Σ_leaves ceil(n_leaf / bucket_size) (1 per leaf
    when bucket_size is None). The codec header/treedef is not counted.
  * Numerics: everything is computed in float32 without overflow for any finite
    input (ranges are handled as halves 0.5·hi - 0.5·lo, norms and the
    on-demand ratio are computed after dividing by the max magnitude), so ±1e30
    or even ±3e38 quantize to finite values. For b > 24 the grid is finer than
    float32 resolution of x, so Q equals v up to float32 rounding. Ranges below
    the float32 normal range (denormal hi - lo) are treated as constant buckets.
  * Uniforms: rng="hash" (default) draws 24-bit uniforms from a counter-based
    integer hash of the entry index keyed by two words of `jax.random.bits(key)`
    (about 15x faster than threefry on CPU); rng="key" uses
    `jax.random.bits(key, shape)` with the key's own PRNG implementation.
"""
from __future__ import annotations

import dataclasses
import math
import struct
import zlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from fedqjax.typing import Array, ArrayLike, PRNGKey, PyTree

METHODS = ("minmax", "qsgd")
RNGS = ("hash", "key")
MAX_BITS = 32  # 32 = unquantized float32


# ----------------------------------------------------------------------------
# Validation (host side; silently skipped for traced values).


def _is_traced(x) -> bool:
  return isinstance(x, jax.core.Tracer)


def validate_bits(bits: ArrayLike, name: str = "bits", lo: int = 1, hi: int = MAX_BITS) -> None:
  """Raises ValueError unless concrete `bits` are integers in [lo, hi] (no-op on tracers)."""
  if _is_traced(bits):
    return
  arr = np.asarray(bits)
  if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.integer) or
                               (np.issubdtype(arr.dtype, np.floating) and
                                np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)))):
    raise ValueError(f"{name} must be an integer in [{lo}, {hi}] (32 = unquantized float32); got {bits!r}")
  if arr.size and (arr.min() < lo or arr.max() > hi):
    raise ValueError(f"{name} must be an integer in [{lo}, {hi}] (32 = unquantized float32); got {bits!r}")


def validate_tree(tree: PyTree, name: str = "tree") -> None:
  """Raises ValueError for non-float leaves, and for NaN/inf in concrete leaves."""
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    where = f"{name}{jax.tree_util.keystr(path)}"
    dtype = leaf.dtype if hasattr(leaf, "dtype") else np.asarray(leaf).dtype
    if not jnp.issubdtype(dtype, jnp.floating):
      raise ValueError(f"{where} has dtype {dtype}; only floating-point leaves can be quantized")
    if not _is_traced(leaf) and not np.all(np.isfinite(np.asarray(leaf))):
      raise ValueError(f"{where} contains NaN or inf; quantization needs finite values")


def _check_options(method: str, bucket_size: int | None, rng: str = "hash") -> None:
  if method not in METHODS:
    raise ValueError(f"unknown quantization method {method!r}; valid names: {', '.join(METHODS)}")
  if rng not in RNGS:
    raise ValueError(f"unknown rng {rng!r}; valid names: {', '.join(RNGS)}")
  if bucket_size is not None and (not isinstance(bucket_size, (int, np.integer)) or bucket_size < 1):
    raise ValueError(f"bucket_size must be None or a positive int; got {bucket_size!r}")


# ----------------------------------------------------------------------------
# Buckets and uniforms.


def _num_buckets(n: int, bucket_size: int | None) -> int:
  if n == 0:
    return 0
  return 1 if bucket_size is None else -(-n // bucket_size)


def _bucket_width(n: int, bucket_size: int | None) -> int:
  return n if bucket_size is None else min(bucket_size, n)


def _to_buckets(x: Array, bucket_size: int | None, pad_mode: str) -> Array:
  """Flattens x to float32 buckets [nb, w]; pads the last bucket with `pad_mode`."""
  flat = jnp.ravel(x).astype(jnp.float32)  # [n]
  n = flat.size
  nb, w = _num_buckets(n, bucket_size), _bucket_width(n, bucket_size)
  if nb * w > n:  # "edge" keeps min/max, "constant" (0) keeps the norm
    flat = jnp.pad(flat, (0, nb * w - n), mode=pad_mode)
  return flat.reshape(nb, w)  # [nb, w]


def _bucket_counts(n: int, bucket_size: int | None) -> np.ndarray:
  nb, w = _num_buckets(n, bucket_size), _bucket_width(n, bucket_size)
  counts = np.full((nb,), w, np.float32)
  if nb:
    counts[-1] = n - (nb - 1) * w
  return counts  # [nb], real (unpadded) entries per bucket


def _mix32(x: Array) -> Array:
  # "lowbias32" integer finalizer (C. Wellons, 2018): a bijection on uint32 with
  # near-ideal avalanche, cheap enough to make random draws memory-bound.
  x = x ^ (x >> 16)
  x = x * jnp.uint32(0x7FEB352D)
  x = x ^ (x >> 15)
  x = x * jnp.uint32(0x846CA68B)
  return x ^ (x >> 16)


mix32 = _mix32  # public: the round's packed quantizer uses the same hash


def _uniform(key: PRNGKey, shape: tuple[int, ...], rng: str) -> Array:
  """Uniform [0, 1) float32 with 24 random bits (exactly representable)."""
  if rng == "key":
    bits = jax.random.bits(key, shape, jnp.uint32)
  else:  # counter-based hash of the entry index, keyed by 64 key bits
    k = jax.random.bits(key, (2,), jnp.uint32)
    idx = lax.iota(jnp.uint32, math.prod(shape)).reshape(shape)
    bits = _mix32(_mix32(idx ^ k[0]) + k[1])
  return (bits >> 8).astype(jnp.float32) * jnp.float32(2.0**-24)


def _levels_f32(b: Array) -> Array:
  """s = 2^b - 1 as float32 (exact for b <= 24; b = 32 uses 31, masked later)."""
  b = jnp.minimum(b, 31).astype(jnp.uint32)
  return ((jnp.uint32(1) << b) - jnp.uint32(1)).astype(jnp.float32)


def _recip_levels(b: Array) -> Array:
  # XLA rewrites x / broadcast(y) as x * (1/y), but only where the broadcast is
  # visible (jit, vmap with batched bits; not eager op-by-op execution). So this
  # module never divides by anything that may be broadcast: it multiplies by an
  # explicit, correctly rounded 1/y. With the barriers below this keeps eager,
  # jit, vmap and the codec's decoder bitwise identical (min-max).
  return 1.0 / _levels_f32(b)


def _clip_bits(bits: ArrayLike) -> Array:
  return jnp.clip(jnp.asarray(bits).astype(jnp.int32), 1, MAX_BITS)


def _stochastic_round(x: Array, u: Array) -> Array:
  fl = jnp.floor(x)
  return fl + (u < x - fl).astype(jnp.float32)


# ----------------------------------------------------------------------------
# Per-bucket level computation and dequantization (shared by quantizer and codec).


# Determinism: the per-bucket statistics go through `lax.optimization_barrier`
# before the elementwise pass, so XLA cannot re-associate the per-bucket
# multiplies/divides into the elementwise ones differently in different
# compilations (eager, jit, vmap over clients, the codec's decoder); each entry
# then sees exactly one correctly rounded multiply per step.


def _minmax_levels(v: Array, b: Array, u: Array) -> tuple[Array, Array, Array]:
  """v, u: [nb, w]. Returns float levels q in [0, s] [nb, w], lo, hi [nb, 1]."""
  lo = jnp.min(v, axis=1, keepdims=True)  # [nb, 1]
  hi = jnp.max(v, axis=1, keepdims=True)
  half = 0.5 * hi - 0.5 * lo  # (hi - lo)/2, cannot overflow
  s = _levels_f32(b)
  # x = (v - lo)/(hi - lo)·s = d·(s/half). Tiny ranges (values then below
  # 2^-40) are prescaled by p = 2^64 (exact) so that s/half stays finite.
  p = jnp.where(half < 2.0**-64, jnp.float32(2.0**64), jnp.float32(1.0))
  lo_p = 0.5 * (lo * p)
  scale = s * (1.0 / jnp.where(half > 0, half * p, 1.0))  # see _recip_levels
  p, lo_p, scale, hi = lax.optimization_barrier((p, lo_p, scale, hi))
  x = (0.5 * (v * p) - lo_p) * scale
  x = jnp.where(v == hi, s, jnp.clip(x, 0.0, s))  # endpoints exact; also blocks FMA
  return _stochastic_round(x, u), lo, hi


def _minmax_dequant(q: Array, lo: Array, hi: Array, b: Array) -> Array:
  """Q = lo + q·Δ, written as 2·(lo/2 + q·(half/s)) so no intermediate overflows."""
  half = 0.5 * hi - 0.5 * lo
  s = _levels_f32(b)
  delta = half * _recip_levels(b)  # Δ/2, [nb, 1]
  lo2 = 0.5 * lo
  delta, lo2, half, hi, lo = lax.optimization_barrier((delta, lo2, half, hi, lo))
  top = q == s
  # The select between the product and the sum stops LLVM from contracting them
  # into an FMA, which XLA does in some fusions and not others (nor op by op).
  step = jnp.where(top, half, q * delta)
  out = 2.0 * (lo2 + step)
  return jnp.where(half > 0, jnp.where(top, hi, out), lo)


def _qsgd_levels(v: Array, b: Array, u: Array) -> tuple[Array, Array, Array]:
  """v, u: [nb, w] (zero padded). Returns levels [nb, w], negative mask, norm [nb, 1].

  The L2 norm is a float reduction; XLA may order or fuse it differently per
  compilation, so QSGD outputs agree across contexts only to float32 rounding
  (min-max outputs agree bitwise).
  """
  m = jnp.max(jnp.abs(v), axis=1, keepdims=True)  # [nb, 1]
  rm = 1.0 / jnp.where(m > 0, m, 1.0)
  w = v * rm  # |w| <= 1, so the sum of squares cannot overflow
  # The select keeps XLA from contracting w·w into the reduction's adds (FMA) in
  # some compilations only; it passes w·w through (w == w unless w is NaN).
  sq = jnp.where(w == w, w * w, 1.0)
  r = jnp.sqrt(jnp.sum(sq, axis=1, keepdims=True))  # >= 1 unless the bucket is 0
  norm = m * r  # ‖v‖ (inf only if ‖v‖ itself exceeds float32)
  s = _levels_f32(b)
  scale = rm * (s * (1.0 / jnp.where(r > 0, r, 1.0)))  # s/‖v‖ without overflow
  scale = lax.optimization_barrier(scale)
  x = jnp.clip(jnp.abs(v) * scale, 0.0, s)
  return _stochastic_round(x, u), v < 0, norm


def _qsgd_dequant(q: Array, neg: Array, norm: Array, b: Array) -> Array:
  step = lax.optimization_barrier(norm * _recip_levels(b))  # ‖v‖/s, [nb, 1]
  mag = q * step
  return jnp.where(neg, -mag, mag)


def _leaf_levels(x: Array, b: Array, key: PRNGKey, bucket_size, method, rng):
  v = _to_buckets(x, bucket_size, "edge" if method == "minmax" else "constant")
  u = _uniform(key, v.shape, rng)
  if method == "minmax":
    return _minmax_levels(v, b, u)
  return _qsgd_levels(v, b, u)


def _leaf_dequant(x_shape, x_dtype, n: int, lev, b: Array, method: str) -> Array:
  q, a, c = lev
  out = _minmax_dequant(q, a, c, b) if method == "minmax" else _qsgd_dequant(q, a, c, b)
  return out.reshape(-1)[:n].reshape(x_shape).astype(x_dtype)


def _quantize_leaf(x: Array, bits: ArrayLike, key: PRNGKey, bucket_size, method, rng) -> Array:
  x = jnp.asarray(x)
  if x.size == 0:
    return x
  b = _clip_bits(bits)
  lev = _leaf_levels(x, b, key, bucket_size, method, rng)
  out = _leaf_dequant(x.shape, x.dtype, x.size, lev, b, method)
  return jnp.where(b >= MAX_BITS, x, out)  # 32: exact passthrough


# ----------------------------------------------------------------------------
# Public traced API.


def stochastic_quantize(x: ArrayLike, bits: ArrayLike, key: PRNGKey, *,
                        bucket_size: int | None = None, rng: str = "hash") -> Array:
  """Unbiased min-max stochastic quantization, returned dequantized.

  Args:
    x: float array, any shape.
    bits: int scalar (may be traced) in [1, 32]; 32 returns x unchanged.
    key: PRNG key.
    bucket_size: entries per bucket (flattened, last bucket partial); None =
      one bucket for the whole tensor.
    rng: "hash" (fast counter hash) or "key" (the key's own PRNG).

  Returns:
    Array with x's shape and dtype: lo + q·Δ per bucket, E[result] = x.

  Raises:
    ValueError: concrete bits outside [1, 32], non-float or non-finite concrete x.
  """
  _check_options("minmax", bucket_size, rng)
  validate_bits(bits)
  validate_tree(x, "x")
  return _quantize_leaf(x, bits, key, bucket_size, "minmax", rng)


def qsgd_quantize(x: ArrayLike, bits: ArrayLike, key: PRNGKey, *,
                  bucket_size: int | None = None, rng: str = "hash") -> Array:
  """Unbiased QSGD quantization (Alistarh et al. 2017), returned dequantized.

  s = 2^b - 1 levels on |v|/‖v‖ per bucket, sign kept separately (b level bits +
  1 sign bit per entry). Arguments as in `stochastic_quantize`.
  """
  _check_options("qsgd", bucket_size, rng)
  validate_bits(bits)
  validate_tree(x, "x")
  return _quantize_leaf(x, bits, key, bucket_size, "qsgd", rng)


def _split_leaf_keys(key: PRNGKey, num_leaves: int):
  return jax.random.split(key, max(num_leaves, 1))


def quantize_tree(tree: PyTree, bits: ArrayLike, key: PRNGKey, *, method: str = "minmax",
                  bucket_size: int | None = None, rng: str = "hash") -> PyTree:
  """Quantizes every leaf at the same bit-width with an independent key per leaf.

  Leaf i (order of `jax.tree_util.tree_leaves`) uses `jax.random.split(key, L)[i]`.
  Vmappable over (tree, bits, key) for K clients with different bits.
  """
  _check_options(method, bucket_size, rng)
  validate_bits(bits)
  validate_tree(tree)
  leaves, treedef = jax.tree_util.tree_flatten(tree)
  keys = _split_leaf_keys(key, len(leaves))
  out = [_quantize_leaf(x, bits, keys[i], bucket_size, method, rng) for i, x in enumerate(leaves)]
  return jax.tree_util.tree_unflatten(treedef, out)


def _range_terms(tree: PyTree, bucket_size: int | None, method: str) -> tuple[Array, Array, Array]:
  """Scale-free bound terms: (A/c², ‖u‖²/c², c) with c = max|u| and A = Σ_j n_j R_j².

  R_j = hi_j - lo_j (min-max) or ‖v_j‖ (QSGD). Dividing by c first keeps every
  intermediate finite for any finite input.
  """
  leaves = [jnp.asarray(x) for x in jax.tree_util.tree_leaves(tree) if math.prod(np.shape(x))]
  if not leaves:
    zero = jnp.float32(0)
    return zero, zero, zero
  c = jnp.max(jnp.stack([jnp.max(jnp.abs(x)).astype(jnp.float32) for x in leaves]))
  inv_c = 1.0 / jnp.where(c > 0, c, 1.0)
  a_sum = jnp.float32(0)
  u_sum = jnp.float32(0)
  for x in leaves:
    v = _to_buckets(x, bucket_size, "edge" if method == "minmax" else "constant") * inv_c
    if method == "minmax":
      r2 = jnp.square(jnp.max(v, axis=1) - jnp.min(v, axis=1))  # [nb], range <= 2
    else:
      r2 = jnp.sum(v * v, axis=1)  # [nb]; padding is zero
    a_sum += jnp.sum(jnp.asarray(_bucket_counts(x.size, bucket_size)) * r2)
    u_sum += jnp.sum(jnp.square(jnp.ravel(x).astype(jnp.float32) * inv_c))
  return a_sum, u_sum, c


def _bound_scaled(a_scaled: Array, b: Array) -> Array:
  s = _levels_f32(b)
  r = _recip_levels(b)
  return jnp.where(b >= MAX_BITS, 0.0, a_scaled * (0.25 * r * r))


def error_bound(tree: PyTree, bits: ArrayLike, *, bucket_size: int | None = None,
                method: str = "minmax") -> Array:
  """Bound on E‖Q(u) - u‖²: Σ_buckets n_j R_j² / (4 s²), 0 for bits = 32 (float32 scalar).

  R_j = hi_j - lo_j for "minmax" (the section-2 bound), ‖v_j‖ for "qsgd". May be
  inf when the true value exceeds the float32 range.
  """
  _check_options(method, bucket_size)
  validate_bits(bits)
  validate_tree(tree)
  a_scaled, _, c = _range_terms(tree, bucket_size, method)
  return _bound_scaled(a_scaled, _clip_bits(bits)) * c * c


def ondemand_bits(tree: PyTree, eps: ArrayLike, b_min: ArrayLike = 1, b_max: ArrayLike = MAX_BITS, *,
                  bucket_size: int | None = None, method: str = "minmax") -> Array:
  """Least bit-width b in [b_min, 32] with error_bound(tree, b) <= eps·‖tree‖², capped at b_max.

  Closed form b = ceil(log2(1 + sqrt(A / (4 eps ‖u‖²)))), then one fix-up step
  checks b - 1 and b against the bound itself (guards float rounding of log2).
  b = 32 (exact) always meets the bound; a zero or constant tree gets b_min.
  All arguments may be traced (vmap over clients / eps). If b_max is below the
  least feasible b the result is b_max and the bound is not met.

  Returns:
    int32 scalar.
  """
  _check_options(method, bucket_size)
  validate_tree(tree)
  validate_bits(b_min, "b_min")
  validate_bits(b_max, "b_max")
  if not _is_traced(eps) and (np.any(np.isnan(eps)) or np.any(np.asarray(eps) < 0)):
    raise ValueError(f"eps must be a non-negative relative error budget; got {eps!r}")
  a_scaled, u_scaled, _ = _range_terms(tree, bucket_size, method)
  budget = jnp.asarray(eps, jnp.float32) * u_scaled  # eps·‖u‖²/c²

  def meets(b):
    return _bound_scaled(a_scaled, b) <= budget

  ratio = a_scaled * (0.25 / jnp.where(budget > 0, budget, 1.0))
  r = jnp.where(a_scaled == 0, 0.0, jnp.where(budget > 0, jnp.sqrt(ratio), jnp.inf))
  b0f = jnp.ceil(jnp.log2(1.0 + r))
  b0 = jnp.where(jnp.isfinite(b0f), jnp.clip(b0f, 1, MAX_BITS), MAX_BITS).astype(jnp.int32)
  lower = jnp.maximum(b0 - 1, 1)
  b = jnp.where(meets(lower), lower, jnp.where(meets(b0), b0, jnp.minimum(b0 + 1, MAX_BITS)))
  b = jnp.maximum(b, jnp.asarray(b_min, jnp.int32))
  return jnp.minimum(b, jnp.asarray(b_max, jnp.int32)).astype(jnp.int32)


def _counts(tree: PyTree, bucket_size: int | None) -> tuple[int, int]:
  sizes = [math.prod(np.shape(x)) for x in jax.tree_util.tree_leaves(tree)]
  return sum(sizes), sum(_num_buckets(n, bucket_size) for n in sizes)


def payload_bits_host(tree: PyTree, bits: int, *, bucket_size: int | None = None,
                      method: str = "minmax") -> int:
  """Upload size in bits as a Python int (only leaf shapes are used)."""
  _check_options(method, bucket_size)
  validate_bits(bits)
  d, nb = _counts(tree, bucket_size)
  bits = int(bits)
  if bits >= MAX_BITS:
    return 32 * d
  return d * bits + 64 * nb if method == "minmax" else d * (bits + 1) + 32 * nb


def payload_bits(tree: PyTree, bits: ArrayLike, *, bucket_size: int | None = None,
                 method: str = "minmax", dtype=jnp.int32) -> Array:
  """Upload size in bits, traced in `bits`: S(b) = d·b + 64·nb (QSGD d·(b+1) + 32·nb), S(32) = 32·d.

  Counts the packed level bits plus per-bucket floats, not codec header/treedef.

  Raises:
    ValueError: with dtype int32, if S could exceed 2^31 - 1 (d > ~6.7e7 entries);
      pass dtype=jnp.float32 for larger models.
  """
  _check_options(method, bucket_size)
  validate_bits(bits)
  d, nb = _counts(tree, bucket_size)
  worst = max(32 * d, 31 * d + 64 * nb, 32 * d + 32 * nb)
  if jnp.dtype(dtype) == jnp.int32 and worst > np.iinfo(np.int32).max:
    raise ValueError(f"payload of {d} entries overflows int32 bits; use dtype=jnp.float32")
  b = _clip_bits(bits).astype(dtype)
  if method == "minmax":
    quant = d * b + 64 * nb
  else:
    quant = d * (b + 1) + 32 * nb
  return jnp.where(b >= MAX_BITS, jnp.asarray(32 * d, dtype), quant).astype(dtype)


# ----------------------------------------------------------------------------
# Factory (optax style).


@dataclasses.dataclass(frozen=True)
class Quantizer:
  """A configured quantizer; hashable, so it can be a static jit argument."""
  method: str = "minmax"
  bucket_size: int | None = None
  rng: str = "hash"

  def __post_init__(self):
    _check_options(self.method, self.bucket_size, self.rng)

  def quantize(self, tree: PyTree, bits: ArrayLike, key: PRNGKey) -> PyTree:
    return quantize_tree(tree, bits, key, method=self.method, bucket_size=self.bucket_size, rng=self.rng)

  def bits_for(self, tree: PyTree, eps: ArrayLike, b_min: ArrayLike = 1, b_max: ArrayLike = MAX_BITS) -> Array:
    return ondemand_bits(tree, eps, b_min, b_max, bucket_size=self.bucket_size, method=self.method)

  def error_bound(self, tree: PyTree, bits: ArrayLike) -> Array:
    return error_bound(tree, bits, bucket_size=self.bucket_size, method=self.method)

  def payload_bits(self, tree: PyTree, bits: ArrayLike) -> Array:
    return payload_bits(tree, bits, bucket_size=self.bucket_size, method=self.method)

  def encode(self, tree: PyTree, bits: int, key: PRNGKey) -> "Payload":
    return encode(tree, bits, key, bucket_size=self.bucket_size, method=self.method, rng=self.rng)


def make_quantizer(name: str, bucket_size: int | None = None, *, rng: str = "hash") -> Quantizer:
  """Returns the Quantizer named "minmax" or "qsgd"; ValueError for other names."""
  if name not in METHODS:
    raise ValueError(f"unknown quantizer {name!r}; valid names: {', '.join(METHODS)}")
  return Quantizer(method=name, bucket_size=bucket_size, rng=rng)


# ----------------------------------------------------------------------------
# Host-side codec: levels packed at exactly b bits (b + 1 for QSGD) per entry.

_MAGIC = b"FQJQ"
_HEADER = struct.Struct("<4sBBBBQQQQI")  # magic, version, method, bits, 0, bucket, d, nb, level bits, crc
_VERSION = 1
_CHUNK = 1 << 20  # entries per packing chunk (multiple of 8: chunks end on byte boundaries)


def _pack(values: np.ndarray, width: int) -> tuple[bytes, int]:
  """Packs uint32 values [d] (< 2^width) MSB-first into a bit stream; returns (bytes, bits written)."""
  parts = []
  for start in range(0, values.size, _CHUNK):
    c = values[start:start + _CHUNK].astype(">u4").view(np.uint8).reshape(-1, 4)
    bitmat = np.unpackbits(c, axis=1)[:, 32 - width:]  # [c, width]
    parts.append(np.packbits(bitmat.reshape(-1)).tobytes())
  return b"".join(parts), values.size * width


def _unpack(buf: bytes, d: int, width: int) -> np.ndarray:
  """Inverse of `_pack`: uint32 [d]."""
  raw = np.frombuffer(buf, np.uint8)
  out = np.empty((d,), np.uint32)
  for start in range(0, d, _CHUNK):
    c = min(_CHUNK, d - start)
    byte0 = start * width // 8
    bits = np.unpackbits(raw[byte0:byte0 + -(-c * width // 8)])[: c * width]
    full = np.zeros((c, 32), np.uint8)
    full[:, 32 - width:] = bits.reshape(c, width)
    out[start:start + c] = np.packbits(full, axis=1).view(">u4").reshape(c)
  return out


@dataclasses.dataclass(frozen=True)
class Payload:
  """An encoded upload: `data` = header || level bit stream || per-bucket float32s.

  Header (`_HEADER`, 44 bytes) holds magic, version, method, bits, bucket size,
  entry and bucket counts, the level stream length in bits and the crc32 of the
  body. `treedef`, `shapes`, `dtypes` are host metadata (not counted).
  """
  data: bytes
  treedef: Any
  shapes: tuple[tuple[int, ...], ...]
  dtypes: tuple[str, ...]
  bits: int
  bucket_size: int | None
  method: str

  @property
  def level_bits(self) -> int:
    """Measured bits written by the packer (before byte padding)."""
    return _HEADER.unpack_from(self.data)[8]

  @property
  def num_bits(self) -> int:
    """Measured payload: level bits + 8·(per-bucket bytes); equals `payload_bits_host`."""
    _, _, _, bits, _, _, d, nb, level_bits, _ = _HEADER.unpack_from(self.data)
    body = len(self.data) - _HEADER.size
    return level_bits + 8 * (body - -(-level_bits // 8))


_encode_levels = jax.jit(_leaf_levels, static_argnames=("bucket_size", "method", "rng"))


@jax.jit
def _decode_minmax(q, lo, hi, b):
  return _minmax_dequant(q, lo, hi, b)


@jax.jit
def _decode_qsgd(q, neg, norm, b):
  return _qsgd_dequant(q, neg, norm, b)


def encode(tree: PyTree, bits: int, key: PRNGKey, *, bucket_size: int | None = None,
           method: str = "minmax", rng: str = "hash") -> Payload:
  """Quantizes `tree` like `quantize_tree(tree, bits, key, ...)` and packs it to bytes.

  Args:
    tree: pytree of concrete float arrays.
    bits: concrete int in [1, 32]; 32 stores raw float32.
    key, bucket_size, method, rng: as in `quantize_tree` (same key split).

  Returns:
    Payload; `decode(payload)` reproduces `quantize_tree`'s output exactly.
  """
  _check_options(method, bucket_size, rng)
  validate_bits(bits)
  validate_tree(tree)
  bits = int(bits)
  leaves, treedef = jax.tree_util.tree_flatten(tree)
  leaves = [jnp.asarray(x) for x in leaves]
  keys = _split_leaf_keys(key, len(leaves))
  width = bits if method == "minmax" else bits + 1
  values, heads = [], []
  for i, x in enumerate(leaves):
    if x.size == 0:
      continue
    if bits >= MAX_BITS:
      values.append(np.asarray(x, np.float32).reshape(-1).view(np.uint32))
      continue
    q, a, c = jax.device_get(_encode_levels(x, jnp.int32(bits), keys[i], bucket_size, method, rng))
    # float levels -> uint32; for b > 24 float32 s = 2^b, so clip to the b-bit range
    # (float32(2^b - 1) == float32(2^b) again on decode).
    q = np.minimum(q.reshape(-1)[:x.size], np.float32(2.0**bits - 1)).astype(np.uint32)
    q = np.minimum(q, np.uint32(2**bits - 1))
    if method == "qsgd":  # sign in the top bit of each (b + 1)-bit word
      q |= a.reshape(-1)[:x.size].astype(np.uint32) << np.uint32(bits)
      heads.append(c.reshape(-1))
    else:
      heads.append(np.stack([a.reshape(-1), c.reshape(-1)], axis=1).reshape(-1))  # [nb*2] lo,hi
    values.append(q)
  flat = np.concatenate(values) if values else np.zeros((0,), np.uint32)
  if bits >= MAX_BITS:
    levels, level_bits = flat.astype("<u4").tobytes(), 32 * flat.size
  else:
    levels, level_bits = _pack(flat, width)
  head_bytes = np.concatenate(heads).astype("<f4").tobytes() if heads else b""
  body = levels + head_bytes
  d, nb = _counts(leaves, bucket_size)
  header = _HEADER.pack(_MAGIC, _VERSION, METHODS.index(method), bits, 0, bucket_size or 0,
                        d, nb, level_bits, zlib.crc32(body))
  return Payload(header + body, treedef, tuple(x.shape for x in leaves),
                 tuple(str(x.dtype) for x in leaves), bits, bucket_size, method)


def decode(payload: Payload) -> PyTree:
  """Unpacks a Payload into the dequantized pytree.

  Raises:
    ValueError: truncated or corrupted payload (bad magic, header mismatch,
      length mismatch, or crc32 mismatch).
  """
  data = payload.data
  if len(data) < _HEADER.size or data[:4] != _MAGIC:
    raise ValueError("corrupted payload: missing or bad header")
  magic, version, m, bits, _, bsz, d, nb, level_bits, crc = _HEADER.unpack_from(data)
  method = METHODS[m] if m < len(METHODS) else None
  sizes = [math.prod(s) for s in payload.shapes]
  exp_d, exp_nb = sum(sizes), sum(_num_buckets(n, payload.bucket_size) for n in sizes)
  if (version != _VERSION or method != payload.method or bits != payload.bits or
      (bsz or None) != payload.bucket_size or d != exp_d or nb != exp_nb or not 1 <= bits <= 32):
    raise ValueError("corrupted payload: header does not match its metadata")
  width = 32 if bits >= MAX_BITS else (bits if method == "minmax" else bits + 1)
  head_floats = 0 if bits >= MAX_BITS else (2 * nb if method == "minmax" else nb)
  level_bytes = -(-d * width // 8)
  expect = _HEADER.size + level_bytes + 4 * head_floats
  if level_bits != d * width or len(data) != expect:
    raise ValueError(f"truncated or corrupted payload: {len(data)} bytes, expected {expect}")
  body = data[_HEADER.size:]
  if zlib.crc32(body) != crc:
    raise ValueError("corrupted payload: crc32 checksum mismatch")
  if bits >= MAX_BITS:
    flat = np.frombuffer(body, "<u4").view(np.float32)
  else:
    flat = _unpack(body[:level_bytes], d, width)
    heads = np.frombuffer(body[level_bytes:], "<f4")
  out, pos, hpos = [], 0, 0
  for shape, dtype, n in zip(payload.shapes, payload.dtypes, sizes):
    if n == 0:
      out.append(jnp.zeros(shape, dtype))
      continue
    if bits >= MAX_BITS:
      out.append(jnp.asarray(flat[pos:pos + n].reshape(shape)).astype(dtype))
      pos += n
      continue
    nbl, w = _num_buckets(n, payload.bucket_size), _bucket_width(n, payload.bucket_size)
    q = np.zeros((nbl * w,), np.uint32)
    q[:n] = flat[pos:pos + n]
    pos += n
    b = jnp.int32(bits)
    if method == "minmax":
      lohi = heads[hpos:hpos + 2 * nbl].reshape(nbl, 2)
      hpos += 2 * nbl
      lev = (q.reshape(nbl, w).astype(np.float32), lohi[:, :1], lohi[:, 1:])
      res = _decode_minmax(*lev, b)
    else:
      norm = heads[hpos:hpos + nbl].reshape(nbl, 1)
      hpos += nbl
      mask = np.uint32((1 << bits) - 1)
      lev = ((q & mask).reshape(nbl, w).astype(np.float32), (q >> np.uint32(bits)).reshape(nbl, w) > 0, norm)
      res = _decode_qsgd(*lev, b)
    out.append(res.reshape(-1)[:n].reshape(shape).astype(dtype))
  return jax.tree_util.tree_unflatten(payload.treedef, out)
