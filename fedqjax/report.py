"""Results table (CSV/JSON) and matplotlib figures of a sweep."""
from __future__ import annotations

import csv
import json
import os
from typing import Any, Dict

import numpy as np

COLUMNS = ("scheme", "total_energy_j", "comp_energy_j", "comm_energy_j",
           "uploaded_mb", "mean_bits", "final_loss", "fid", "kid", "kid_std",
           "infeasible_total", "rounds", "diverged", "train_wall_s",
           "eval_wall_s")


def _history(workdir: str, scheme: str):
  path = os.path.join(workdir, scheme, "history.json")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return json.load(f)


def write_results(workdir: str, results: Dict[str, Any]) -> None:
  """results.json, results.csv and figures/*.png under `workdir`."""
  tmp = os.path.join(workdir, "results.json.tmp")
  with open(tmp, "w") as f:
    json.dump(results, f, indent=1)
  os.replace(tmp, os.path.join(workdir, "results.json"))
  with open(os.path.join(workdir, "results.csv"), "w", newline="") as f:
    w = csv.writer(f)
    meta = results["meta"]
    w.writerow([f"# dataset={meta['dataset']} preset={meta['preset']} "
                f"eval_samples={meta['eval_samples']} "
                f"sampler={meta['sampler']} backend={meta['backend']}"])
    w.writerow(COLUMNS)
    for s in results["schemes"]:
      w.writerow([s.get(c, "") for c in COLUMNS])
  write_figures(workdir, results)


def markdown_table(results: Dict[str, Any]) -> str:
  cols = ("scheme", "total_energy_j", "comm_energy_j", "uploaded_mb",
          "mean_bits", "final_loss", "fid", "kid")
  lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
  for s in results["schemes"]:
    cells = []
    for c in cols:
      v = s.get(c, "")
      cells.append(f"{v:.4g}" if isinstance(v, float) else str(v))
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def write_figures(workdir: str, results: Dict[str, Any]) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  figdir = os.path.join(workdir, "figures")
  os.makedirs(figdir, exist_ok=True)
  schemes = [s["scheme"] for s in results["schemes"]]
  tag = f"({results['meta']['dataset']}, {results['meta']['preset']})"

  fig, ax = plt.subplots(1, 2, figsize=(10, 4))
  for name in schemes:
    h = _history(workdir, name)
    if h:
      r = [x["round"] for x in h]
      ax[0].plot(r, [x["cum_energy_j"] for x in h], label=name)
      ax[1].plot(r, [x["cum_uploaded_mb"] for x in h], label=name)
  ax[0].set(xlabel="round", ylabel="cumulative energy (J)", yscale="log",
            title=f"Energy {tag}")
  ax[1].set(xlabel="round", ylabel="cumulative upload (MB)", yscale="log",
            title="Uploaded data")
  ax[0].legend()
  fig.tight_layout()
  fig.savefig(os.path.join(figdir, "energy_vs_rounds.png"), dpi=100)
  plt.close(fig)

  fig, ax = plt.subplots(1, 3, figsize=(13, 4))
  vals = lambda k: [s.get(k, np.nan) or np.nan for s in results["schemes"]]
  ax[0].bar(schemes, vals("uploaded_mb"))
  ax[0].set(ylabel="uploaded MB", title="Upload per scheme")
  ax[1].bar(schemes, vals("total_energy_j"))
  ax[1].set(ylabel="total energy (J)", yscale="log", title="Energy")
  ax[2].bar(schemes, vals("fid"))
  ax[2].set(ylabel="FID (lower is better)", title="FID per scheme")
  fig.tight_layout()
  fig.savefig(os.path.join(figdir, "schemes.png"), dpi=100)
  plt.close(fig)

  fig, ax = plt.subplots(figsize=(6, 4))
  for name in schemes:
    bits = [b for x in _history(workdir, name) for b in x.get("bits", [])]
    if bits:
      ax.hist(bits, bins=np.arange(0.5, 33.5, 1), alpha=0.5, label=name)
  ax.set(xlabel="bits per entry", ylabel="client-rounds",
         title="Bit-widths chosen")
  ax.legend()
  fig.tight_layout()
  fig.savefig(os.path.join(figdir, "bits_histogram.png"), dpi=100)
  plt.close(fig)

  grids = [(n, os.path.join(workdir, n, "samples_grid.npy")) for n in schemes]
  grids = [(n, np.load(p)) for n, p in grids if os.path.exists(p)]
  if grids:
    fig, ax = plt.subplots(1, len(grids), figsize=(4 * len(grids), 4.2))
    ax = np.atleast_1d(ax)
    for a, (n, g) in zip(ax, grids):
      a.imshow(g.squeeze(-1) if g.shape[-1] == 1 else g, cmap="gray")
      a.set_title(n)
      a.axis("off")
    fig.tight_layout()
    fig.savefig(os.path.join(figdir, "samples.png"), dpi=100)
    plt.close(fig)
