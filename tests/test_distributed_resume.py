"""A 2-process run (jax.distributed, gloo) through the real CLI loses one
process to SIGKILL mid-run; the relaunched job resumes from the last orbax
checkpoint and ends equal to an uninterrupted single-process run.

What a cluster scheduler does: when one task of a multi-process JAX job dies
the job is relaunched whole (jax.distributed cannot re-admit a process into a
running job: the survivor is blocked in a collective or stopped by the
coordination service's heartbeat check). The test kills the survivor too if
it has not exited within SURVIVOR_WAIT_S.
"""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROUNDS = 24
SURVIVOR_WAIT_S = 30
ARGS = ("--config=experiments/configs/test.py", "--config.sweep.schemes=fp32",
        f"--config.fed.rounds={ROUNDS}", "--config.ckpt_every=2",
        "--config.eval.num_samples=4", "--config.compilation_cache=False")


def _cli(workdir, *extra, devices=1):
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  return subprocess.Popen(
      [sys.executable, "-m", "experiments.cifar_sweep",
       f"--workdir={workdir}", *ARGS, *extra], cwd=ROOT, env=env,
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _job(workdir):
  """Two processes x 2 CPU devices on a fresh localhost coordinator port."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  return [_cli(workdir, f"--coordinator_address=127.0.0.1:{port}",
               "--num_processes=2", f"--process_id={i}", devices=2)
          for i in range(2)]


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
        p.communicate()[0][-3000:] for p in procs]
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


def _results(workdir):
  with open(os.path.join(workdir, "results.json")) as f:
    return {(r["run"], r["allocation"]): r for r in json.load(f)["rows"]}


def test_killed_process_job_resumes_and_matches_one_process(tmp_path):
  work = tmp_path / "dist"
  ckpt_dir = os.path.join(work, "fp32", "checkpoints")
  at_kill = _kill_after_first_checkpoint(_job(work), ckpt_dir)
  assert at_kill and max(at_kill) < ROUNDS, at_kill  # killed mid-run
  assert not os.path.exists(work / "results.json")

  procs = _job(work)
  outs = [p.communicate(timeout=900)[0] for p in procs]
  for p, o in zip(procs, outs):
    assert p.returncode == 0, o[-4000:]
  resumed = [int(m) for m in re.findall(r"run fp32: resumed at round (\d+)",
                                        outs[0])]
  # It resumes from a checkpoint at or after the one seen at the kill (the
  # run may have saved more before the kill landed), never from scratch.
  assert len(resumed) == 1 and max(at_kill) <= resumed[0] < ROUNDS, (
      at_kill, resumed, outs[0][-3000:])

  single = _cli(tmp_path / "single", "--config.fed.mesh=none")
  out = single.communicate(timeout=900)[0]
  assert single.returncode == 0, out[-4000:]
  a, b = _results(work), _results(tmp_path / "single")
  assert set(a) == set(b) and a
  for key in b:
    assert a[key]["rounds"] == b[key]["rounds"] == ROUNDS
    for k in ("total_energy_j", "comm_energy_j", "uploaded_mb", "final_loss",
              "heldout_loss"):
      np.testing.assert_allclose(a[key][k], b[key][k], rtol=1e-4,
                                 err_msg=f"{key} {k}")
    assert a[key]["mean_bits"] == b[key]["mean_bits"], key
