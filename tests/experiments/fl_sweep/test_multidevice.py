"""The main job on several devices (a subprocess, mesh_train_check.py; moved
from tests/test_federated_multidevice.py, a file of its own so pytest-xdist
can run it beside the other tests). The round itself on 8 devices:
tests/fedqjax/federated/test_sharding.py."""

import os
import subprocess
import sys

from tests.support import ROOT as _ROOT
from tests.support import xla_flags

ROOT = str(_ROOT)


def _run_script(name, env_extra, args=()):
  env = dict(os.environ, PYTHONPATH=ROOT, **env_extra)
  out = subprocess.run(
    [sys.executable, os.path.join(ROOT, "tests", name), *args],
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  return out.stdout


def test_main_job_on_8_devices_equals_one_device(tmp_path):
  """`fed.mesh=auto` through train_and_evaluate."""
  out = _run_script(
    "experiments/fl_sweep/mesh_train_check.py",
    {
      "XLA_FLAGS": xla_flags(8),
      "JAX_PLATFORMS": "cpu",
    },
    [str(tmp_path)],
  )
  assert "MESH_TRAIN_OK devices=8" in out, out
