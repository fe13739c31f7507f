"""Outputs of the energy sweep: results.csv, summary.md and figures (issue 17 item 3).

One CSV row per (scenario row, bits scheme, allocation); every statistic is
the mean over the device draws with its sample standard deviation (`_std`).
Energies count the devices that upload (feasible ones; infeasible devices skip
the round under "drop"): `total_energy_j` is the round's energy summed over
them, `energy_per_device_j` divides it by their number, and
`feasible_frac` says how many they are. A draw with no feasible device has
no per-device energy (NaN, excluded from that mean; `feasible_frac` shows it).
`mean_bits` and `payload_mb` (MB = 1e6 bytes) are over all N devices (what
each would send; the same for every allocation). matplotlib is imported
lazily, only by `write_figures`.
"""
from __future__ import annotations

import csv
import math
import os
from typing import Any, Dict, List

import numpy as np

from experiments.energy_sweep import settings as sc_lib

SCENARIO_COLUMNS = ("axis", "axis_value", "axis2", "axis2_value", "num_devices",
                    "deadline_factor", "deadline_s", "total_bandwidth_hz", "eps_scale", "model",
                    "num_params", "p_max_w", "f_max_hz", "fading")
STAT_COLUMNS = ("feasible_frac", "total_energy_j", "comp_energy_j", "comm_energy_j",
                "energy_per_device_j", "mean_bits", "payload_mb")
COLUMNS = (SCENARIO_COLUMNS + ("bits_scheme", "allocation", "num_draws")
           + tuple(c for s in STAT_COLUMNS for c in (s, s + "_std"))
           + ("budget_exceeded_draws",))
LOG_AXES = ("num_devices", "total_bandwidth_hz", "eps_scale", "p_max_w", "deadline_factor")


def _mean_std(x: np.ndarray):
  x = np.asarray(x, np.float64)
  ok = np.isfinite(x)
  if not ok.any():
    return math.nan, math.nan
  m = float(np.mean(x[ok]))
  return m, float(np.std(x[ok], ddof=1)) if ok.sum() > 1 else 0.0


def table_rows(result: Dict[str, Any], settings: sc_lib.SweepSettings) -> List[Dict[str, Any]]:
  """The CSV rows (dicts with COLUMNS) of a `sweep.run` result."""
  prep, st = result["prepared"], result["stats"]
  rows = []
  for axis, value, axis2, value2, i in prep.rows:
    s = prep.scenarios[i]
    n = float(s.num_devices)
    spec = prep.models[s.model]
    head = dict(axis=axis, axis_value=value, axis2=axis2, axis2_value=value2,
                num_devices=s.num_devices, deadline_factor=s.deadline_factor,
                deadline_s=float(np.mean(st["deadline_s"][:, i])),
                total_bandwidth_hz=s.total_bandwidth_hz, eps_scale=s.eps_scale, model=s.model,
                num_params=spec.num_params, p_max_w=s.p_max_w, f_max_hz=s.f_max_hz,
                fading=s.fading)
    for b, scheme in enumerate(settings.bits_schemes):
      for p, alloc in enumerate(result["allocations"]):
        ec, em, nf = (st[k][:, i, b, p].astype(np.float64)
                      for k in ("e_comp", "e_comm", "n_feasible"))
        per_draw = dict(
            feasible_frac=nf / n, total_energy_j=ec + em, comp_energy_j=ec, comm_energy_j=em,
            energy_per_device_j=np.where(nf > 0, (ec + em) / np.maximum(nf, 1), np.nan),
            mean_bits=st["bits_sum"][:, i, b] / n,
            payload_mb=st["payload_sum"][:, i, b] / n / 8e6)
        row = dict(head, bits_scheme=scheme, allocation=alloc, num_draws=settings.num_seeds)
        for k, v in per_draw.items():
          row[k], row[k + "_std"] = _mean_std(v)
        row["budget_exceeded_draws"] = (int(np.sum(st["budget_over"][:, i, b]))
                                        if alloc == "shared" else 0)
        rows.append(row)
  return rows


