"""Crash safety of the sweep CLI: SIGKILL at verified points, a damaged
checkpoint, and everything the resumed sweep wrote compared bit for bit.

One uninterrupted reference run (conftest.py `reference_sweep`, shared with
the two-process jobs) and one chain of killed-and-rerun processes of
`python -m experiments.cifar_sweep` on the tiny test config (fp32 and
on-demand, 5 rounds, checkpoints at rounds 2, 4 and 5). The chain kills one
process at each of KILLS points of a seeded schedule (crash_probe.py):
a run's first round, inside a checkpoint write, between checkpoints, the
last round, the final evaluation and the history / summary writes (each
once, three in each run); a start-up; the results write. Each is fired on
an event seen from outside and verified after the kill. After one kill it flips
bytes in the newest checkpoint's array data (same size). A last process
finishes the sweep.

Compared with the reference: the final orbax state of each run (params,
EMA params, round, PRNG key, energies, counters), history.json, summary.json,
results.json and results.csv (all but wall-clock fields), the sample grid,
and every TensorBoard scalar, histogram and image per (tag, step).

Event files are append-only: each checkpoint records their sizes after a
flush and a resumed run truncates them to that, so no (tag, step) appears
twice (`test_tensorboard_logs_each_step_once`).

All processes share the persistent XLA compilation cache (conftest). The
chain's processes pass the schemes as `fp32,ondemand`, the reference as a
tuple: the CLI must read both as the same sweep. `pytest -s` prints the
plan, each kill and the timings.
"""

from __future__ import annotations

import csv
import glob
import json
import logging
import os
import shutil
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from tests.experiments.fl_sweep import crash_probe as cp
from tests.experiments.fl_sweep.conftest import REFERENCE_ARGS
from tests.support import Lines, start_cli, wait_or_kill

SEED, KILLS = 20240304, 8  # every per-run phase once, start-up, results
RUN_TIMEOUT_S = 600  # one process; a cold compile takes minutes on 2 cores


def _start(workdir: Path, log: Path):
  """A chain process (the reference's settings, the schemes as typed on
  a command line) and its probe, snapshotted before it starts."""
  probe = cp.Probe(workdir, log)
  with open(log, "w") as f:
    proc = start_cli(
      [
        *REFERENCE_ARGS,
        f"--workdir={workdir}",
        "--config.sweep.schemes=fp32,ondemand",
      ],
      stdout=f,
    )
  return proc, probe


@pytest.fixture(scope="module")
def sweeps(reference_sweep, tmp_path_factory):
  """The reference workdir and the chain's, with the chain's records."""
  base = tmp_path_factory.mktemp("crash")
  got, logs = base / "chain", []
  t0 = time.time()
  ref = reference_sweep.wait(RUN_TIMEOUT_S)
  t_ref = time.time() - t0

  def start():
    logs.append(base / f"chain{len(logs)}.log")
    return _start(got, logs[-1])

  points = cp.schedule(SEED, KILLS)
  chain = cp.run_chain(points, start, RUN_TIMEOUT_S, SEED)
  final_rc = wait_or_kill(start()[0], RUN_TIMEOUT_S)
  print(
    f"\nreference (waited) {t_ref:.1f}s; chain of {len(logs)} processes "
    f"{time.time() - t0 - t_ref:.1f}s"
  )
  for point, attempts in chain["points"]:
    print(f"  {point}: {attempts}")
  print(f"  damage: {chain['damage']}")
  return dict(
    chain,
    ref=ref,
    got=got,
    logs=logs,
    final_rc=final_rc,
    kinds={p.kind for p in points},
    runs={p.run for p in points if p.run},
    planned=len(points),
  )


def test_every_planned_kill_landed(sweeps):
  assert sweeps["planned"] == KILLS and sweeps["kinds"] == set(cp.KINDS)
  assert sweeps["runs"] == set(cp.RUNS)
  done = [(p, a[-1]) for p, a in sweeps["points"]]
  missed = [(p, a) for p, a in done if a["status"] != "killed"]
  assert len(done) == sweeps["planned"] and not missed, missed
  final = sweeps["logs"][-1].read_text()
  assert sweeps["final_rc"] == 0, final[-3000:]


