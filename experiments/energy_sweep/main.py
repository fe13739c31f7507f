r"""System-level energy sweep: energy of every bits scheme x allocation policy
over scenarios and device draws, in seconds (issue 17).

  python -m experiments.energy_sweep --workdir=/tmp/es
  python -m experiments.energy_sweep --workdir=/tmp/es --config.num_seeds=20 \
      --config.axes.deadline_factor=1,2,4,8

Writes results.csv, summary.md and figures/ under --workdir (see
experiments/configs/energy_sweep.py for the keys; fedqjax.energy.sweep for the
method). A bad config value exits with status 2 and one line naming it.
"""
import difflib
import importlib
import re
import sys
import time

from absl import app
from absl import flags
from absl import logging as absl_logging
from ml_collections import config_flags

from experiments.energy_sweep import settings as scenarios, sweep, outputs as sweep_io

_WORKDIR = flags.DEFINE_string("workdir", "workdir/energy_sweep",
                               "Output directory (results.csv, summary.md, figures/).")
_CONFIG = None  # defined by _define_config() after the command line's keys are checked


def _define_config(argv):
  """DEFINE_config_file reads the command line at once: check its keys first."""
  global _CONFIG
  _check_keys(argv)
  try:
    _CONFIG = config_flags.DEFINE_config_file(
        "config", "experiments/configs/energy_sweep.py", "Config file (optionally :preset).",
        lock_config=True)
  except Exception as e:  # pylint: disable=broad-except  # bad --config or override
    _fail(e)


def _fail(e: Exception) -> None:
  """One line on stderr (the message's last line, "config." before a key) and exit 2."""
  lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
  msg = lines[-1] if lines else repr(e)
  if re.match(r"^[\w.]+(\[\d+\])?=", msg):
    msg = "config." + msg
  print(f"error: {msg}", file=sys.stderr)
  sys.exit(2)


def _config_keys(argv):
  """Key paths of the config file the command line names (default file and preset)."""
  spec = next((a.split("=", 1)[1] for a in argv[1:] if re.match(r"^--?config=", a)),
              "experiments/configs/energy_sweep.py")
  path, _, preset = spec.partition(":")
  module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
  config = module.get_config(preset) if preset else module.get_config()

  def walk(d, prefix=""):
    for k, v in d.items():
      yield from walk(v, f"{prefix}{k}.") if isinstance(v, dict) else [prefix + k]
  return set(walk(config.to_dict()))


def _check_keys(argv) -> None:
  """Exit 2 with one line for a `--config.KEY` that the config file does not have."""
  try:
    keys = _config_keys(argv)
  except Exception:  # pylint: disable=broad-except  # a bad --config: reported later
    return
  for a in argv[1:]:
    m = re.match(r"^--?config\.([\w.]+)(=|$)", a)
    if m and m.group(1) not in keys:
      close = difflib.get_close_matches(m.group(1), sorted(keys), n=1)
      hint = f"; did you mean --config.{close[0]}?" if close else ""
      _fail(ValueError(f"--config.{m.group(1)} is not a config key{hint}"))


def _parse(argv):
  """absl flag parsing; any problem is one line on stderr and exit status 2."""
  try:
    return flags.FLAGS(argv)
  except Exception as e:  # pylint: disable=broad-except  # flags.Error, ConfigDict errors
    _fail(e)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Too many command-line arguments: {argv[1:]}")
  absl_logging.set_verbosity(absl_logging.WARNING)  # quiet backend probing
  t0 = time.perf_counter()
  try:
    settings = scenarios.SweepSettings.from_dict(_CONFIG.value)
    prepared = sweep.prepare(settings)  # bits_source, models: may still reject
  except (ValueError, TypeError, OSError, KeyError, AttributeError) as e:
    _fail(e)  # a bad config file, value or bits_source: nothing was computed
  result = sweep.run(settings, prepared=prepared)
  sweep_io.write_all(result, settings, _WORKDIR.value)
  with open(f"{_WORKDIR.value}/summary.md") as f:
    print(f.read())
  print(f"results: {_WORKDIR.value}/results.csv, summary: {_WORKDIR.value}/summary.md, "
        f"figures: {_WORKDIR.value}/figures/ ({time.perf_counter() - t0:.1f} s)")


def run() -> None:
  """The program: flags, then `main`."""
  _define_config(sys.argv)
  app.run(main, flags_parser=_parse)
