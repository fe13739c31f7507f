"""Results table (CSV/JSON, markdown) and matplotlib figures of a sweep.

Figures (under `<workdir>/figures/`):
  energy_vs_rounds.png   cumulative energy per (bits, allocation) and upload
                         per run, vs rounds
  schemes.png            total energy per (bits, allocation); upload and
                         held-out loss per run
  quality_vs_energy.png  held-out loss (EMA) vs cumulative energy and vs
                         uploaded MB: lower-left is better
  demand_tradeoff.png    on-demand runs per error-demand scale: mean bits,
                         energy, upload, held-out loss (needs >= 2 scales)
  bits_histogram.png     bit-widths chosen; samples.png: sample grids
"""
from __future__ import annotations

import csv
import json
import os
from typing import Any, Dict, List

import numpy as np

from fedqjax.results import ROW_COLUMNS, STAT_COLUMNS, load_history

CSV_COLUMNS = ROW_COLUMNS + tuple(f"{c}_{s}" for c in STAT_COLUMNS
                                  for s in ("mean", "ci95"))
TABLE_COLUMNS = ("bits_scheme", "allocation", "total_energy_j",
                 "comm_energy_j", "uploaded_mb", "mean_bits",
                 "skipped_client_rounds", "heldout_loss",
                 "energy_to_target_j", "fid")
STYLES = {"kkt": "-", "deadline": "--", "split": "-.", "max": ":"}


def write_results(workdir: str, results: Dict[str, Any]) -> None:
  """results.json, results.csv and figures/*.png under `workdir`."""
  tmp = os.path.join(workdir, "results.json.tmp")
  with open(tmp, "w") as f:
    json.dump(results, f, indent=1)
  os.replace(tmp, os.path.join(workdir, "results.json"))
  tmp = os.path.join(workdir, "results.csv.tmp")
  with open(tmp, "w", newline="") as f:
    w = csv.writer(f)
    m = results["meta"]
    w.writerow([f"# dataset={m['dataset']} preset={m['preset']} "
                f"deadline={m['deadline_policy']} backend={m['backend']} "
                f"heldout_size={m['heldout_size']} sampler={m['sampler']}"])
    w.writerow(CSV_COLUMNS)
    for r in results["rows"]:
      w.writerow(["" if r.get(c) is None else r.get(c) for c in CSV_COLUMNS])
  os.replace(tmp, os.path.join(workdir, "results.csv"))
  write_figures(workdir, results)


def _cell(v) -> str:
  if v is None:
    return ""
  return f"{v:.4g}" if isinstance(v, float) else str(v)


