"""A sweep's results: one row per (run, allocation policy), seed statistics,
and the energy / upload a scheme spends to reach fp32's quality.

Rows name both scheme axes (`bits_scheme`, `allocation`), the seed and the
error-demand scale. Group columns (`*_mean`, `*_ci95`, `*_n`) give, per
(bits scheme, allocation, eps scale), the mean over the n seeds that have a
finite value, the half-width of the two-sided 95% Student-t interval (empty
with n < 2), and n; the paired columns (experiments/fl_sweep/paired.py)
likewise carry their n.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from experiments.common import settings as settings_lib
from experiments.fl_sweep import channels, paired, provenance

log = logging.getLogger("fedqjax")

ROW_COLUMNS = (
  "run",
  "bits_scheme",
  "allocation",
  "seed",
  "eps_scale",
  "total_energy_j",
  "comp_energy_j",
  "comm_energy_j",
  "comp_share",
  "uploaded_mb",
  "mean_bits",
  "skipped_client_rounds",
  "dropped_client_rounds",
  "deadline_misses",
  "energy_wasted_j",
  "bit_shortfall",
  "deadline_s",
  "deadline_policy",
  "final_loss",
  "heldout_loss",
  "heldout_loss_raw",
  "energy_to_target_j",
  "mb_to_target",
  "fid",
  "kid",
  "kid_std",
  "vlb_bits_per_dim",
  "rounds",
  "complete",
  "diverged",
  "train_wall_s",
  "compile_wall_s",
  "eval_wall_s",
)
STAT_COLUMNS = (
  "total_energy_j",
  "comm_energy_j",
  "comp_share",
  "deadline_misses",
  "uploaded_mb",
  "mean_bits",
  "heldout_loss",
  "energy_to_target_j",
  "fid",
  "kid",
  "vlb_bits_per_dim",
)
CSV_COLUMNS = (
  ROW_COLUMNS
  + tuple(f"{c}_{s}" for c in STAT_COLUMNS for s in ("mean", "ci95", "n"))
  + paired.COLUMNS
)


def run_summary(run, setup, history: List[dict], **fields) -> Dict[str, Any]:
  """A run's summary: its identity, totals per policy and final quality."""
  s: Dict[str, Any] = dict(
    run=run.name,
    bits_scheme=run.bits,
    seed=run.seed,
    eps_scale=run.eps_scale,
    deadline_s=setup.deadline_s,
    deadline_policy=setup.deadline_rule,
    **fields,
  )
  rounds = [h for h in history if h["round"] > 0 and "loss" in h]
  curve = [h for h in history if "heldout_ema" in h]
  if rounds:
    last = rounds[-1]
    s.update(
      final_loss=last["loss"],
      uploaded_mb=last["cum_uploaded_mb"],
      mean_bits=float(
        np.mean([b for h in rounds for b in h["bits"]] or [np.nan])
      ),
      bit_shortfall=int(sum(h["bit_shortfall"] for h in rounds)),
      energy={
        p: dict(
          total_energy_j=e["cum_j"],
          comp_energy_j=e["cum_comp_j"],
          comm_energy_j=e["cum_comm_j"],
          comp_share=e.get("comp_share"),
          deadline_misses=e.get("cum_deadline_misses"),
          energy_wasted_j=e.get("cum_wasted_j"),
        )
        for p, e in last["energy"].items()
      },
    )
  if curve:
    s.update(
      heldout_loss=curve[-1]["heldout_ema"],
      heldout_loss_raw=curve[-1]["heldout_raw"],
    )
  return s


def to_target(
  history: List[dict], target: float, policy: str
) -> Dict[str, Optional[float]]:
  """First cumulative energy (J) and upload (MB) at which the EMA's held-out
  loss is <= target, or None when it never is."""
  for h in history:
    if "heldout_ema" in h and h["heldout_ema"] <= target:
      if h["round"] == 0:
        return dict(energy_to_target_j=0.0, mb_to_target=0.0)
      return dict(
        energy_to_target_j=h["energy"][policy]["cum_j"],
        mb_to_target=h["cum_uploaded_mb"],
      )
  return dict(energy_to_target_j=None, mb_to_target=None)


def t_interval(values: Sequence[float]) -> Dict[str, Any]:
  """Mean, the half-width of the two-sided 95% Student-t interval and n,
  over the n finite values (None and NaN left out)."""
  v = np.asarray(
    [x for x in values if x is not None and np.isfinite(x)], np.float64
  )
  n = len(v)
  if n == 0:
    return dict(mean=None, ci95=None, n=0)
  if n < 2:
    return dict(mean=float(v.mean()), ci95=None, n=n)
  from scipy import stats  # pylint: disable=g-import-not-at-top

  half = stats.t.ppf(0.975, n - 1) * v.std(ddof=1) / math.sqrt(n)
  return dict(mean=float(v.mean()), ci95=float(half), n=n)