def test_damaged_checkpoint_is_detected_and_skipped(sweeps):
  """Same-size damage of array data: the rerun names the step, moves it
  aside and resumes from the previous one (the results below still equal
  the reference's)."""
  assert len(sweeps["damage"]) == 1, sweeps["damage"]
  d = sweeps["damage"][0]
  text = sweeps["logs"][d["next_process"]].read_text()
  ckdir = sweeps["got"] / d["run"] / "checkpoints"
  assert f"checkpoint step {d['step']} in {ckdir} is damaged" in text, text
  assert f"run {d['run']}: resumed at round {d['prev']}\n" in text, text
  assert (ckdir / f"{d['step']}.damaged").is_dir()


def _final_state(workdir: Path, run: str):
  import jax  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  mgr = ocp.CheckpointManager(str(workdir / run / "checkpoints"))
  try:
    assert max(mgr.all_steps()) == cp.ROUNDS, mgr.all_steps()
    state = mgr.restore(
      cp.ROUNDS, args=ocp.args.Composite(state=ocp.args.StandardRestore())
    )["state"]
  finally:
    mgr.close()
  flat = jax.tree_util.tree_flatten_with_path(state)[0]
  return {jax.tree_util.keystr(k): np.asarray(v) for k, v in flat}


@pytest.mark.parametrize("run", cp.RUNS)
def test_final_state_is_bitwise_the_reference(sweeps, run):
  got, want = (_final_state(sweeps[w], run) for w in ("got", "ref"))
  assert sorted(got) == sorted(want)
  for part in ("['params']", "['ema_params']", "['rng']", "['round']"):
    assert any(k.startswith(part) for k in got), (part, sorted(got)[:5])
  differ = [
    k
    for k in want
    if got[k].dtype != want[k].dtype
    or got[k].shape != want[k].shape
    or got[k].tobytes() != want[k].tobytes()
  ]
  assert not differ, differ


def _no_wall(x):
  """x without wall-clock fields (`*_wall_s`, meta.wall_s)."""
  if isinstance(x, dict):
    return {
      k: _no_wall(v)
      for k, v in x.items()
      if not (k.endswith("_wall_s") or k == "wall_s")
    }
  if isinstance(x, list):
    return [_no_wall(v) for v in x]
  return x


def _json(path: Path):
  with open(path) as f:
    return json.load(f)


def _csv(path: Path):
  with open(path, newline="") as f:
    rows = list(csv.reader(f))
  keep = [i for i, c in enumerate(rows[1]) if not c.endswith("wall_s")]
  return rows[0], [[r[i] for i in keep] for r in rows[1:]]


def test_history_summaries_and_results_equal_the_reference(sweeps):
  ref, got = sweeps["ref"], sweeps["got"]
  for run in cp.RUNS:
    h = _json(got / run / "history.json")
    assert [r["round"] for r in h] == list(range(cp.ROUNDS + 1))
    assert h == _json(ref / run / "history.json"), run
    assert _no_wall(_json(got / run / "summary.json")) == _no_wall(
      _json(ref / run / "summary.json")
    ), run
    grid = [np.load(w / run / "samples_grid.npy") for w in (got, ref)]
    assert (
      grid[0].dtype == grid[1].dtype and grid[0].tobytes() == grid[1].tobytes()
    ), run
  res = _json(got / "results.json")
  assert [r["run"] for r in res["runs"]] == list(cp.RUNS)
  assert _no_wall(res) == _no_wall(_json(ref / "results.json"))
  assert _csv(got / "results.csv") == _csv(ref / "results.csv")


def _events(run_dir: Path):
  """{(tag, step): [payload per write]} over the run's event files in the
  order TensorBoard reads them; payloads are serialized tensors (hparams:
  without their start time)."""
  from tensorboard.backend.event_processing import event_file_loader  # pylint: disable=g-import-not-at-top
  from tensorboard.plugins.hparams import plugin_data_pb2  # pylint: disable=g-import-not-at-top

  out = defaultdict(list)
  for f in sorted(glob.glob(str(run_dir / "events.out.tfevents.*"))):
    for ev in event_file_loader.EventFileLoader(f).Load():
      for v in ev.summary.value:
        if v.metadata.plugin_data.plugin_name == "hparams":
          hp = plugin_data_pb2.HParamsPluginData.FromString(
            v.metadata.plugin_data.content
          )
          hp.session_start_info.start_time_secs = 0
          payload = hp.SerializeToString(deterministic=True)
        else:
          payload = v.tensor.SerializeToString(deterministic=True)
        out[(v.tag, ev.step)].append(payload)
  return out


