"""The round on several devices and processes (subprocesses; a file of its
own so pytest-xdist can run it beside tests/test_federated.py). Several
processes (jax.distributed): tests/test_distributed_cli.py."""
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
