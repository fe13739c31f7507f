"""Energy-optimal allocation with a shared, optimized FDMA bandwidth (docs/model.md sec. 4, end).

Beyond the per-device problem of `allocator.allocate`, the bandwidths W_k are
variables too, coupled by the budget sum_k W_k <= W_tot:

  minimize_{f, t, W}  sum_k tau_k A_k f_k^2 + E_k(t_k, W_k)
  subject to          A_k / f_k + t_k <= T_k,  f_min <= f_k <= f_max,
                      t_k >= t_k^min(W_k)  (p_k <= p_max),  W_k > 0,  sum_k W_k <= W_tot,

with A = c n and E(t, W) = t (N0 W / h)(2^{S/(tW)} - 1). E depends on (t, W)
only through the time-bandwidth product y = t W: E = G(y) = (N0 / h) y (e^{b/y} - 1),
b = S ln 2, with G' = -(N0 / h) phi(b / y) < 0 and y G'' = (N0 / h) x^2 e^x.
The Hessian of G(t W) has diagonal W^2 G'', t^2 G'' >= 0 and determinant
-G' (G' + 2 y G'') = (N0/h)^2 phi(x) (2 x^2 e^x - phi(x)) >= 0, so E is jointly
convex; t^min(W) = b / (W ln(1 + c / W)), c = p_max h / N0, is convex
(1 / concave rate), so the problem is jointly convex.

Method (dual decomposition). A multiplier mu >= 0 on the budget splits the
problem: every device solves min_{f,t,W} E_k^tot + mu W_k. With x = b / (t W)
(spectral efficiency in nats, x = ln(1 + SNR)) and phi(x) = e^x (x - 1) + 1:

  dE/dt = -(N0 W / h) phi(x),   dE/dW = -(N0 t / h) phi(x)   (dE/dy = -(N0/h) phi).

Branch A (power below p_max, lambda = 0). Stationarity in W and t gives, for a
given x, everything explicitly:

  t(x) = mu h / (N0 phi(x)),   W(x) = b / (t x),   nu(x) = mu W / t,
  f(x) = clip((nu / 2 tau)^{1/3}, f_min, f_max),

and the deadline residual g_A(x) = A / f(x) + t(x) - T is strictly decreasing
in x (t decreases, phi(x)^2 / x and hence nu increases). One bisection on
u = log x finds the root; it is the answer iff the power there is <= p_max,
i.e. x <= ln(1 + c / W).

Branch B (p = p_max active). On the curve t = t^min(W), parametrized by x
(W = c / (e^x - 1), t = b / (W x)), the deadline fixes f = A / (T - t) and the
reduced energy F(W) = tau A f^2 + p_max t^min(W) is convex in W. Using
d(W x)/dW = psi(x) = x - 1 + e^{-x}, |dt^min/dW| = t psi(x) / (W x), so

  mu_B(x) = -F'(W) = (2 tau f^3 [0 if f would fall below f_min] + p_max) t psi(x) / (W x),

increasing in x; a second bisection solves mu_B(x) = mu on
x <= x(W_min), where W_min is the smallest bandwidth with which the device meets
the deadline (f = f_max, p = p_max; found once by bisection on
x / (e^x - 1) = b / (c (T - A / f_max))). For mu above mu_B(x(W_min)), W = W_min.

Each W_k(mu) is decreasing in mu, so an outer root search on log mu solves
sum_k W_k(mu) = W_tot: regula falsi (Illinois) on log(sum_k W_k) - log W_tot,
which is close to linear in log mu (W_k ~ 1 / mu on branch A), converges in
a few steps where bisection needed 36-60. The bracket comes from the budget split
W'_k = W_min,k + (W_tot - sum W_min) / K: some device gets at least and some at
most its W'_k at the optimum, so mu* lies in [min_k mu_k(W'_k), max_k mu_k(W'_k)],
where mu_k(W) = -dE*_k/dW is read off `allocate` at W' by the envelope theorem.
mu* > 0 whenever one device is feasible (more bandwidth always saves energy),
so the budget is always used up. The result takes the upper end of the final
mu bracket (sum W <= W_tot), scales W up to exactly W_tot (more bandwidth only
helps), and calls `allocate` with these bandwidths, so every Allocation field
follows the per-device code path.

Both branches' 1-D roots are found by regula falsi (Illinois) on
log-residuals too (12 steps in float32, 20 in float64 reach the 32 / 52-step
bisections' bandwidths to rounding); W_min and the final per-device solves
keep `allocate`'s bisection. All loops are fixed-length `lax.fori_loop`s over
all devices at once, in log space (jit/vmap friendly, float32-stable, float64
when x64 is on).
The per-device part (log-space constants, W_min, W_k(mu) on both branches)
is `fedqjax.energy.bandwidth_response`; this module adds the multiplier
bracket, the outer search and the final solves.

Several independent cells at once: `segments` assigns each device to one of G
cells, each with its own budget W_tot[g] and multiplier mu[g]; sums and the
mu bracket are per cell (segment sums) and the outer search runs on all G
multipliers together. The energy sweep uses it to solve every (device draw,
scenario) of a grid in one call without padding.

Infeasible devices: c n / f_max + t^min(W_tot) > T (infeasible even with all
the bandwidth). They are excluded from the budget and get bandwidth 0, power 0,
communication energy 0 (the "drop" policy's accounting); f = f_max and the
computation energy at f_max as in `allocate`; t_comm_s = t^min(W_tot) (the
fastest conceivable upload, so latency_s > T shows the shortfall); reason codes
as `allocate` with all the bandwidth.

Jointly infeasible budgets (every device feasible alone but
sum_k W_min,k > W_tot) have no solution; then every device gets about its
W_min,k (deadlines met) and sum W > W_tot: callers can detect this by
comparing the returned bandwidth sum with W_tot.
"""

