"""Paired comparisons of schemes: per seed, on the SAME devices and data.

Each seed draws its own device population, initialization and data split;
an unpaired interval of a scheme's energy over seeds mostly measures the
population. The comparison a reviewer wants is paired: for every row (bits
scheme x allocation x error-demand scale) and seed, the energy saving
factor of the row against a baseline row of the same seed,

    saving_vs_<bits>_<allocation> = E(baseline) / E(row)   (> 1: less energy),

and over seeds its geometric mean with a 95% Student-t interval computed
on the log ratio: exp(mean(log s) +- t_{0.975, n-1} sd(log s) / sqrt(n))
(the log makes the interval of s and of 1/s the same statement). The
baselines: fp32 uploads at the optimal allocation, and fixed 8-bit at the
optimal allocation (the strongest simple quantizer).
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

BASELINES: Tuple[Tuple[str, str], ...] = (("fp32", "kkt"), ("fixed", "kkt"))
SUFFIXES = ("", "_gmean", "_lo", "_hi")


def column(bits: str, allocation: str) -> str:
  return f"saving_vs_{bits}_{allocation}"


COLUMNS = tuple(column(b, a) + s for b, a in BASELINES for s in SUFFIXES)


def log_interval(
  ratios: Sequence[Optional[float]],
) -> Tuple[Optional[float], Optional[float], Optional[float]]:
  """(geometric mean, 95% low, 95% high) of positive ratios; the interval
  needs >= 2 of them (else None)."""
  v = np.asarray(
    [r for r in ratios if r is not None and r > 0 and math.isfinite(r)],
    np.float64,
  )
  if len(v) == 0:
    return None, None, None
  logs = np.log(v)
  mean = float(np.exp(logs.mean()))
  if len(v) < 2:
    return mean, None, None
  from scipy import stats  # pylint: disable=g-import-not-at-top

  half = stats.t.ppf(0.975, len(v) - 1) * logs.std(ddof=1) / math.sqrt(len(v))
  return (
    mean,
    float(np.exp(logs.mean() - half)),
    float(np.exp(logs.mean() + half)),
  )


def seed_groups(rows: List[Dict[str, Any]]) -> List[List[Dict[str, Any]]]:
  """The rows of each (bits scheme, allocation, eps scale): one per seed."""
  groups: Dict[tuple, List[dict]] = {}
  for r in rows:
    key = (r["bits_scheme"], r["allocation"], r["eps_scale"])
    groups.setdefault(key, []).append(r)
  return list(groups.values())


def add_paired(
  rows: List[Dict[str, Any]], value: str = "total_energy_j"
) -> List[Dict[str, Any]]:
  """Adds each baseline's per-seed saving factor and, per (bits, allocation,
  eps scale), its geometric mean and 95% interval over seeds (None where
  the seed has no baseline run)."""
  by_seed = {
    (r["seed"], r["bits_scheme"], r["allocation"]): r.get(value)
    for r in rows
    if r["eps_scale"] == 1.0
  }
  for bits, alloc in BASELINES:
    col = column(bits, alloc)
    for r in rows:
      base, mine = by_seed.get((r["seed"], bits, alloc)), r.get(value)
      r[col] = base / mine if base is not None and mine and mine > 0 else None
    for members in seed_groups(rows):
      g, lo, hi = log_interval([m[col] for m in members])
      for m in members:
        m[col + "_gmean"], m[col + "_lo"], m[col + "_hi"] = g, lo, hi
  return rows
