"""Subprocess (8 forced CPU devices): the main job with `fed.mesh=auto`
(client axis sharded over the 8 devices, K = 3 padded to 8 slots) into
OUTDIR; test_multidevice.py compares its results with the one-device run
of the same config.

Usage: mesh_train_check.py OUTDIR
"""

import json
import os
import sys

import jax

from experiments.configs import test as test_config
from experiments.fl_sweep import train


def main():
  assert jax.device_count() == 8, jax.devices()
  out = sys.argv[1]
  c = test_config.get_config()
  c.fed.mesh = "auto"
  c.sweep.schemes = ("fp32", "ondemand")
  c.compilation_cache = False
  c.eval.num_samples = 4  # training numbers do not depend on it
  c.figures = False
  results = train.train_and_evaluate(c, out)
  assert results["meta"]["num_devices"] == 8
  with open(os.path.join(out, "fp32", "history.json")) as f:
    assert json.load(f)[-1]["round"] == 3
  print("MESH_TRAIN_OK devices=8")


if __name__ == "__main__":
  main()
