r"""System-level energy sweep (issue 17): every bits scheme x allocation policy
over deadline, devices, bandwidth, error demand, model size, p_max, f_max and
fading, one axis at a time around `base` (plus one heat map of two axes).

Usage:
  python -m experiments.energy_sweep --workdir=/tmp/es
  python -m experiments.energy_sweep --workdir=/tmp/es \
      --config.axes.num_devices=10,100,1000,10000,100000,1000000 --config.num_seeds=3
  python -m experiments.energy_sweep --workdir=/tmp/es --config.bits_source=measured
  python -m experiments.energy_sweep --workdir=/tmp/es --config.bits_source=workdir/cifar_sweep
  python -m experiments.energy_sweep --config=experiments/configs/energy_sweep.py:small \
      --workdir=/tmp/es_small

Presets: `default` (about 50 scenarios x 10 device draws, under a minute on 2
CPU cores) and `small` (the notebook's and the tests': 2 draws, short axes,
a synthetic 100k-parameter model; seconds). Every key is validated before
anything is computed: a bad value exits with status 2 and one line naming
the key and its valid range. An axis set to () is not swept.
"""
import ml_collections


def get_config(preset: str = "default") -> ml_collections.ConfigDict:
  """Returns the energy sweep config for `preset` in {"default", "small"}."""
  if preset not in ("default", "small"):
    raise ValueError(f"preset {preset!r} is invalid; valid: default, small")
  small = preset == "small"
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.num_seeds = 2 if small else 10  # device draws; mean and std over them
  c.bits_schemes = ("fp32", "fixed", "ondemand")
  c.fixed_bits = 8
  # kkt | deadline | split | max (fedqjax.energy.policies) | shared
  # (allocate_shared_bandwidth: W split optimally instead of W / N each)
  c.allocations = ("kkt", "deadline", "split", "max", "shared")
  # gaussian (analytic, default) | measured (one real local update; slow) |
  # a finished training sweep's workdir (the bits its devices chose)
  c.bits_source = "gaussian"
  c.samples_per_round = 16  # n = I B: the CPU preset's 2 local steps x batch 8
  c.heatmap = "deadline_factor,eps_scale"  # "" = none
  c.figures = True

  c.quant = ml_collections.ConfigDict()
  c.quant.method = "minmax"  # minmax | qsgd
  c.quant.bucket_size = 0  # 0 = one bucket per tensor
  c.quant.b_min = 1

  c.deadline = ml_collections.ConfigDict()
  # fp32_feasible: T = factor x the largest fp32 minimal round time (every
  # device can upload every scheme) | median | quantile
  c.deadline.rule = "fp32_feasible"
  c.deadline.quantile = 0.95
  c.deadline.seconds = 0.0  # > 0: a fixed T (the factor is then unused)
  # scenario: T from each scenario's own devices and model (moves with p_max,
  # f_max, W, N, model, fading) | base: the base scenario's T, held fixed
  c.deadline.reference = "scenario"

  c.base = ml_collections.ConfigDict()
  c.base.num_devices = 10  # MODEL.md: N = K = 10
  c.base.deadline_factor = 1.2
  c.base.total_bandwidth_hz = 20e6
  c.base.eps_scale = 1.0
  c.base.model = "100000" if small else "tiny"  # tiny | paper | a parameter count
  c.base.p_max_w = 0.2
  c.base.f_max_hz = 2e9
  c.base.fading = False

  c.axes = ml_collections.ConfigDict()
  c.axes.deadline_factor = (1.05, 1.5, 3.0) if small else (1.05, 1.2, 1.5, 2.0, 3.0, 5.0, 10.0)
  c.axes.num_devices = (10, 100) if small else (10, 100, 1000, 10000)
  c.axes.total_bandwidth_hz = (5e6, 20e6) if small else (2e6, 5e6, 10e6, 20e6, 50e6, 100e6)
  c.axes.eps_scale = (0.1, 1.0, 10.0) if small else (0.01, 0.1, 0.3, 1.0, 3.0, 10.0, 100.0)
  c.axes.model = ("10000", "100000") if small else ("tiny", "paper", "100000000")
  c.axes.p_max_w = (0.1, 0.2) if small else (0.05, 0.1, 0.2, 0.5, 1.0)
  c.axes.f_max_hz = (1e9, 2e9) if small else (0.5e9, 1e9, 2e9, 4e9)
  c.axes.fading = (False, True)

  c.devices = ml_collections.ConfigDict()  # fedqjax.energy.EnergyConfig fields
  c.devices.radius_m = 500.0
  c.devices.min_distance_m = 10.0
  c.devices.pathloss_const_db = 128.1
  c.devices.pathloss_exp_db = 37.6
  c.devices.shadowing_db = 8.0
  c.devices.noise_psd_dbm_hz = -174.0
  c.devices.f_min_hz = 0.1e9
  c.devices.tau_mean = 1e-28
  c.devices.tau_spread = 0.5
  c.devices.flops_per_cycle_choices = (8.0, 16.0, 32.0)
  c.devices.eps_choices = (1e-3, 1e-2, 5e-2, 1e-1)
  c.devices.bit_caps = ()  # () = no caps
  return c
