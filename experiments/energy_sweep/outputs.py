"""Outputs of the energy sweep: results.csv and summary.md.

One CSV row per (scenario row, bits scheme, allocation); every statistic is
the mean over the device draws with its sample standard deviation (`_std`).
Energies count the devices that upload (feasible ones; infeasible devices
skip the round under "drop"): `total_energy_j` is the round's energy summed
over them, `energy_per_device_j` divides it by their number, and
`feasible_frac` says how many they are. A draw with no feasible device has
no per-device energy (NaN, excluded from that mean; `feasible_frac` shows
it). `comp_share` is E_comp / (E_comp + E_comm) of the round
(`fedqjax.energy.computation_share`), the mean over the draws of each
draw's share. `regime` and `cycles_per_sample` say where the computation's
constants come from (c = 0: the model's FLOPs / FLOPs per cycle).
`mean_bits` and `payload_mb` (MB = 1e6 bytes) are over all N devices
(what each would send; the same for every allocation). `write_all` also
draws the figures (figures.py, which imports matplotlib) when
`settings.figures` is set.
"""

from __future__ import annotations

import csv
import math
import os
from typing import Any, Dict, List

import numpy as np

from experiments.energy_sweep import sweep
from experiments.energy_sweep.settings import Settings
from fedqjax.energy.regimes import computation_share

SCENARIO_COLUMNS = (
  "axis",
  "axis_value",
  "axis2",
  "axis2_value",
  "num_devices",
  "deadline_factor",
  "deadline_s",
  "total_bandwidth_hz",
  "eps_scale",
  "model",
  "num_params",
  "p_max_w",
  "f_max_hz",
  "fading",
  "regime",
  "cycles_per_sample",
)
STAT_COLUMNS = (
  "feasible_frac",
  "total_energy_j",
  "comp_energy_j",
  "comm_energy_j",
  "comp_share",
  "energy_per_device_j",
  "mean_bits",
  "payload_mb",
)
COLUMNS = (
  SCENARIO_COLUMNS
  + ("bits_scheme", "allocation", "num_draws")
  + tuple(c for s in STAT_COLUMNS for c in (s, s + "_std"))
  + ("budget_exceeded_draws",)
)
Row = Dict[str, Any]


def _mean_std(x: np.ndarray):
  x = np.asarray(x, np.float64)
  ok = np.isfinite(x)
  if not ok.any():
    return math.nan, math.nan
  m = float(np.mean(x[ok]))
  return m, float(np.std(x[ok], ddof=1)) if ok.sum() > 1 else 0.0


def _scenario_head(prep, st, row, settings: Settings) -> Row:
  """The scenario columns of one grid row."""
  axis, value, axis2, value2, i = row
  s = prep.scenarios[i]
  return dict(
    axis=axis,
    axis_value=value,
    axis2=axis2,
    axis2_value=value2,
    num_devices=s.num_devices,
    deadline_factor=s.deadline_factor,
    deadline_s=float(np.mean(st["deadline_s"][:, i])),
    total_bandwidth_hz=s.total_bandwidth_hz,
    eps_scale=s.eps_scale,
    model=s.model,
    num_params=prep.models[s.model].num_params,
    p_max_w=s.p_max_w,
    f_max_hz=s.f_max_hz,
    fading=s.fading,
    regime=settings.regime,
    cycles_per_sample=sweep.cycles_of(settings, s),
  )


def _per_draw(st, i: int, b: int, p: int, n: float) -> Dict[str, Any]:
  """Each statistic of (scenario i, scheme b, allocation p), per draw."""
  ec, em, nf = (
    st[k][:, i, b, p].astype(np.float64)
    for k in ("e_comp", "e_comm", "n_feasible")
  )
  return dict(
    feasible_frac=nf / n,
    total_energy_j=ec + em,
    comp_energy_j=ec,
    comm_energy_j=em,
    comp_share=computation_share(ec, em),
    energy_per_device_j=np.where(nf > 0, (ec + em) / np.maximum(nf, 1), np.nan),
    mean_bits=st["bits_sum"][:, i, b] / n,
    payload_mb=st["payload_sum"][:, i, b] / n / 8e6,
  )


def table_rows(result: Dict[str, Any], settings: Settings) -> List[Row]:
  """The CSV rows (dicts with COLUMNS) of a `sweep.run` result."""
  prep, st = result["prepared"], result["stats"]
  rows = []
  for grid_row in prep.rows:
    i = grid_row[-1]
    head = _scenario_head(prep, st, grid_row, settings)
    n = float(head["num_devices"])
    for b, scheme in enumerate(settings.bits_schemes):
      for p, alloc in enumerate(result["allocations"]):
        row = dict(
          head,
          bits_scheme=scheme,
          allocation=alloc,
          num_draws=settings.num_seeds,
        )
        for k, v in _per_draw(st, i, b, p, n).items():
          row[k], row[k + "_std"] = _mean_std(v)
        row["budget_exceeded_draws"] = (
          int(np.sum(st["budget_over"][:, i, b])) if alloc == "shared" else 0
        )
        rows.append(row)
  return rows


