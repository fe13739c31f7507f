"""The figure of the energy regimes: what on-demand bits save, against how
much of the energy is computation.

  saving_vs_comp_share  from the cycles_per_sample axis: x = fp32's
                        computation share E_comp / (E_comp + E_comm) (mean
                        over draws), y = E(fp32) / E(ondemand) per uploading
                        device under the first allocation (kkt by default):
                        the geometric mean over the draws of each draw's
                        ratio (the same devices price both), band = the
                        draws' min to max. Marked on the curve
                        (interpolated in log c): Yang et al. 2021's c = 2e4
                        cycles/sample (yang2021, the paper as transcribed)
                        and 2e5 (yang2021_code, their public MATLAB code),
                        and the FLOPs regimes of the tiny and
                        the paper U-Net (c = FLOPs x mean(1 / FLOPs per
                        cycle)); the base scenario as a star.

A `matplotlib.figure.Figure` of its own (no pyplot), like figures.py's.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import numpy as np
from matplotlib import ticker
from matplotlib.figure import Figure

from experiments.energy_sweep import models
from experiments.energy_sweep.settings import Settings
from fedqjax.energy.regimes import REGIMES, computation_share

AXIS = "cycles_per_sample"


def _per_draw(result, i: int, b: int, p: int):
  """(energy per uploading device [R], computation share [R]) of
  (scenario i, scheme b, allocation p)."""
  st = result["stats"]
  ec, em, nf = (
    np.asarray(st[k][:, i, b, p], np.float64)
    for k in ("e_comp", "e_comm", "n_feasible")
  )
  per_dev = np.where(nf > 0, (ec + em) / np.maximum(nf, 1), np.nan)
  return per_dev, computation_share(ec, em)


def _point(result, i: int, fp32: int, ond: int, p: int):
  """(x, geometric-mean ratio, min ratio, max ratio) of scenario i."""
  e32, share = _per_draw(result, i, fp32, p)
  eod, _ = _per_draw(result, i, ond, p)
  ratio = e32 / eod
  ok = np.isfinite(ratio) & (ratio > 0)
  if not ok.any():
    return None
  r = ratio[ok]
  return (
    float(np.nanmean(share)),
    float(np.exp(np.mean(np.log(r)))),
    float(r.min()),
    float(r.max()),
  )


def curve(result, settings: Settings) -> Optional[Dict[str, np.ndarray]]:
  """The axis' points sorted by c: dict(c, x, y, lo, hi), or None when the
  axis is not swept or fp32 / ondemand is missing."""
  schemes = list(settings.bits_schemes)
  if not dict(settings.axes).get(AXIS) or not {"fp32", "ondemand"} <= set(
    schemes
  ):
    return None
  fp32, ond = schemes.index("fp32"), schemes.index("ondemand")
  pts = []
  for axis, value, axis2, _, i in result["prepared"].rows:
    if axis == AXIS and not axis2:
      pt = _point(result, i, fp32, ond, 0)
      if pt is not None:
        pts.append((float(value),) + pt)
  if not pts:
    return None
  a = np.array(sorted(pts))
  return dict(c=a[:, 0], x=a[:, 1], y=a[:, 2], lo=a[:, 3], hi=a[:, 4])


def marks(settings: Settings) -> List[Any]:
  """(label, c) of the regimes marked on the curve."""
  inv = float(
    np.mean([1.0 / f for f in settings.devices.flops_per_cycle_choices])
  )
  yang = [
    (f"{n} (c = {c:.0e})", c)
    for n in ("yang2021", "yang2021_code")
    for c in [REGIMES[n].energy["cycles_per_sample"]]
  ]
  tiny = models.MODEL_PRESETS["tiny"][2]
  return yang + [
    (f"tiny U-Net FLOPs (c = {tiny * inv:.2g})", tiny * inv),
    (
      f"paper U-Net FLOPs (c = {models.PAPER_FLOPS * inv:.2g})",
      models.PAPER_FLOPS * inv,
    ),
  ]


def _draw_marks(ax, cv, settings: Settings) -> None:
  logc = np.log10(cv["c"])
  styles = ("v", "^", "s", "D")
  for (label, c), m in zip(marks(settings), styles):
    if not logc[0] <= np.log10(c) <= logc[-1]:
      continue  # outside the swept range: not interpolated
    x = np.interp(np.log10(c), logc, cv["x"])
    y = np.exp(np.interp(np.log10(c), logc, np.log(cv["y"])))
    ax.plot([x], [y], m, ms=8, mfc="none", mew=1.5, label=label)


def _groups(cv) -> List[List[int]]:
  """Runs of consecutive points too close to label apart (within 0.06 in x
  and 15% in y)."""
  groups = [[0]]
  for i in range(1, len(cv["c"])):
    j = groups[-1][0]
    near = abs(cv["x"][i] - cv["x"][j]) < 0.06 and (
      abs(np.log(cv["y"][i] / cv["y"][j])) < 0.15
    )
    if near:
      groups[-1].append(i)
    else:
      groups.append([i])
  return groups


def _label_points(ax, cv) -> None:
  """c of each point (a run of close points: its range, once)."""
  for g in _groups(cv):
    c0, c1 = cv["c"][g[0]], cv["c"][g[-1]]
    text = f"c = {c0:.0e}" + (f" to {c1:.0e}" if len(g) > 1 else "")
    ax.annotate(
      text,
      (cv["x"][g[0]], cv["y"][g[0]]),
      textcoords="offset points",
      xytext=(6, 6),
      fontsize=8,
    )


def saving_vs_comp_share(result, settings: Settings, rows) -> Optional[Figure]:
  """The figure of the module docstring, or None without its data."""
  cv = curve(result, settings)
  if cv is None:
    return None
  alloc = result["allocations"][0]
  fig = Figure(figsize=(8.0, 4.4))
  ax = fig.subplots()
  ax.fill_between(
    cv["x"],
    cv["lo"],
    cv["hi"],
    color="tab:blue",
    alpha=0.2,
    label="min-max over draws",
  )
  ax.plot(
    cv["x"],
    cv["y"],
    "o-",
    color="tab:blue",
    ms=4,
    label="geometric mean over draws",
  )
  _label_points(ax, cv)
  _draw_marks(ax, cv, settings)
  base = _base_point(result, settings)
  if base is not None:
    ax.plot(
      [base[0]],
      [base[1]],
      "*",
      ms=12,
      color="tab:red",
      label=f"base scenario (regime {settings.regime})",
    )
  ax.set_yscale("log")
  ax.yaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
  ax.yaxis.set_minor_formatter(ticker.FormatStrFormatter("%g"))
  ax.set_xlim(-0.02, 1.02)
  ax.set_xlabel("fp32 computation share E_comp / (E_comp + E_comm)", fontsize=9)
  ax.set_ylabel(f"E(fp32) / E(ondemand), {alloc}", fontsize=9)
  ax.set_title(
    f"regime {settings.regime}: on-demand saving vs computation share\n"
    f"(axis {AXIS}, {settings.samples_per_round} samples per round)",
    fontsize=9,
  )
  ax.tick_params(labelsize=8)
  ax.grid(alpha=0.3, which="both")
  ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
  fig.tight_layout()
  return fig


def _base_point(result, settings: Settings):
  schemes = list(settings.bits_schemes)
  pt = _point(result, 0, schemes.index("fp32"), schemes.index("ondemand"), 0)
  return None if pt is None else pt[:2]
