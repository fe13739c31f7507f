"""Subprocess (8 forced CPU devices): the main job with `fed.mesh=auto`
(client axis sharded over the 8 devices, K = 3 padded to 8 slots) equals the
same config with `fed.mesh=none` (one device).

Usage: fed_mesh_train_check.py OUTDIR
"""

import json
import os
import sys

import jax
import numpy as np

from experiments.configs import test as test_config
from experiments.fl_sweep import train

NUMBERS = (
  "total_energy_j",
  "comp_energy_j",
  "comm_energy_j",
  "uploaded_mb",
  "mean_bits",
  "final_loss",
  "heldout_loss",
  "skipped_client_rounds",
)


def run(mesh, workdir):
  c = test_config.get_config()
  c.fed.mesh = mesh
  c.sweep.schemes = ("fp32", "ondemand")
  c.compilation_cache = False
  c.eval.num_samples = 4
  c.figures = False
  return train.train_and_evaluate(c, workdir)


def main():
  assert jax.device_count() == 8, jax.devices()
  out = sys.argv[1]
  sharded = run("auto", os.path.join(out, "auto"))
  single = run("none", os.path.join(out, "none"))
  assert sharded["meta"]["num_devices"] == 8
  rows = lambda r: {(x["run"], x["allocation"]): x for x in r["rows"]}
  a, b = rows(sharded), rows(single)
  assert set(a) == set(b) and a
  for key in b:
    for k in NUMBERS:
      np.testing.assert_allclose(
        a[key][k], b[key][k], rtol=1e-4, err_msg=f"{key} {k}"
      )
    assert a[key]["mean_bits"] == b[key]["mean_bits"], key
  with open(os.path.join(out, "auto", "fp32", "history.json")) as f:
    assert json.load(f)[-1]["round"] == 3
  print("MESH_TRAIN_OK devices=8")


if __name__ == "__main__":
  main()