def write_csv(rows: List[Row], path: str) -> None:
  with open(path, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=COLUMNS)
    w.writeheader()
    for r in rows:
      w.writerow(
        {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()}
      )


def _pm(r, key, fmt="{:.4g}"):
  m, s = r[key], r[key + "_std"]
  if not math.isfinite(m):
    return "n/a"
  return fmt.format(m) + " ± " + fmt.format(s)


def _header(b0: Row, settings: Settings) -> List[str]:
  """The summary's title and the base scenario in words."""
  dl = settings.deadline
  rule = (
    "fixed"
    if dl.seconds > 0
    else f"{b0['deadline_factor']:g} x {dl.rule}"
    + (f" (q={dl.quantile:g})" if dl.rule == "quantile" else "")
  )
  return [
    "# Energy sweep: base scenario",
    "",
    f"N = {b0['num_devices']} devices, model {b0['model']} "
    f"({b0['num_params']:,} params), "
    f"W = {b0['total_bandwidth_hz'] / 1e6:g} MHz, "
    f"T = {b0['deadline_s']:.4g} s ({rule}), "
    f"eps scale {b0['eps_scale']:g}, p_max = {b0['p_max_w']:g} W, "
    f"f_max = {b0['f_max_hz'] / 1e9:g} GHz, "
    f"fading {'on' if b0['fading'] else 'off'}; "
    f"regime {settings.regime} (cycles per sample: "
    + (
      f"{b0['cycles_per_sample']:g}"
      if b0["cycles_per_sample"] > 0
      else "the model's FLOPs / FLOPs per cycle"
    )
    + "); "
    f"{settings.num_seeds} device draws (mean ± std); on-demand bits: "
    f"{settings.bits_source}; {settings.samples_per_round} samples per "
    "round.",
    "",
    "Energy per round over the devices that upload (infeasible ones skip "
    "the round).",
    "",
    "| bits | allocation | energy / device (J) | computation (J) "
    "| communication (J) | comp share | feasible | mean bits "
    "| payload (MB) |",
    "|---|---|---|---|---|---|---|---|---|",
  ]


def _ratios(base: List[Row], regime: str) -> List[str]:
  """The key ratios of energy per uploading device, as sentences."""
  e = {
    (r["bits_scheme"], r["allocation"]): r["energy_per_device_j"] for r in base
  }
  ratios = []
  if ("fp32", "kkt") in e and ("ondemand", "kkt") in e:
    ratios.append(
      "(fp32, kkt) / (ondemand, kkt) = "
      f"{e['fp32', 'kkt'] / e['ondemand', 'kkt']:.3g}"
    )
  for a in ("deadline", "split", "max", "shared"):
    if ("ondemand", a) in e and ("ondemand", "kkt") in e:
      ratios.append(
        f"(ondemand, {a}) / (ondemand, kkt) = "
        f"{e['ondemand', a] / e['ondemand', 'kkt']:.3g}"
      )
  if not ratios:
    return []
  return [
    "",
    f"Regime {regime}: ratios of energy per uploading device: "
    + "; ".join(ratios)
    + ".",
  ]


def summary(rows: List[Row], settings: Settings, result) -> str:
  """A short markdown table of the base scenario (and the key ratios)."""
  base = [r for r in rows if r["axis"] == "base"]
  lines = _header(base[0], settings)
  for r in base:
    n = max(r["feasible_frac"] * r["num_devices"], 1e-30)
    lines.append(
      f"| {r['bits_scheme']} | {r['allocation']} "
      f"| {_pm(r, 'energy_per_device_j')} "
      f"| {r['comp_energy_j'] / n:.4g} | {r['comm_energy_j'] / n:.4g} "
      f"| {r['comp_share']:.3g} "
      f"| {r['feasible_frac']:.3f} | {r['mean_bits']:.2f} "
      f"| {r['payload_mb']:.4g} |"
    )
  lines += _ratios(base, settings.regime)
  t = result["timings"]
  lines += [
    "",
    "Wall time of the jitted grid evaluation, compile included "
    "(s): " + ", ".join(f"{n}: {v:.1f}" for n, v in t.items()) + ".",
  ]
  return "\n".join(lines) + "\n"


def write_summary(
  rows: List[Row], settings: Settings, result, path: str
) -> str:
  """Writes `summary(...)` to `path`; returns it."""
  text = summary(rows, settings, result)
  with open(path, "w") as f:
    f.write(text)
  return text


def write_all(result, settings: Settings, workdir: str) -> List[Row]:
  """results.csv, summary.md and (settings.figures) figures/ under workdir;
  returns the CSV rows."""
  os.makedirs(workdir, exist_ok=True)
  rows = table_rows(result, settings)
  write_csv(rows, os.path.join(workdir, "results.csv"))
  write_summary(rows, settings, result, os.path.join(workdir, "summary.md"))
  if settings.figures:
    # pylint: disable-next=g-import-not-at-top
    from experiments.energy_sweep import figures

    figures.write_figures(
      rows, result, settings, os.path.join(workdir, "figures")
    )
  return rows
