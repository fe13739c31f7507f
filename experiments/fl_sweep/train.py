"""The main job: train_and_evaluate(config, workdir) runs the scheme sweep.

A sweep is a list of runs: each bits scheme (fp32 / fixed / on-demand,
docs/model.md sec. 1) trains ONCE per seed (on-demand once per error-demand
scale too); every allocation policy is priced inside the same round on the
same uploads. One subdirectory per run holds TensorBoard logs (clu), orbax
checkpoints, the per-round history and a summary; the workdir gets
results.csv / results.json and PNG figures (experiments/fl_sweep/results.py,
figures.py). Rerunning the
same command resumes each run from its last checkpoint and skips finished
runs. All runs share ONE compiled round (the scheme is traced data) and
JAX's persistent compilation cache.

This module (with the `data` loaders) is where TensorFlow-backed pieces
(clu writers, tfds) are imported; the core stays TF-free.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from typing import Any, Callable, Dict, List, Optional

import jax
import numpy as np

from experiments.common import distributed
from experiments.fl_sweep import progress as console
from experiments.fl_sweep import provenance, records, sampling_report
from experiments.fl_sweep import results as results_lib
from experiments.fl_sweep import settings as settings_tree
from experiments.fl_sweep.build import Setup, build, load_dataset, place
from experiments.fl_sweep.settings import Settings
from fedqjax import federated

log = logging.getLogger("fedqjax")


@dataclasses.dataclass(frozen=True)
class Run:
  """One training run of the sweep: a bits scheme at a seed and eps scale."""

  name: str
  bits: str
  seed: int
  eps_scale: float


def plan_runs(config) -> List[Run]:
  """Bits schemes x seeds (x eps scales for on-demand), in a stable order."""
  bits, _ = config.sweep.plan()
  seeds, scales = tuple(config.sweep.seeds), tuple(config.sweep.eps_scales)
  runs = []
  for seed in seeds:
    for b in bits:
      for scale in scales if b == "ondemand" else (1.0,):
        name = (
          b
          + (f"_seed{seed}" if len(seeds) > 1 else "")
          + (f"_eps{scale:g}" if b == "ondemand" and len(scales) > 1 else "")
        )
        runs.append(Run(name, b, int(seed), float(scale)))
  return runs


def enable_compilation_cache(path: str) -> None:
  """JAX's persistent compilation cache: a rerun compiles in seconds.

  Every program is kept, not only those that took JAX's default 1 s to
  compile: a sweep compiles dozens of small ones (device draws, allocators,
  FLOP counts, evaluators) before its first round. A rerun of the test
  preset reaches its first round in 11.4 s instead of 18.6 s on 2 CPU cores
  (docs/performance.md). The environment's JAX_* settings win.
  """
  env = os.environ.get
  os.makedirs(env("JAX_COMPILATION_CACHE_DIR", path), exist_ok=True)
  for name, value in (
    ("jax_compilation_cache_dir", path),
    ("jax_persistent_cache_min_compile_time_secs", 0.0),
    ("jax_persistent_cache_min_entry_size_bytes", 0),
  ):
    jax.config.update(name, type(value)(env(name.upper(), value)))


def is_primary() -> bool:
  """The one process that writes logs, histories, summaries and results."""
  return jax.process_index() == 0


def evaluate_heldout(
  setup: Setup, state, writer, rnd: int, run_name: str
) -> Dict[str, float]:
  """Held-out denoising loss of the EMA and raw params (fixed (t, noise))."""
  ema, raw = federated.to_host((state.ema_params, state.params))
  out = dict(heldout_ema=setup.heldout(ema), heldout_raw=setup.heldout(raw))
  writer.write_scalars(rnd, out)
  distributed.barrier(f"fedqjax: {run_name} held-out at {rnd}")
  return out


def _start(setup: Setup, run: Run, sdir: str, progress):
  """The run's state, history, checkpointer and writer at its last
  checkpoint (round 0: a fresh state, its hparams and held-out point)."""
  from clu import metric_writers  # pylint: disable=g-import-not-at-top

  from experiments.fl_sweep import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top

  state = place(
    setup,
    federated.init_server_state(
      setup.params, setup.run_key, len(setup.spec.allocations)
    ),
  )
  distributed.barrier(f"fedqjax: {run.name} start")
  mgr = ckpt_lib.Checkpointer(os.path.join(sdir, "checkpoints"))
  state, history, marks = mgr.restore_latest(state)
  if is_primary():
    records.truncate_events(sdir, marks)
  start = int(records.counters(state)["round"])
  if start:
    log.info("run %s: resumed at round %d", run.name, start)
  progress.run_started(run.name, start)
  writer = metric_writers.create_default_writer(
    sdir, just_logging=not is_primary(), asynchronous=False
  )
  if start == 0:
    writer.write_hparams(records.hparams(setup.config, run.name))
    history = [
      dict(round=0, **evaluate_heldout(setup, state, writer, 0, run.name))
    ]
  return state, history, mgr, writer, start


def _log_round(
  setup: Setup, run: Run, rnd: int, state, m, writer, history, progress
) -> bool:
  """Host metrics of round `rnd` into the history, TensorBoard and the
  console (the held-out loss on its rounds); False when it diverged."""
  spec, config = setup.spec, setup.config
  m = federated.to_host(m)
  if not (np.isfinite(m["loss"]) and records.finite_state(state)):
    log.error(
      "run %s diverged at round %d (non-finite loss or parameters); keeping "
      "the last good checkpoint and moving to the next run",
      run.name,
      rnd,
    )
    return False
  row = records.history_row(rnd, m, records.counters(state), spec.allocations)
  every, rounds = config.eval.every, config.fed.rounds
  if (every and rnd % every == 0) or rnd == rounds:
    row.update(evaluate_heldout(setup, state, writer, rnd, run.name))
  history.append(row)
  records.write_round(writer, row, m)
  first = row["energy"][spec.allocations[0]]  # the console shows one
  progress.round_done(run.name, rnd, dict(row, cum_energy_j=first["cum_j"]))
  return True


def train_loop(setup: Setup, run: Run, sdir: str, progress) -> Dict[str, Any]:
  """Trains `run` from its last checkpoint; returns state, history, flags."""
  config = setup.config
  scheme = place(
    setup,
    federated.make_scheme(
      run.bits,
      deadline_s=setup.deadline_s,
      fixed_bits=config.quant.fixed_bits,
      eps_scale=run.eps_scale,
    ),
  )
  step = federated.jit_round_step(setup.spec)
  state, history, mgr, writer, start = _start(setup, run, sdir, progress)
  rounds = config.fed.rounds
  stop = min(rounds, start + (config.max_rounds_this_run or rounds))
  t0, diverged = time.time(), False
  # Compiled (or loaded from the cache) here; the jitted call reuses it.
  # Processes finish this at different times: meet before the first round.
  step.lower(state, setup.fed_data, setup.round_devices(1), scheme).compile()
  compile_wall_s = time.time() - t0
  distributed.barrier(f"fedqjax: {run.name} compiled at {start}")
  for rnd in range(start + 1, stop + 1):
    state, m = step(state, setup.fed_data, setup.round_devices(rnd), scheme)
    if rnd == start + 1:  # compile + the first round
      jax.block_until_ready(state.round)
      progress.compiled(time.time() - t0)
    if rnd % config.log_every == 0 or rnd == stop:
      if not _log_round(setup, run, rnd, state, m, writer, history, progress):
        diverged = True
        break
    if rnd % config.ckpt_every == 0 or rnd == stop:
      mgr.save(state, history, events=records.event_marks(writer, sdir))
  mgr.close()
  return dict(
    state=state,
    history=history,
    writer=writer,
    diverged=diverged,
    train_wall_s=time.time() - t0,
    compile_wall_s=compile_wall_s,
  )


def run_one(setup: Setup, run: Run, workdir: str, progress) -> Dict[str, Any]:
  """Trains (resuming) and evaluates one run; returns its summary.

  Its directory's settings record was checked (`guard_stale_runs`): a summary
  or checkpoint found there was made with the same settings.
  """
  sdir = os.path.join(workdir, run.name)
  os.makedirs(sdir, exist_ok=True)
  if is_primary():
    provenance.write_record(sdir, provenance.run_record(setup.config, run))
  summary_path = os.path.join(sdir, "summary.json")
  if os.path.exists(summary_path):
    with open(summary_path) as f:
      progress.run_finished(run.name, skipped=True)
      return json.load(f)
  out = train_loop(setup, run, sdir, progress)
  state, history, c = (
    out["state"],
    out["history"],
    records.counters(out["state"]),
  )
  done = int(c["round"]) >= setup.config.fed.rounds and not out["diverged"]
  summary = results_lib.run_summary(
    run,
    setup,
    history,
    rounds=int(c["round"]),
    diverged=out["diverged"],
    complete=done,
    train_wall_s=out["train_wall_s"],
    compile_wall_s=out["compile_wall_s"],
    skipped_client_rounds=int(c["skipped_client_rounds"]),
    dropped_client_rounds=int(c["dropped_client_rounds"]),
  )
  if done and setup.config.eval.num_samples and setup.evaluator is not None:
    summary.update(
      final_samples(setup, run, state, out["writer"], sdir, progress)
    )
  if done and setup.config.eval.energy_images:
    summary["sampling_energy"] = sampling_report.run_rows(setup, summary)
    out["writer"].write_scalars(
      int(c["round"]), sampling_report.scalars(summary["sampling_energy"])
    )
  out["writer"].flush()
  if is_primary():
    _write_json(os.path.join(sdir, "history.json"), history)
    if done:
      _write_json(summary_path, summary)
  progress.run_finished(run.name)
  return summary


def _write_json(path: str, obj) -> None:
  """Atomic JSON write (a kill leaves the old file or the new one)."""
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=1)
  os.replace(tmp, path)


def final_samples(
  setup: Setup, run: Run, state, writer, sdir: str, progress
) -> Dict[str, Any]:
  """EMA samples, their grid and (if enabled) FID/KID and bits/dim."""
  t1 = time.time()
  progress.eval_started(
    run.name,
    "samples"
    + (" + FID/KID" if setup.config.eval.fid else "")
    + (" + bits/dim" if setup.config.eval.vlb_size else ""),
  )
  ev = setup.evaluator(federated.to_host(state.ema_params), run.name)
  out = {k: v for k, v in ev.items() if k != "grid"}
  out["eval_wall_s"] = time.time() - t1
  rnd = int(records.counters(state)["round"])
  writer.write_images(rnd, {"samples": ev["grid"][None]})
  if is_primary():
    np.save(os.path.join(sdir, "samples_grid.npy"), ev["grid"])
  writer.write_scalars(
    rnd,
    {
      k: v
      for k, v in ev.items()
      if k in ("fid", "kid", "kid_std", "vlb_bits_per_dim")
    },
  )
  progress.eval_done(run.name, out)
  distributed.barrier(f"fedqjax: {run.name} evaluated")
  return out


def guard_stale_runs(
  config: Settings, runs: List[Run], workdir: str, overwrite: bool
) -> None:
  """Stops (ValueError naming the keys) when the workdir holds runs made
  with other settings; with `overwrite`, moves them aside first."""
  records = [provenance.run_record(config, r) for r in runs]
  stale = provenance.stale_runs(workdir, records)
  if stale and not overwrite:
    raise ValueError(provenance.stale_message(workdir, stale))
  if stale and is_primary():
    dest = provenance.move_aside(workdir, list(stale))
    log.warning(
      "moved %d stale run(s) (%s) to %s; recomputing them",
      len(stale),
      ", ".join(stale),
      dest,
    )
  distributed.barrier("fedqjax: workdir checked")


def train_and_evaluate(
  config,
  workdir: str,
  overwrite: bool = False,
  after_checks: Optional[Callable[[], None]] = None,
) -> Dict[str, Any]:
  """Runs every run of the sweep; writes results (+ figures: `figures`).

  Args:
    config: the `Settings` tree, or a ConfigDict / mapping of its keys
      (parsed and validated here, before anything compiles).
    workdir: where runs, results and figures go. Finished runs are skipped
      and interrupted ones resumed, if they were made with the same
      settings (`provenance`).
    overwrite: move runs made with other settings aside and recompute them
      (else such a run is a ValueError, before anything is written).
    after_checks: called once the settings, data, memory and workdir
      passed their checks, before anything is written or compiled (the
      CLI imports TensorFlow there).

  Returns:
    {"runs": [summary per run], "rows": [one per (run, allocation)],
     "meta": {...}}.
  """
  from experiments.fl_sweep import figures as report  # pylint: disable=g-import-not-at-top
  from experiments.fl_sweep import preflight  # pylint: disable=g-import-not-at-top

  config = settings_tree.parse(config)  # before anything compiles
  preflight.check(config, workdir)  # data, FID weights, memory: exit 2
  runs = plan_runs(config)
  guard_stale_runs(
    config, runs, workdir, overwrite
  )  # before anything is written
  if after_checks is not None:
    after_checks()
  os.makedirs(workdir, exist_ok=True)
  if config.compilation_cache:
    enable_compilation_cache(os.path.join(workdir, ".jax_cache"))
  t0 = time.time()
  progress = console.SweepProgress([r.name for r in runs], config.fed.rounds)
  dataset = load_dataset(config)
  setups: Dict[int, Setup] = {}
  summaries = []
  for run in runs:
    if run.seed not in setups:
      setups[run.seed] = build(config, dataset, run.seed, workdir)
      announce(setups[run.seed], progress, first=len(setups) == 1)
    summaries.append(run_one(setups[run.seed], run, workdir, progress))
  distributed.barrier("fedqjax: runs done")  # the primary wrote every history
  results = results_lib.assemble(
    config, summaries, setups[runs[0].seed], workdir, wall_s=time.time() - t0
  )
  if is_primary():
    results["sampling_energy"] = sampling_report.write(
      workdir, setups, summaries, figure=config.figures
    )["rows"]
    results_lib.write_results(workdir, results)
    if config.figures:
      report.write_figures(workdir, results)
  return results


def announce(setup: Setup, progress, first: bool) -> None:
  """Logs the setup and, once, what the first round will compile."""
  spec = setup.spec
  log.info(
    "dataset=%s seed=%d params=%d flops/sample=%.3g deadline=%.3fs "
    "(%s) client_loop=%s conv=%s devices over T at fp32: %d of %d; "
    "client axis: %d slots over %d %s device(s)",
    setup.dataset,
    setup.seed,
    setup.num_params,
    setup.flops_per_sample,
    setup.deadline_s,
    setup.deadline_rule,
    spec.execution.layout,
    spec.execution.conv_impl,
    setup.devices_over_deadline,
    spec.num_clients,
    spec.padded_clients,
    spec.num_shards,
    jax.default_backend(),
  )
  if first:
    backend = jax.default_backend()
    est = console.estimate_compile_s(
      backend,
      spec.execution.layout,
      spec.padded_clients // spec.num_shards,
      setup.num_params,
    )
    progress.compiling(
      f"the federated round ({spec.clients_per_round} "
      f"clients, {spec.execution.layout} layout, {backend}, "
      f"{setup.memory.describe()})",
      est,
    )