def write_csv(rows: List[Dict[str, Any]], path: str) -> None:
  with open(path, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=COLUMNS)
    w.writeheader()
    for r in rows:
      w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})


def _pm(r, key, fmt="{:.4g}"):
  m, s = r[key], r[key + "_std"]
  return "n/a" if not math.isfinite(m) else (fmt.format(m) + " ± " + fmt.format(s))


def write_summary(rows, settings: sc_lib.SweepSettings, result, path: str) -> str:
  """A short markdown table of the base scenario (and the key ratios); returns it."""
  base = [r for r in rows if r["axis"] == "base"]
  b0 = base[0]
  rule = ("fixed" if settings.deadline_s > 0 else
          f"{b0['deadline_factor']:g} x {settings.deadline_rule}"
          + (f" (q={settings.deadline_quantile:g})" if settings.deadline_rule == "quantile"
             else ""))
  lines = [
      "# Energy sweep: base scenario", "",
      f"N = {b0['num_devices']} devices, model {b0['model']} ({b0['num_params']:,} params), "
      f"W = {b0['total_bandwidth_hz'] / 1e6:g} MHz, T = {b0['deadline_s']:.4g} s "
      f"({rule}), eps scale {b0['eps_scale']:g}, p_max = {b0['p_max_w']:g} W, "
      f"f_max = {b0['f_max_hz'] / 1e9:g} GHz, fading {'on' if b0['fading'] else 'off'}; "
      f"{settings.num_seeds} device draws (mean ± std); on-demand bits: "
      f"{settings.bits_source}; {settings.samples_per_round} samples per round.", "",
      "Energy per round over the devices that upload (infeasible ones skip the round).", "",
      "| bits | allocation | energy / device (J) | computation (J) | communication (J) "
      "| feasible | mean bits | payload (MB) |",
      "|---|---|---|---|---|---|---|---|"]
  for r in base:
    n = max(r["feasible_frac"] * r["num_devices"], 1e-30)
    lines.append(
        f"| {r['bits_scheme']} | {r['allocation']} | {_pm(r, 'energy_per_device_j')} "
        f"| {r['comp_energy_j'] / n:.4g} | {r['comm_energy_j'] / n:.4g} "
        f"| {r['feasible_frac']:.3f} | {r['mean_bits']:.2f} | {r['payload_mb']:.4g} |")
  e = {(r["bits_scheme"], r["allocation"]): r["energy_per_device_j"] for r in base}
  ratios = []
  if ("fp32", "kkt") in e and ("ondemand", "kkt") in e:
    ratios.append(f"(fp32, kkt) / (ondemand, kkt) = {e['fp32', 'kkt'] / e['ondemand', 'kkt']:.3g}")
  for a in ("deadline", "split", "max", "shared"):
    if ("ondemand", a) in e and ("ondemand", "kkt") in e:
      ratios.append(f"(ondemand, {a}) / (ondemand, kkt) = "
                    f"{e['ondemand', a] / e['ondemand', 'kkt']:.3g}")
  if ratios:
    lines += ["", "Ratios of energy per uploading device: " + "; ".join(ratios) + "."]
  t = result["timings"]
  lines += ["", "Wall time of the jitted grid evaluation, compile included (s): "
            + ", ".join(f"{n}: {v:.1f}" for n, v in t.items()) + "."]
  text = "\n".join(lines) + "\n"
  with open(path, "w") as f:
    f.write(text)
  return text


def write_all(result, settings: sc_lib.SweepSettings, workdir: str) -> List[Dict[str, Any]]:
  """results.csv, summary.md and (settings.figures) figures/ under workdir."""
  os.makedirs(workdir, exist_ok=True)
  rows = table_rows(result, settings)
  write_csv(rows, os.path.join(workdir, "results.csv"))
  write_summary(rows, settings, result, os.path.join(workdir, "summary.md"))
  if settings.figures:
    from experiments.energy_sweep import figures as sweep_figures  # pylint: disable=g-import-not-at-top
    sweep_figures.write_figures(rows, result, settings, os.path.join(workdir, "figures"))
  return rows