def markdown_table(results: Dict[str, Any]) -> str:
  """One line per (run, allocation); mean +- CI when there are seeds."""
  seeds = len(results["meta"].get("seeds", [0]))
  lines = ["| run | " + " | ".join(TABLE_COLUMNS) + " |",
           "|" + "---|" * (len(TABLE_COLUMNS) + 1)]
  for r in results["rows"]:
    cells = []
    for c in TABLE_COLUMNS:
      cell = _cell(r.get(c))
      if seeds > 1 and r.get(f"{c}_ci95") is not None:
        cell += f" (mean {_cell(r[f'{c}_mean'])} +- {_cell(r[f'{c}_ci95'])})"
      cells.append(cell)
    lines.append(f"| {r['run']} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def _plt():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def _save(fig, workdir: str, name: str) -> None:
  figdir = os.path.join(workdir, "figures")
  os.makedirs(figdir, exist_ok=True)
  fig.tight_layout()
  fig.savefig(os.path.join(figdir, name), dpi=100)
  fig.clf()
  _plt().close(fig)


def _colors(runs: List[str]) -> Dict[str, Any]:
  cmap = _plt().get_cmap("tab10")
  return {r: cmap(i % 10) for i, r in enumerate(runs)}


def write_figures(workdir: str, results: Dict[str, Any]) -> None:
  runs = [s["run"] for s in results["runs"]]
  hist = {r: load_history(workdir, r) for r in runs}
  tag = f"({results['meta']['dataset']}, {results['meta']['preset']})"
  energy_figure(workdir, results, hist, tag)
  quality_figure(workdir, results, hist, tag)
  schemes_figure(workdir, results)
  demand_figure(workdir, results)
  bits_figure(workdir, runs, hist)
  samples_figure(workdir, runs)


def energy_figure(workdir, results, hist, tag) -> None:
  plt = _plt()
  colors = _colors(list(hist))
  fig, ax = plt.subplots(1, 2, figsize=(11, 4))
  for run, h in hist.items():
    rows = [x for x in h if x["round"] > 0 and "energy" in x]
    if not rows:
      continue
    r = [x["round"] for x in rows]
    for p in rows[0]["energy"]:
      ax[0].plot(r, [x["energy"][p]["cum_j"] for x in rows],
                 STYLES.get(p, "-"), color=colors[run], label=f"{run}/{p}")
    ax[1].plot(r, [x["cum_uploaded_mb"] for x in rows], color=colors[run],
               label=run)
  ax[0].set(xlabel="round", ylabel="cumulative energy (J)", yscale="log",
            title=f"Energy per (bits, allocation) {tag}")
  ax[1].set(xlabel="round", ylabel="cumulative upload (MB)", yscale="log",
            title="Uploaded data (same for every allocation)")
  ax[0].legend(fontsize=6, ncol=2)
  ax[1].legend(fontsize=7)
  _save(fig, workdir, "energy_vs_rounds.png")


def quality_figure(workdir, results, hist, tag) -> None:
  plt = _plt()
  colors = _colors(list(hist))
  fig, ax = plt.subplots(1, 2, figsize=(11, 4))
  for run, h in hist.items():
    pts = [x for x in h if "heldout_ema" in x]
    if not pts:
      continue
    loss = [x["heldout_ema"] for x in pts]
    mb = [x.get("cum_uploaded_mb", 0.0) for x in pts]
    ax[1].plot(np.maximum(mb, 1e-3), loss, "o-", color=colors[run],
               label=run, ms=3)
    policies = next((list(x["energy"]) for x in pts if "energy" in x), [])
    for p in policies:
      e = [x["energy"][p]["cum_j"] if "energy" in x else 0.0 for x in pts]
      ax[0].plot(np.maximum(e, 1e-3), loss, "o" + STYLES.get(p, "-"),
                 color=colors[run], label=f"{run}/{p}", ms=3)
  ax[0].set(xlabel="cumulative energy (J)", xscale="log",
            ylabel="held-out denoising loss (EMA)",
            title=f"Quality vs energy {tag}")
  ax[1].set(xlabel="cumulative upload (MB)", xscale="log",
            ylabel="held-out denoising loss (EMA)", title="Quality vs upload")
  ax[0].legend(fontsize=6, ncol=2)
  ax[1].legend(fontsize=7)
  _save(fig, workdir, "quality_vs_energy.png")


def schemes_figure(workdir, results) -> None:
  plt = _plt()
  rows = results["rows"]
  fig, ax = plt.subplots(1, 3, figsize=(14, 4))
  labels = [f"{r['run']}\n{r['allocation']}" for r in rows]
  ax[0].bar(labels, [r.get("total_energy_j") or np.nan for r in rows])
  ax[0].set(ylabel="total energy (J)", yscale="log",
            title="Energy per (run, allocation)")
  ax[0].tick_params(axis="x", labelsize=6, rotation=90)
  runs = results["runs"]
  names = [s["run"] for s in runs]
  ax[1].bar(names, [s.get("uploaded_mb") or np.nan for s in runs])
  ax[1].set(ylabel="uploaded MB", title="Upload per run")
  ax[2].bar(names, [s.get("heldout_loss") or np.nan for s in runs])
  ax[2].set(ylabel="held-out loss (EMA, lower is better)",
            title="Quality per run")
  for a in ax[1:]:
    a.tick_params(axis="x", labelsize=7, rotation=45)
  _save(fig, workdir, "schemes.png")


def demand_figure(workdir, results) -> None:
  rows = [r for r in results["rows"] if r["bits_scheme"] == "ondemand"
          and r["allocation"] == results["meta"]["allocations"][0]]
  scales = sorted({r["eps_scale"] for r in rows})
  if len(scales) < 2:
    return
  plt = _plt()
  fig, ax = plt.subplots(1, 4, figsize=(16, 3.6))
  cols = (("mean_bits", "mean bits"), ("total_energy_j", "energy (J)"),
          ("uploaded_mb", "uploaded MB"), ("heldout_loss", "held-out loss"))
  for a, (col, label) in zip(ax, cols):
    mean = [np.nanmean([r.get(col) or np.nan for r in rows
                        if r["eps_scale"] == s]) for s in scales]
    a.plot(scales, mean, "o-")
    a.set(xlabel="error-demand scale", xscale="log", ylabel=label)
  ax[0].set_title(f"On-demand ({results['meta']['allocations'][0]})")
  _save(fig, workdir, "demand_tradeoff.png")


def bits_figure(workdir, runs, hist) -> None:
  plt = _plt()
  fig, ax = plt.subplots(figsize=(6, 4))
  for name in runs:
    bits = [b for x in hist[name] for b in x.get("bits", [])]
    if bits:
      ax.hist(bits, bins=np.arange(0.5, 33.5, 1), alpha=0.5, label=name)
  ax.set(xlabel="bits per entry", ylabel="client-rounds",
         title="Bit-widths chosen")
  ax.legend(fontsize=7)
  _save(fig, workdir, "bits_histogram.png")


def samples_figure(workdir, runs) -> None:
  grids = [(n, os.path.join(workdir, n, "samples_grid.npy")) for n in runs]
  grids = [(n, np.load(p)) for n, p in grids if os.path.exists(p)]
  if not grids:
    return
  plt = _plt()
  fig, ax = plt.subplots(1, len(grids), figsize=(4 * len(grids), 4.2))
  for a, (n, g) in zip(np.atleast_1d(ax), grids):
    a.imshow(g.squeeze(-1) if g.shape[-1] == 1 else g, cmap="gray")
    a.set_title(n)
    a.axis("off")
  _save(fig, workdir, "samples.png")
