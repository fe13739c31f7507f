"""The peer benchmark driver (benchmarks/peers/__main__.py): where its
runner processes start (numpy only, no compile)."""

import os

from benchmarks.peers import __main__ as driver


def test_runners_start_at_the_repository_root():
  """Runner processes get ROOT as working directory and on PYTHONPATH; it
  must hold the `benchmarks` package, or `python -m benchmarks.peers.X`
  fails when the caller's PYTHONPATH is relative (benchmarks/gpu_check.sh
  sets `PYTHONPATH=.`)."""
  assert os.path.isfile(
    os.path.join(driver.ROOT, "benchmarks", "peers", "common.py")
  )
  env = driver._env()  # pylint: disable=protected-access
  assert env["PYTHONPATH"].split(os.pathsep)[0] == driver.ROOT