from __future__ import annotations

import functools
from typing import Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from fedqjax.energy import model
from fedqjax.energy import numerics as nm
from fedqjax.energy.allocator import Allocation, allocate
from fedqjax.energy.bandwidth_response import bandwidth, device_consts
from fedqjax.energy.devices import Devices
from fedqjax.typing import Array, ArrayLike


def allocate_shared_bandwidth(
  devices: Devices,
  payload_bits: ArrayLike,
  num_samples: ArrayLike,
  deadline_s: ArrayLike,
  flops_per_sample: ArrayLike,
  total_bandwidth_hz: ArrayLike,
  *,
  present: Optional[ArrayLike] = None,
  segments: Optional[ArrayLike] = None,
  num_segments: Optional[int] = None,
  outer_iters: Optional[int] = None,
  inner_iters: Optional[int] = None,
) -> Tuple[Allocation, Array, Array]:
  """Energy-optimal (f, p, W) for all devices sharing a bandwidth budget.

  Args:
    devices: Devices with [K] fields; `bandwidth_hz` is ignored.
    payload_bits, num_samples, deadline_s, flops_per_sample: as in `allocate`.
    total_bandwidth_hz: W_tot, the budget sum_k W_k <= W_tot (> 0): a scalar,
      or [G] per cell with `segments`.
    present: optional bool [K]; absent (padded) devices take no part: they are
      treated like infeasible ones (no bandwidth, feasible=False).
    segments: optional int [K] cell of each device, in [0, num_segments);
      None = one cell.
    num_segments: G (static), required with `segments`.
    outer_iters: regula falsi steps on log mu (static); default 16 float64 / 10 float32.
    inner_iters: per-device regula falsi steps of W_k(mu) (static); default 20 float64 /
      12 float32. The per-device (kkt) solves use `allocate`'s own default.

  Returns:
    (allocation, bandwidth_hz [K], mu): the Allocation at the optimal
    bandwidths, the bandwidths (0 for infeasible devices) and the budget
    multiplier mu in J/Hz (0 when no device is feasible): a scalar, or [G]
    with `segments`.
  """
  nm.check_inputs(
    devices, payload_bits, num_samples, deadline_s, flops_per_sample
  )
  _check_budget(total_bandwidth_hz, segments, num_segments)
  dtype = devices.gain.dtype
  oi, ii = _iters(dtype, outer_iters, inner_iters)
  present, seg, g, w_tot = _cells(
    devices, total_bandwidth_hz, present, segments, num_segments
  )
  al, w, mu = _shared(
    devices,
    payload_bits,
    num_samples,
    deadline_s,
    flops_per_sample,
    w_tot,
    present,
    seg,
    g,
    oi,
    ii,
  )
  return al, w, (mu[0] if segments is None else mu)


def _check_budget(total_bandwidth_hz, segments, num_segments) -> None:
  if not nm.is_traced(total_bandwidth_hz):
    w = np.asarray(total_bandwidth_hz, np.float64)
    if not np.all(np.isfinite(w) & (w > 0)):
      raise ValueError(
        f"total_bandwidth_hz={total_bandwidth_hz!r} is invalid; valid range: "
        "finite and > 0"
      )
  if (segments is None) != (num_segments is None):
    raise ValueError(
      "segments and num_segments go together; valid: both or neither"
    )


def _iters(dtype, outer_iters, inner_iters) -> Tuple[int, int]:
  """(outer, inner) regula falsi steps: the given ones or the dtype's defaults."""
  oi = (
    nm.default_outer_iters(dtype) if outer_iters is None else int(outer_iters)
  )
  ii = (
    nm.default_inner_iters(dtype) if inner_iters is None else int(inner_iters)
  )
  return oi, ii


def _cells(devices, total_bandwidth_hz, present, segments, num_segments):
  """(present [K] bool, seg [K] int32, G, W_tot [G]) with the defaults filled
  in: every device present, one cell."""
  dtype = devices.gain.dtype
  shape = devices.gain.shape
  present = (
    jnp.ones(shape, bool) if present is None else jnp.asarray(present, bool)
  )
  seg = (
    jnp.zeros(shape, jnp.int32)
    if segments is None
    else jnp.asarray(segments, jnp.int32)
  )
  g = 1 if num_segments is None else int(num_segments)
  w_tot = jnp.broadcast_to(jnp.asarray(total_bandwidth_hz, dtype), (g,))
  return present, seg, g, w_tot