def rows_of(
  summaries: List[dict], histories: Dict[str, List[dict]], margin: float
) -> List[Dict[str, Any]]:
  """One row per (run, policy); energy-to-target against the same seed's
  fp32 run (its final EMA held-out loss x (1 + margin))."""
  fp32 = {
    s["seed"]: s.get("heldout_loss")
    for s in summaries
    if s["bits_scheme"] == "fp32"
  }
  rows = []
  for s in summaries:
    for policy, e in (s.get("energy") or {}).items():
      row = {k: v for k, v in s.items() if k != "energy"}
      row.update(allocation=policy, **e)
      target = fp32.get(s["seed"])
      if target is not None and np.isfinite(target):
        row.update(
          to_target(
            histories.get(s["run"], []), target * (1.0 + margin), policy
          )
        )
      rows.append(row)
  return paired.add_paired(add_group_stats(rows))


def add_group_stats(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
  """Per (bits, allocation, eps scale): mean, 95% CI and n over seeds."""
  for members in paired.seed_groups(rows):
    for col in STAT_COLUMNS:
      st = t_interval([m.get(col) for m in members])
      for m in members:
        for s in ("mean", "ci95", "n"):
          m[f"{col}_{s}"] = st[s]
  return rows


def load_history(workdir: str, run: str) -> List[dict]:
  path = os.path.join(workdir, run, "history.json")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return json.load(f)


def assemble(
  config, summaries: List[dict], setup, workdir: str, wall_s: float
) -> Dict[str, Any]:
  """results.json's content: runs, rows (run x policy) and metadata."""
  histories = {s["run"]: load_history(workdir, s["run"]) for s in summaries}
  rows = rows_of(summaries, histories, float(config.sweep.target_margin))
  notes = paired.notes(rows)
  for line in notes:
    log.warning(line)
  meta = dict(
    preset=config.preset,
    dataset=setup.dataset,
    resolution=int(setup.image_shape[0]),
    num_params=setup.num_params,
    flops_per_sample=setup.flops_per_sample,
    deadline_policy=setup.deadline_rule,
    energy_regime=config.energy.regime,
    channel=config.channel.model,
    **channel_meta(config, setup.deadline_s),
    allocations=list(setup.spec.allocations),
    seeds=list(config.sweep.seeds),
    eps_scales=list(config.sweep.eps_scales),
    paired_baseline_scale=paired.resolve_baseline_scale(rows),
    paired_notes=notes,
    target_margin=float(config.sweep.target_margin),
    heldout_size=int(config.eval.heldout_size),
    eval_samples=config.eval.num_samples,
    sampler=(
      f"{config.eval.sampler}-{config.eval.ddim_steps}"
      if config.eval.sampler == "ddim"
      else "ddpm"
    ),
    reference_images=len(setup.test_images),
    client_loop=setup.spec.execution.layout,
    conv_impl=setup.spec.execution.conv_impl,
    wall_s=wall_s,
    settings_hash=provenance.settings_hash(config),
    **provenance.software_and_machine(),
  )
  return dict(
    runs=summaries, rows=rows, meta=meta, settings=settings_lib.flatten(config)
  )


def channel_meta(config, deadline_s: float) -> Dict[str, Any]:
  """The channel process the runs met (rho after Jakes, the back-off after
  miss_target), or nothing for the static channel."""
  if config.channel.model == "static":
    return {}
  p = channels.process_of(config, deadline_s)
  return dict(channel_rho=p.rho, channel_backoff_db=p.backoff_db)


def write_results(workdir: str, results: Dict[str, Any]) -> None:
  """results.json and results.csv under `workdir` (atomic writes)."""
  tmp = os.path.join(workdir, "results.json.tmp")
  with open(tmp, "w") as f:
    json.dump(results, f, indent=1)
  os.replace(tmp, os.path.join(workdir, "results.json"))
  tmp = os.path.join(workdir, "results.csv.tmp")
  with open(tmp, "w", newline="") as f:
    w = csv.writer(f)
    m = results["meta"]
    w.writerow(
      [
        f"# dataset={m['dataset']} preset={m['preset']} "
        f"deadline={m['deadline_policy']} regime={m['energy_regime']} "
        f"channel={m['channel']} backend={m['backend']} "
        f"heldout_size={m['heldout_size']} sampler={m['sampler']} "
        f"paired_baseline_scale={m.get('paired_baseline_scale')} "
        f"settings_hash={m['settings_hash']} git_revision="
        f"{m['git_revision']} device_kind={m['device_kind']} "
        + " ".join(f"{k}={v}" for k, v in m["versions"].items())
      ]
    )
    w.writerow(CSV_COLUMNS)
    for r in results["rows"]:
      w.writerow(["" if r.get(c) is None else r.get(c) for c in CSV_COLUMNS])
  os.replace(tmp, os.path.join(workdir, "results.csv"))


def _group_rows(results: Dict[str, Any]) -> List[Tuple[Dict[str, Any], int]]:
  """One (row, seeds) per (bits, allocation, eps scale): the first seed's
  row (its `*_mean`, `*_ci95`, `*_n` and paired columns describe the whole
  group) and how many seeds' rows the group has."""
  groups = paired.seed_groups(results["rows"])
  return [(members[0], len(members)) for members in groups]


def _n_note(r: Dict[str, Any], col: str, group: int) -> str:
  """ " n=k" when the interval of `col` counts k seeds, not the group's."""
  n = r.get(col + "_n")
  return "" if n is None or n == group else f" n={n}"


def _pm(
  r: Dict[str, Any], col: str, seeds: int, group: int, ci: bool = True
) -> str:
  """The group's mean over seeds (+- the 95% half-width with `ci`, and its
  n where it is not the group's)."""
  mean = r.get(f"{col}_mean") if seeds > 1 else r.get(col)
  if mean is None:
    return ""
  half = r.get(f"{col}_ci95") if ci and seeds > 1 else None
  if half is None:
    return f"{mean:.4g}"
  return f"{mean:.4g} +- {half:.2g}" + _n_note(r, col, group)


def _share(r: Dict[str, Any], seeds: int) -> str:
  """Computation's share of the energy (mean over seeds) in percent."""
  v = r.get("comp_share_mean") if seeds > 1 else r.get("comp_share")
  return "" if v is None or not np.isfinite(v) else f"{100 * v:.0f}%"


def _ratio(r: Dict[str, Any], col: str, group: int) -> str:
  """Geometric mean [95% interval], and n where it is not the group's."""
  g, lo, hi = (r.get(col + s) for s in ("_gmean", "_lo", "_hi"))
  if g is None:
    return ""
  return (
    f"{g:.3g}x"
    + (f" [{lo:.3g}, {hi:.3g}]" if lo is not None else "")
    + _n_note(r, col, group)
  )


def markdown_table(results: Dict[str, Any]) -> str:
  """The console's table: one line per (bits, allocation[, eps scale]);
  mean +- 95% half-width over seeds, computation's share of the energy
  (`comp`; the regime), deadline misses when the channel is estimated
  (fedqjax.energy.channel), and the paired saving factor vs
  fp32/kkt (geometric mean [95% interval] of the per-seed ratios, against
  the baseline at eps scale `meta["paired_baseline_scale"]`, named in the
  header when it is not 1). Column `n` (before it): the group's seeds; an
  interval over fewer (a missing value or baseline) says " n=k", and the
  paired notes (seeds without a baseline) follow the table. Fits in 100
  columns; results.csv has every column, n and seed."""
  seeds = len(results["meta"].get("seeds", [0]))
  base = results["meta"].get("paired_baseline_scale")
  scales = len({r["eps_scale"] for r in results["rows"]}) > 1
  missed = any(r.get("deadline_misses") for r in results["rows"])
  head = (
    ["bits", "alloc"]
    + (["eps"] if scales else [])
    + ["energy J", "comp", "MB", "bits/up", "held-out"]
    + (["missed"] if missed else [])
    + ["n", "vs fp32/kkt" + ("" if base in (None, 1.0) else f" @eps {base:g}")]
  )
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r, n in _group_rows(results):
    cells = (
      [r["bits_scheme"], r["allocation"]]
      + ([f"{r['eps_scale']:g}"] if scales else [])
      + [
        _pm(r, "total_energy_j", seeds, n),
        _share(r, seeds),
        _pm(r, "uploaded_mb", seeds, n, ci=False),
        _pm(r, "mean_bits", seeds, n, ci=False),
        _pm(r, "heldout_loss", seeds, n),
      ]
      + ([_pm(r, "deadline_misses", seeds, n, ci=False)] if missed else [])
      + [str(n), _ratio(r, paired.column("fp32", "kkt"), n)]
    )
    lines.append("| " + " | ".join(cells) + " |")
  notes = results["meta"].get("paired_notes") or []
  return "\n".join(lines + [f"warning: {x}" for x in notes])
