"""Figures of the energy sweep (matplotlib, Agg; imported only when figures are written).

  energy_vs_axes.png       energy per uploading device vs each swept axis, one
                           panel per axis, the first allocation (kkt by default),
                           one line per bits scheme (mean ± std over draws).
  allocations_vs_axes.png  the same for on-demand bits, one line per allocation.
  feasible_vs_axes.png     the feasible fraction (devices that can upload by T).
  energy_split.png         base scenario: computation vs communication energy per
                           uploading device, for every (bits, allocation).
  energy_cdf.png           base scenario: CDF of the per-device energy (all draws).
  bits_histogram.png       base scenario: the on-demand bit-widths.
  heatmap.png              the two heat-map axes: (ondemand, kkt) energy per device
                           and the (fp32, kkt) / (ondemand, kkt) ratio.
Axes spanning a decade or more are drawn on log scales.
"""
from __future__ import annotations

import os
from typing import Any, Dict, List

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

from experiments.energy_sweep import settings as sc_lib  # pylint: disable=wrong-import-position

COLORS = {"fp32": "tab:red", "fixed": "tab:orange", "ondemand": "tab:blue"}
STYLES = {"kkt": "-", "deadline": "--", "split": "-.", "max": ":", "shared": (0, (1, 1))}
ALLOC_COLORS = {"kkt": "tab:blue", "deadline": "tab:orange", "split": "tab:green",
                "max": "tab:red", "shared": "tab:purple"}
LABELS = {"deadline_factor": "deadline factor (T / rule)", "num_devices": "devices N",
          "total_bandwidth_hz": "total bandwidth W (Hz)", "eps_scale": "error-demand scale",
          "model": "model (parameters)", "p_max_w": "p_max (W)", "f_max_hz": "f_max (Hz)",
          "fading": "Rayleigh fading"}


def _x(axis: str, rows: List[Dict[str, Any]]):
  """x positions, tick labels (or None) and whether to use a log scale."""
  if axis == "fading":
    return np.array([float(r["axis_value"]) for r in rows]), ["off", "on"], False
  if axis == "model":
    xs = np.array([float(r["num_params"]) for r in rows])
    names = [(f"{r['axis_value']}\n" if r["axis_value"] in sc_lib.MODEL_PRESETS else "")
             + f"{r['num_params'] / 1e6:.3g}M" for r in rows]
    return xs, names, xs.max() / xs.min() >= 10
  xs = np.array([float(r["axis_value"]) for r in rows])
  return xs, None, axis in sc_lib.AXES and xs.min() > 0 and xs.max() / xs.min() >= 10


def _series(rows, axis, scheme, alloc):
  sel = [r for r in rows if r["axis"] == axis and not r["axis2"]
         and r["bits_scheme"] == scheme and r["allocation"] == alloc]
  return sorted(sel, key=lambda r: float(r["num_params"] if axis == "model"
                                         else r["axis_value"]))


def _panel(ax, rows, axis, lines, key="energy_per_device_j", log_y=True):
  """One axis panel; lines = [(scheme, allocation, label, color, style)]."""
  for scheme, alloc, label, color, style in lines:
    sel = _series(rows, axis, scheme, alloc)
    if not sel:
      continue
    xs, ticks, log_x = _x(axis, sel)
    ys = np.array([r[key] for r in sel])
    err = np.array([r[key + "_std"] for r in sel])
    ax.errorbar(xs, ys, yerr=err, color=color, linestyle=style, marker="o", ms=3, capsize=2,
                label=label)
    if log_x:
      ax.set_xscale("log")
    if ticks is not None:
      ax.set_xticks(xs)
      ax.set_xticklabels(ticks)
  if log_y:
    ax.set_yscale("log")
  ax.set_xlabel(LABELS[axis])
  ax.grid(alpha=0.3, which="both")


