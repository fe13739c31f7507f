r"""Main job: compare fp32 / fixed / on-demand federated DDPM training.

  python -m experiments.cifar_sweep --workdir=workdir/cifar_sweep
  python -m experiments.cifar_sweep --config=cifar_sweep:paper \
      --workdir=/tmp/paper --config.fed.num_clients=32
  python -m experiments.cifar_sweep --list_keys       (every config key)

The program is `experiments.fl_sweep` (flags in `experiments/fl_sweep/main.py`).
"""

from experiments.fl_sweep import main

if __name__ == "__main__":
  main.run()
