"""The `energy` and `channel` sections of the training sweep's settings.

`energy`: the device population (the keys are fields of the library's
`EnergyConfig`, which checks them), the energy regime (fedqjax/energy/
regimes.py: `flops`, `yang2021`, `yang2021_code`, `cycles_per_sample`) and
the deadline.
`channel`: how the channel changes between rounds and what the allocator
knows (fedqjax/energy/channel.py). Part of `settings.Settings`.
"""

from __future__ import annotations

import dataclasses
from typing import Tuple

from experiments.common.settings import Invalid, between, key, one_of
from fedqjax import energy
from fedqjax.energy import regimes
from fedqjax.federated import spec

_ENERGY_CONFIG_KEYS = (
  "radius_m",
  "shadowing_db",
  "rayleigh_fading",
  "total_bandwidth_hz",
  "noise_psd_dbm_hz",
  "p_max_w",
  "f_min_hz",
  "f_max_hz",
  "tau_mean",
  "tau_spread",
  "flops_per_cycle_choices",
  "eps_choices",
  "cycles_spread",
)


_DEVICES = energy.EnergyConfig()


@dataclasses.dataclass(frozen=True)
class Energy:
  """Devices (checked by `EnergyConfig`: its fields) and the deadline.

  T is deadline_s seconds if > 0, else deadline_factor x a statistic of the
  devices' fp32 minimal round times (c n / f_max + 32 d / r(p_max)):
  fp32_feasible = the largest (every device can deliver every scheme's
  upload), median, or quantile (deadline_quantile; devices above it skip).
  """

  # The library's defaults (their sources: fedqjax.energy.regimes.
  # DEFAULT_SOURCES), not written again here.
  radius_m: float = key(
    _DEVICES.radius_m,
    doc="m, cell radius: devices uniform in the disc around the base "
    "station, >= 10 m from it; 500 m is ours (Yang et al. TWC 2021, Sec. VI: a"
    " 500 m x 500 m square)",
  )
  shadowing_db: float = key(
    _DEVICES.shadowing_db,
    doc="dB, std of the log-normal shadowing N(0, s^2) dB (0: off); 8 dB: "
    "Yang et al. TWC 2021, Sec. VI",
  )
  rayleigh_fading: bool = key(
    _DEVICES.rayleigh_fading,
    doc="static channel: |h|^2 ~ Exp(1) redrawn every round. gauss_markov: "
    "no effect on the rounds (their fading is the process's, Rayleigh from "
    "round 0); only the one draw of gains the deadline rule reads",
  )
  total_bandwidth_hz: float = key(
    _DEVICES.total_bandwidth_hz,
    doc="Hz, W: equal FDMA shares W / K among a round's K participants; "
    "20 MHz: Yang et al. TWC 2021, Sec. VI (which optimizes the split)",
  )
  noise_psd_dbm_hz: float = key(
    _DEVICES.noise_psd_dbm_hz,
    doc="dBm/Hz, noise power spectral density N0; -174: Yang et al. TWC 2021,"
    " Sec. VI",
  )
  p_max_w: float = key(
    _DEVICES.p_max_w,
    doc="W, every device's transmit power cap p_max; 0.2 W (23 dBm) is ours:"
    " LTE UE power class 3 (Yang et al. 2021: 10 dBm)",
  )
  f_min_hz: float = key(
    _DEVICES.f_min_hz,
    doc="Hz, every device's lowest CPU frequency; 0.1 GHz is ours (Yang et "
    "al. 2021: f >= 0)",
  )
  f_max_hz: float = key(
    _DEVICES.f_max_hz,
    doc="Hz, every device's highest CPU frequency; 2 GHz: Yang et al. TWC"
    " 2021, Sec. VI",
  )
  tau_mean: float = key(
    _DEVICES.tau_mean,
    doc="J/(cycle Hz^2), mean effective switched capacitance tau (kappa) of "
    "E_cmp = tau c n f^2; 1e-28: Yang et al. TWC 2021, Sec. VI",
  )
  tau_spread: float = key(
    _DEVICES.tau_spread,
    doc="s of tau_k = tau_mean x U[1 - s, 1 + s], in [0, 1); ours (Yang et "
    "al. 2021: one kappa for every user)",
  )
  flops_per_cycle_choices: Tuple[float, ...] = key(
    _DEVICES.flops_per_cycle_choices,
    doc="a device's FLOPs per CPU cycle, drawn uniformly from these; regime "
    "flops: c_k = the U-Net's training FLOPs per image / this (ours)",
  )
  eps_choices: Tuple[float, ...] = key(
    _DEVICES.eps_choices,
    doc="a device's relative error budget eps_k, drawn uniformly from these:"
    " ondemand bits meet E||Q(u) - u||^2 <= eps_k ||u||^2 (ours)",
  )
  cycles_spread: float = key(
    _DEVICES.cycles_spread,
    doc="s of c_k = c x U[1 - s, 1 + s] in the regimes with a cycles per "
    "sample c, in [0, 1); ours",
  )
  regime: str = key(
    "flops",
    one_of(*regimes.REGIMES),
    "flops: c_k = the U-Net's FLOPs / flops_per_cycle | yang2021: Yang et "
    "al. TWC 2021 Sec. VI | yang2021_code: their public MATLAB code | "
    "cycles_per_sample: c_k = cycles_per_sample x U[1 +- cycles_spread] "
    "(fedqjax/energy/regimes.py)",
  )
  cycles_per_sample: float = key(
    0.0, between(0, 1e15), "regime cycles_per_sample: mean cycles/sample"
  )
  deadline_s: float = key(0.0, between(0), "> 0: a fixed deadline T")
  deadline_rule: str = key(
    "fp32_feasible",
    one_of(*energy.DEADLINE_RULES),
    "statistic of the devices' fp32 minimal round times that T scales: "
    "fp32_feasible = the largest | median | quantile (deadline_quantile); "
    "ours, docs/model.md sec. 7",
  )
  deadline_factor: float = key(
    1.2,
    between(0, lo_open=True),
    "T = factor x the deadline_rule statistic (unused when deadline_s > 0); "
    "ours",
  )
  deadline_quantile: float = key(
    0.95,
    between(0, 1, lo_open=True),
    "the quantile of deadline_rule quantile (devices above it skip)",
  )
  infeasible_policy: str = key(
    "drop",
    one_of(*spec.INFEASIBLE_POLICIES),
    "a device that cannot deliver its upload by T: drop (skips the round, "
    "or its upload after training) | degrade (to the largest deliverable "
    "b >= quant.b_min); docs/model.md sec. 4",
  )

  def devices(
    self, num_devices: int, bandwidth_shares: int
  ) -> energy.EnergyConfig:
    """The device population's settings (N devices, K bandwidth shares),
    the regime's values applied (N stays the federation's)."""
    cfg = energy.EnergyConfig(
      num_devices=num_devices,
      bandwidth_shares=bandwidth_shares,
      **{k: getattr(self, k) for k in _ENERGY_CONFIG_KEYS},
    )
    cfg = regimes.resolve(self.regime, cfg, self.cycles_per_sample or None)
    return dataclasses.replace(cfg, num_devices=num_devices)

  @property
  def samples_per_step(self):
    """Samples priced per local step: the regime's, or None (the batch)."""
    return regimes.REGIMES[self.regime].samples_per_step

  def validate(self) -> None:
    self._check_regime()
    self.devices(1, 1)

  def _check_regime(self) -> None:
    """A key the regime sets must keep its default; cycles_per_sample is
    the cycles_per_sample regime's (and only its)."""
    own = self.regime == "cycles_per_sample"
    if own != (self.cycles_per_sample > 0):
      valid = "> 0" if own else "0 unless regime='cycles_per_sample'"
      raise Invalid("cycles_per_sample", self.cycles_per_sample, valid)
    for name, value in regimes.REGIMES[self.regime].energy.items():
      mine = getattr(self, name, None)
      if name in _ENERGY_CONFIG_KEYS and mine != getattr(_DEVICES, name):
        raise Invalid(
          name,
          mine,
          f"its default {getattr(_DEVICES, name)!r} (regime={self.regime!r} "
          f"sets it to {value!r})",
        )


