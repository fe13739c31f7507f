"""The round on several devices and processes (subprocesses; a file of its
own so pytest-xdist can run it beside tests/test_federated.py)."""
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_script(name, env_extra, args=()):
  env = dict(os.environ, PYTHONPATH=ROOT, **env_extra)
  out = subprocess.run([sys.executable, os.path.join(ROOT, "tests", name),
                        *args], env=env, capture_output=True, text=True,
                       timeout=600)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  return out.stdout


def test_sharded_over_8_cpu_devices_equals_single_device():
  out = _run_script("fed_sharded_check.py", {
      "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
      "JAX_PLATFORMS": "cpu"})
  assert "SHARDED_OK devices=8" in out, out


def test_main_job_on_8_devices_equals_one_device(tmp_path):
  """`fed.mesh=auto` through train_and_evaluate (issue 19 item 1)."""
  out = _run_script("fed_mesh_train_check.py", {
      "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
      "JAX_PLATFORMS": "cpu"}, [str(tmp_path)])
  assert "MESH_TRAIN_OK devices=8" in out, out


def test_two_process_distributed_equals_one_process(tmp_path):
  import socket
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  script = os.path.join(ROOT, "tests", "fed_distributed_check.py")
  procs = [subprocess.Popen([sys.executable, script, str(port), str(i),
                             str(tmp_path)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  outs = [p.communicate(timeout=600)[0] for p in procs]
  for p, o in zip(procs, outs):
    assert p.returncode == 0, o[-4000:]
  single = _run_script("fed_distributed_check.py", {}, ["0", "-1",
                                                        str(tmp_path)])
  assert "SINGLE_OK" in single
  a = np.load(tmp_path / "dist_0.npz")
  b = np.load(tmp_path / "single.npz")
  for k in b.files:
    np.testing.assert_allclose(a[k], b[k], rtol=2e-4, atol=2e-6, err_msg=k)


def _cli(workdir, *extra, env_extra=None):
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu",
             **(env_extra or {}))
  cmd = [sys.executable, "-m", "experiments.cifar_sweep",
         "--config=experiments/configs/test.py", f"--workdir={workdir}",
         "--config.sweep.schemes=fp32,ondemand", "--config.eval.num_samples=4",
         "--config.compilation_cache=False", *extra]
  return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def _rows(workdir):
  import json  # pylint: disable=g-import-not-at-top
  with open(os.path.join(workdir, "results.json")) as f:
    res = json.load(f)
  return res, {(r["run"], r["allocation"]): r for r in res["rows"]}


def test_two_processes_through_the_cli_equal_one(tmp_path):
  """2 processes x 2 forced CPU devices (jax.distributed, gloo) through the
  real CLI write ONE set of results, equal to a single-process run's."""
  import socket  # pylint: disable=g-import-not-at-top
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  flags2 = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
  work = tmp_path / "dist"
  procs = [_cli(work, f"--coordinator_address=127.0.0.1:{port}",
                "--num_processes=2", f"--process_id={i}", env_extra=flags2)
           for i in range(2)]
  outs = [p.communicate(timeout=900)[0] for p in procs]
  for p, o in zip(procs, outs):
    assert p.returncode == 0, o[-4000:]
  assert "| fp32 | fp32 | kkt |" in outs[0]  # process 0 reports ...
  assert "| fp32 |" not in outs[1]  # ... and only process 0
  single = _cli(tmp_path / "single", "--config.fed.mesh=none")
  out = single.communicate(timeout=900)[0]
  assert single.returncode == 0, out[-4000:]
  dist, a = _rows(work)
  _, b = _rows(tmp_path / "single")
  assert dist["meta"]["num_devices"] == 4 and set(a) == set(b)
  for key in b:
    for k in ("total_energy_j", "comm_energy_j", "uploaded_mb", "final_loss",
              "heldout_loss"):
      np.testing.assert_allclose(a[key][k], b[key][k], rtol=1e-4,
                                 err_msg=f"{key} {k}")
    assert a[key]["mean_bits"] == b[key]["mean_bits"], key
