"""Per-device parts of `shared_bandwidth`: log-space constants and W_k(mu).

For a budget multiplier mu every device solves min_{f,t,W} E_k^tot + mu W_k;
its bandwidth W_k(mu) is that of branch A (power below p_max) when valid,
else of branch B (p = p_max), each found by one regula falsi on u = log x,
x the spectral efficiency. Derivation, bracketing and conventions: the
`shared_bandwidth` module docstring.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax.numpy as jnp

from fedqjax.energy import model
from fedqjax.energy import numerics as nm
from fedqjax.typing import Array


class DeviceConsts(NamedTuple):
  """Per-device log-space constants of the joint problem, [K]."""

  cycles: Array
  deadline: Array
  payload: Array  # S
  ln_b: Array  # log(S ln 2)
  ln_n0: Array
  ln_h: Array
  ln_c: Array  # log(p_max h / N0)
  ln_cyc: Array
  ln_2tau: Array
  ln_fmin: Array
  ln_fmax: Array
  u_wmin: Array  # log x at W_min (bisection lo end: W slightly above W_min)
  feasible: Array


def device_consts(d, pr, present) -> DeviceConsts:
  """Feasibility with all the bandwidth (the `allocate` test) and W_min per device."""
  dtype = d.gain.dtype
  feasible = pr.feasible & present
  cycles, s, T = (
    v.astype(dtype) for v in (pr.cycles, pr.payload_bits, pr.deadline_s)
  )
  s_max = T - cycles / d.f_max_hz  # longest upload time (f = f_max)
  s_max_safe = jnp.where(feasible, s_max, T)
  ln_b = jnp.log(s) + math.log(model.LN2)  # b = S ln 2
  ln_n0, ln_h = jnp.log(d.noise_psd_w_hz), jnp.log(d.gain)
  ln_c = jnp.log(d.p_max_w) + ln_h - ln_n0  # c = p_max h / N0
  # W_min: x / (e^x - 1) = r = b / (c s_max), x = ln(1 + c / W_min); decreasing in x.
  ln_r = jnp.minimum(ln_b - ln_c - jnp.log(s_max_safe), -jnp.finfo(dtype).eps)
  u_lo0 = jnp.log(-jnp.expm1(ln_r))  # x/(e^x-1) >= 1 - x/2 > r
  u_hi0 = jnp.log(2.0 - 2.0 * ln_r)  # x/(e^x-1) <= r
  # lo end: x slightly below x(W_min), W slightly above W_min (feasible side).
  u_wmin, _ = nm.bisect(
    lambda u: (u - nm.ln_expm1(jnp.exp(u))) - ln_r,
    u_lo0,
    u_hi0,
    nm.default_iters(dtype) + 8,
  )
  return DeviceConsts(
    cycles=cycles,
    deadline=T,
    payload=s,
    ln_b=ln_b,
    ln_n0=ln_n0,
    ln_h=ln_h,
    ln_c=ln_c,
    ln_cyc=jnp.log(cycles),
    ln_2tau=math.log(2.0) + jnp.log(d.tau),
    ln_fmin=jnp.log(d.f_min_hz),
    ln_fmax=jnp.log(d.f_max_hz),
    u_wmin=u_wmin,
    feasible=feasible,
  )


def bandwidth_a(d, k, lm, inner_iters):
  """Branch A (power below p_max): (log W, valid) at mu = e^lm."""

  def ln_t_a(u):
    return lm + k.ln_h - k.ln_n0 - nm.ln_phi(u)

  def ln_w_a(u):
    return k.ln_b - ln_t_a(u) - u

  def ln_f(u):
    ln_nu = lm + ln_w_a(u) - ln_t_a(u)
    return jnp.clip((ln_nu - k.ln_2tau) / 3.0, k.ln_fmin, k.ln_fmax)

  def g_a(u):
    return jnp.exp(k.ln_cyc - ln_f(u)) + jnp.exp(ln_t_a(u)) - k.deadline

  ua_hi = k.u_wmin
  ua_lo = jnp.minimum(
    jnp.minimum(0.0, 0.5 * (lm + k.ln_h - k.ln_n0 - jnp.log(k.deadline))), ua_hi
  )
  log_g_a = lambda u: (
    jnp.logaddexp(k.ln_cyc - ln_f(u), ln_t_a(u)) - jnp.log(k.deadline)
  )
  _, ua = nm.illinois(log_g_a, ua_lo, ua_hi, inner_iters)
  lw_a = ln_w_a(ua)
  valid_a = (g_a(ua_hi) <= 0) & (nm.ln_expm1(jnp.exp(ua)) <= k.ln_c - lw_a)
  return lw_a, valid_a


def bandwidth_b(d, k, lm, inner_iters):
  """Branch B (p = p_max, t = t^min(W)): log W solving mu_B(x) = mu = e^lm."""
  tiny = jnp.finfo(d.gain.dtype).tiny

  def ln_w_b(u):
    return k.ln_c - nm.ln_expm1(jnp.exp(u))

  def neg_h_b(u):  # lm - log mu_B(u), decreasing in u
    lw = ln_w_b(u)
    lt = k.ln_b - lw - u
    t = jnp.exp(lt)
    f_raw = jnp.minimum(
      k.cycles / jnp.maximum(k.deadline - t, tiny), d.f_max_hz
    )
    coef = jnp.where(
      f_raw >= d.f_min_hz, jnp.exp(k.ln_2tau + 3.0 * jnp.log(f_raw)), 0.0
    )
    ln_mu_b = jnp.log(coef + d.p_max_w) + lt + nm.ln_psi(u) - lw - u
    return lm - ln_mu_b

  ub, _ = nm.illinois(neg_h_b, k.u_wmin - 40.0, k.u_wmin, inner_iters)
  return ln_w_b(ub)


def bandwidth(d, k, lm, inner_iters):
  """W_k(mu) per device, mu = e^lm (decreasing in mu); 0 for infeasible devices."""
  lw_a, valid_a = bandwidth_a(d, k, lm, inner_iters)
  w = jnp.exp(jnp.where(valid_a, lw_a, bandwidth_b(d, k, lm, inner_iters)))
  return jnp.where(k.feasible, w, 0.0)
