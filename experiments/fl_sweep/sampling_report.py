"""The energy of sampling on a run's devices.

For every sampler priced (`samplers`: DDPM over all T steps, DDIM with each
of eval.energy_ddim_steps <= T, and the run's main eval sampler), each of
the run's devices generates eval.energy_images images: steps x the FLOPs of
one step of that sampler's loop body (`fedqjax.diffusion.flops.
sampling_step_flops`, lowered HLO, as the sweep counts training FLOPs) on
the device model (`fedqjax.energy.sampling_energy`). Each row gives the
energy (mean / min / max over the devices) and time at f_max, each device
sampling at full speed (the columns name the frequency: energy_fmax_j_*,
and freq_fmax_hz_mean its value), beside the FID/KID of the same sampler
where computed (the main sampler's with eval.fid; every sampler's with
eval.sampler_curve). f_min, the device model's lower bound, is not a
frequency anyone samples at and is not reported.

  run_rows(setup, summary)    a run's rows (energy per seed's devices + its
                              quality); `scalars(rows)` flattens them for
                              TensorBoard
  write(workdir, setups, summaries)
                              <workdir>/sampling_energy.csv (every run) and
                              figures/sampling_energy_vs_quality.{png,pdf}
"""

from __future__ import annotations

import csv
import functools
import logging
import os
from typing import Any, Dict, List, Tuple

from experiments.fl_sweep import figures as figs
from fedqjax import federated
from fedqjax.diffusion.flops import sampling_step_flops
from fedqjax.energy.sampling_energy import cost_stats

log = logging.getLogger("fedqjax")
FILE = "sampling_energy.csv"
FIGURE = "sampling_energy_vs_quality"
_STATS = ("mean", "min", "max")
COLUMNS = (
  ("run", "bits", "seed", "eps_scale", "sampler", "steps", "label", "main")
  + ("gflops_per_step", "images")
  + tuple(f"energy_fmax_j_{s}" for s in _STATS)
  + ("time_fmax_s_mean", "time_fmax_s_max", "freq_fmax_hz_mean")
  + ("fid", "kid", "kid_std")
)


def label(sampler: str, steps: int) -> str:
  """e.g. "ddpm1000", "ddim50"."""
  return f"{sampler}{steps}"


def is_main(config, sampler: str, steps: int) -> bool:
  """Whether (sampler, steps) is the run's eval sampler (eval.sampler)."""
  e, t = config.eval, config.diffusion.T
  main = ("ddim", e.ddim_steps) if e.sampler == "ddim" else ("ddpm", t)
  return (sampler, steps) == main


def samplers(config) -> List[Tuple[str, int]]:
  """(sampler, steps) priced: DDPM-T, DDIM-k for k in eval.energy_ddim_steps
  with k <= T (larger ones are left out, with a warning) and the main
  eval sampler; DDIM by steps, DDPM first."""
  t, e = config.diffusion.T, config.eval
  over = [k for k in e.energy_ddim_steps if k > t]
  if over:
    log.warning("eval.energy_ddim_steps: %s > diffusion.T=%d left out", over, t)
  ddim = {k for k in e.energy_ddim_steps if k <= t}
  if e.sampler == "ddim":
    ddim.add(e.ddim_steps)
  return [("ddpm", t)] + [("ddim", k) for k in sorted(ddim)]


@functools.lru_cache(maxsize=8)
def _step_flops(unet, image_shape: tuple, sampler: str, t: int) -> float:
  return sampling_step_flops(
    unet, image_shape, sampler, num_timesteps=t, compiled=False
  )


def energy_rows(setup) -> List[Dict[str, Any]]:
  """The seed's rows without quality: one per sampler, energy of
  eval.energy_images images on each of setup.devices ([] when 0)."""
  config = setup.config
  n = int(config.eval.energy_images)
  if not n:
    return []
  devices = federated.to_host(setup.devices)
  shape, t = tuple(setup.image_shape), int(config.diffusion.T)
  rows = []
  for name, steps in samplers(config):
    flops = _step_flops(setup.unet, shape, name, t)
    row = dict(
      sampler=name,
      steps=steps,
      label=label(name, steps),
      main=is_main(config, name, steps),
      gflops_per_step=flops / 1e9,
      images=n,
    )
    row.update(cost_stats(devices, flops, steps, n))
    rows.append(row)
  return rows


def _quality(summary: Dict[str, Any], row: Dict[str, Any]) -> Dict[str, Any]:
  """fid / kid / kid_std of the row's sampler in the run's summary."""
  curve = (summary.get("sampler_curve") or {}).get(row["label"], {})
  src = summary if row["main"] and "fid" in summary else curve
  return {k: src.get(k) for k in ("fid", "kid", "kid_std")}


def run_rows(setup, summary: Dict[str, Any]) -> List[Dict[str, Any]]:
  """A run's table: `energy_rows(setup)` with the run's identity and the
  quality found in its summary (keys run, bits_scheme, seed, eps_scale;
  fid / kid / kid_std of the main sampler; sampler_curve)."""
  ident = dict(
    run=summary["run"],
    bits=summary["bits_scheme"],
    seed=summary["seed"],
    eps_scale=summary.get("eps_scale", 1.0),
  )
  return [
    dict(ident, **row, **_quality(summary, row)) for row in energy_rows(setup)
  ]


