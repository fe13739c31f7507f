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
