r"""System-level energy sweep: energy of every bits scheme x allocation policy
over scenarios and device draws, in seconds.

  python -m experiments.energy_sweep --workdir=/tmp/es
  python -m experiments.energy_sweep --workdir=/tmp/es --config.num_seeds=20 \
      --config.axes.deadline_factor=1,2,4,8
  python -m experiments.energy_sweep --config=small --workdir=/tmp/es_small
  python -m experiments.energy_sweep --list_keys=axes   (keys, defaults, ranges)

Writes results.csv, summary.md and figures/ under --workdir (the keys:
experiments/energy_sweep/settings.py, presets: experiments/configs/
energy_sweep.py; the method: experiments/energy_sweep/sweep.py). Progress
lines go to stderr, the base scenario's table to stdout. A bad command line
(flag, config key or value, bits source) exits with status 2 and one line
on stderr naming it, before anything is computed or written.
"""

import logging
import os
import time

from absl import app, flags

from experiments.common import cli, logs

FLAGS = flags.FLAGS
_MAIN_FLAGS = (
  "--workdir",
  "--config",
  "--config.KEY=VALUE",
  "--list_keys",
  "--verbosity",
)
# The shipped config, found from this module (runs from any directory).
DEFAULT_CONFIG = os.path.join(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
  "configs",
  "energy_sweep.py",
)
_SETTINGS = []  # the parsed settings tree (set by _parse)


_MAIN = cli.Main(
  settings="experiments.energy_sweep.settings",
  default_config=DEFAULT_CONFIG,
  workdir=(
    "workdir/energy_sweep",
    "Output directory (results.csv, summary.md, figures/).",
  ),
  flags=_MAIN_FLAGS,
  config_examples=f"{DEFAULT_CONFIG}[:small]",
)


# Flags and settings; errors exit 2 with one line.
_parse = _MAIN.parser(_SETTINGS)


def main(argv):
  del argv
  # pylint: disable-next=g-import-not-at-top
  from experiments.energy_sweep import outputs, sampling, sweep

  settings, workdir = _SETTINGS[0], FLAGS.workdir
  log = logging.getLogger(logs.LOGGER).info
  t0 = time.perf_counter()
  try:
    prepared = sweep.prepare(settings, log)  # bits source, models
  except (ValueError, OSError) as e:  # nothing was computed or written
    message = str(e)
    if not message.startswith("config."):
      message = f"config.bits_source={settings.bits_source!r}: {message}"
    cli.exit_with_error(message)
  result = sweep.run(settings, log, prepared)
  outputs.write_all(result, settings, workdir)
  sampling.write(sampling.sampling_rows(settings, prepared), workdir)
  with open(os.path.join(workdir, "summary.md")) as f:
    print(f.read())
  figures = f", figures: {workdir}/figures/" if settings.figures else ""
  print(
    f"results: {workdir}/results.csv, sampling energy: {workdir}/"
    f"sampling.csv, summary: {workdir}/summary.md"
    f"{figures} ({time.perf_counter() - t0:.1f} s)",
    flush=True,
  )


def run() -> None:
  """The program: flags, then `main`."""
  cli.use_doc(__doc__)
  app.run(main, flags_parser=_parse)
