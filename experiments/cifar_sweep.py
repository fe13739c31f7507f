r"""Main job: compare fp32 / fixed / on-demand / naive federated DDPM training.

  python -m experiments.cifar_sweep --workdir=workdir/cifar_sweep
  python -m experiments.cifar_sweep --config=experiments/configs/cifar_sweep.py:paper \
      --workdir=/tmp/paper --config.fed.num_clients=32
  python -m experiments.cifar_sweep --config=experiments/configs/test.py --workdir=/tmp/t

Writes TensorBoard logs (one subdirectory per scheme), results.csv/json and
figures/ under --workdir. Rerunning resumes.
"""
import logging
import sys

from absl import app
from absl import flags
from absl import logging as absl_logging
from ml_collections import config_flags

from fedqjax import report, train

_WORKDIR = flags.DEFINE_string("workdir", "workdir/cifar_sweep",
                               "Output directory (logs, checkpoints, results).")
_CONFIG = config_flags.DEFINE_config_file(
    "config", "experiments/configs/cifar_sweep.py",
    "Config file (optionally :preset).", lock_config=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Too many command-line arguments: {argv[1:]}")
  absl_logging.set_verbosity(absl_logging.WARNING)  # quiet orbax/clu
  log = logging.getLogger("fedqjax")
  log.setLevel(logging.INFO)
  handler = logging.StreamHandler()
  handler.setFormatter(logging.Formatter("%(asctime)s fedqjax: %(message)s"))
  log.addHandler(handler)
  log.propagate = False
  try:
    results = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except ValueError as e:  # bad config / data: a clear message, exit 2
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(report.markdown_table(results))
  print(f"results: {_WORKDIR.value}/results.csv, figures: "
        f"{_WORKDIR.value}/figures/")


if __name__ == "__main__":
  app.run(main)
