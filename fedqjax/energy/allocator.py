"""Energy-optimal CPU frequency and upload time per device (arXiv 2403.04430, sec. 4).

Each device solves (Yang et al., IEEE TWC 2021, the per-device subproblem)

  minimize_{f, t}  tau c n f^2 + E^com(t)
  subject to       c n / f + t <= T,  f_min <= f <= f_max,  t >= t^min,

with E^com(t) = t K (e^{a/t} - 1), K = N0 W / h, a = S ln 2 / W. Stationarity
with multiplier nu on the deadline gives f(nu) = clip((nu / 2 tau)^{1/3}) and
dE^com/dt = -K phi(x) = -nu with x = a / t, phi(x) = e^x (x - 1) + 1 (the
Lambert-W equation of the paper). Instead of inverting phi inside an outer
bisection on nu we bisect directly on u = log x: nu(x) = K phi(x) is explicit
and increasing, so g(u) = c n / f(nu(x)) + a / x - T is strictly decreasing in
u. One fixed-length `lax.fori_loop` bisects all devices at once (no nested
solve, no data-dependent trip count: jit/vmap friendly). Everything is in log
space, so gains from 1e-20 to 1 and payloads from 1 to 1e9+ bits stay finite in
float32.

Feasibility, its reason codes (`Allocation.reason`), the log-space functions
and the bisection live in `numerics` (shared with `policies` and
`shared_bandwidth`). Infeasible devices get f = f_max, p = p_max, t = t^min,
their energies, nu = 0.

Infeasibility policies (docs/model.md sec. 4) are applied by the round engine
(fedqjax/federated/phases.py: `screen`, `degrade`) from `feasible_mask`.
"""

from __future__ import annotations

import functools
import math
from typing import Optional

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from fedqjax.energy import model
from fedqjax.energy import numerics as nm
from fedqjax.energy.devices import Devices
from fedqjax.energy.numerics import REASON_COMPUTE, REASON_OK, REASON_UPLOAD  # noqa: F401
from fedqjax.typing import Array, ArrayLike


@flax.struct.dataclass
class Allocation:
  """Per-device resource allocation, every field [N] (or the broadcast shape)."""

  freq_hz: Array
  power_w: Array
  t_comp_s: Array
  t_comm_s: Array
  e_comp_j: Array
  e_comm_j: Array
  energy_j: Array
  nu: Array  # deadline multiplier (W); 0 for infeasible devices
  feasible: Array  # bool
  reason: Array  # int32, see module docstring
  latency_s: Array  # t_comp_s + t_comm_s


def feasible_mask(
  devices: Devices,
  payload_bits: ArrayLike,
  num_samples: ArrayLike,
  deadline_s: ArrayLike,
  flops_per_sample: ArrayLike,
) -> Array:
  """Exactly c n / f_max + t^min <= T, elementwise (bool [N])."""
  cycles, _, tmin = nm.problem(
    devices, payload_bits, num_samples, flops_per_sample
  )
  return nm.feasibility(devices, cycles, tmin, deadline_s)[0]


def min_round_time(
  devices: Devices,
  payload_bits: ArrayLike,
  num_samples: ArrayLike,
  flops_per_sample: ArrayLike,
) -> Array:
  """Fastest possible round c n / f_max + t^min (f = f_max, p = p_max), [N]."""
  cycles, _, tmin = nm.problem(
    devices, payload_bits, num_samples, flops_per_sample
  )
  return cycles / devices.f_max_hz + tmin


DEADLINE_RULES = ("fp32_feasible", "median", "quantile")


def _check_deadline_args(rule, factor, quantile, num_params) -> None:
  if rule not in DEADLINE_RULES:
    raise ValueError(
      f"rule={rule!r} is invalid; valid: {', '.join(DEADLINE_RULES)}"
    )
  for name, v, ok, rng in (
    ("factor", factor, lambda a: a > 0, "finite and > 0"),
    ("quantile", quantile, lambda a: 0 < a <= 1, "(0, 1]"),
    ("num_params", num_params, lambda a: a > 0, "finite and > 0"),
  ):
    if not nm.is_traced(v):
      a = np.asarray(v, np.float64)
      if not (np.all(np.isfinite(a)) and np.all(ok(a))):
        raise ValueError(f"{name}={v!r} is invalid; valid range: {rng}")


