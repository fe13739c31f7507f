"""Named energy regimes: where a device's energy constants come from.

How much on-demand quantization saves in TOTAL device energy depends on how
large the computation is next to the upload. With this project's constants
(docs/model.md, "Constants and their sources": c_k = the U-Net's XLA FLOPs
per training image / FLOPs per cycle in {8, 16, 32}) the computation
dominates as soon as a device does several local steps; the
energy-efficient-FL literature (Yang et al. 2021) uses C_k D_k ~ 1e7-1e8
cycles per local iteration, where next to a DDPM upload the computation is
negligible. A number is only meaningful with the regime it came from:

  flops              no overrides: today's default.
  yang2021           Yang et al., IEEE TWC 2021, Sec. VI as transcribed
                     (`YANG2021`): N = 50, C_k D_k ~ U[0.5, 1.5] x 1e7.
  yang2021_code      the public MATLAB code of that paper's figures
                     (`YANG2021_CODE`): N = 20, C_k D_k = 1e8, shadowing as
                     a log-normal dB offset, distances from 1 m.
  cycles_per_sample  a user-given c: c_k = c x U[1 - s, 1 + s].

Every regime constant names its source (`Regime.sources`); docs/model.md
tabulates them with the computation share measured under each regime.
`resolve(name, energy_config, cycles_per_sample)` applies a regime to an
`EnergyConfig`; `computation_share(e_comp, e_comm)` is the share both
programs report; `f_min_floor_share` what an f_min floor can force.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

from fedqjax.energy.devices import Devices, EnergyConfig
from fedqjax.energy.model import comp_energy, cycles_per_sample
from fedqjax.errors import InvalidSetting
from fedqjax.typing import ArrayLike

YANG2021_SOURCE = (
  'Z. Yang, M. Chen, W. Saad, C. S. Hong, M. Shikh-Bahaei, "Energy '
  'Efficient Federated Learning Over Wireless Communication Networks", '
  "IEEE Trans. Wireless Commun. 20(3):1935-1949, 2021 (arXiv 1911.02417), "
  "Sec. VI (simulation setup)"
)
YANG2021_CODE_SOURCE = (
  "the public MATLAB code of the figures of Yang et al. 2021 "
  "(github.com/BrokenBunny/Energy-efficient-federated-learning, "
  "directory github/: user_distribution.m, generate_shadow_fading.m, "
  "main_*.m)"
)
_YANG = "Yang et al., IEEE TWC 20(3) 2021, Sec. VI"
# EnergyConfig field -> the source of its default ("ours": this project).
DEFAULT_SOURCES = dict(
  num_devices="ours",
  radius_m="ours (Yang et al. Sec. VI: a 500 m x 500 m square)",
  min_distance_m="ours",
  cell_shape="ours (Yang et al. Sec. VI: a square)",
  pathloss_const_db=f"{_YANG} (a 3GPP macro-cell model)",
  pathloss_exp_db=f"{_YANG} (a 3GPP macro-cell model)",
  shadowing_db=f"{_YANG}: 8 dB",
  shadowing_law="ours: a normal dB offset (log-normal shadowing)",
  rayleigh_fading="ours (off)",
  total_bandwidth_hz=f"{_YANG}: B = 20 MHz",
  bandwidth_shares="ours: equal FDMA shares",
  noise_psd_dbm_hz=f"{_YANG}: N0 = -174 dBm/Hz",
  p_max_w="ours: 23 dBm, LTE UE power class 3 (Yang et al.: 10 dBm)",
  f_min_hz="ours (Yang et al.: f >= 0)",
  f_max_hz=f"{_YANG}: 2 GHz",
  tau_mean=f"{_YANG}: kappa = 1e-28",
  tau_spread="ours (Yang et al.: one kappa for every user)",
  flops_per_cycle_choices="ours",
  eps_choices="ours",
  bit_caps="ours (no caps)",
  cycles_per_sample="ours: None, c_k from the model's FLOPs",
  cycles_spread="ours",
)

# Short tags of the per-constant sources.
_PAPER = "paper Sec. VI"
_UNCHECKED = " [transcribed earlier; the text was not at hand to re-check]"
_CODE = "MATLAB"


@dataclasses.dataclass(frozen=True)
class Regime:
  """A named set of device-energy constants.

  Attributes:
    name: the regime's name (a key of REGIMES).
    source: where the values come from (a citation).
    energy: `EnergyConfig` field -> value the regime sets.
    samples_per_step: samples a device computes per local iteration (None:
      the training batch).
    doc: what the regime is, and how its values were read.
    sources: every key of `energy` (and "samples_per_step" when set) -> the
      source of its value: the paper's section, a file of a public
      implementation, or "ours".
  """

  name: str
  source: str
  energy: Mapping[str, Any] = dataclasses.field(hash=False)
  samples_per_step: Optional[int] = None
  doc: str = ""
  sources: Mapping[str, str] = dataclasses.field(
    default_factory=dict, hash=False
  )


FLOPS = Regime(
  name="flops",
  source="docs/model.md, Constants and their sources: the model's training "
  "FLOPs per sample from XLA's cost analysis / the device's FLOPs per cycle",
  energy={},
  doc="No overrides: c_k = flops_per_sample / flops_per_cycle, "
  "flops_per_cycle drawn from EnergyConfig.flops_per_cycle_choices.",
)

# The values both readings of Yang et al. share, with their sources.
_SHARED = dict(
  cell_shape=(
    "square",
    f"{_PAPER}; {_CODE} user_distribution.m (l = 0.5 km, BS at the centre)",
  ),
  radius_m=(250.0, f"{_PAPER}; {_CODE} user_distribution.m: 500 m square"),
  pathloss_const_db=(128.1, f"{_PAPER}; {_CODE} user_distribution.m"),
  pathloss_exp_db=(37.6, f"{_PAPER}; {_CODE} user_distribution.m"),
  shadowing_db=(8.0, f"{_PAPER}; {_CODE} user_distribution.m (sigma = 8)"),
  noise_psd_dbm_hz=(-174.0, f"{_PAPER}; {_CODE} main_*.m (Noise = -174)"),
  tau_mean=(1e-28, f"{_PAPER}; {_CODE} main_*.m (kappa = 1e-28)"),
  tau_spread=(0.0, f"{_PAPER}; {_CODE} main_*.m: one kappa for all users"),
  f_min_hz=(1e6, "ours (both sources: 0 <= f <= f_max)"),
  f_max_hz=(2e9, f"{_PAPER}; {_CODE} main_*.m (fkmax = 2e9)"),
  p_max_w=(0.01, f"{_PAPER}; {_CODE} main_*.m (pkmax = 10 dBm)"),
  total_bandwidth_hz=(20e6, f"{_PAPER}; {_CODE} main_*.m (20e6 Hz)"),
)


def _yang(name, source, doc, samples, **own) -> Regime:
  """A reading of Yang et al.: `_SHARED` updated by `own` (value, source)."""
  entries = dict(_SHARED, **own)
  return Regime(
    name=name,
    source=source,
    energy={k: v for k, (v, _) in entries.items()},
    samples_per_step=samples[0],
    doc=doc,
    sources=dict(
      {k: src for k, (_, src) in entries.items()},
      samples_per_step=samples[1],
    ),
  )


YANG2021 = _yang(
  "yang2021",
  YANG2021_SOURCE,
  """The paper's Section VI, as transcribed into this project earlier; the
