"""The main job in 2 processes x 2 CPU devices (jax.distributed, gloo)
through the real CLI.

1. One set of results, written by process 0, equal to a single-process run
   of the same config; process 1's first compile of the round is held back
   35 s (cli_compile_delay.py), beyond gloo's 30 s for a peer to join
   a collective: the processes must meet at the coordination service's
   barriers, not at the round's first collective.
2. The job loses one process to SIGKILL mid-run and is relaunched whole
   (what a cluster scheduler does: jax.distributed cannot re-admit a process
   into a running job: the survivor is blocked in a collective or stopped by
   the coordination service's heartbeat check; the test kills the survivor
   if it has not exited within SURVIVOR_WAIT_S). It resumes from the last
   orbax checkpoint and ends equal to the uninterrupted 2-process job.

All runs share one config (fp32 + on-demand, 5 rounds, a checkpoint every
2; the jobs with 4 evaluation samples and no bits/dim, which the training
numbers compared do not depend on), one single-process reference (the
session's `reference_sweep`, conftest.py, shared with the chain of killed
processes) and, as a user's reruns do, the persistent compilation cache
(the suite's, tests/conftest.py).
"""

import json
import os
import re
import signal
import socket
import subprocess
import time

import numpy as np
import pytest

from tests.experiments.fl_sweep import crash_probe as cp
from tests.experiments.fl_sweep.conftest import REFERENCE_ARGS, result_rows
from tests.support import ROOT, SWEEP, cli_env, start_cli

ROUNDS = cp.ROUNDS
SURVIVOR_WAIT_S = 5
COMPILE_DELAY_S = 35  # > gloo's 30 s
ARGS = (
  *REFERENCE_ARGS,
  "--config.sweep.schemes=fp32,ondemand",
  "--config.eval.num_samples=4",
  "--config.eval.vlb_size=0",
)  # bits/dim: per process, tested elsewhere
COMPARED = (
  "total_energy_j",
  "comm_energy_j",
  "uploaded_mb",
  "final_loss",
  "heldout_loss",
)


def _cli(workdir, *extra, devices=1, delay_process=None):
  env = cli_env(devices=devices)
  main = SWEEP
  if delay_process is not None:
    env.update(
      COMPILE_DELAY_PROCESS=str(delay_process),
      COMPILE_DELAY_S=str(COMPILE_DELAY_S),
    )
    main = [str(ROOT / "tests/experiments/fl_sweep/cli_compile_delay.py")]
  return start_cli([f"--workdir={workdir}", *ARGS, *extra], main, env=env)


def _job(workdir, *extra, delay_process=None):
  """Two processes x 2 CPU devices on a fresh localhost coordinator port."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  return [
    _cli(
      workdir,
      f"--coordinator_address=127.0.0.1:{port}",
      "--num_processes=2",
      f"--process_id={i}",
      *extra,
      devices=2,
      delay_process=delay_process,
    )
    for i in range(2)
  ]


def _finish(procs):
  outs = [p.communicate(timeout=900)[0] for p in procs]
  for p, o in zip(procs, outs):
    assert p.returncode == 0, o[-4000:]
  return outs


def _results(workdir):
  with open(os.path.join(workdir, "results.json")) as f:
    res = json.load(f)
  return res, result_rows(res)


@pytest.fixture(scope="module")
def jobs(tmp_path_factory, reference_sweep):
  """The uninterrupted 2-process job (process 1's round compile held back)
  and, started with it (it runs while process 1 waits), the single-process
  reference: (outputs, results) of the job, rows of the reference."""
  work = tmp_path_factory.mktemp("two")
  reference_sweep.start()
  outs = _finish(_job(work, delay_process=1))
  return outs, _results(work), _results(reference_sweep.wait())[1]


def test_two_processes_through_the_cli_equal_one(jobs):
  outs, (res, a), single = jobs
  assert "COMPILE_DELAYED" in outs[1], outs[1][-3000:]
  assert "| fp32 | kkt |" in outs[0]  # process 0 reports ...
  assert "| fp32 |" not in outs[1]  # ... and only process 0
  assert res["meta"]["num_devices"] == 4 and set(a) == set(single) and a
  for key, b in single.items():
    assert a[key]["rounds"] == b["rounds"] == ROUNDS
    for k in COMPARED:
      np.testing.assert_allclose(
        a[key][k], b[k], rtol=1e-4, err_msg=f"{key} {k}"
      )
    assert a[key]["mean_bits"] == b["mean_bits"], key


def _steps(ckpt_dir):
  """Committed orbax steps (orbax renames a step's tmp dir when complete)."""
  if not os.path.isdir(ckpt_dir):
    return []
  return sorted(int(d) for d in os.listdir(ckpt_dir) if d.isdigit())


def _kill_after_first_checkpoint(procs, ckpt_dir, timeout_s=600):
  """SIGKILLs process 1 once a checkpoint exists and the run is not done;
  returns the committed steps at the kill."""
  t0 = time.time()
  while not _steps(ckpt_dir):
    assert all(p.poll() is None for p in procs), [
      p.communicate()[0][-3000:] for p in procs
    ]
    assert time.time() - t0 < timeout_s, "no checkpoint was written"
    time.sleep(0.02)
  steps = _steps(ckpt_dir)
  os.kill(procs[1].pid, signal.SIGKILL)
  procs[1].wait()
  try:
    procs[0].wait(timeout=SURVIVOR_WAIT_S)
  except subprocess.TimeoutExpired:
    procs[0].kill()
  for p in procs:
    p.communicate()
  return steps


def test_killed_process_job_resumes_and_matches_uninterrupted(tmp_path, jobs):
  work = tmp_path / "dist"
  ckpt_dir = os.path.join(work, "fp32", "checkpoints")
  at_kill = _kill_after_first_checkpoint(_job(work), ckpt_dir)
  assert at_kill and max(at_kill) < ROUNDS, at_kill  # killed mid-run
  assert not os.path.exists(work / "results.json")

  outs = _finish(_job(work))
  resumed = [
    int(m) for m in re.findall(r"run fp32: resumed at round (\d+)", outs[0])
  ]
  # It resumes from a checkpoint at or after the one seen at the kill (the
  # run may have saved more before the kill landed), never from scratch.
  assert len(resumed) == 1 and max(at_kill) <= resumed[0] < ROUNDS, (
    at_kill,
    resumed,
    outs[0][-3000:],
  )
  _, a = _results(work)
  _, (_, b), _ = jobs
  assert set(a) == set(b) and a
  for key in b:
    assert a[key]["rounds"] == b[key]["rounds"] == ROUNDS
    for k in (*COMPARED, "mean_bits"):
      assert a[key][k] == b[key][k], (key, k, a[key][k], b[key][k])
