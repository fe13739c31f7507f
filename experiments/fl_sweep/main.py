r"""Main job: compare fp32 / fixed / on-demand federated DDPM training.

  python -m experiments.cifar_sweep --workdir=workdir/cifar_sweep
  python -m experiments.cifar_sweep --config=cifar_sweep:paper \
      --workdir=/tmp/paper --config.fed.num_clients=32
  python -m experiments.cifar_sweep --config=test --workdir=/tmp/t
  python -m experiments.cifar_sweep --list_keys=fed   (keys, defaults, ranges)

Installed, the same program is `fedqjax-sweep`; it needs the `tensorflow`
extra (`pip install "fedqjax[tensorflow]"`). `--config` takes a path
(`experiments/configs/cifar_sweep.py:paper`) or a shipped name
(`cifar_sweep:paper`, `paper`, `test`).

Writes TensorBoard logs (one subdirectory per run), results.csv/json and
figures/ under --workdir. Rerunning resumes. The console shows a compile
notice, progress lines with ETAs and the results table; `--verbosity=1` (or
FEDQJAX_VERBOSE=1) also shows the libraries' own log lines (XLA, TF, orbax).
A bad command line exits with status 2 and one line on stderr.
"""

import importlib.util
import os

from absl import app, flags

from experiments.common import cli, logs
from experiments.fl_sweep import progress

FLAGS = flags.FLAGS
_MAIN_FLAGS = (
  "--workdir",
  "--config",
  "--config.KEY=VALUE",
  "--list_keys",
  "--overwrite",
  "--verbosity",
  "--coordinator_address",
  "--num_processes",
  "--process_id",
  "--distributed_auto",
)
# The shipped config, found from this module (runs from any directory).
DEFAULT_CONFIG = os.path.join(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
  "configs",
  "cifar_sweep.py",
)
_SETTINGS = []  # the parsed settings tree (set by _parse)


def _define_flags() -> None:
  """The flags beyond --workdir and --config."""
  # Several hosts (jax.distributed.initialize); defaults from the usual
  # environment variables, nothing when running alone.
  env = os.environ.get
  flags.DEFINE_string(
    "coordinator_address",
    env("JAX_COORDINATOR_ADDRESS", ""),
    "host:port of process 0 (several processes).",
  )
  flags.DEFINE_integer(
    "num_processes",
    int(env("JAX_NUM_PROCESSES", "1")),
    "Number of processes.",
    lower_bound=1,
  )
  flags.DEFINE_integer(
    "process_id",
    int(env("JAX_PROCESS_ID", "0")),
    "This process, 0..num_processes-1.",
    lower_bound=0,
  )
  flags.DEFINE_bool(
    "overwrite",
    False,
    "Move runs of the workdir made with other settings to "
    "<workdir>/stale/ and recompute them (else: exit 2).",
  )
  flags.DEFINE_bool(
    "distributed_auto",
    False,
    "jax.distributed.initialize() with cluster auto-detection "
    "(TPU pod slices, SLURM, ...).",
  )


_MAIN = cli.Main(
  settings="experiments.fl_sweep.settings",
  default_config=DEFAULT_CONFIG,
  workdir=(
    "workdir/cifar_sweep",
    "Output directory (logs, checkpoints, results).",
  ),
  flags=_MAIN_FLAGS,
  config_examples=f"{DEFAULT_CONFIG}[:preset] or experiments/configs/test.py",
  define_flags=_define_flags,
)


# Flags and settings; errors exit 2 with one line.
_parse = _MAIN.parser(_SETTINGS)


_NEEDS_EXTRA = (
  "the training sweep needs TensorFlow and clu ({}); valid: "
  "pip install 'fedqjax[tensorflow]' (or 'fedqjax[train]' where "
  "TensorFlow is installed already)"
)


def _check_training_extra() -> None:
  """Exits 2 with one line naming the extra unless TensorFlow (clu's
  TensorBoard writer) and clu are installed: found, not imported (about
  4 s, paid after the settings' checks: `_import_training_extra`)."""
  for name in ("tensorflow", "clu"):
    try:
      found = importlib.util.find_spec(name) is not None
    except ImportError as e:
      cli.exit_with_error(_NEEDS_EXTRA.format(e))
    if not found:
      cli.exit_with_error(_NEEDS_EXTRA.format(f"No module named {name!r}"))


def _import_training_extra() -> None:
  """Imports TensorFlow (its load-time INFO lines quieted) and clu's
  writers; a ValueError naming the extra if either fails to import."""
  try:
    logs.import_quietly("tensorflow")
    import clu.metric_writers  # noqa: F401  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError as e:
    raise ValueError(_NEEDS_EXTRA.format(e)) from None


def main(argv):
  del argv
  _check_training_extra()
  from experiments.common import distributed  # pylint: disable=g-import-not-at-top
  from experiments.fl_sweep import results as results_lib  # pylint: disable=g-import-not-at-top
  from experiments.fl_sweep import train

  try:
    distributed.initialize(
      FLAGS.coordinator_address,
      FLAGS.num_processes,
      FLAGS.process_id,
      auto=FLAGS.distributed_auto,
    )
    results = train.train_and_evaluate(
      _SETTINGS[0],
      FLAGS.workdir,
      overwrite=FLAGS.overwrite,
      after_checks=_import_training_extra,
    )
  except ValueError as e:  # bad data or setting found late: exit 2
    cli.exit_with_error(str(e))
  if train.is_primary():
    print(results_lib.markdown_table(results), flush=True)
    progress.show_outputs(
      FLAGS.workdir,
      results.get("meta", {}).get("wall_s"),
      figures=_SETTINGS[0].figures,
    )


def run() -> None:
  """The program: flags, then `main`."""
  cli.use_doc(__doc__)
  app.run(main, flags_parser=_parse)
