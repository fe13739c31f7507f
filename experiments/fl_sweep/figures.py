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

from experiments.fl_sweep.results import ROW_COLUMNS, STAT_COLUMNS, load_history

CSV_COLUMNS = ROW_COLUMNS + tuple(f"{c}_{s}" for c in STAT_COLUMNS
                                  for s in ("mean", "ci95"))
TABLE_COLUMNS = ("bits_scheme", "allocation", "total_energy_j",
                 "comm_energy_j", "uploaded_mb", "mean_bits",
                 "skipped_client_rounds", "heldout_loss",
                 "energy_to_target_j", "fid", "kid", "vlb_bits_per_dim")
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


def _groups(results, hist) -> Dict[str, List[List[dict]]]:
  """Histories grouped by bits scheme (and eps scale): one list per seed."""
  scales = len({s["eps_scale"] for s in results["runs"]}) > 1
  out: Dict[str, List[List[dict]]] = {}
  for s in results["runs"]:
    label = s["bits_scheme"] + (f" eps x{s['eps_scale']:g}" if scales else "")
    if hist.get(s["run"]):
      out.setdefault(label, []).append(hist[s["run"]])
  return out


def _mean_curve(seeds: List[List[dict]], value) -> tuple:
  """(rounds, mean over seeds of value(row)) on the rounds every seed has."""
  common = set.intersection(*[{x["round"] for x in h if value(x) is not None}
                              for h in seeds])
  rounds = sorted(common)
  by = [{x["round"]: value(x) for x in h} for h in seeds]
  return rounds, [float(np.mean([b[r] for b in by])) for r in rounds]


def _get(*keys):
  def f(row):
    for k in keys:
      if not isinstance(row, dict) or k not in row:
        return None
      row = row[k]
    return row
  return f


def energy_figure(workdir, results, hist, tag) -> None:
  plt = _plt()
  groups = _groups(results, hist)
  colors = _colors(list(groups))
  seeds = len(results["meta"].get("seeds", [0]))
  fig, ax = plt.subplots(1, 2, figsize=(11, 4))
  for label, hs in groups.items():
    for p in results["meta"]["allocations"]:
      r, e = _mean_curve(hs, _get("energy", p, "cum_j"))
      ax[0].plot(r, e, STYLES.get(p, "-"), color=colors[label],
                 label=f"{label} / {p}")
    r, mb = _mean_curve(hs, _get("cum_uploaded_mb"))
    ax[1].plot(r, mb, color=colors[label], label=label)
  mean = f", mean of {seeds} seeds" if seeds > 1 else ""
  ax[0].set(xlabel="round", ylabel="cumulative energy (J)", yscale="log",
            title=f"Energy per (bits, allocation) {tag}{mean}")
  ax[1].set(xlabel="round", ylabel="cumulative upload (MB)", yscale="log",
            title="Uploaded data (same for every allocation)")
  ax[0].legend(fontsize=6, ncol=2)
  ax[1].legend(fontsize=7)
  _save(fig, workdir, "energy_vs_rounds.png")


def quality_figure(workdir, results, hist, tag) -> None:
  plt = _plt()
  groups = _groups(results, hist)
  colors = _colors(list(groups))
  fig, ax = plt.subplots(1, 2, figsize=(11, 4))
  init = []
  for label, hs in groups.items():
    init += [h[0]["heldout_ema"] for h in hs if h and h[0]["round"] == 0]
    trained = [[x for x in h if x["round"] > 0] for h in hs]
    _, loss = _mean_curve(trained, _get("heldout_ema"))
    for p in results["meta"]["allocations"]:
      _, e = _mean_curve(trained, lambda x, p=p: _get("energy", p, "cum_j")(
          x) if "heldout_ema" in x else None)
      ax[0].plot(e, loss, "o" + STYLES.get(p, "-"), color=colors[label],
                 label=f"{label} / {p}", ms=3)
    _, mb = _mean_curve(trained, lambda x: x.get("cum_uploaded_mb")
                        if "heldout_ema" in x else None)
    ax[1].plot(mb, loss, "o-", color=colors[label], label=label, ms=3)
  for a in ax:
    if init:
      a.axhline(float(np.mean(init)), color="gray", ls="--", lw=0.8,
                label="at initialization")
  seeds = len(results["meta"].get("seeds", [0]))
  # Log loss axis: the drop from initialization (~1) and the late
  # differences between schemes (~1e-3) are both readable.
  ax[0].set(xlabel="cumulative energy (J)", xscale="log", yscale="log",
            ylabel="held-out denoising loss (EMA)",
            title=f"Quality vs energy {tag}" + (
                f", mean of {seeds} seeds" if seeds > 1 else ""))
  ax[1].set(xlabel="cumulative upload (MB)", xscale="log", yscale="log",
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
