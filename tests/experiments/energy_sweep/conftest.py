"""Fixtures of the energy sweep's tests: one small sweep per session and a
launcher for the program's command line.

The small sweep (experiments/configs/energy_sweep.py:small: 2 device draws,
a 1e5-parameter synthetic model, short axes, float32) runs once; the
properties are checked on its per-draw statistics, its rows and its
results.csv. The notebook runs the same sweep (same compiled program: the
persistent compilation cache makes its compile a hit).
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.configs import energy_sweep as config_mod
from experiments.energy_sweep import outputs, sweep
from experiments.energy_sweep import settings as settings_lib

ROOT = Path(__file__).resolve().parents[3]
PROGRAM = ("-m", "experiments.energy_sweep")


def cli_env():
  """This checkout on the path, CPU only, the quiet console."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
  env.pop("FEDQJAX_VERBOSE", None)
  return env


def start_cli(args):
  """Starts `python -m experiments.energy_sweep <args>` (stdout, stderr
  piped, text). To be replaced by the shared `tests.support` launcher."""
  return subprocess.Popen(
    [sys.executable, *PROGRAM, *args],
    cwd=ROOT,
    env=cli_env(),
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )


@pytest.fixture
def energy_cli():
  """Starts the program's command line: `energy_cli(args)` -> Popen."""
  return start_cli


@pytest.fixture(scope="session")
def small(tmp_path_factory):
  """(settings, result, rows, workdir) of the `small` preset's sweep."""
  settings = settings_lib.parse(config_mod.get_config("small"))
  result = sweep.run(settings, log=lambda m: None)
  workdir = str(tmp_path_factory.mktemp("es"))
  rows = outputs.write_all(result, settings, workdir)
  return settings, result, rows, workdir