CHANNEL_MODELS = ("static", "gauss_markov")


@dataclasses.dataclass(frozen=True)
class Channel:
  """How the channel changes between rounds and what the allocator knows
  (fedqjax.energy.channel).

  static: today's channel (the large-scale gain, or i.i.d. Rayleigh fading
  per round with energy.rayleigh_fading), known exactly. gauss_markov: the
  small-scale fading h is a stationary Rayleigh process that starts at its
  stationary law, h ~ CN(0, 1), in every run: the AR(1) chain
  h_{r+1} = rho h_r + sqrt(1 - rho^2) w_r, or, when doppler_hz > 0, Clarke's
  process, whose lag-k correlation is J0(2 pi doppler_hz T k) at every lag
  (T the deadline; rounds + estimate_delay <= 4096). The allocator plans on
  an estimate (estimate_delay rounds old, relative error estimate_noise)
  backed off by backoff_db; uploads are judged on the realized channel:
  deadline misses and wasted energy are reported. energy.rayleigh_fading
  does not change a gauss_markov channel (its fading is always Rayleigh,
  from round 0); it only changes the one draw of the devices' gains that
  the deadline rule (energy.deadline_rule) reads.
  """

  model: str = key(
    "static",
    one_of(*CHANNEL_MODELS),
    "static: the channel known exactly | gauss_markov: a correlated Rayleigh"
    " process (rho or doppler_hz), planned on a stale noisy estimate; "
    "docs/model.md sec. 7",
  )
  rho: float = key(
    1.0,
    between(0, 1),
    "per-round correlation rho of the AR(1) fading (model gauss_markov; 1: "
    "constant fading)",
  )
  doppler_hz: float = key(
    0.0,
    between(0, 1e6),
    "> 0: Clarke's process, lag-k correlation J0(2 pi f_d T k), T the deadline",
  )
  estimate_delay: int = key(
    0, between(0, 10_000), "d, rounds by which the channel estimate lags"
  )
  estimate_noise: float = key(
    0.0,
    between(0, 1),
    "s2, the estimate's relative MSE: h_hat = sqrt(1 - s2) h + sqrt(s2) e",
  )
  backoff_db: float = key(
    0.0,
    between(0, 60),
    "dB, the allocator plans at the estimated gain x 10^(-dB/10)",
  )
  miss_target: float = key(
    0.0,
    between(0, 0.5, hi_open=True),
    "> 0: back-off_db = the closed-form margin keeping kkt's miss rate here",
  )

  def validate(self) -> None:
    if self.model == "gauss_markov":
      if self.miss_target and self.backoff_db:
        raise Invalid(
          "backoff_db", self.backoff_db, "0 when miss_target > 0 sets it"
        )
      return
    for name in (
      "doppler_hz",
      "estimate_delay",
      "estimate_noise",
      "miss_target",
    ):
      if getattr(self, name):
        raise Invalid(name, getattr(self, name), "0 with model='static'")
    if self.rho != 1.0 or self.backoff_db:
      name = "rho" if self.rho != 1.0 else "backoff_db"
      valid = "1" if name == "rho" else "0"
      raise Invalid(name, getattr(self, name), f"{valid} with model='static'")
