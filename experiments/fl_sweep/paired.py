"""Paired comparisons of schemes: per seed, on the SAME devices and data.

Each seed draws its own device population, initialization and data split;
an unpaired interval of a scheme's energy over seeds mostly measures the
population. The comparison a reviewer wants is paired: for every row (bits
scheme x allocation x error-demand scale) and seed, the energy saving
factor of the row against a baseline row of the same seed,

    saving_vs_<bits>_<allocation> = E(baseline) / E(row)   (> 1: less energy),

and over the n seeds of the row's group that have both values, its
geometric mean with a 95% Student-t interval computed on the log ratio:
exp(mean(log s) +- t_{0.975, n-1} sd(log s) / sqrt(n)) (the log makes the
interval of s and of 1/s the same statement); n is written beside it
(`<column>_n`), and the interval needs n >= 2. The baselines: fp32 uploads
at the optimal allocation, and fixed 8-bit at the optimal allocation (the
strongest simple quantizer), each taken at one error-demand scale, the
baseline scale: given explicitly, else 1.0 when the baseline rows have it,
else their first scale. A seed without a baseline row (a run that is
missing or has no energy) leaves its rows' savings empty and is named by
`notes`, never dropped silently.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

BASELINES: Tuple[Tuple[str, str], ...] = (("fp32", "kkt"), ("fixed", "kkt"))
SUFFIXES = ("", "_gmean", "_lo", "_hi", "_n")


def column(bits: str, allocation: str) -> str:
  return f"saving_vs_{bits}_{allocation}"


COLUMNS = tuple(column(b, a) + s for b, a in BASELINES for s in SUFFIXES)


def log_interval(
  ratios: Sequence[Optional[float]],
) -> Tuple[Optional[float], Optional[float], Optional[float], int]:
  """(geometric mean, 95% low, 95% high, n) of the n positive finite
  ratios; the interval needs n >= 2 (else None), the mean n >= 1."""
  v = np.asarray(
    [r for r in ratios if r is not None and r > 0 and math.isfinite(r)],
    np.float64,
  )
  n = len(v)
  if n == 0:
    return None, None, None, 0
  logs = np.log(v)
  mean = float(np.exp(logs.mean()))
  if n < 2:
    return mean, None, None, n
  from scipy import stats  # pylint: disable=g-import-not-at-top

  half = stats.t.ppf(0.975, n - 1) * logs.std(ddof=1) / math.sqrt(n)
  return (
    mean,
    float(np.exp(logs.mean() - half)),
    float(np.exp(logs.mean() + half)),
    n,
  )


def seed_groups(rows: List[Dict[str, Any]]) -> List[List[Dict[str, Any]]]:
  """The rows of each (bits scheme, allocation, eps scale): one per seed."""
  groups: Dict[tuple, List[dict]] = {}
  for r in rows:
    key = (r["bits_scheme"], r["allocation"], r["eps_scale"])
    groups.setdefault(key, []).append(r)
  return list(groups.values())


def default_scale(scales: Sequence[float]) -> Optional[float]:
  """1.0 when among `scales`, else the first of them (None: no scales)."""
  scales = list(scales)
  if not scales:
    return None
  return 1.0 if 1.0 in scales else float(scales[0])


def one_scale_per_scheme(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
  """The rows of every bits scheme at one eps scale: 1.0 where the scheme
  has it, else its first (a scheme run at one scale keeps it)."""
  scales: Dict[str, Dict[float, None]] = {}  # ordered sets
  for r in rows:
    scales.setdefault(r["bits_scheme"], {})[r["eps_scale"]] = None
  keep = {b: default_scale(list(s)) for b, s in scales.items()}
  return [r for r in rows if r["eps_scale"] == keep[r["bits_scheme"]]]


def _is_baseline(r: Dict[str, Any]) -> bool:
  return (r["bits_scheme"], r["allocation"]) in BASELINES


def resolve_baseline_scale(
  rows: List[Dict[str, Any]], requested: Optional[float] = None
) -> Optional[float]:
  """The eps scale of the baseline rows every row is paired with.

  Args:
    rows: the sweep's rows.
    requested: a scale of the rows, or None: 1.0 when the baseline rows have
      it, else the first scale they have (row order).

  Returns:
    The scale, or None when there is no baseline row at all.

  Raises:
    ValueError: `requested` is not an eps scale of the rows.
  """
  if requested is not None:
    swept = list(dict.fromkeys(r["eps_scale"] for r in rows))
    if requested not in swept:
      raise ValueError(
        f"baseline_scale={requested!r} is invalid; valid: None (1.0 if "
        f"swept, else the first) or an eps scale of the rows {swept}"
      )
    return float(requested)
  return default_scale(
    list(dict.fromkeys(r["eps_scale"] for r in rows if _is_baseline(r)))
  )


def _usable(x) -> bool:
  return x is not None and math.isfinite(x) and x > 0


def _baseline_values(rows, bits, alloc, scale, value) -> Dict[int, float]:
  """{seed: the baseline row's usable value} at `scale`."""
  return {
    r["seed"]: r[value]
    for r in rows
    if (r["bits_scheme"], r["allocation"]) == (bits, alloc)
    and r["eps_scale"] == scale
    and _usable(r.get(value))
  }


def add_paired(
  rows: List[Dict[str, Any]],
  value: str = "total_energy_j",
  baseline_scale: Optional[float] = None,
) -> List[Dict[str, Any]]:
  """Adds each baseline's per-seed saving factor (None where the seed has
  no baseline value) and, per (bits, allocation, eps scale), the geometric
  mean, 95% interval and n over the seeds that have one.

  Args:
    rows: the sweep's rows (changed in place and returned).
    value: the column compared.
    baseline_scale: see `resolve_baseline_scale`.
  """
  scale = resolve_baseline_scale(rows, baseline_scale)
  for bits, alloc in BASELINES:
    col = column(bits, alloc)
    base = _baseline_values(rows, bits, alloc, scale, value)
    for r in rows:
      b, mine = base.get(r["seed"]), r.get(value)
      r[col] = b / mine if b is not None and _usable(mine) else None
    for members in seed_groups(rows):
      stats = log_interval([m[col] for m in members])
      for m in members:
        for s, x in zip(SUFFIXES[1:], stats):
          m[col + s] = x
  return rows


def notes(
  rows: List[Dict[str, Any]],
  value: str = "total_energy_j",
  baseline_scale: Optional[float] = None,
) -> List[str]:
  """One warning line per baseline that some seed of the rows lacks (its
  savings are empty for that seed; the intervals count the rest, `_n`)."""
  scale = resolve_baseline_scale(rows, baseline_scale)
  seeds = sorted({r["seed"] for r in rows})
  out = []
  for bits, alloc in BASELINES:
    have = _baseline_values(rows, bits, alloc, scale, value)
    miss = [s for s in seeds if s not in have]
    if miss:
      at = "" if scale is None else f" at eps scale {scale:g}"
      out.append(
        f"paired savings vs {bits}/{alloc}{at}: no baseline {value} for "
        f"seed(s) {miss}; {column(bits, alloc)} intervals use "
        f"{len(seeds) - len(miss)} of {len(seeds)} seeds (see its _n column)"
      )
  return out