@pytest.mark.parametrize("run", cp.RUNS)
def test_tensorboard_equals_the_reference(sweeps, run):
  """Same (tag, step) pairs, none missing or extra, and every value written
  at each, by any process, killed or not, bitwise the reference's."""
  got, want = (_events(sweeps[w] / run) for w in ("got", "ref"))
  assert sorted(got) == sorted(want)
  for tag in (
    "loss",
    "heldout_ema",
    "cum_j/kkt",
    "bits",
    "samples",
    "_hparams_/session_start_info",
  ):
    assert any(t == tag for t, _ in want), tag
  differ = [
    k for k in want if set(got[k]) != set(want[k]) or len(set(want[k])) != 1
  ]
  assert not differ, differ


@pytest.mark.parametrize("which", ["ref", "got"])
def test_tensorboard_logs_each_step_once(sweeps, which):
  """No (tag, step) twice: held-out scalars are written once, and a resumed
  run truncates its event files to what its checkpoint covered."""
  events = {
    k: len(v) for r in cp.RUNS for k, v in _events(sweeps[which] / r).items()
  }
  assert {k: n for k, n in events.items() if n > 1} == {}


def test_every_checkpoint_step_restores(sweeps):
  """Every step orbax lists (damaged ones were moved aside) restores with
  its history up to its round, in the chain's workdir."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  restored = 0
  for run in cp.RUNS:
    mgr = ocp.CheckpointManager(str(sweeps["got"] / run / "checkpoints"))
    try:
      for step in mgr.all_steps():
        out = mgr.restore(
          step,
          args=ocp.args.Composite(
            state=ocp.args.StandardRestore(), history=ocp.args.JsonRestore()
          ),
        )
        assert int(out["state"]["round"]) == step, (run, step)
        assert [h["round"] for h in out["history"]] == list(range(step + 1))
        restored += 1
    finally:
      mgr.close()
  assert restored == 2 * len(cp.RUNS)  # max_to_keep=2 each


def test_checkpointer_detects_same_size_damage(tmp_path):
  """In-process, in seconds: flipped array bytes and a changed digit in the
  history JSON (both keep the size and load without error in orbax) fail
  the digest; the previous step is used; a step without a digest (written
  before digests) still loads, with a warning."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  from experiments.fl_sweep import checkpoint  # pylint: disable=g-import-not-at-top
  from fedqjax import federated

  params = {"w": jnp.arange(4000, dtype=jnp.float32).reshape(40, 100)}
  state0 = federated.init_server_state(params, jax.random.key(0), 2)
  states = [
    state0.replace(
      round=jnp.asarray(r, state0.round.dtype), params={"w": params["w"] + r}
    )
    for r in (1, 2)
  ]
  hist = [{"round": 0}, {"round": 1, "x": 0.25}, {"round": 2, "x": 0.5}]
  lines = Lines()
  logging.getLogger("fedqjax").addHandler(lines)
  try:

    def restore(step_dir_edit):
      shutil.rmtree(tmp_path / "ck", ignore_errors=True)
      mgr = checkpoint.Checkpointer(str(tmp_path / "ck"))
      for r, s in zip((1, 2), states):
        mgr.save(s, hist[: r + 1])
      mgr.close()
      step_dir_edit(tmp_path / "ck" / "2")
      mgr = checkpoint.Checkpointer(str(tmp_path / "ck"))
      try:
        s, h, _ = mgr.restore_latest(state0)
      finally:
        mgr.close()
      return int(s.round), h, sorted(os.listdir(tmp_path / "ck"))

    def flip_array(d):
      f = max(
        (p for p in (d / "state").rglob("*") if p.parent.name == "d"),
        key=lambda p: p.stat().st_size,
      )
      b = bytearray(f.read_bytes())
      b[len(b) // 2] ^= 0x01
      f.write_bytes(bytes(b))

    def edit_history(d):
      f = next(
        p
        for p in (d / "history").rglob("*")
        if p.is_file() and b"0.5" in p.read_bytes()
      )
      f.write_bytes(f.read_bytes().replace(b"0.5", b"0.7"))

    assert restore(lambda d: None) == (2, hist, ["1", "2"])
    for edit, why in (
      (flip_array, "state digest"),
      (edit_history, "history digest"),
    ):
      assert restore(edit) == (1, hist[:2], ["1", "2.damaged"]), why
      assert (
        f"checkpoint step 2 in {tmp_path / 'ck'} is damaged" in lines.lines[-1]
        and why in lines.lines[-1]
      ), lines.lines[-1]
    assert restore(lambda d: shutil.rmtree(d / "digest")) == (
      2,
      hist,
      ["1", "2"],
    )
    assert "has no digest" in lines.lines[-1], lines.lines[-1]
  finally:
    logging.getLogger("fedqjax").removeHandler(lines)