def mu_of_allocation(d: Devices, al: Allocation, s: Array, bw: Array) -> Array:
  """mu_k(W) = -dE*_k/dW (envelope theorem) from a per-device allocation at W."""
  t = al.t_comm_s
  x = s * model.LN2 / (t * bw)
  kphi = jnp.exp(
    jnp.log(d.noise_psd_w_hz)
    + jnp.log(bw)
    - jnp.log(d.gain)
    + nm.ln_phi(jnp.log(x))
  )
  lam = jnp.maximum(
    al.nu - kphi, 0.0
  )  # multiplier of t >= t^min (0 when interior)
  xm = jnp.log1p(model.snr(d.p_max_w, d.gain, bw, d.noise_psd_w_hz))
  ratio = jnp.exp(nm.ln_psi(jnp.log(xm)) - jnp.log(xm))  # psi(x_max) / x_max
  return t / bw * (kphi + lam * ratio)


def _mu_bracket(d, k, args, w_tot, seg, g):
  """Bracket on log mu per cell from the budget split W'_k = W_min,k + slack / K."""
  dtype = d.gain.dtype
  ssum = lambda v: jax.ops.segment_sum(v, seg, num_segments=g)
  w_min = jnp.where(
    k.feasible, jnp.exp(k.ln_c - nm.ln_expm1(jnp.exp(k.u_wmin))), 0.0
  )
  k_feas = jnp.maximum(ssum(k.feasible.astype(dtype)), 1.0)
  slack = jnp.maximum(w_tot - ssum(w_min), 0.0)
  w_split = jnp.where(
    k.feasible,
    jnp.maximum(w_min + (slack / k_feas)[seg], w_min * 1.001),
    w_tot[seg],
  )
  al_split = allocate(d.replace(bandwidth_hz=w_split), *args)
  mu_split = mu_of_allocation(d, al_split, k.payload, w_split)
  ok = k.feasible & al_split.feasible & (mu_split > 0) & jnp.isfinite(mu_split)
  ln_mu_split = jnp.log(jnp.where(ok, mu_split, 1.0))
  big = jnp.asarray(jnp.finfo(dtype).max, dtype)
  lm_lo = (
    jax.ops.segment_min(jnp.where(ok, ln_mu_split, big), seg, num_segments=g)
    - 2.0
  )
  lm_hi = (
    jax.ops.segment_max(jnp.where(ok, ln_mu_split, -big), seg, num_segments=g)
    + 2.0
  )
  any_ok = ssum(ok.astype(jnp.int32)) > 0
  return jnp.where(any_ok, lm_lo, 0.0), jnp.where(any_ok, lm_hi, 0.0), any_ok


@functools.partial(jax.jit, static_argnums=(8, 9, 10))
def _shared(
  d,
  payload_bits,
  num_samples,
  deadline_s,
  flops_per_sample,
  w_tot,
  present,
  seg,
  g,
  outer_iters,
  inner_iters,
):
  dtype = d.gain.dtype
  tiny = jnp.finfo(dtype).tiny
  ssum = lambda v: jax.ops.segment_sum(v, seg, num_segments=g)
  w_dev = w_tot[seg]  # each device's cell budget
  # Feasibility with all the cell's bandwidth, exactly as `allocate` would test it.
  pr = nm.setup(
    d.replace(bandwidth_hz=w_dev),
    payload_bits,
    num_samples,
    deadline_s,
    flops_per_sample,
  )
  k = device_consts(d, pr, present)
  args = (payload_bits, num_samples, deadline_s, flops_per_sample)
  lm_lo, lm_hi, any_ok = _mu_bracket(d, k, args, w_tot, seg, g)
  # log(sum W(mu)) is close to linear in log mu: regula falsi needs few steps.
  _, lm = nm.illinois(
    lambda lm: (
      jnp.log(ssum(bandwidth(d, k, lm[seg], inner_iters))) - jnp.log(w_tot)
    ),
    lm_lo,
    lm_hi,
    outer_iters,
  )
  w = bandwidth(d, k, lm[seg], inner_iters)
  total = ssum(w)
  scale = jnp.where(
    (total > 0) & (total < w_tot), w_tot / jnp.maximum(total, tiny), 1.0
  )
  w = w * scale[seg]
  mu = jnp.where(any_ok, jnp.exp(lm), 0.0)

  al = allocate(d.replace(bandwidth_hz=jnp.where(k.feasible, w, w_dev)), *args)
  zero = jnp.zeros_like(al.e_comm_j)
  feasible = k.feasible
  al = al.replace(
    power_w=jnp.where(feasible, al.power_w, zero),
    e_comm_j=jnp.where(feasible, al.e_comm_j, zero),
    energy_j=jnp.where(feasible, al.energy_j, al.e_comp_j),
    feasible=al.feasible & feasible,
  )
  return al, w, mu
