"""Figures of the energy sweep (matplotlib; imported only to draw them).

  energy_vs_axes       energy per uploading device vs each swept axis, one
                       panel per axis, the first allocation (kkt by
                       default), one line per bits scheme (mean ± std over
                       draws).
  allocations_vs_axes  the same for on-demand bits, one line per allocation.
  feasible_vs_axes     the feasible fraction (devices that can upload by T).
  energy_split         base scenario: computation vs communication energy
                       per uploading device, for every (bits, allocation).
  energy_cdf           base scenario: CDF of the per-device energy (all
                       draws).
  bits_histogram       base scenario: the on-demand bit-widths.
  heatmap              the two heat-map axes: (ondemand, kkt) energy per
                       device and the (fp32, kkt) / (ondemand, kkt) ratio.
  saving_vs_comp_share the cycles_per_sample axis: E(fp32) / E(ondemand)
                       against fp32's computation share, the regimes
                       marked (figure_regimes.py).
Axes spanning a decade or more are drawn on log scales.

Every figure is a `matplotlib.figure.Figure` of its own (no pyplot, no
backend selection): `make_figures` returns them (a notebook displays them
with its own backend untouched); `write_figures` saves them as PNG and PDF.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List

import numpy as np
from matplotlib.figure import Figure

from experiments.common import figfiles
from experiments.energy_sweep import figure_regimes, models
from experiments.energy_sweep.settings import AXES, Settings

COLORS = {"fp32": "tab:red", "fixed": "tab:orange", "ondemand": "tab:blue"}
STYLES = {
  "kkt": "-",
  "deadline": "--",
  "split": "-.",
  "max": ":",
  "shared": (0, (1, 1)),
}
ALLOC_COLORS = {
  "kkt": "tab:blue",
  "deadline": "tab:orange",
  "split": "tab:green",
  "max": "tab:red",
  "shared": "tab:purple",
}
LABELS = {
  "deadline_factor": "deadline factor (T / rule)",
  "num_devices": "devices N",
  "total_bandwidth_hz": "total bandwidth W (Hz)",
  "eps_scale": "error-demand scale",
  "model": "model (parameters)",
  "p_max_w": "p_max (W)",
  "f_max_hz": "f_max (Hz)",
  "fading": "Rayleigh fading",
  "cycles_per_sample": "cycles per sample c",
}
DPI = 100
Rows = List[Dict[str, Any]]


def _x(axis: str, rows: Rows):
  """x positions, tick labels (or None) and whether to use a log scale."""
  if axis == "fading":
    return (
      np.array([float(r["axis_value"]) for r in rows]),
      ["off", "on"],
      False,
    )
  if axis == "model":
    xs = np.array([float(r["num_params"]) for r in rows])
    names = [
      (
        f"{r['axis_value']}\n"
        if r["axis_value"] in models.MODEL_PRESETS
        else ""
      )
      + f"{r['num_params'] / 1e6:.3g}M"
      for r in rows
    ]
    return xs, names, xs.max() / xs.min() >= 10
  xs = np.array([float(r["axis_value"]) for r in rows])
  return (xs, None, axis in AXES and xs.min() > 0 and xs.max() / xs.min() >= 10)


def _series(rows: Rows, axis, scheme, alloc) -> Rows:
  sel = [
    r
    for r in rows
    if r["axis"] == axis
    and not r["axis2"]
    and r["bits_scheme"] == scheme
    and r["allocation"] == alloc
  ]
  return sorted(
    sel,
    key=lambda r: float(
      r["num_params"] if axis == "model" else r["axis_value"]
    ),
  )


def _panel(ax, rows, axis, lines, key="energy_per_device_j", log_y=True):
  """One axis panel; lines = [(scheme, allocation, label, color, style)]."""
  for scheme, alloc, label, color, style in lines:
    sel = _series(rows, axis, scheme, alloc)
    if not sel:
      continue
    xs, ticks, log_x = _x(axis, sel)
    ys = np.array([r[key] for r in sel])
    err = np.array([r[key + "_std"] for r in sel])
    ax.errorbar(
      xs,
      ys,
      yerr=err,
      color=color,
      linestyle=style,
      marker="o",
      ms=3,
      capsize=2,
      label=label,
    )
    if log_x:
      ax.set_xscale("log")
    if ticks is not None:
      ax.set_xticks(xs)
      ax.set_xticklabels(ticks)
  if log_y:
    ax.set_yscale("log")
  ax.set_xlabel(LABELS[axis])
  ax.grid(alpha=0.3, which="both")


def _grid(
  rows, axes, lines, ylabel, key="energy_per_device_j", log_y=True
) -> Figure:
  """One panel per swept axis, the same lines in each."""
  cols = min(4, len(axes))
  nrow = -(-len(axes) // cols)
  fig = Figure(figsize=(4 * cols, 3.2 * nrow))
  grid = fig.subplots(nrow, cols, squeeze=False)
  for ax, axis in zip(grid.ravel(), axes):
    _panel(ax, rows, axis, lines, key, log_y)
    ax.set_ylabel(ylabel)
    if not log_y:
      ax.set_ylim(-0.05, 1.05)
  for ax in grid.ravel()[len(axes) :]:
    ax.axis("off")
  grid[0, 0].legend(fontsize=8)
  fig.tight_layout()
  return fig


def _ondemand_index(settings: Settings) -> int:
  """The on-demand scheme's index (else the last scheme's)."""
  schemes = list(settings.bits_schemes)
  return (
    schemes.index("ondemand") if "ondemand" in schemes else len(schemes) - 1
  )


def _axis_figures(rows, settings, allocs) -> Dict[str, Figure]:
  axes = [a for a, _ in settings.axes]
  if not axes:
    return {}
  a0 = allocs[0]
  by_scheme = [(b, a0, b, COLORS.get(b), "-") for b in settings.bits_schemes]
  b = settings.bits_schemes[_ondemand_index(settings)]
  by_alloc = [
    (b, a, a, ALLOC_COLORS.get(a), STYLES.get(a, "-")) for a in allocs
  ]
  return {
    "energy_vs_axes": _grid(
      rows, axes, by_scheme, f"J per uploading device ({a0})"
    ),
    "feasible_vs_axes": _grid(
      rows,
      axes,
      by_scheme,
      f"feasible fraction ({a0})",
      "feasible_frac",
      log_y=False,
    ),
    "allocations_vs_axes": _grid(
      rows, axes, by_alloc, f"J per uploading device ({b} bits)"
    ),
  }


def _energy_split(rows: Rows) -> Figure:
  base = [r for r in rows if r["axis"] == "base"]
  fig = Figure(figsize=(max(6, 0.7 * len(base)), 3.6))
  ax = fig.subplots()
  labels = [f"{r['bits_scheme']}\n{r['allocation']}" for r in base]
  nf = np.array(
    [max(r["feasible_frac"] * r["num_devices"], 1e-30) for r in base]
  )
  comp = np.array([r["comp_energy_j"] for r in base]) / nf
  comm = np.array([r["comm_energy_j"] for r in base]) / nf
  ax.bar(labels, comp, label="computation", color="tab:gray")
  ax.bar(labels, comm, bottom=comp, label="communication", color="tab:cyan")
  ax.set_ylabel("J per uploading device")
  ax.set_title("base scenario: energy split")
  ax.tick_params(axis="x", labelsize=7)
  ax.legend()
  fig.tight_layout()
  return fig


def _cdf(ax, values, label, color, style):
  v = np.sort(values[np.isfinite(values)].ravel())
  if v.size:
    ax.step(
      v,
      np.arange(1, v.size + 1) / v.size,
      where="post",
      label=label,
      color=color,
      linestyle=style,
    )


def _energy_cdf(result, settings: Settings, allocs) -> Figure:
  energy = np.asarray(result["base"]["dev_energy"], np.float64)  # [R,B,P',N]
  schemes = list(settings.bits_schemes)
  last = _ondemand_index(settings)
  fig = Figure(figsize=(10, 3.6))
  a1, a2 = fig.subplots(1, 2)
  for b, scheme in enumerate(schemes):
    _cdf(a1, energy[:, b, 0], scheme, COLORS.get(scheme), "-")
  a1.set_title(f"allocation {allocs[0]}, per bits scheme")
  for p, alloc in enumerate(allocs):
    _cdf(
      a2,
      energy[:, last, p],
      alloc,
      ALLOC_COLORS.get(alloc),
      STYLES.get(alloc, "-"),
    )
  a2.set_title(f"bits {schemes[last]}, per allocation")
  for a in (a1, a2):
    a.set_xscale("log")
    a.set_xlabel("energy per device and round (J)")
    a.set_ylabel("fraction of uploading devices")
    a.grid(alpha=0.3, which="both")
    a.legend(fontsize=8)
  fig.tight_layout()
  return fig


def _bits_histogram(result, settings: Settings) -> Figure:
  last = _ondemand_index(settings)
  scheme = settings.bits_schemes[last]
  bits = np.asarray(result["base"]["dev_bits"])[:, last].ravel()
  bits = bits[bits > 0]
  fig = Figure(figsize=(5, 3.2))
  ax = fig.subplots()
  ax.hist(
    bits, bins=np.arange(0.5, 33.5, 1.0), color=COLORS.get(scheme, "tab:blue")
  )
  ax.set_xlabel("bit-width")
  ax.set_ylabel("devices (all draws)")
  ax.set_title(f"base scenario: {scheme} bits ({settings.bits_source})")
  fig.tight_layout()
  return fig


def _heatmap(rows, settings: Settings, allocs):
  """The heat map's Figure, or None without its schemes."""
  a, b = settings.heatmap
  axes = dict(settings.axes)
  va, vb = list(axes[a]), list(axes[b])
  cell = {
    (r["axis_value"], r["axis2_value"], r["bits_scheme"]): r[
      "energy_per_device_j"
    ]
    for r in rows
    if r["axis"] == a and r["axis2"] == b and r["allocation"] == allocs[0]
  }
  panels = [("ondemand", None), ("fp32", "ondemand")]
  panels = [
    p for p in panels if all(s in settings.bits_schemes for s in p if s)
  ]
  if not panels:
    return None
  fig = Figure(figsize=(5.5 * len(panels), 4.2))
  grid = fig.subplots(1, len(panels), squeeze=False)
  for ax, (num, den) in zip(grid[0], panels):
    z = np.array(
      [
        [cell[x, y, num] / (cell[x, y, den] if den else 1.0) for x in va]
        for y in vb
      ]
    )
    im = ax.imshow(
      np.log10(z) if den is None else z,
      origin="lower",
      aspect="auto",
      cmap="viridis",
    )
    ax.set_xticks(range(len(va)), [str(v) for v in va], rotation=45)
    ax.set_yticks(range(len(vb)), [str(v) for v in vb])
    ax.set_xlabel(LABELS[a])
    ax.set_ylabel(LABELS[b])
    ax.set_title(
      f"log10 J per device ({num}, {allocs[0]})"
      if den is None
      else f"({num}, {allocs[0]}) / ({den}, {allocs[0]})"
    )
    fig.colorbar(im, ax=ax)
  fig.tight_layout()
  return fig


def make_figures(
  rows: Rows, result: Dict[str, Any], settings: Settings
) -> Dict[str, Figure]:
  """Every figure of the module docstring that applies, by name."""
  allocs = list(result["allocations"])
  figs = _axis_figures(rows, settings, allocs)
  figs["energy_split"] = _energy_split(rows)
  figs["energy_cdf"] = _energy_cdf(result, settings, allocs)
  figs["bits_histogram"] = _bits_histogram(result, settings)
  if settings.heatmap:
    heat = _heatmap(rows, settings, allocs)
    if heat is not None:
      figs["heatmap"] = heat
  saving = figure_regimes.saving_vs_comp_share(result, settings, rows)
  if saving is not None:
    figs["saving_vs_comp_share"] = saving
  return figs


def write_figures(
  rows: Rows, result: Dict[str, Any], settings: Settings, out: str
) -> Dict[str, str]:
  """Saves `make_figures(...)` as `out`/<name>.png and .pdf; returns
  name -> the PNG's path."""
  os.makedirs(out, exist_ok=True)
  paths = {}
  for name, fig in make_figures(rows, result, settings).items():
    paths[name] = figfiles.save_png_and_pdf(fig, os.path.join(out, name), DPI)
  return paths
