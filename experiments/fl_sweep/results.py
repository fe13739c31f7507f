"""A sweep's results: one row per (run, allocation policy), seed statistics,
and the energy / upload a scheme spends to reach fp32's quality.

Rows name both scheme axes (`bits_scheme`, `allocation`), the seed and the
error-demand scale. Group columns (`*_mean`, `*_ci95`) give, per (bits
scheme, allocation, eps scale), the mean over seeds and the half-width of
the two-sided 95% Student-t interval (empty with one seed).
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Dict, List, Optional, Sequence

import jax
import numpy as np

ROW_COLUMNS = (
    "run", "bits_scheme", "allocation", "seed", "eps_scale",
    "total_energy_j", "comp_energy_j", "comm_energy_j", "uploaded_mb",
    "mean_bits", "skipped_client_rounds", "dropped_client_rounds",
    "bit_shortfall", "deadline_s", "deadline_policy", "final_loss",
    "heldout_loss", "heldout_loss_raw", "energy_to_target_j", "mb_to_target",
    "fid", "kid", "kid_std", "vlb_bits_per_dim", "rounds", "complete",
    "diverged", "train_wall_s", "eval_wall_s")
STAT_COLUMNS = ("total_energy_j", "comm_energy_j", "uploaded_mb", "mean_bits",
                "heldout_loss", "energy_to_target_j", "fid", "kid",
                "vlb_bits_per_dim")


def run_summary(run, setup, history: List[dict], **fields) -> Dict[str, Any]:
  """A run's summary: its identity, totals per policy and final quality."""
  s: Dict[str, Any] = dict(run=run.name, bits_scheme=run.bits, seed=run.seed,
                           eps_scale=run.eps_scale,
                           deadline_s=setup.deadline_s,
                           deadline_policy=setup.deadline_rule, **fields)
  rounds = [h for h in history if h["round"] > 0 and "loss" in h]
  curve = [h for h in history if "heldout_ema" in h]
  if rounds:
    last = rounds[-1]
    s.update(final_loss=last["loss"], uploaded_mb=last["cum_uploaded_mb"],
             mean_bits=float(np.mean([b for h in rounds for b in h["bits"]]
                                     or [np.nan])),
             bit_shortfall=int(sum(h["bit_shortfall"] for h in rounds)),
             energy={p: dict(total_energy_j=e["cum_j"],
                             comp_energy_j=e["cum_comp_j"],
                             comm_energy_j=e["cum_comm_j"])
                     for p, e in last["energy"].items()})
  if curve:
    s.update(heldout_loss=curve[-1]["heldout_ema"],
             heldout_loss_raw=curve[-1]["heldout_raw"])
  s["skipped_client_rounds"] = s.pop("skipped", None)
  s["dropped_client_rounds"] = s.pop("dropped", None)
  return s


def to_target(history: List[dict], target: float, policy: str
              ) -> Dict[str, Optional[float]]:
  """First cumulative energy (J) and upload (MB) at which the EMA's held-out
  loss is <= target, or None when it never is."""
  for h in history:
    if "heldout_ema" in h and h["heldout_ema"] <= target:
      if h["round"] == 0:
        return dict(energy_to_target_j=0.0, mb_to_target=0.0)
      return dict(energy_to_target_j=h["energy"][policy]["cum_j"],
                  mb_to_target=h["cum_uploaded_mb"])
  return dict(energy_to_target_j=None, mb_to_target=None)


def t_interval(values: Sequence[float]) -> Dict[str, Optional[float]]:
  """Mean and the half-width of the two-sided 95% Student-t interval."""
  v = np.asarray([x for x in values if x is not None and np.isfinite(x)],
                 np.float64)
  if len(v) == 0:
    return dict(mean=None, ci95=None)
  if len(v) < 2:
    return dict(mean=float(v.mean()), ci95=None)
  from scipy import stats  # pylint: disable=g-import-not-at-top
  half = stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v))
  return dict(mean=float(v.mean()), ci95=float(half))


def rows_of(summaries: List[dict], histories: Dict[str, List[dict]],
            margin: float) -> List[Dict[str, Any]]:
  """One row per (run, policy); energy-to-target against the same seed's
  fp32 run (its final EMA held-out loss x (1 + margin))."""
  fp32 = {s["seed"]: s.get("heldout_loss") for s in summaries
          if s["bits_scheme"] == "fp32"}
  rows = []
  for s in summaries:
    for policy, e in (s.get("energy") or {}).items():
      row = {k: v for k, v in s.items() if k != "energy"}
      row.update(allocation=policy, **e)
      target = fp32.get(s["seed"])
      if target is not None and np.isfinite(target):
        row.update(to_target(histories.get(s["run"], []),
                             target * (1.0 + margin), policy))
      rows.append(row)
  return add_group_stats(rows)


def add_group_stats(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
  """Per (bits, allocation, eps scale): mean and 95% CI over seeds."""
  groups: Dict[tuple, List[dict]] = {}
  for r in rows:
    groups.setdefault((r["bits_scheme"], r["allocation"], r["eps_scale"]),
                      []).append(r)
  for members in groups.values():
    for col in STAT_COLUMNS:
      st = t_interval([m.get(col) for m in members])
      for m in members:
        m[f"{col}_mean"], m[f"{col}_ci95"] = st["mean"], st["ci95"]
  return rows


def load_history(workdir: str, run: str) -> List[dict]:
  path = os.path.join(workdir, run, "history.json")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return json.load(f)


def assemble(config, summaries: List[dict], setup, workdir: str,
             wall_s: float) -> Dict[str, Any]:
  """results.json's content: runs, rows (run x policy) and metadata."""
  histories = {s["run"]: load_history(workdir, s["run"]) for s in summaries}
  rows = rows_of(summaries, histories, float(config.sweep.target_margin))
  meta = dict(preset=config.preset, dataset=setup.dataset,
              resolution=int(setup.image_shape[0]),
              num_params=setup.num_params,
              flops_per_sample=setup.flops_per_sample,
              deadline_policy=setup.deadline_rule,
              allocations=list(setup.spec.allocations),
              seeds=list(config.sweep.seeds),
              eps_scales=list(config.sweep.eps_scales),
              target_margin=float(config.sweep.target_margin),
              heldout_size=int(config.eval.heldout_size),
              eval_samples=config.eval.num_samples,
              sampler=(f"{config.eval.sampler}-{config.eval.ddim_steps}"
                       if config.eval.sampler == "ddim" else "ddpm"),
              reference_images=len(setup.test_images),
              backend=jax.default_backend(),
              client_loop=setup.spec.execution.layout,
              conv_impl=setup.spec.execution.conv_impl,
              num_devices=jax.device_count(), wall_s=wall_s)
  return dict(runs=summaries, rows=rows, meta=meta)