def _grid(rows, axes, lines, ylabel, path, key="energy_per_device_j", log_y=True):
  """One panel per swept axis, the same lines in each."""
  cols = min(4, len(axes))
  nrow = -(-len(axes) // cols)
  fig, grid = plt.subplots(nrow, cols, figsize=(4 * cols, 3.2 * nrow), squeeze=False)
  for ax, axis in zip(grid.ravel(), axes):
    _panel(ax, rows, axis, lines, key, log_y)
    ax.set_ylabel(ylabel)
    if not log_y:
      ax.set_ylim(-0.05, 1.05)
  for ax in grid.ravel()[len(axes):]:
    ax.axis("off")
  grid[0, 0].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def _axis_figures(rows, settings, allocs, out):
  axes = [a for a, _ in settings.axes]
  if not axes:
    return
  a0 = allocs[0]
  by_scheme = [(b, a0, b, COLORS.get(b), "-") for b in settings.bits_schemes]
  _grid(rows, axes, by_scheme, f"J per uploading device ({a0})",
        os.path.join(out, "energy_vs_axes.png"))
  _grid(rows, axes, by_scheme, f"feasible fraction ({a0})",
        os.path.join(out, "feasible_vs_axes.png"), "feasible_frac", log_y=False)
  schemes = list(settings.bits_schemes)
  b = "ondemand" if "ondemand" in schemes else schemes[-1]
  by_alloc = [(b, a, a, ALLOC_COLORS.get(a), STYLES.get(a, "-")) for a in allocs]
  _grid(rows, axes, by_alloc, f"J per uploading device ({b} bits)",
        os.path.join(out, "allocations_vs_axes.png"))


def _base_figures(rows, result, settings, allocs, out):
  base = [r for r in rows if r["axis"] == "base"]
  fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(base)), 3.6))
  labels = [f"{r['bits_scheme']}\n{r['allocation']}" for r in base]
  nf = np.array([max(r["feasible_frac"] * r["num_devices"], 1e-30) for r in base])
  comp = np.array([r["comp_energy_j"] for r in base]) / nf
  comm = np.array([r["comm_energy_j"] for r in base]) / nf
  ax.bar(labels, comp, label="computation", color="tab:gray")
  ax.bar(labels, comm, bottom=comp, label="communication", color="tab:cyan")
  ax.set_ylabel("J per uploading device")
  ax.set_title("base scenario: energy split")
  ax.tick_params(axis="x", labelsize=7)
  ax.legend()
  fig.tight_layout()
  fig.savefig(os.path.join(out, "energy_split.png"), dpi=100)
  plt.close(fig)
  dev = result["base"]
  energy = np.asarray(dev["dev_energy"], np.float64)  # [R, B, P', N]
  schemes = list(settings.bits_schemes)
  last = schemes.index("ondemand") if "ondemand" in schemes else len(schemes) - 1
  fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
  for b, scheme in enumerate(schemes):
    _cdf(a1, energy[:, b, 0], scheme, COLORS.get(scheme), "-")
  a1.set_title(f"allocation {allocs[0]}, per bits scheme")
  for p, alloc in enumerate(allocs):
    _cdf(a2, energy[:, last, p], alloc, ALLOC_COLORS.get(alloc), STYLES.get(alloc, "-"))
  a2.set_title(f"bits {schemes[last]}, per allocation")
  for a in (a1, a2):
    a.set_xscale("log")
    a.set_xlabel("energy per device and round (J)")
    a.set_ylabel("fraction of uploading devices")
    a.grid(alpha=0.3, which="both")
    a.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(os.path.join(out, "energy_cdf.png"), dpi=100)
  plt.close(fig)
  bits = np.asarray(dev["dev_bits"])[:, last].ravel()
  bits = bits[bits > 0]
  fig, ax = plt.subplots(figsize=(5, 3.2))
  ax.hist(bits, bins=np.arange(0.5, 33.5, 1.0), color=COLORS.get(schemes[last], "tab:blue"))
  ax.set_xlabel("bit-width")
  ax.set_ylabel("devices (all draws)")
  ax.set_title(f"base scenario: {schemes[last]} bits ({settings.bits_source})")
  fig.tight_layout()
  fig.savefig(os.path.join(out, "bits_histogram.png"), dpi=100)
  plt.close(fig)


def _cdf(ax, values, label, color, style):
  v = np.sort(values[np.isfinite(values)].ravel())
  if v.size:
    ax.step(v, np.arange(1, v.size + 1) / v.size, where="post", label=label, color=color,
            linestyle=style)


def _heatmap(rows, settings, allocs, out):
  a, b = settings.heatmap
  axes = dict(settings.axes)
  va, vb = list(axes[a]), list(axes[b])
  cell = {(r["axis_value"], r["axis2_value"], r["bits_scheme"]): r["energy_per_device_j"]
          for r in rows if r["axis"] == a and r["axis2"] == b and r["allocation"] == allocs[0]}
  panels = [("ondemand", None), ("fp32", "ondemand")]
  panels = [p for p in panels if all(s in settings.bits_schemes for s in p if s)]
  if not panels:
    return
  fig, grid = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
  for ax, (num, den) in zip(grid[0], panels):
    z = np.array([[cell[x, y, num] / (cell[x, y, den] if den else 1.0) for x in va]
                  for y in vb])
    im = ax.imshow(np.log10(z) if den is None else z, origin="lower", aspect="auto",
                   cmap="viridis")
    ax.set_xticks(range(len(va)), [str(v) for v in va], rotation=45)
    ax.set_yticks(range(len(vb)), [str(v) for v in vb])
    ax.set_xlabel(LABELS[a])
    ax.set_ylabel(LABELS[b])
    ax.set_title(f"log10 J per device ({num}, {allocs[0]})" if den is None
                 else f"({num}, {allocs[0]}) / ({den}, {allocs[0]})")
    fig.colorbar(im, ax=ax)
  fig.tight_layout()
  fig.savefig(os.path.join(out, "heatmap.png"), dpi=100)
  plt.close(fig)


def write_figures(rows: List[Dict[str, Any]], result: Dict[str, Any],
                  settings: sc_lib.SweepSettings, out: str) -> None:
  """Every figure of the module docstring under `out`."""
  os.makedirs(out, exist_ok=True)
  allocs = list(result["allocations"])
  _axis_figures(rows, settings, allocs, out)
  _base_figures(rows, result, settings, allocs, out)
  if settings.heatmap:
    _heatmap(rows, settings, allocs, out)
