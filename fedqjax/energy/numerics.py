"""Shared numerics of the energy allocators (arXiv 2403.04430 sec. 4; Yang et al. TWC 2021).

One home for what the per-device allocator (`allocator.allocate`), the
baseline policies (`policies`) and the shared-bandwidth allocator
(`shared_bandwidth`) have in common:

* the per-device problem setup: cycles A = c n, payload S, t^min = S / r(p_max)
  (`problem`), and the ONE feasibility test c n / f_max + t^min <= T with its
  reason codes (`feasibility`);
* host-side input checks (`check_inputs`);
* log-space special functions: log phi, log psi, log(e^x - 1), stable for
  x = S ln2 / (t W) from ~1e-30 to ~1e30 in float32;
* the fixed-length bisection (`bisect`) and its default lengths.

With x the spectral efficiency in nats (x = S ln2 / (t W) = ln(1 + SNR)):
  phi(x) = e^x (x - 1) + 1 = -dE^com/dt / K,  K = N0 W / h,
  psi(x) = x - 1 + e^{-x} = e^{-x} phi(x).

Reason codes (`Allocation.reason`):
  0 REASON_OK: feasible.
  1 REASON_COMPUTE: c n / f_max >= T, the deadline is too short for the
    computation alone at f_max.
  2 REASON_UPLOAD: c n / f_max < T but c n / f_max + t^min > T, computation at
    f_max plus upload at p_max exceeds the deadline.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from fedqjax.energy import model
from fedqjax.energy.devices import Devices, validate_devices
from fedqjax.typing import Array, ArrayLike

REASON_OK, REASON_COMPUTE, REASON_UPLOAD = 0, 1, 2


def as_float(x: ArrayLike) -> Array:
  """x as a JAX array, cast to the default float dtype when it is not floating."""
  x = jnp.asarray(x)
  return (
    x
    if jnp.issubdtype(x.dtype, jnp.floating)
    else x.astype(jnp.zeros(()).dtype)
  )


def is_traced(*trees) -> bool:
  """True when any leaf of `trees` is a tracer (host checks are then skipped)."""
  return any(isinstance(v, jax.core.Tracer) for v in jax.tree.leaves(trees))


def check_inputs(
  devices: Devices, payload_bits, num_samples, deadline_s, flops_per_sample
) -> None:
  """Host checks when the inputs are concrete (skipped under jit).

  Raises:
    ValueError: naming the field and the valid range.
  """
  if is_traced(
    devices, payload_bits, num_samples, deadline_s, flops_per_sample
  ):
    return
  validate_devices(devices)
  for name, v in (
    ("payload_bits", payload_bits),
    ("num_samples", num_samples),
    ("deadline_s", deadline_s),
    ("flops_per_sample", flops_per_sample),
  ):
    a = np.asarray(v, np.float64)
    bad = ~(np.isfinite(a) & (a > 0))
    if np.any(bad):
      raise ValueError(
        f"{name}={a[bad].ravel()[0]!r} is invalid; valid range: finite and > 0"
      )


def problem(
  devices: Devices,
  payload_bits: ArrayLike,
  num_samples: ArrayLike,
  flops_per_sample: ArrayLike,
) -> Tuple[Array, Array, Array]:
  """Per-device constants (cycles A = c n, payload S > 0, t^min at `devices.bandwidth_hz`)."""
  d = devices
  cycles = (
    model.cycles_per_sample(flops_per_sample, d.flops_per_cycle) * num_samples
  )
  s = jnp.maximum(
    as_float(payload_bits), jnp.finfo(d.gain.dtype).tiny
  )  # S > 0: log finite
  tmin = model.t_min(s, d.gain, d.bandwidth_hz, d.p_max_w, d.noise_psd_w_hz)
  return cycles, s, tmin


def feasibility(
  devices: Devices, cycles: Array, tmin: Array, deadline_s: ArrayLike
) -> Tuple[Array, Array]:
  """(feasible, reason): exactly c n / f_max + t^min <= T, and the reason code."""
  t_cmp_max = cycles / devices.f_max_hz
  feasible = t_cmp_max + tmin <= deadline_s
  reason = jnp.where(
    feasible,
    REASON_OK,
    jnp.where(t_cmp_max >= deadline_s, REASON_COMPUTE, REASON_UPLOAD),
  )
  return feasible, reason.astype(jnp.int32)


class Problem(NamedTuple):
  """One round's per-device problem, every field broadcast to the devices' shape."""

  cycles: Array  # A = c n
  payload_bits: Array  # S > 0
  t_min_s: Array  # S / r(p_max)
  deadline_s: Array  # T
  feasible: Array  # bool: A / f_max + t^min <= T
  reason: Array  # int32 reason code


def setup(
  devices: Devices,
  payload_bits: ArrayLike,
  num_samples: ArrayLike,
  deadline_s: ArrayLike,
  flops_per_sample: ArrayLike,
) -> Problem:
  """`problem` + `feasibility`, broadcast to one common shape (traceable)."""
  cycles, s, tmin = problem(
    devices, payload_bits, num_samples, flops_per_sample
  )
  T = jnp.asarray(deadline_s, devices.gain.dtype)
  feasible, reason = feasibility(devices, cycles, tmin, T)
  shape = jnp.broadcast_shapes(
    cycles.shape, s.shape, T.shape, devices.gain.shape
  )
  b = lambda v: jnp.broadcast_to(v, shape)
  return Problem(b(cycles), b(s), b(tmin), b(T), b(feasible), b(reason))


def segment_quantile(
  x: Array, segments: Array, num_segments: int, q: ArrayLike
) -> Array:
  """q-quantile of x within each segment, linear interpolation as `jnp.quantile`; [G].

  Devices with a segment id outside [0, num_segments) are ignored; an empty
  segment gives NaN. q may be a scalar or [G].
  """
  seg = jnp.asarray(segments, jnp.int32)
  order = jnp.lexsort((x, seg))
  xs = x[order]
  counts = jax.ops.segment_sum(
    jnp.ones_like(seg), seg, num_segments=num_segments
  )
  starts = jnp.cumsum(counts) - counts
  pos = (jnp.maximum(counts, 1) - 1).astype(x.dtype) * q
  lo = jnp.floor(pos)
  frac = pos - lo
  a = xs[starts + lo.astype(jnp.int32)]
  b = xs[starts + jnp.ceil(pos).astype(jnp.int32)]
  return jnp.where(counts > 0, a + (b - a) * frac, jnp.nan)


def ln_psi_over_x2(x: Array) -> Array:
  """log(psi(x) / x^2), psi(x) = x - 1 + e^{-x} = e^{-x} phi(x), stable for all x >= 0.

  psi cancels catastrophically for small x, so there the Taylor series
  psi / x^2 = sum_k (-x)^k / (k + 2)! is used; terms up to k = 15 (float64) or
  k = 8 (float32) keep the truncation below the dtype's rounding for x < 0.5.
  """
  xs = jnp.minimum(x, 0.5)
  series = jnp.zeros_like(xs)
  top = 15 if jnp.finfo(x.dtype).bits == 64 else 8
  for k in range(top, -1, -1):  # Horner, static unroll
    series = series * (-xs) + 1.0 / math.factorial(k + 2)
  xl = jnp.maximum(x, 0.5)
  direct = (xl + jnp.expm1(-xl)) / (xl * xl)
  return jnp.log(jnp.where(x < 0.5, series, direct))


def ln_phi(u: Array) -> Array:
  """log phi(e^u), phi(x) = e^x (x - 1) + 1 = -dE^com/dt / K."""
  x = jnp.exp(u)
  return x + 2.0 * u + ln_psi_over_x2(x)


def ln_psi(u: Array) -> Array:
  """log psi(e^u), psi(x) = x - 1 + e^{-x}."""
  return 2.0 * u + ln_psi_over_x2(jnp.exp(u))


def ln_expm1(x: Array) -> Array:
  """log(e^x - 1) for x > 0 without overflow or cancellation."""
  small = jnp.log(jnp.expm1(jnp.minimum(x, 1.0)))
  xl = jnp.maximum(x, 1.0)
  return jnp.where(x <= 1.0, small, xl + jnp.log1p(-jnp.exp(-xl)))


def bisect(
  fn: Callable[[Array], Array], lo: Array, hi: Array, iters: int
) -> Tuple[Array, Array]:
  """Fixed-length bisection keeping fn(lo) > 0 >= fn(hi) (fn decreasing); returns (lo, hi).

  Elementwise over arrays (every device at once), one `lax.fori_loop` with a
  static trip count: jit / vmap friendly, no data-dependent control flow.
  """

  def body(_, bracket):
    lo, hi = bracket
    mid = 0.5 * (lo + hi)
    pos = fn(mid) > 0
    return jnp.where(pos, mid, lo), jnp.where(pos, hi, mid)

  return jax.lax.fori_loop(0, iters, body, (lo, hi))


def illinois(
  fn: Callable[[Array], Array], lo: Array, hi: Array, iters: int
) -> Tuple[Array, Array]:
  """Fixed-length regula falsi (Illinois variant) keeping fn(lo) > 0 >= fn(hi); (lo, hi).

  For fn decreasing and smooth (e.g. a log-residual that is nearly linear)
  the bracket collapses superlinearly (order ~1.44) instead of halving: the
  end that stays put has its function value halved, so neither end stalls.
  A step that would leave the open bracket (or is not finite) is a bisection.
  Elementwise over arrays, one `lax.fori_loop`: jit / vmap friendly.
  """

  def body(_, state):
    a, b, fa, fb, side = state
    c = (a * fb - b * fa) / (fb - fa)
    c = jnp.where(jnp.isfinite(c) & (c > a) & (c < b), c, 0.5 * (a + b))
    fc = fn(c)
    pos = fc > 0
    a, fa = jnp.where(pos, c, a), jnp.where(pos, fc, fa)
    b, fb = jnp.where(pos, b, c), jnp.where(pos, fb, fc)
    fb = jnp.where(pos & (side > 0), 0.5 * fb, fb)  # b stayed twice: halve f(b)
    fa = jnp.where(~pos & (side < 0), 0.5 * fa, fa)
    return a, b, fa, fb, jnp.where(pos, jnp.int32(1), jnp.int32(-1))

  init = (lo, hi, fn(lo), fn(hi), jnp.zeros(jnp.shape(lo), jnp.int32))
  a, b, *_ = jax.lax.fori_loop(0, iters, body, init)
  return a, b


def default_iters(dtype) -> int:
  """Per-device bisection length: 52 steps in float64, 32 in float32.

  The bracket spans log(2T / t^min) < 64 e-folds of x for T <= 1e6 s and
  payloads >= 1 bit; 2^-52 of it reaches float64 rounding of u = log x and
  2^-32 float32 rounding (extra iterations are harmless, they stagnate).
  """
  return 52 if jnp.finfo(dtype).bits == 64 else 32


def default_inner_iters(dtype) -> int:
  """Regula falsi steps of the shared-bandwidth allocator's W_k(mu): 20 float64, 12 float32.

  Measured on random 16-device cells: 12 (float64: 20) steps give the
  bandwidths of the 32 (52)-step bisection to ~3e-6 (1e-11) relative.
  """
  return 20 if jnp.finfo(dtype).bits == 64 else 12


def default_outer_iters(dtype) -> int:
  """Regula falsi steps on log mu of the shared-bandwidth allocator: 16 float64, 10 float32.

  Measured on random 16-device cells: 8 (float64) and 4 (float32) steps
  already reach the 60 / 36-step bisection's answer to the dtype's rounding.
  """
  return 16 if jnp.finfo(dtype).bits == 64 else 10
