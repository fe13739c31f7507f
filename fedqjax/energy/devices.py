"""Device population and wireless channel for the energy model (arXiv 2403.04430, sec. 3).

The channel model is in the style of Yang et al., "Energy Efficient
Federated Learning Over Wireless Communication Networks", IEEE TWC 2021
(their Sec. VI): path loss 128.1 + 37.6 log10(d_km) dB, shadowing, optional
Rayleigh block fading redrawn every round, N0 = -174 dBm/Hz, FDMA with an
equal share of W = 20 MHz. The DEFAULT devices are not Yang et al.'s
(`fedqjax.energy.regimes` has theirs, `yang2021` and `yang2021_code`): a
disc of radius 500 m (theirs: a 500 m x 500 m square; mean path loss
without shadowing 99.4 dB there vs 108.7 dB in the disc, 10 m floor), p_max = 0.2 W (theirs 10 dBm, 13 dB less),
f in [0.1, 2] GHz (theirs [0, 2] GHz) and tau = 1e-28 x U[0.5, 1.5] (theirs
1e-28 for every user). The source of every default:
`fedqjax.energy.regimes.DEFAULT_SOURCES` and docs/model.md, "Constants and
their sources".

Cycles per sample c_k: by default (`cycles_per_sample=None`, the "flops"
regime) c_k = the model's FLOPs per sample / the device's
FLOPs per cycle; with `cycles_per_sample=c` every device gets
c_k = c x U[1 - cycles_spread, 1 + cycles_spread] (the literature's regime,
`fedqjax.energy.regimes`) and its `flops_per_cycle` is set to
flops_per_sample / c_k, so that everything that prices cycles as
flops_per_sample / flops_per_cycle prices c_k.

`EnergyConfig` is the frozen, validated boundary object (never traced);
`Devices` is the per-device pytree of [N] arrays that the jitted round carries.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Mapping, Optional, Tuple

import flax.struct
import jax
import jax.numpy as jnp

from fedqjax.energy.device_checks import (
  CELL_SHAPES,
  SHADOWING_LAWS,
  check_energy_config,
  validate_devices,
)
from fedqjax.errors import InvalidSetting
from fedqjax.typing import Array, ArrayLike, PRNGKey

__all__ = [
  "CELL_SHAPES",
  "CYCLES_FOLD",
  "SHADOWING_LAWS",
  "Devices",
  "EnergyConfig",
  "cycles_factor",
  "pathloss_db",
  "redraw_fading",
  "sample_devices",
  "sample_devices_from_keys",
  "validate_devices",
]

# c_k's factor is drawn from fold_in(key of the device draw, CYCLES_FOLD): the
# draw's 7-way key split (and so every other field) stays as it was.
CYCLES_FOLD = 7


@dataclasses.dataclass(frozen=True)
class EnergyConfig:
  """Static description of the device population (SI units in field names).

  Attributes:
    num_devices: number of devices N sampled by `sample_devices`.
    radius_m: radius of the cell: devices uniform in the disc of this radius
      (`cell_shape="disc"`) or in the square [-radius_m, radius_m]^2
      (`"square"`; Yang et al.'s 500 m x 500 m area is radius_m=250), the
      base station at the centre.
    min_distance_m: smallest device distance, keeps log10(d) finite (the
      disc draws from the annulus; the square clips the distance below).
    cell_shape: "disc" | "square".
    pathloss_const_db, pathloss_exp_db: path loss a + b log10(d_km) in dB.
    shadowing_db: the shadowing's spread in dB (0 disables it).
    shadowing_law: "normal": a N(0, shadowing_db^2) dB offset (log-normal
      shadowing, the default); "lognormal_offset": the public MATLAB code
      of Yang et al.'s figures (BrokenBunny/Energy-efficient-federated-
      learning, generate_shadow_fading.m with mean 0 dB) adds to the path
      loss in dB a log-normal variable of mean 10^(0/10) = 1 and standard
      deviation 10^(shadowing_db/10) (6.3 at 8 dB): a loss, never a gain,
      median 0.16 dB at 8 dB.
    rayleigh_fading: multiply the large-scale gain by |h|^2 ~ Exp(1), redrawn
      per round with `redraw_fading`.
    total_bandwidth_hz: W, shared equally (FDMA) by `bandwidth_shares` devices.
    bandwidth_shares: number of equal shares of W; None means num_devices
      (set it to the number of participants K when K < N).
    noise_psd_dbm_hz: noise power spectral density N0.
    p_max_w: maximum transmit power.
    f_min_hz, f_max_hz: CPU frequency range.
    tau_mean: mean effective switched capacitance (J / (cycle Hz^2)).
    tau_spread: tau = tau_mean * U[1 - spread, 1 + spread].
    flops_per_cycle_choices: per-device FLOPs per CPU cycle, drawn uniformly
      (used when cycles_per_sample is None).
    cycles_per_sample: None: c_k = flops_per_sample / flops_per_cycle (the
      "flops" regime). A number c > 0: c_k = c x U[1 - cycles_spread,
      1 + cycles_spread] per device, from fold_in(device key, 7); the
      sampler then needs the model's `flops_per_sample` and sets
      flops_per_cycle = flops_per_sample / c_k.
    cycles_spread: the spread s of c_k, in [0, 1).
    eps_choices: per-device relative quantization error budgets, drawn uniformly.
    bit_caps: optional per-device bit-width caps, drawn uniformly (None: 32).
  """

  num_devices: int = 10
  radius_m: float = 500.0
  min_distance_m: float = 10.0
  pathloss_const_db: float = 128.1
  pathloss_exp_db: float = 37.6
  shadowing_db: float = 8.0
  rayleigh_fading: bool = False
  total_bandwidth_hz: float = 20e6
  bandwidth_shares: Optional[int] = None
  noise_psd_dbm_hz: float = -174.0
  p_max_w: float = 0.2
  f_min_hz: float = 0.1e9
  f_max_hz: float = 2e9
  tau_mean: float = 1e-28
  tau_spread: float = 0.5
  flops_per_cycle_choices: Tuple[float, ...] = (8.0, 16.0, 32.0)
  eps_choices: Tuple[float, ...] = (1e-3, 1e-2, 5e-2, 1e-1)
  bit_caps: Optional[Tuple[int, ...]] = None
  cycles_per_sample: Optional[float] = None
  cycles_spread: float = 0.5
  cell_shape: str = "disc"
  shadowing_law: str = "normal"

  def __post_init__(self):
    # Tuples keep the dataclass hashable (it may be a static jit argument).
    for name in ("flops_per_cycle_choices", "eps_choices", "bit_caps"):
      v = getattr(self, name)
      if v is not None and not isinstance(v, tuple):
        object.__setattr__(self, name, tuple(v))
    self.validate()

  def validate(self) -> "EnergyConfig":
    """Checks every field; raises ValueError naming field, value and valid range."""
    check_energy_config(self)
    return self

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "EnergyConfig":
    """Builds a config from a mapping of field names (or an object with to_dict).

    Unknown keys raise ValueError so that typos in a config file are caught.
    """
    if hasattr(d, "to_dict"):
      d = d.to_dict()
    d = dict(d)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
      raise ValueError(
        f"EnergyConfig: unknown field(s) {unknown}; known: {sorted(names)}"
      )
    for k in ("flops_per_cycle_choices", "eps_choices", "bit_caps"):
      if d.get(k) is not None:
        d[k] = tuple(d[k])
    return cls(**d)


@flax.struct.dataclass
class Devices:
  """Per-device parameters, every field an array of shape [N].

  `gain` is the current linear channel power gain (path loss, shadowing and,
  when enabled, this round's fading); `large_scale_gain` excludes fading.
  `bit_cap` is an int bit-width cap (32 = no cap).

  `realized_gain` is None unless the channel is time-varying with an imperfect
  estimate (`fedqjax.energy.channel`): then `gain` is what the allocator
  plans with (the estimate, backed off) and `realized_gain` is the channel
  the upload actually meets (deadline misses are judged on it).
  """

  distance_m: Array
  shadowing_db: Array
  gain: Array
  large_scale_gain: Array
  bandwidth_hz: Array
  p_max_w: Array
  f_min_hz: Array
  f_max_hz: Array
  tau: Array
  flops_per_cycle: Array
  eps: Array
  bit_cap: Array
  noise_psd_w_hz: Array
  realized_gain: Optional[Array] = None

  @property
  def num_devices(self) -> int:
    return self.gain.shape[-1]


def pathloss_db(
  distance_m: Array, const_db: float = 128.1, exp_db: float = 37.6
) -> Array:
  """Path loss in dB, 128.1 + 37.6 log10(d_km) (3GPP macro cell, Yang et al. 2021)."""
  return const_db + exp_db * jnp.log10(distance_m / 1000.0)


def _need_flops(cfg: EnergyConfig, flops_per_sample, who: str) -> None:
  if cfg.cycles_per_sample is not None and flops_per_sample is None:
    raise InvalidSetting(
      who,
      "flops_per_sample",
      None,
      "the model's training FLOPs per sample (> 0), required when "
      f"EnergyConfig.cycles_per_sample={cfg.cycles_per_sample!r} is set",
    )


def sample_devices(
  config: EnergyConfig,
  key: PRNGKey,
  n: Optional[int] = None,
  *,
  flops_per_sample: Optional[ArrayLike] = None,
) -> Devices:
  """Samples a device population.

  Args:
    config: validated EnergyConfig (static).
    key: PRNG key.
    n: number of devices; defaults to config.num_devices.
    flops_per_sample: the model's training FLOPs per sample (scalar); needed
      (and used) only when config.cycles_per_sample is set.

  Returns:
    Devices with [n] arrays in the default float dtype.
  """
  _need_flops(config, flops_per_sample, "sample_devices")
  n = config.num_devices if n is None else int(n)
  if config.cycles_per_sample is None:
    flops_per_sample = None
  return _sample_devices(config, key, n, flops_per_sample)


def sample_devices_from_keys(
  config: EnergyConfig,
  keys: Array,
  *,
  flops_per_sample: Optional[ArrayLike] = None,
) -> Devices:
  """Device i drawn from keys[i] alone (same distributions as `sample_devices`).

  A population of n devices drawn from keys fold_in(k, 0..n-1) is then the
  first n of any longer one, whatever else is drawn: the energy sweep's
  populations of different sizes are nested and reproducible. Traceable.

  Args:
    config: validated EnergyConfig (static); `num_devices` only sets the
      bandwidth share when `bandwidth_shares` is None.
    keys: [n] PRNG keys.
    flops_per_sample: scalar or [n] (traced) training FLOPs per sample;
      needed (and used) only when config.cycles_per_sample is set.

  Returns:
    Devices with [n] arrays in the default float dtype.
  """
  _need_flops(config, flops_per_sample, "sample_devices_from_keys")
  if config.cycles_per_sample is None:
    return _from_keys(config, keys, None)
  flops = jnp.broadcast_to(jnp.asarray(flops_per_sample), keys.shape)
  return _from_keys(config, keys, flops)


def cycles_factor(
  key: PRNGKey, spread: ArrayLike, shape: Tuple[int, ...] = (), dtype=None
) -> Array:
  """U[1 - spread, 1 + spread] of `shape` from fold_in(key, CYCLES_FOLD):
  the factor of c_k = cycles_per_sample x factor (traceable; the energy
  sweep draws it with a traced cycles_per_sample per scenario)."""
  dtype = jnp.zeros(()).dtype if dtype is None else dtype
  return jax.random.uniform(
    jax.random.fold_in(key, CYCLES_FOLD),
    shape,
    dtype,
    1.0 - spread,
    1.0 + spread,
  )


@functools.partial(jax.jit, static_argnums=0)
def _from_keys(config: EnergyConfig, keys: Array, flops) -> Devices:
  if flops is None:
    return jax.vmap(lambda k: _draw(config, k, (), None))(keys)
  return jax.vmap(lambda k, f: _draw(config, k, (), f))(keys, flops)


@functools.partial(
  jax.jit, static_argnums=(0, 2)
)  # config is frozen, hence hashable
def _sample_devices(
  config: EnergyConfig, key: PRNGKey, n: int, flops
) -> Devices:
  return _draw(config, key, (n,), flops)


def _distance(cfg: EnergyConfig, key: PRNGKey, n, dtype) -> Array:
  """Distances to the base station: uniform in the disc's annulus, or in
  the square [-r, r]^2 clipped below at min_distance_m."""
  r0, r1 = cfg.min_distance_m, cfg.radius_m
  if cfg.cell_shape == "square":
    xy = jax.random.uniform(key, n + (2,), dtype, -r1, r1)
    return jnp.maximum(jnp.hypot(xy[..., 0], xy[..., 1]), r0)
  # Uniform in the annulus: the CDF of d is quadratic, hence the sqrt.
  u = jax.random.uniform(key, n, dtype)
  return jnp.sqrt(r0**2 + u * (r1**2 - r0**2))


def _shadowing(cfg: EnergyConfig, key: PRNGKey, n, dtype) -> Array:
  """Shadowing in dB, added to the path loss (see EnergyConfig)."""
  z = jax.random.normal(key, n, dtype)
  if cfg.shadowing_law == "normal":
    return cfg.shadowing_db * z
  # generate_shadow_fading(0, sigma): log-normal of mean 1, std 10^(sigma/10)
  var = 10.0 ** (cfg.shadowing_db / 5.0)  # std^2, mean^2 = 1
  return jnp.exp(-0.5 * math.log1p(var) + math.sqrt(math.log1p(var)) * z)


def _draw(
  config: EnergyConfig, key: PRNGKey, shape: Tuple[int, ...], flops
) -> Devices:
  """Every field of `shape` from one key (split into one key per field)."""
  n = shape  # every draw below has this shape: () for one device, (n,) for n
  dtype = jnp.zeros(()).dtype  # float64 only when jax_enable_x64 is on
  k_d, k_s, k_f, k_tau, k_c, k_e, k_b = jax.random.split(key, 7)
  distance = _distance(config, k_d, n, dtype)
  shadow = _shadowing(config, k_s, n, dtype)
  large = 10.0 ** (
    -(
      pathloss_db(distance, config.pathloss_const_db, config.pathloss_exp_db)
      + shadow
    )
    / 10.0
  )
  fading = (
    jax.random.exponential(k_f, n, dtype) if config.rayleigh_fading else 1.0
  )
  shares = config.bandwidth_shares or config.num_devices
  full = lambda v: jnp.full(n, v, dtype)
  tau = config.tau_mean * jax.random.uniform(
    k_tau, n, dtype, 1.0 - config.tau_spread, 1.0 + config.tau_spread
  )
  pick = lambda k, choices, dt: jnp.asarray(choices, dt)[
    jax.random.randint(k, n, 0, len(choices))
  ]
  flops_per_cycle = pick(k_c, config.flops_per_cycle_choices, dtype)
  if config.cycles_per_sample is not None:
    c_k = config.cycles_per_sample * cycles_factor(
      key, config.cycles_spread, n, dtype
    )
    flops_per_cycle = jnp.asarray(flops, dtype) / c_k
  caps = config.bit_caps if config.bit_caps is not None else (32,)
  return Devices(
    distance_m=distance,
    shadowing_db=shadow,
    gain=large * fading,
    large_scale_gain=large,
    bandwidth_hz=full(config.total_bandwidth_hz / shares),
    p_max_w=full(config.p_max_w),
    f_min_hz=full(config.f_min_hz),
    f_max_hz=full(config.f_max_hz),
    tau=tau,
    flops_per_cycle=flops_per_cycle,
    eps=pick(k_e, config.eps_choices, dtype),
    bit_cap=pick(k_b, caps, jnp.int32),
    noise_psd_w_hz=full(10.0 ** ((config.noise_psd_dbm_hz - 30.0) / 10.0)),
  )


def redraw_fading(
  devices: Devices, key: PRNGKey, enabled: bool = True
) -> Devices:
  """Redraws Rayleigh block fading, |h|^2 ~ Exp(1), on the large-scale gain.

  Args:
    devices: current devices.
    key: PRNG key for this round.
    enabled: static flag (config.rayleigh_fading); False returns devices as is.
  """
  if not enabled:
    return devices
  fading = jax.random.exponential(key, devices.gain.shape, devices.gain.dtype)
  return devices.replace(gain=devices.large_scale_gain * fading)