paper's full text was not at hand when the values were traced (only its
abstract could be retrieved), so the values that no public code confirms
are marked unchecked in `sources`: N = 50, C_k ~ U[1, 3] x 1e4 cycles per
sample and D_k = 500 samples (one local iteration: C_k D_k ~ U[0.5, 1.5] x
1e7 cycles). The public MATLAB code of the paper's figures
(`yang2021_code`) confirms the 500 m square with the base station at its
centre (cell_shape "square", radius_m 250), the path loss 128.1 + 37.6
log10 d[km], sigma = 8 dB, N0 = -174 dBm/Hz, kappa = 1e-28 for every user,
f_max = 2 GHz, p_max = 10 dBm = 0.01 W, B = 20 MHz (equal FDMA shares here;
the paper optimizes the split, as the `shared` allocation does) and the
upload s = 28.1 kbit (ours is the quantized DDPM update, so the regime does
not set it). Shadowing here is the usual N(0, 8^2) dB offset.
Not from the paper: f_min_hz = 1e6 Hz (the paper has 0 <= f <= f_max;
EnergyConfig needs f_min > 0); min_distance_m keeps its default, 10 m.
f_min binds at long deadlines: at T ~ 1e3 s and c n ~ 1e7 cycles the
deadline and split policies would run at ~1e4 Hz, and the energy-optimal f
of a low bit-width upload can fall below 1 MHz. The computation it forces
is at most tau c n f_min^2 = 1e-28 x 3e4 x 500 x 1e12 = 1.5e-9 J per device
and round. That is NOT negligible next to every upload: with the paper
U-Net's upload (35,746,307 parameters), N = 50, the fp32_feasible x 1.2
deadline and the kkt allocation, over 100 draws (5000 devices; keys 0..99,
float32) it reaches 0.67% (32-bit upload), 2.6% (8-bit) and 14% (1-bit) of
the upload's energy for devices within 25 m of the base station
(`F_MIN_FLOOR_SHARE_MAX`, `f_min_floor_share`); the 99th percentile is
2.5e-5, 1e-4 and 7.5e-4, the median below 1e-6.
Fields set: num_devices, cell_shape, radius_m, pathloss_const_db,
pathloss_exp_db, shadowing_db, noise_psd_dbm_hz, cycles_per_sample,
cycles_spread, tau_mean, tau_spread, f_min_hz, f_max_hz, p_max_w,
total_bandwidth_hz.""",
  (500, f"{_PAPER}: D_k = 500{_UNCHECKED}"),
  num_devices=(50, f"{_PAPER}: N = 50{_UNCHECKED}"),
  cycles_per_sample=(
    2e4,
    f"{_PAPER}: C_k ~ U[1, 3] x 1e4 cycles/sample{_UNCHECKED}",
  ),
  cycles_spread=(0.5, f"{_PAPER}: U[1, 3] x 1e4 = 2e4 x U[0.5, 1.5]"),
)

YANG2021_CODE = _yang(
  "yang2021_code",
  YANG2021_CODE_SOURCE,
  """The constants of the public MATLAB code that plots the paper's