def _deadline_stat(t, rule, quantile, present, segments, num_segments):
  """The rule's statistic of the minimal round times t [N]: all devices, the
  present ones, or per cell."""
  if segments is not None:
    g = int(num_segments)
    seg = jnp.asarray(segments, jnp.int32)
    seg = seg if present is None else jnp.where(present, seg, g)  # g: ignored
    return {
      "fp32_feasible": lambda: jax.ops.segment_max(t, seg, num_segments=g),
      "median": lambda: nm.segment_quantile(t, seg, g, 0.5),
      "quantile": lambda: nm.segment_quantile(t, seg, g, quantile),
    }[rule]()
  elif present is None:
    return {
      "fp32_feasible": lambda: jnp.max(t),
      "median": lambda: jnp.median(t),
      "quantile": lambda: jnp.quantile(t, quantile),
    }[rule]()
  else:
    masked = jnp.where(present, t, jnp.nan)
    return {
      "fp32_feasible": lambda: jnp.nanmax(masked),
      "median": lambda: jnp.nanmedian(masked),
      "quantile": lambda: jnp.nanquantile(masked, quantile),
    }[rule]()


def deadline_for(
  devices: Devices,
  num_params: ArrayLike,
  num_samples: ArrayLike,
  flops_per_sample: ArrayLike,
  rule: str = "fp32_feasible",
  factor: ArrayLike = 1.2,
  quantile: ArrayLike = 0.95,
  *,
  present: Optional[Array] = None,
  segments: Optional[Array] = None,
  num_segments: Optional[int] = None,
) -> Array:
  """Round deadline T from the devices' fp32 (S = 32 d bits) minimal round times.

  T = factor x (the largest | the median | the `quantile`-quantile) over the
  devices of c n / f_max + t^min(32 d). "fp32_feasible" (factor >= 1) lets
  every device deliver every scheme's upload (no payload exceeds fp32's);
  "quantile" keeps one extreme device of a large population from setting T
  for everyone (the devices above the quantile may be infeasible).

  Args:
    devices: Devices with [N] fields.
    num_params: d, the model's parameter count (scalar).
    num_samples, flops_per_sample: as in `allocate`.
    rule: one of DEADLINE_RULES (static).
    factor: multiplier (> 0).
    quantile: in (0, 1], used by rule "quantile".
    present: optional bool [N]; absent (padded) devices are ignored.
    segments, num_segments: optional int [N] cell ids and their number G
      (static): one T per cell, factor and quantile scalars or [G].

  Returns:
    T, a scalar (float), or [G] with `segments`.

  Raises:
    ValueError: unknown rule, or concrete factor / quantile / num_params out of range.
  """
  _check_deadline_args(rule, factor, quantile, num_params)
  t = min_round_time(devices, 32.0 * num_params, num_samples, flops_per_sample)
  stat = _deadline_stat(t, rule, quantile, present, segments, num_segments)
  return factor * stat


def allocate(
  devices: Devices,
  payload_bits: ArrayLike,
  num_samples: ArrayLike,
  deadline_s: ArrayLike,
  flops_per_sample: ArrayLike,
  *,
  iters: Optional[int] = None,
) -> Allocation:
  """Energy-optimal (f, p) for every device at once.

  Args:
    devices: Devices with [N] fields.
    payload_bits: S, upload size in bits (> 0), scalar or [N].
    num_samples: n = I B samples processed this round, scalar or [N].
    deadline_s: round deadline T, scalar or [N].
    flops_per_sample: training FLOPs per sample (forward + backward), scalar or [N].
    iters: bisection steps (static); default 52 in float64, 32 in float32.

  Returns:
    Allocation; infeasible devices are flagged and get f_max / p_max numbers.

  Raises:
    ValueError: if called with concrete (non-traced) invalid inputs.
  """
  nm.check_inputs(
    devices, payload_bits, num_samples, deadline_s, flops_per_sample
  )
  iters = nm.default_iters(devices.gain.dtype) if iters is None else int(iters)
  return _allocate(
    devices, payload_bits, num_samples, deadline_s, flops_per_sample, iters
  )


