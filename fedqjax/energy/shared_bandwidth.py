"""Energy-optimal allocation with a shared, optimized FDMA bandwidth (MODEL.md sec. 4, end).

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

Each W_k(mu) is decreasing in mu, so an outer bisection on log mu solves
sum_k W_k(mu) = W_tot. The bracket comes from the budget split
W'_k = W_min,k + (W_tot - sum W_min) / K: some device gets at least and some at
most its W'_k at the optimum, so mu* lies in [min_k mu_k(W'_k), max_k mu_k(W'_k)],
where mu_k(W) = -dE*_k/dW is read off `allocate` at W' by the envelope theorem.
mu* > 0 whenever one device is feasible (more bandwidth always saves energy),
so the budget is always used up. The result takes the upper end of the final
mu bracket (sum W <= W_tot), scales W up to exactly W_tot (more bandwidth only
helps), and calls `allocate` with these bandwidths, so every Allocation field
follows the per-device code path.

All loops are fixed-length `lax.fori_loop`s over all devices at once, in log
space (jit/vmap friendly, float32-stable, float64 when x64 is on).

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
import math
from typing import Optional, Tuple

import jax
import jax.numpy as jnp

from fedqjax.energy import model
from fedqjax.energy.allocator import (Allocation, _allocate, _check_inputs, _float,
                                      _ln_phi, _ln_psi_over_x2)
from fedqjax.energy.devices import Devices
from fedqjax.typing import Array, ArrayLike


def _ln_expm1(x):
  """log(e^x - 1) for x > 0 without overflow or cancellation."""
  small = jnp.log(jnp.expm1(jnp.minimum(x, 1.0)))
  xl = jnp.maximum(x, 1.0)
  return jnp.where(x <= 1.0, small, xl + jnp.log1p(-jnp.exp(-xl)))


def _ln_psi(u):
  """log psi(e^u), psi(x) = x - 1 + e^{-x}."""
  return 2.0 * u + _ln_psi_over_x2(jnp.exp(u))


def _bisect(fn, lo, hi, iters):
  """Bisection keeping fn(lo) > 0 >= fn(hi) (fn decreasing); returns (lo, hi)."""
  def body(_, b):
    lo, hi = b
    mid = 0.5 * (lo + hi)
    pos = fn(mid) > 0
    return jnp.where(pos, mid, lo), jnp.where(pos, hi, mid)
  return jax.lax.fori_loop(0, iters, body, (lo, hi))


def _defaults(dtype):
  x64 = jnp.finfo(dtype).bits == 64
  return (60, 52) if x64 else (36, 32)


def allocate_shared_bandwidth(devices: Devices, payload_bits: ArrayLike,
                              num_samples: ArrayLike, deadline_s: ArrayLike,
                              flops_per_sample: ArrayLike, total_bandwidth_hz: ArrayLike, *,
                              outer_iters: Optional[int] = None,
                              inner_iters: Optional[int] = None
                              ) -> Tuple[Allocation, Array, Array]:
  """Energy-optimal (f, p, W) for all devices sharing a bandwidth budget.

  Args:
    devices: Devices with [K] fields; `bandwidth_hz` is ignored.
    payload_bits, num_samples, deadline_s, flops_per_sample: as in `allocate`.
    total_bandwidth_hz: W_tot, the budget sum_k W_k <= W_tot (scalar, > 0).
    outer_iters: bisection steps on log mu (static); default 60 float64 / 36 float32.
    inner_iters: per-device bisection steps (static); default 52 float64 / 32 float32.

  Returns:
    (allocation, bandwidth_hz [K], mu): the Allocation at the optimal
    bandwidths, the bandwidths (0 for infeasible devices) and the budget
    multiplier mu in J/Hz (0 when no device is feasible).
  """
  _check_inputs(devices, payload_bits, num_samples, deadline_s, flops_per_sample)
  if not isinstance(total_bandwidth_hz, jax.core.Tracer):
    w = float(jnp.asarray(total_bandwidth_hz))
    if not (math.isfinite(w) and w > 0):
      raise ValueError(f"total_bandwidth_hz={w!r} is invalid; valid range: finite and > 0")
  oi, ii = _defaults(devices.gain.dtype)
  oi = oi if outer_iters is None else int(outer_iters)
  ii = ii if inner_iters is None else int(inner_iters)
  return _shared(devices, payload_bits, num_samples, deadline_s, flops_per_sample,
                 total_bandwidth_hz, oi, ii)


def _mu_of_allocation(d, al, s, bw):
  """mu_k(W) = -dE*_k/dW (envelope theorem) from a per-device allocation at W."""
  t = al.t_comm_s
  x = s * model.LN2 / (t * bw)
  kphi = jnp.exp(jnp.log(d.noise_psd_w_hz) + jnp.log(bw) - jnp.log(d.gain) + _ln_phi(jnp.log(x)))
  lam = jnp.maximum(al.nu - kphi, 0.0)  # multiplier of t >= t^min (0 when interior)
  xm = jnp.log1p(model.snr(d.p_max_w, d.gain, bw, d.noise_psd_w_hz))
  ratio = jnp.exp(_ln_psi(jnp.log(xm)) - jnp.log(xm))  # psi(x_max) / x_max
  return t / bw * (kphi + lam * ratio)


@functools.partial(jax.jit, static_argnums=(6, 7))
def _shared(d, payload_bits, num_samples, deadline_s, flops_per_sample, total_bw,
            outer_iters, inner_iters):
  dtype = d.gain.dtype
  tiny = jnp.finfo(dtype).tiny
  w_tot = jnp.asarray(total_bw, dtype)
  cycles = model.cycles_per_sample(flops_per_sample, d.flops_per_cycle) * num_samples
  s = jnp.maximum(_float(payload_bits), tiny)
  T = jnp.asarray(deadline_s, dtype)
  shape = jnp.broadcast_shapes(cycles.shape, s.shape, T.shape, d.gain.shape)
  cycles, s, T = (jnp.broadcast_to(v, shape).astype(dtype) for v in (cycles, s, T))

  # Feasibility with all the bandwidth, exactly as `allocate` would test it.
  tmin_all = model.t_min(s, d.gain, w_tot, d.p_max_w, d.noise_psd_w_hz)
  s_max = T - cycles / d.f_max_hz  # longest upload time (f = f_max)
  feasible = s_max >= tmin_all
  s_max_safe = jnp.where(feasible, s_max, T)

  ln_b = jnp.log(s) + math.log(model.LN2)  # b = S ln 2
  ln_n0, ln_h = jnp.log(d.noise_psd_w_hz), jnp.log(d.gain)
  ln_c = jnp.log(d.p_max_w) + ln_h - ln_n0  # c = p_max h / N0
  ln_cyc = jnp.log(cycles)
  ln_2tau = math.log(2.0) + jnp.log(d.tau)
  ln_fmin, ln_fmax = jnp.log(d.f_min_hz), jnp.log(d.f_max_hz)

  # W_min: x / (e^x - 1) = r = b / (c s_max), x = ln(1 + c / W_min); decreasing in x.
  ln_r = jnp.minimum(ln_b - ln_c - jnp.log(s_max_safe), -jnp.finfo(dtype).eps)
  u_lo0 = jnp.log(-jnp.expm1(ln_r))  # x/(e^x-1) >= 1 - x/2 > r
  u_hi0 = jnp.log(2.0 - 2.0 * ln_r)  # x/(e^x-1) <= r
  # lo end: x slightly below x(W_min), W slightly above W_min (feasible side).
  u_wmin, _ = _bisect(lambda u: (u - _ln_expm1(jnp.exp(u))) - ln_r, u_lo0, u_hi0,
                      inner_iters + 8)
  ln_wmin = ln_c - _ln_expm1(jnp.exp(u_wmin))
  w_min = jnp.where(feasible, jnp.exp(ln_wmin), 0.0)
  k_feas = jnp.maximum(jnp.sum(feasible), 1).astype(dtype)

  # Bracket on log mu from the budget split W'.
  slack = jnp.maximum(w_tot - jnp.sum(w_min), 0.0)
  w_split = jnp.where(feasible, jnp.maximum(w_min + slack / k_feas, w_min * 1.001), w_tot)
  al_split = _allocate(d.replace(bandwidth_hz=w_split), payload_bits, num_samples, deadline_s,
                       flops_per_sample, inner_iters)
  mu_split = _mu_of_allocation(d, al_split, s, w_split)
  ok = feasible & al_split.feasible & (mu_split > 0) & jnp.isfinite(mu_split)
  ln_mu_split = jnp.log(jnp.where(ok, mu_split, 1.0))
  big = jnp.asarray(jnp.finfo(dtype).max, dtype)
  lm_lo = jnp.min(jnp.where(ok, ln_mu_split, big)) - 2.0
  lm_hi = jnp.max(jnp.where(ok, ln_mu_split, -big)) + 2.0
  any_ok = jnp.any(ok)
  lm_lo, lm_hi = jnp.where(any_ok, lm_lo, 0.0), jnp.where(any_ok, lm_hi, 0.0)

  def bandwidth(lm):
    """W_k(mu) per device, mu = e^lm (decreasing in mu)."""
    # Branch A: power below p_max.
    def ln_t_a(u):
      return lm + ln_h - ln_n0 - _ln_phi(u)

    def ln_w_a(u):
      return ln_b - ln_t_a(u) - u

    def g_a(u):
      lt = ln_t_a(u)
      ln_nu = lm + ln_w_a(u) - lt
      lf = jnp.clip((ln_nu - ln_2tau) / 3.0, ln_fmin, ln_fmax)
      return jnp.exp(ln_cyc - lf) + jnp.exp(lt) - T

    ua_hi = u_wmin
    ua_lo = jnp.minimum(jnp.minimum(0.0, 0.5 * (lm + ln_h - ln_n0 - jnp.log(T))), ua_hi)
    _, ua = _bisect(g_a, ua_lo, ua_hi, inner_iters)
    lw_a = ln_w_a(ua)
    valid_a = (g_a(ua_hi) <= 0) & (_ln_expm1(jnp.exp(ua)) <= ln_c - lw_a)

    # Branch B: p = p_max, on the curve t = t^min(W); solve mu_B(x) = mu.
    def ln_w_b(u):
      return ln_c - _ln_expm1(jnp.exp(u))

    def neg_h_b(u):  # lm - log mu_B(u), decreasing in u
      lw = ln_w_b(u)
      lt = ln_b - lw - u
      t = jnp.exp(lt)
      f_raw = jnp.minimum(cycles / jnp.maximum(T - t, tiny), d.f_max_hz)
      coef = jnp.where(f_raw >= d.f_min_hz, jnp.exp(ln_2tau + 3.0 * jnp.log(f_raw)), 0.0)
      ln_mu_b = jnp.log(coef + d.p_max_w) + lt + _ln_psi(u) - lw - u
      return lm - ln_mu_b

    ub, _ = _bisect(neg_h_b, u_wmin - 40.0, u_wmin, inner_iters)
    w = jnp.exp(jnp.where(valid_a, lw_a, ln_w_b(ub)))
    return jnp.where(feasible, w, 0.0)

  _, lm = _bisect(lambda lm: jnp.sum(bandwidth(lm)) - w_tot, lm_lo, lm_hi, outer_iters)
  w = bandwidth(lm)
  total = jnp.sum(w)
  w = w * jnp.where((total > 0) & (total < w_tot), w_tot / jnp.maximum(total, tiny), 1.0)
  mu = jnp.where(any_ok, jnp.exp(lm), 0.0)

  al = _allocate(d.replace(bandwidth_hz=jnp.where(feasible, w, w_tot)), payload_bits,
                 num_samples, deadline_s, flops_per_sample, inner_iters)
  zero = jnp.zeros_like(al.e_comm_j)
  al = al.replace(
      power_w=jnp.where(feasible, al.power_w, zero),
      e_comm_j=jnp.where(feasible, al.e_comm_j, zero),
      energy_j=jnp.where(feasible, al.energy_j, al.e_comp_j),
      feasible=al.feasible & feasible)
  return al, w, mu