figures, where it differs from the paper as transcribed (`yang2021`):
- C_k D_k = 1e8 cycles per local iteration, no spread: main_1.m, main_1_2.m,
  main_2.m, main_3.m (Cpar 20 x Dpar 5e6), main_5.m (Cpar 2e5 x Dpar 5e2),
  main_6new.m, main_8.m, main_10.m (in Gcycles: 0.02 x 5); here
  cycles_per_sample 2e5 x D_k 500 samples. main_6.m and main_9.m use 1e7
  (the paper's mean), main_5_2.m and main_7.m 1e9 with one local iteration.
- N = 20 users in 11 of the 12 main_*.m (main_5.m: 50). Those 11 use the
  20 largest of the 50 path losses stored in SystemData_50.mat (sorted
  ascending, entries 31..50: mean 108.0 dB vs 100.4 dB over all 50); this
  regime draws its 20 users afresh and does not select the worst.
- shadowing as generate_shadow_fading(0, 8): a log-normal offset of mean
  1 dB and standard deviation 10^(8/10) = 6.3 dB added to the path loss
  (shadowing_law "lognormal_offset"): a loss of median 0.16 dB, never a gain.
- the distance is clipped below at 1 m (max(d, 1 m)): min_distance_m 1.
Everything else as `yang2021` (the code confirms those values). The code's
upload is s = 2.81e4 bit in main_1.m, main_1_2.m, main_6new.m, main_10.m
(1e5 or 2.81e5 bit elsewhere); ours is the quantized DDPM update.
Fields set: num_devices, cell_shape, radius_m, min_distance_m,
pathloss_const_db, pathloss_exp_db, shadowing_db, shadowing_law,
noise_psd_dbm_hz, cycles_per_sample, cycles_spread, tau_mean, tau_spread,
f_min_hz, f_max_hz, p_max_w, total_bandwidth_hz.""",
  (500, f"{_CODE} main_5.m (Dpar = 5e2)"),
  num_devices=(20, f"{_CODE} main_*.m: Kuser = 20 in 11 of 12 scripts"),
  cycles_per_sample=(
    2e5,
    f"{_CODE} main_5.m (Cpar = 2e5); Cpar x Dpar = 1e8 in 8 of 12 scripts",
  ),
  cycles_spread=(0.0, f"{_CODE} main_*.m: one Cpar for all users"),
  shadowing_law=(
    "lognormal_offset",
    f"{_CODE} user_distribution.m, generate_shadow_fading.m",
  ),
  min_distance_m=(1.0, f"{_CODE} user_distribution.m: max(d, 1 m)"),
)

CYCLES_PER_SAMPLE = Regime(
  name="cycles_per_sample",
  source="user-given cycles per sample c (EnergyConfig.cycles_per_sample)",
  energy={},
  doc="c_k = c x U[1 - cycles_spread, 1 + cycles_spread]; the caller gives c "
  "(`resolve(..., cycles_per_sample=c)` or EnergyConfig.cycles_per_sample).",
)

# Upload bits per parameter -> the largest tau c n f_min^2 / E_comm measured
# in `yang2021` (see its doc; tests recompute it).
F_MIN_FLOOR_SHARE_MAX: Mapping[int, float] = {32: 6.7e-3, 8: 2.6e-2, 1: 0.14}

REGIMES: Mapping[str, Regime] = {
  r.name: r for r in (FLOPS, YANG2021, YANG2021_CODE, CYCLES_PER_SAMPLE)
}


def get(name: str) -> Regime:
  """The regime `name`; InvalidSetting listing REGIMES otherwise."""
  if name not in REGIMES:
    raise InvalidSetting("Regime", "name", name, " | ".join(REGIMES))
  return REGIMES[name]


def resolve(
  name: str,
  energy_config: Optional[EnergyConfig] = None,
  cycles_per_sample: Optional[float] = None,
) -> EnergyConfig:
  """`energy_config` (default: EnergyConfig()) with regime `name` applied.

  Args:
    name: a key of REGIMES.
    energy_config: the config to start from; the regime's fields replace
      its values.
    cycles_per_sample: the "cycles_per_sample" regime's c (else the
      config's own must be set); not accepted by the other regimes.

  Raises:
    InvalidSetting: an unknown name, a missing or unexpected
      cycles_per_sample, or a value EnergyConfig rejects.
  """
  regime = get(name)
  cfg = EnergyConfig() if energy_config is None else energy_config
  if name == "cycles_per_sample":
    c = (
      cfg.cycles_per_sample if cycles_per_sample is None else cycles_per_sample
    )
    if c is None:
      raise InvalidSetting(
        "resolve",
        "cycles_per_sample",
        None,
        "finite and > 0 with regime cycles_per_sample",
      )
    return dataclasses.replace(cfg, cycles_per_sample=c)
  if cycles_per_sample is not None:
    raise InvalidSetting(
      "resolve",
      "cycles_per_sample",
      cycles_per_sample,
      f"None with regime {name} (only regime cycles_per_sample takes it)",
    )
  return dataclasses.replace(cfg, **regime.energy)


def computation_share(e_comp: ArrayLike, e_comm: ArrayLike):
  """E_comp / (E_comp + E_comm), elementwise; NaN where both are 0.

  numpy in, numpy (float64) out; jax arrays (traced too) in, jax out.
  """
  xp = (
    jnp
    if isinstance(e_comp, jax.Array) or isinstance(e_comm, jax.Array)
    else np
  )
  e_comp = xp.asarray(e_comp, None if xp is jnp else np.float64)
  total = e_comp + xp.asarray(e_comm, e_comp.dtype)
  ok = total != 0
  return xp.where(ok, e_comp / xp.where(ok, total, 1.0), xp.nan)


def f_min_floor_share(
  devices: Devices,
  e_comm_j: ArrayLike,
  num_samples: ArrayLike,
  flops_per_sample: ArrayLike,
):
  """The most computation energy an f_min floor can force, over the upload's
  energy: tau c_k n f_min^2 / E_comm, per device ([N], jax).

  Args:
    devices: the population (tau, flops_per_cycle, f_min_hz).
    e_comm_j: each device's upload energy (an `Allocation.e_comm_j`).
    num_samples: n, samples computed per round.
    flops_per_sample: the model's training FLOPs per sample.
  """
  c = cycles_per_sample(flops_per_sample, devices.flops_per_cycle)
  forced = comp_energy(devices.tau, c, num_samples, devices.f_min_hz)
  return forced / jnp.asarray(e_comm_j)