@functools.partial(
  jax.jit, static_argnums=5
)  # one kernel even when called eagerly
def _allocate(
  d, payload_bits, num_samples, deadline_s, flops_per_sample, iters
):
  dtype = d.gain.dtype
  cycles, s, tmin, T, feasible, reason = nm.setup(
    d, payload_bits, num_samples, deadline_s, flops_per_sample
  )

  ln_a = (
    jnp.log(s) + math.log(model.LN2) - jnp.log(d.bandwidth_hz)
  )  # a = S ln2 / W
  ln_k = (
    jnp.log(d.noise_psd_w_hz) + jnp.log(d.bandwidth_hz) - jnp.log(d.gain)
  )  # K = N0 W / h
  ln_cyc = jnp.log(cycles)
  ln_2tau = math.log(2.0) + jnp.log(d.tau)
  ln_fmin, ln_fmax = jnp.log(d.f_min_hz), jnp.log(d.f_max_hz)
  x_max = jnp.log1p(
    model.snr(d.p_max_w, d.gain, d.bandwidth_hz, d.noise_psd_w_hz)
  )
  u_hi0 = jnp.log(x_max)  # t = t^min
  u_lo0 = jnp.minimum(
    ln_a - jnp.log(T) - math.log(2.0), u_hi0
  )  # a / x = 2T: g > 0

  def ln_freq(u):
    return jnp.clip((ln_k + nm.ln_phi(u) - ln_2tau) / 3.0, ln_fmin, ln_fmax)

  def g(u):  # deadline residual, strictly decreasing in u
    return jnp.exp(ln_cyc - ln_freq(u)) + jnp.exp(ln_a - u) - T

  # Devices whose t would sit at t^min (g(u_hi0) > 0) skip the bisection result.
  at_tmin = g(u_hi0) > 0
  _, u = nm.bisect(g, u_lo0, u_hi0, iters)  # hi end: deadline met

  # Interior upload time: t = a / x and f from the stationarity in nu.
  # Clip again after exp: exp(log(f_min)) can round just below f_min.
  f_int = jnp.clip(jnp.exp(ln_freq(u)), d.f_min_hz, d.f_max_hz)
  t_int = jnp.exp(ln_a - u)
  nu_int = jnp.exp(ln_k + nm.ln_phi(u))
  # t pinned at t^min: the deadline fixes f, and nu from the f stationarity.
  f_tm = jnp.clip(
    cycles / jnp.maximum(T - tmin, jnp.finfo(dtype).tiny),
    d.f_min_hz,
    d.f_max_hz,
  )
  nu_tm = jnp.exp(ln_2tau + 3.0 * jnp.log(f_tm))

  freq = jnp.where(feasible, jnp.where(at_tmin, f_tm, f_int), d.f_max_hz)
  t_comm = jnp.where(feasible & ~at_tmin, t_int, tmin)
  power = jnp.where(
    feasible & ~at_tmin,
    model.power_of_time(t_comm, s, d.gain, d.bandwidth_hz, d.noise_psd_w_hz),
    d.p_max_w,
  )
  power = jnp.minimum(power, d.p_max_w)  # rounding guard at t ~ t^min
  nu = jnp.where(feasible, jnp.where(at_tmin, nu_tm, nu_int), 0.0)
  return make_allocation(d, cycles, freq, power, t_comm, nu, feasible, reason)


def make_allocation(
  d: Devices,
  cycles: Array,
  freq: Array,
  power: Array,
  t_comm: Array,
  nu: Array,
  feasible: Array,
  reason: Array,
) -> Allocation:
  """The Allocation of a given (f, p, t^com): times and energies from the model.

  E^cmp = tau A f^2 and E^com = p t^com, the same for every policy. Inside a
  larger jit XLA may contract a product into the sum energy_j (FMA), so
  energy_j can differ from e_comp_j + e_comm_j in the last bit; the separate
  fields are exact.
  """
  t_comp = cycles / freq
  e_comp = model.comp_energy(d.tau, cycles, 1.0, freq)
  e_comm = power * t_comm
  return Allocation(
    freq_hz=freq,
    power_w=power,
    t_comp_s=t_comp,
    t_comm_s=t_comm,
    e_comp_j=e_comp,
    e_comm_j=e_comm,
    energy_j=e_comp + e_comm,
    nu=nu,
    feasible=feasible,
    reason=reason,
    latency_s=t_comp + t_comm,
  )


def naive_allocation(
  devices: Devices,
  payload_bits: ArrayLike,
  num_samples: ArrayLike,
  deadline_s: ArrayLike,
  flops_per_sample: ArrayLike,
) -> Allocation:
  """No optimization: f = f_max, p = p_max; feasibility by the same test as `allocate`."""
  nm.check_inputs(
    devices, payload_bits, num_samples, deadline_s, flops_per_sample
  )
  return _naive(
    devices, payload_bits, num_samples, deadline_s, flops_per_sample
  )


@jax.jit
def _naive(d, payload_bits, num_samples, deadline_s, flops_per_sample):
  pr = nm.setup(d, payload_bits, num_samples, deadline_s, flops_per_sample)
  b = lambda v: jnp.broadcast_to(v, pr.cycles.shape)
  return make_allocation(
    d,
    pr.cycles,
    b(d.f_max_hz),
    b(d.p_max_w),
    pr.t_min_s,
    jnp.zeros(pr.cycles.shape, d.gain.dtype),
    pr.feasible,
    pr.reason,
  )
