"""The main job on several devices (a subprocess, mesh_train_check.py, a
file of its own so pytest-xdist can run it beside the other tests) equals
the same config on one device (the command-line run `cli_run`,
conftest.py). The round itself on 8 devices:
tests/fedqjax/federated/test_sharding.py."""

import json
import os

import numpy as np

from tests.experiments.fl_sweep.conftest import result_rows
from tests.support import ROOT, cli_env, run_cli

SCRIPT = ROOT / "tests" / "experiments" / "fl_sweep" / "mesh_train_check.py"
NUMBERS = (
  "total_energy_j",
  "comp_energy_j",
  "comm_energy_j",
  "uploaded_mb",
  "final_loss",
  "heldout_loss",
  "skipped_client_rounds",
)


def _rows(workdir):
  with open(os.path.join(workdir, "results.json")) as f:
    return result_rows(json.load(f))


def test_main_job_on_8_devices_equals_one_device(tmp_path, cli_run):
  """`fed.mesh=auto` through train_and_evaluate."""
  proc = run_cli([str(tmp_path)], program=(str(SCRIPT),), env=cli_env(8))
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  assert "MESH_TRAIN_OK devices=8" in proc.stdout, proc.stdout
  sharded, single = _rows(tmp_path), _rows(cli_run[0])
  assert set(sharded) == set(single) and sharded
  for key, b in single.items():
    a = sharded[key]
    assert a["rounds"] == b["rounds"] == 3, key
    for k in NUMBERS:
      np.testing.assert_allclose(a[k], b[k], rtol=1e-4, err_msg=f"{key} {k}")
    assert a["mean_bits"] == b["mean_bits"], key
