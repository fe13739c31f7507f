r"""System-level energy sweep: energy of every bits scheme x allocation policy
over scenarios and device draws, in seconds (issue 17).

  python -m experiments.energy_sweep --workdir=/tmp/es
  python -m experiments.energy_sweep --workdir=/tmp/es --config.num_seeds=20 \
      --config.axes.deadline_factor=1,2,4,8

Writes results.csv, summary.md and figures/ under --workdir (see
experiments/configs/energy_sweep.py for the keys; fedqjax.energy.sweep for the
method). A bad config value exits with status 2 and one line naming it.
"""
import re
import sys
import time

from absl import app
from absl import flags
from ml_collections import config_flags

from fedqjax.energy import scenarios, sweep, sweep_io

_WORKDIR = flags.DEFINE_string("workdir", "workdir/energy_sweep",
                               "Output directory (results.csv, summary.md, figures/).")
_CONFIG = config_flags.DEFINE_config_file(
    "config", "experiments/configs/energy_sweep.py", "Config file (optionally :preset).",
    lock_config=True)


def _fail(e: Exception) -> None:
  msg = str(e)
  if re.match(r"^[\w.]+(\[\d+\])?(: [\w.]+)?=", msg):
    msg = "config." + msg
  print(f"error: {msg}", file=sys.stderr)
  sys.exit(2)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Too many command-line arguments: {argv[1:]}")
  t0 = time.perf_counter()
  try:
    settings = scenarios.SweepSettings.from_dict(_CONFIG.value)
    prepared = sweep.prepare(settings)  # bits_source, models: may still reject
  except (ValueError, TypeError) as e:
    _fail(e)
  result = sweep.run(settings, prepared=prepared)
  sweep_io.write_all(result, settings, _WORKDIR.value)
  with open(f"{_WORKDIR.value}/summary.md") as f:
    print(f.read())
  print(f"results: {_WORKDIR.value}/results.csv, summary: {_WORKDIR.value}/summary.md, "
        f"figures: {_WORKDIR.value}/figures/ ({time.perf_counter() - t0:.1f} s)")


if __name__ == "__main__":
  app.run(main)
