"""The energy sweep's device population keys (section `devices` of
`experiments.energy_sweep.settings.Settings`): the fields of
`fedqjax.energy.EnergyConfig`, which checks them in its own names."""

from __future__ import annotations

import dataclasses
from typing import Tuple

from experiments.common.settings import key
from fedqjax.energy.devices import EnergyConfig


@dataclasses.dataclass(frozen=True)
class Devices:
  """The rest of the device model; `EnergyConfig` checks these keys (its
  fields; N, W, p_max, f_max and fading are the scenario's)."""

  radius_m: float = key(
    500.0,
    doc="m, cell size: the disc's radius, or half the square's side; 500 m "
    "is ours (Yang et al. TWC 2021, Sec. VI: a 500 m x 500 m square)",
  )
  min_distance_m: float = key(
    10.0,
    doc="m, smallest distance to the base station (keeps the path loss "
    "finite); 10 m is ours",
  )
  pathloss_const_db: float = key(
    128.1,
    doc="dB, a of the path loss a + b log10(d / km); 128.1: Yang et al. TWC"
    " 2021, Sec. VI (a 3GPP "
    "macro-cell model)",
  )
  pathloss_exp_db: float = key(
    37.6,
    doc="dB per decade of distance, b of the path loss a + b log10(d / km);"
    " 37.6: Yang et al. TWC 2021, Sec. VI",
  )
  shadowing_db: float = key(
    8.0,
    doc="dB, spread of the shadowing (shadowing_law; 0: off); 8 dB: Yang et"
    " al. TWC 2021, Sec. VI",
  )
  noise_psd_dbm_hz: float = key(
    -174.0,
    doc="dBm/Hz, noise power spectral density N0; -174: Yang et al. TWC 2021,"
    " Sec. VI",
  )
  f_min_hz: float = key(
    0.1e9,
    doc="Hz, every device's lowest CPU frequency; 0.1 GHz is ours (Yang et "
    "al. 2021: f >= 0)",
  )
  tau_mean: float = key(
    1e-28,
    doc="J/(cycle Hz^2), mean effective switched capacitance tau (kappa) of "
    "E_cmp = tau c n f^2; 1e-28: Yang et al. TWC 2021, Sec. VI",
  )
  tau_spread: float = key(
    0.5,
    doc="s of tau_k = tau_mean x U[1 - s, 1 + s], in [0, 1); ours (Yang et "
    "al. 2021: one kappa for every user)",
  )
  flops_per_cycle_choices: Tuple[float, ...] = key(
    (8.0, 16.0, 32.0),
    doc="a device's FLOPs per CPU cycle, drawn uniformly from these; regime "
    "flops: c_k = the model's training FLOPs per sample / this (ours)",
  )
  eps_choices: Tuple[float, ...] = key(
    (1e-3, 1e-2, 5e-2, 1e-1),
    doc="a device's relative error budget eps_k, drawn uniformly from these:"
    " ondemand bits meet E||Q(u) - u||^2 <= eps_k ||u||^2 (ours)",
  )
  bit_caps: Tuple[int, ...] = key(
    (),
    doc="per-device bit-width caps, drawn uniformly from these: b_k <= cap "
    "(() = no caps)",
  )
  cycles_spread: float = key(
    0.5,
    doc="s of c_k = c x U[1 - s, 1 + s] in the regimes with a cycles per "
    "sample c, in [0, 1); ours",
  )
  cell_shape: str = key(
    "disc",
    doc="disc (radius radius_m) | square ([-radius_m, radius_m]^2), the base"
    " station at the centre; the disc is ours (Yang et al. 2021: a square)",
  )
  shadowing_law: str = key(
    "normal",
    doc="normal: a N(0, shadowing_db^2) dB offset | lognormal_offset: a "
    "log-normal dB loss, as the public MATLAB code of Yang et al. 2021's "
    "figures (docs/model.md sec. 5)",
  )

  def energy_config(self) -> EnergyConfig:
    """The library's device settings (the scenario fields at defaults)."""
    kw = dataclasses.asdict(self)
    kw["bit_caps"] = kw["bit_caps"] or None
    return EnergyConfig(**kw)

  def validate(self) -> None:
    self.energy_config()
