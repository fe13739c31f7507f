"""Independent per-device reference solver (scipy), for tests and benchmarks.

Substitutes the active deadline t = T - A/f (A = c n cycles) and minimizes the
one-dimensional convex energy over f with bounded Brent; it shares no code
with the KKT + bisection allocator it checks. scipy is imported lazily.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

LN2 = math.log(2.0)


def scipy_energy(
  tau: float,
  cycles: float,
  bits: float,
  gain: float,
  bandwidth_hz: float,
  n0: float,
  p_max: float,
  f_min: float,
  f_max: float,
  deadline_s: float,
) -> Optional[float]:
  """Minimal energy of one device, or None when it cannot meet the deadline.

  Args:
    tau: effective switched capacitance; cycles: A = c n (cycles this round);
    bits: payload S; gain: h; bandwidth_hz: W; n0: noise PSD (W/Hz);
    p_max, f_min, f_max: limits; deadline_s: T.
  """
  from scipy import optimize  # pylint: disable=g-import-not-at-top

  h, W, T = gain, bandwidth_hz, deadline_s
  tmin = bits / (W * np.log1p(p_max * h / (n0 * W)) / LN2)
  if cycles / f_max + tmin > T:
    return None
  lo = max(f_min, cycles / (T - tmin))

  def energy(f):
    t = T - cycles / f
    return tau * cycles * f * f + t * (n0 * W / h) * np.expm1(
      bits * LN2 / (t * W)
    )

  cands = [energy(lo), energy(f_max)]
  if f_max - lo > 1e-12 * f_max:
    res = optimize.minimize_scalar(
      lambda y: energy(y * f_max),
      bounds=(lo / f_max, 1.0),
      method="bounded",
      options=dict(xatol=1e-13, maxiter=2000),
    )
    cands.append(res.fun)
  return min(cands)
