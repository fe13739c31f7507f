"""Figures of a training sweep, each saved as PNG and PDF under
`<workdir>/figures/`.

  energy_vs_rounds   cumulative energy per (bits, allocation) and upload per
                     bits scheme vs rounds; mean over seeds, band = 95%
                     Student-t interval over seeds
  quality_vs_energy  held-out loss (EMA) vs cumulative energy (optimal
                     allocation) and vs upload; error bars over seeds;
                     lower-left is better
  schemes            grouped bars per allocation and bits scheme: total
                     energy (mean, 95% interval over seeds) and the paired
                     saving vs fp32/kkt (geometric mean, 95% interval of
                     the per-seed ratios); on-demand at eps scale 1 (else
                     the first swept); each bar's n (seeds) at its foot
  demand_tradeoff    on-demand per error-demand scale (needs >= 2 scales),
                     each point's n beside it

Curves name their number of seeds (n) in the legend.
  bits_histogram     bit-widths the on-demand devices chose (pooled seeds)
  samples            the sample grids

Drawn on `matplotlib.figure.Figure` objects: no pyplot state and no backend
switch, so a notebook's inline backend is untouched; `write_figures`
returns the figures for display.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from experiments.common import figfiles
from experiments.fl_sweep import paired
from experiments.fl_sweep.results import load_history, t_interval

STYLES = {"kkt": "-", "deadline": "--", "split": "-.", "max": ":"}
FONT = 9  # >= 8 pt everywhere
DPI = 150
COLORS = ("#1b6ca8", "#d1495b", "#3c9a5f", "#edae49", "#6a4c93", "#00798c")


def _figure(cols: int, width: float = 5.2, height: float = 3.6):
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

  fig = Figure(figsize=(width * cols, height), layout="constrained")
  axes = fig.subplots(1, cols, squeeze=False)[0]
  for a in axes:
    a.tick_params(labelsize=FONT)
    a.grid(True, alpha=0.3, lw=0.5)
  return fig, axes


def _save(fig, workdir: str, name: str):
  figdir = os.path.join(workdir, "figures")
  os.makedirs(figdir, exist_ok=True)
  figfiles.save_png_and_pdf(fig, os.path.join(figdir, name), DPI, DPI)
  return fig


def _legend(ax, **kw) -> None:
  """Outside the data, right of the axes."""
  ax.legend(
    fontsize=FONT,
    loc="upper left",
    bbox_to_anchor=(1.01, 1.0),
    frameon=False,
    **kw,
  )


def _label(ax, xlabel: str, ylabel: str, title: str = "") -> None:
  ax.set_xlabel(xlabel, fontsize=FONT)
  ax.set_ylabel(ylabel, fontsize=FONT)
  if title:
    ax.set_title(title, fontsize=FONT + 1)


def _groups(results, hist) -> Dict[str, List[List[dict]]]:
  """Histories grouped by bits scheme (and eps scale): one list per seed;
  the label names the number of seeds (n)."""
  scales = len({s["eps_scale"] for s in results["runs"]}) > 1
  out: Dict[str, List[List[dict]]] = {}
  for s in results["runs"]:
    label = s["bits_scheme"] + (f" eps x{s['eps_scale']:g}" if scales else "")
    if hist.get(s["run"]):
      out.setdefault(label, []).append(hist[s["run"]])
  return {f"{k} (n={len(v)})": v for k, v in out.items()}


def _curve(
  seeds: List[List[dict]], value: Callable[[dict], Any], band: str = "ci"
):
  """(rounds, mean, low, high) over seeds on the rounds every seed has.

  band="ci": mean and the 95% Student-t interval (none with one seed);
  band="range": geometric mean and the range over seeds (for log axes,
  where a symmetric interval of a positive quantity can reach below 0).
  """
  by = [
    {x["round"]: value(x) for x in h if value(x) is not None} for h in seeds
  ]
  rounds = sorted(set.intersection(*[set(b) for b in by])) if by else []
  mean, lo, hi = [], [], []
  for r in rounds:
    v = np.asarray([b[r] for b in by], np.float64)
    if band == "range":
      with np.errstate(divide="ignore"):  # a 0 (nothing sent yet) -> 0
        mean.append(float(np.exp(np.log(v).mean())))
      lo.append(v.min())
      hi.append(v.max())
      continue
    st = t_interval(v)
    half = st["ci95"] or 0.0
    mean.append(st["mean"])
    lo.append(st["mean"] - half)
    hi.append(st["mean"] + half)
  return np.asarray(rounds), np.asarray(mean), np.asarray(lo), np.asarray(hi)


def _get(*keys):
  def f(row):
    for k in keys:
      if not isinstance(row, dict) or k not in row:
        return None
      row = row[k]
    return row

  return f


def energy_figure(workdir, results, hist, tag):
  groups = _groups(results, hist)
  fig, ax = _figure(2)
  for i, (label, hs) in enumerate(groups.items()):
    color = COLORS[i % len(COLORS)]
    for j, p in enumerate(results["meta"]["allocations"]):
      r, m, lo, hi = _curve(hs, _get("energy", p, "cum_j"), band="range")
      ax[0].plot(
        r,
        m,
        STYLES.get(p, "-"),
        color=color,
        lw=1.4 if j == 0 else 0.9,
        label=f"{label} / {p}",
      )
      if j == 0:  # the optimal allocation's spread over seeds
        ax[0].fill_between(r, lo, hi, color=color, alpha=0.15, lw=0)
    r, m, lo, hi = _curve(hs, _get("cum_uploaded_mb"), band="range")
    ax[1].plot(r, m, color=color, lw=1.4, label=label)
    ax[1].fill_between(r, lo, hi, color=color, alpha=0.15, lw=0)
  ax[0].set_yscale("log")
  ax[1].set_yscale("log")
  seeds = len(results["meta"].get("seeds", [0]))
  _label(
    ax[0],
    "round",
    "cumulative energy (J)",
    f"Energy {tag}"
    + (
      f"\ngeometric mean of {seeds} seeds; band: range over seeds "
      f"({results['meta']['allocations'][0]})"
      if seeds > 1
      else ""
    ),
  )
  _label(ax[1], "round", "cumulative upload (MB)", "Upload (any allocation)")
  _legend(ax[0], ncol=1)
  _legend(ax[1])
  return _save(fig, workdir, "energy_vs_rounds")


def quality_figure(workdir, results, hist, tag):
  """Held-out loss vs energy (first allocation) and vs upload; the axes are
  cropped to the trained runs (the initial loss, ~1, is left out)."""
  groups, policy = _groups(results, hist), results["meta"]["allocations"][0]
  fig, ax = _figure(2)
  for i, (label, hs) in enumerate(groups.items()):
    color = COLORS[i % len(COLORS)]
    trained = [
      [x for x in h if x["round"] > 0 and "heldout_ema" in x] for h in hs
    ]
    _, loss, lo, hi = _curve(trained, _get("heldout_ema"))
    for a, value in (
      (ax[0], _get("energy", policy, "cum_j")),
      (ax[1], _get("cum_uploaded_mb")),
    ):
      _, x, _, _ = _curve(trained, value)
      a.errorbar(
        x,
        loss,
        yerr=[loss - lo, hi - loss],
        fmt="o-",
        ms=3,
        lw=1.2,
        capsize=2,
        color=color,
        label=label,
      )
  for a in ax:
    a.set_xscale("log")
    a.set_yscale("log")
  _label(
    ax[0],
    f"cumulative energy (J), {policy} allocation",
    "held-out denoising loss (EMA)",
    f"Quality vs energy {tag}",
  )
  _label(
    ax[1],
    "cumulative upload (MB)",
    "held-out denoising loss (EMA)",
    "Quality vs upload",
  )
  _legend(ax[1])
  return _save(fig, workdir, "quality_vs_energy")


def _stat(rows, bits, col, alloc=None, eps=None):
  """(mean, ci95, n) of `col` over the seeds of one (bits, allocation)."""
  vals = [
    r.get(col)
    for r in rows
    if r["bits_scheme"] == bits
    and (alloc is None or r["allocation"] == alloc)
    and (eps is None or r["eps_scale"] == eps)
  ]
  st = t_interval(vals)
  return st["mean"] or np.nan, st["ci95"] or 0.0, st["n"]


def _n_labels(ax, x, ns, y=None) -> None:
  """The n (seeds its interval counts) of each bar, at its foot (y None),
  or of each point (x, y), right of it."""
  for i, (xi, n) in enumerate(zip(x, ns)):
    if y is None:
      at = dict(xy=(xi, 0.01), xycoords=ax.get_xaxis_transform(), ha="center")
    elif np.isfinite(y[i]):
      at = dict(xy=(xi, y[i]), xytext=(4, 0), textcoords="offset points")
    else:
      continue
    ax.annotate(f"n={n}", va="bottom", fontsize=FONT - 1, **at)


def _bars(ax, groups, members, value, ylabel, log=False):
  """Grouped bars: one group per entry of `groups`, one bar per member;
  `value(group, member)` -> (value, err or [[below], [above]], n)."""
  width = 0.8 / max(1, len(members))
  for j, m in enumerate(members):
    stats = [value(g, m) for g in groups]
    err = np.hstack(
      [np.broadcast_to(np.reshape(e, (-1, 1)), (2, 1)) for _, e, _ in stats]
    )  # [2, groups]: below, above
    x = np.arange(len(groups)) + (j - (len(members) - 1) / 2) * width
    heights = np.asarray([v for v, _, _ in stats], np.float64)
    ax.bar(
      x,
      heights,
      width,
      yerr=err,
      capsize=2,
      color=COLORS[j % len(COLORS)],
      label=m,
    )
    _n_labels(ax, x, [n for _, _, n in stats])
  ax.set_xticks(np.arange(len(groups)), groups, fontsize=FONT)
  if log:
    ax.set_yscale("log")
  ax.set_ylabel(ylabel, fontsize=FONT)


def _saving(rows, bits, alloc):
  """Paired saving vs fp32/kkt: (geometric mean, [below, above] it, n)."""
  col = paired.column("fp32", "kkt")
  r = next(
    (r for r in rows if r["bits_scheme"] == bits and r["allocation"] == alloc),
    {},
  )
  g, lo, hi, n = (r.get(col + s) for s in ("_gmean", "_lo", "_hi", "_n"))
  if g is None:
    return np.nan, 0.0, 0
  return g, ([[g - lo], [hi - g]] if lo is not None else 0.0), n


def schemes_figure(workdir, results):
  rows = paired.add_paired([dict(r) for r in results["rows"]])
  rows = paired.one_scale_per_scheme(rows)  # all rows paired, then one scale
  bits = list(dict.fromkeys(r["bits_scheme"] for r in rows))
  allocs = results["meta"]["allocations"]
  fig, ax = _figure(2, width=5.4)
  _bars(
    ax[0],
    allocs,
    bits,
    lambda a, b: _stat(rows, b, "total_energy_j", a),
    "total energy (J): mean, 95% interval",
    log=True,
  )
  ax[0].set_title(
    "Energy (unpaired: each seed its own devices)", fontsize=FONT + 1
  )
  _bars(
    ax[1],
    allocs,
    bits,
    lambda a, b: _saving(rows, b, a),
    "energy saving vs fp32 / kkt (x)",
    log=True,
  )
  ax[1].axhline(1.0, color="gray", lw=0.8)
  ax[1].set_title(
    "Paired per seed: geometric mean, 95% interval", fontsize=FONT + 1
  )
  _legend(ax[1], title="bits", title_fontsize=FONT)
  return _save(fig, workdir, "schemes")


def demand_figure(workdir, results) -> Optional[Any]:
  policy = results["meta"]["allocations"][0]
  rows = [
    r
    for r in results["rows"]
    if r["bits_scheme"] == "ondemand" and r["allocation"] == policy
  ]
  scales = sorted({r["eps_scale"] for r in rows})
  if len(scales) < 2:
    return None
  fig, ax = _figure(4, width=3.6, height=3.2)
  cols = (
    ("mean_bits", "mean bits"),
    ("total_energy_j", "energy (J)"),
    ("uploaded_mb", "uploaded MB"),
    ("heldout_loss", "held-out loss"),
  )
  for a, (col, label) in zip(ax, cols):
    st = [_stat(rows, "ondemand", col, eps=s) for s in scales]
    a.errorbar(
      scales,
      [m for m, _, _ in st],
      yerr=[c for _, c, _ in st],
      fmt="o-",
      capsize=2,
      color=COLORS[0],
    )
    _n_labels(a, scales, [n for _, _, n in st], [m for m, _, _ in st])
    a.set_xscale("log")
    a.minorticks_off()  # the scales themselves as ticks: no overlap
    a.set_xticks(scales, [f"{x:g}" for x in scales], fontsize=FONT)
    _label(a, "error-demand scale", label)
  ax[0].set_title(f"On-demand ({policy})", fontsize=FONT + 1)
  return _save(fig, workdir, "demand_tradeoff")


def bits_figure(workdir, results, hist) -> Optional[Any]:
  """Bit-widths of the on-demand uploads, pooled over seeds (per scale)."""
  by_scale: Dict[float, List[int]] = {}
  for s in results["runs"]:
    if s["bits_scheme"] == "ondemand":
      by_scale.setdefault(s["eps_scale"], []).extend(
        b for x in hist.get(s["run"], []) for b in x.get("bits", [])
      )
  by_scale = {k: v for k, v in by_scale.items() if v}
  if not by_scale:
    return None
  fig, ax = _figure(1, width=5.6)
  lo = min(min(v) for v in by_scale.values())
  hi = max(max(v) for v in by_scale.values())
  edges = np.arange(lo - 0.5, hi + 1.5, 1)
  for i, (scale, bits) in enumerate(sorted(by_scale.items())):
    ax[0].hist(
      bits,
      bins=edges,
      alpha=0.6 if len(by_scale) > 1 else 0.9,
      color=COLORS[i % len(COLORS)],
      label=f"eps x{scale:g}",
    )
  ax[0].set_xticks(np.arange(lo, hi + 1))
  _label(
    ax[0],
    "bits per entry",
    "client-rounds",
    "Bit-widths chosen on demand (all seeds)",
  )
  if len(by_scale) > 1:
    _legend(ax[0])
  return _save(fig, workdir, "bits_histogram")


def samples_figure(workdir, runs) -> Optional[Any]:
  grids = [(n, os.path.join(workdir, n, "samples_grid.npy")) for n in runs]
  grids = [(n, np.load(p)) for n, p in grids if os.path.exists(p)]
  if not grids:
    return None
  fig, ax = _figure(len(grids), width=3.6, height=3.9)
  for a, (n, g) in zip(ax, grids):
    a.imshow(g.squeeze(-1) if g.shape[-1] == 1 else g, cmap="gray")
    a.set_title(n, fontsize=FONT)
    a.axis("off")
  return _save(fig, workdir, "samples")


def write_figures(workdir: str, results: Dict[str, Any]) -> Dict[str, Any]:
  """Every figure (PNG + PDF); returns {name: matplotlib Figure}."""
  runs = [s["run"] for s in results["runs"]]
  hist = {r: load_history(workdir, r) for r in runs}
  tag = f"({results['meta']['dataset']}, {results['meta']['preset']})"
  figs = dict(
    energy_vs_rounds=energy_figure(workdir, results, hist, tag),
    quality_vs_energy=quality_figure(workdir, results, hist, tag),
    schemes=schemes_figure(workdir, results),
    demand_tradeoff=demand_figure(workdir, results),
    bits_histogram=bits_figure(workdir, results, hist),
    samples=samples_figure(workdir, runs),
  )
  return {k: v for k, v in figs.items() if v is not None}