def scalars(rows: List[Dict[str, Any]]) -> Dict[str, float]:
  """Flat TensorBoard scalars of one run's rows, e.g.
  sampling/energy_fmax_j/ddim50 (mean over devices, at f_max),
  sampling/time_fmax_s/ddim50, sampling/gflops_per_step/ddim50 and
  sampling/fid/ddim50 where computed."""
  out: Dict[str, float] = {}
  for r in rows:
    lab = r["label"]
    out[f"sampling/energy_fmax_j/{lab}"] = r["energy_fmax_j_mean"]
    out[f"sampling/time_fmax_s/{lab}"] = r["time_fmax_s_mean"]
    out[f"sampling/gflops_per_step/{lab}"] = r["gflops_per_step"]
    for k in ("fid", "kid"):
      if r.get(k) is not None:
        out[f"sampling/{k}/{lab}"] = r[k]
  return out


def write_csv(workdir: str, rows: List[Dict[str, Any]]) -> str:
  """<workdir>/sampling_energy.csv (atomic); empty cells for no value."""
  path = os.path.join(workdir, FILE)
  tmp = path + ".tmp"
  with open(tmp, "w", newline="") as f:
    w = csv.DictWriter(f, COLUMNS, extrasaction="ignore")
    w.writeheader()
    for r in rows:
      w.writerow({k: "" if r.get(k) is None else r[k] for k in COLUMNS})
  os.replace(tmp, path)
  return path


def write(
  workdir: str,
  setups: Dict[int, Any],
  summaries: List[dict],
  figure: bool = True,
):
  """The sweep's report: CSV, figure, and what results.json keeps.

  Args:
    workdir: the sweep's workdir.
    setups: {seed: Setup} (train_and_evaluate's `setups`).
    summaries: every run's summary; one holding "sampling_energy" rows
      (`run_rows`, stored by run_one) is reused, else its rows are made.
    figure: draw and save the figure (the sweep's `figures` setting).

  Returns:
    {"rows": every run's rows, "scalars": {run: scalars(rows)}, "figure":
    the Figure or None}; {"rows": [], ...} when eval.energy_images is 0.
  """
  rows, per_run = [], {}
  for s in summaries:
    r = s.get("sampling_energy")
    if r is None:
      r = run_rows(setups[s["seed"]], s)
    rows.extend(r)
    per_run[s["run"]] = scalars(r)
  if not rows:
    return dict(rows=[], scalars=per_run, figure=None)
  write_csv(workdir, rows)
  fig = None
  if figure:
    fig = sampling_energy_vs_quality(rows)
    figs._save(fig, workdir, FIGURE)
  return dict(rows=rows, scalars=per_run, figure=fig)


def _by_run(rows) -> Dict[str, List[dict]]:
  out: Dict[str, List[dict]] = {}
  for r in rows:
    out.setdefault(r["run"], []).append(r)
  return out


def freq_label(rows: List[Dict[str, Any]]) -> str:
  """ "f_max = 2 GHz": the frequency the rows priced (their devices' mean
  f_max; "f_max" alone when no row carries it)."""
  f = [r["freq_fmax_hz_mean"] for r in rows if r.get("freq_fmax_hz_mean")]
  return f"f_max = {f[0] / 1e9:.3g} GHz" if f else "f_max"


def sampling_energy_vs_quality(rows: List[Dict[str, Any]]):
  """Left: device energy per image (mean over devices, at f_max, the value
  in the axis label) vs sampler steps, log-log, DDIM as a line and DDPM-T
  as a marker (one seed's devices: the first run's). Right (when FIDs
  exist): FID vs energy per image at f_max, one series per run."""
  runs = _by_run(rows)
  fids = [r for r in rows if r.get("fid") is not None]
  fig, axes = figs._figure(2 if fids else 1)
  first = next(iter(runs.values()))
  at = freq_label(first)
  for sampler, mark, ls in (("ddim", "o", "-"), ("ddpm", "s", "none")):
    pts = [r for r in first if r["sampler"] == sampler]
    axes[0].plot(
      [r["steps"] for r in pts],
      [r["energy_fmax_j_mean"] / r["images"] for r in pts],
      marker=mark,
      ls=ls,
      color=figs.COLORS[0],
      label=sampler.upper(),
    )
  axes[0].set_xscale("log")
  axes[0].set_yscale("log")
  figs._label(axes[0], "sampling steps", f"device energy per image at {at} (J)")
  figs._legend(axes[0])
  if fids:
    for i, (run, rs) in enumerate(runs.items()):
      pts = sorted(
        (r for r in rs if r.get("fid") is not None),
        key=lambda r: r["energy_fmax_j_mean"],
      )
      if pts:
        axes[1].plot(
          [r["energy_fmax_j_mean"] / r["images"] for r in pts],
          [r["fid"] for r in pts],
          marker="o",
          color=figs.COLORS[i % len(figs.COLORS)],
          label=run,
        )
    axes[1].set_xscale("log")
    figs._label(axes[1], f"device energy per image at {at} (J)", "FID")
    figs._legend(axes[1])
  return fig
