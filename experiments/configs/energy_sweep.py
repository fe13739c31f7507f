r"""System-level energy sweep: every bits scheme x allocation policy
over deadline, devices, bandwidth, error demand, model size, p_max, f_max and
fading, one axis at a time around `base` (plus one heat map of two axes).

Usage:
  python -m experiments.energy_sweep --workdir=/tmp/es
  python -m experiments.energy_sweep --workdir=/tmp/es \
      --config.axes.num_devices=10,100,1000,10000,100000,1000000 \
      --config.num_seeds=3
  python -m experiments.energy_sweep --workdir=/tmp/es \
      --config.bits_source=measured
  python -m experiments.energy_sweep --workdir=/tmp/es \
      --config.bits_source=workdir/cifar_sweep \
      --config.axes.eps_scale='()' --config.heatmap='()'
  python -m experiments.energy_sweep \
      --config=experiments/configs/energy_sweep.py:small --workdir=/tmp/es_small

Presets: `default` (about 60 scenarios x 10 device draws, under a minute on 2
CPU cores), `small` (the notebook's and the tests': 2 draws, short axes,
a synthetic 100k-parameter model; seconds), `yang2021` (the default with
config.regime=yang2021: Yang et al., IEEE TWC 2021, Sec. VI's devices as
transcribed, N = 50, D_k = 500 samples per round) and `yang2021_code` (the
default with config.regime=yang2021_code: the constants of the public MATLAB
code of that paper's figures, N = 20, C_k D_k = 1e8 cycles per local
iteration); the values come from fedqjax.energy.regimes.REGIMES
(experiments/energy_sweep/regime.py). Every key, its default (the
`default` preset) and its valid range is declared once, in
experiments/energy_sweep/settings.py; this file overrides what a preset
changes. Every key is validated before anything is computed: a bad value
exits with status 2 and one line naming the key and its valid range. An
axis set to () is not swept.
"""

import ml_collections

from experiments.common import settings as settings_lib
from experiments.energy_sweep import settings


def get_config(preset: str = "default") -> ml_collections.ConfigDict:
  """The energy sweep config for `preset` in {"default", "small",
  "yang2021", "yang2021_code"}."""
  if preset not in settings.PRESETS:
    raise ValueError(
      f"preset {preset!r} is invalid; valid: {', '.join(settings.PRESETS)}"
    )
  c = settings_lib.to_config_dict(settings.Settings())
  if preset == "small":
    c.num_seeds = 2
    c.base.model = "100000"
    c.axes.deadline_factor = (1.05, 1.5, 3.0)
    c.axes.num_devices = (10, 100)
    c.axes.total_bandwidth_hz = (5e6, 20e6)
    c.axes.eps_scale = (0.1, 1.0, 10.0)
    c.axes.model = ("10000", "100000")
    c.axes.p_max_w = (0.1, 0.2)
    c.axes.f_max_hz = (1e9, 2e9)
    c.axes.cycles_per_sample = (1e4, 1e6, 1e8)
  if preset in ("yang2021", "yang2021_code"):
    c.regime = preset
  return c
