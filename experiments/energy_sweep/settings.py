"""Every key of the energy sweep: its type, default and range, ONCE.

The field names are the config keys (`config.axes.num_devices` is
`Settings.axes.num_devices`); the defaults are the `default` preset. The
config file (experiments/configs/energy_sweep.py) starts from
`to_config_dict(Settings())` and overrides what a preset changes;
`parse(config)` turns a ConfigDict into this tree, validated before anything
is computed (unknown keys, types, ranges, cross-field checks; every message
names the key path). The `devices` keys are fields of the library's
`EnergyConfig`, which checks them in its own field names.

A sweep moves one setting at a time around the base scenario (`base`, a
`Scenario`), over the values of each non-empty `axes.<axis>` (an axis set
to () is not swept), and optionally two at once (`heatmap`), and evaluates
every bits scheme x allocation policy on `num_seeds` device draws
(experiments/energy_sweep/sweep.py). Models: see `models.py`.

`regime` names where the device-energy constants come from; `parse`
applies it (experiments/energy_sweep/regime.py).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Mapping, Tuple

from experiments.common import settings as settings_lib
from experiments.common.settings import (
  ANY,
  Check,
  Invalid,
  between,
  each,
  key,
  one_of,
  section,
)
from experiments.energy_sweep import models
from experiments.energy_sweep import regime as regime_lib
from experiments.energy_sweep.device_settings import Devices
from fedqjax.energy.allocator import DEADLINE_RULES
from fedqjax.energy.policies import ALLOCATIONS
from fedqjax.energy.regimes import REGIMES
from fedqjax.quantization import METHODS

PRESETS = ("default", "small", "yang2021", "yang2021_code")
BITS_SCHEMES = ("fp32", "fixed", "ondemand")
# shared = allocate_shared_bandwidth (W split optimally instead of W / N)
SWEEP_ALLOCATIONS = ALLOCATIONS + ("shared",)
BITS_SOURCES = ("gaussian", "measured")  # or a path to a finished sweep
DEADLINE_REFERENCES = ("scenario", "base")
MAX_DEVICES = 10**7
REMOVED: Mapping[str, str] = {}
_MAX_INT = 2**31 - 1

# One range per scenario value: `base.<axis>` and each of `axes.<axis>`.
_RANGE = dict(
  cycles_per_sample=between(0, 1e15),
  num_devices=between(1, MAX_DEVICES),
  deadline_factor=between(0, 1e6, lo_open=True),
  total_bandwidth_hz=between(0, 1e12, lo_open=True),
  eps_scale=between(0, 1e12, lo_open=True),
  model=Check(models.is_model, models.VALID),
  p_max_w=between(0, 1e3, lo_open=True),
  f_max_hz=between(0, 1e12, lo_open=True),  # and > devices.f_min_hz
  fading=ANY,
)


def _axis(default, name: str) -> Any:
  """`axes.<name>`: values of `base.<name>`, each in its range."""
  return key(
    default,
    each(_RANGE[name], min_len=0),
    f"values of base.{name}; () = not swept",
  )


@dataclasses.dataclass(frozen=True)
class Scenario:
  """One point of the sweep (`base`; an axis moves one of its values)."""

  num_devices: int = key(
    10,
    _RANGE["num_devices"],
    "N devices sharing the bandwidth (docs/model.md: 10)",
  )
  deadline_factor: float = key(
    1.2, _RANGE["deadline_factor"], "T = factor x the deadline rule's statistic"
  )
  total_bandwidth_hz: float = key(
    20e6,
    _RANGE["total_bandwidth_hz"],
    "Hz, W: equal FDMA shares W / N (`shared` optimizes them); 20 MHz: Yang et"
    " al. TWC 2021, Sec. VI",
  )
  eps_scale: float = key(
    1.0, _RANGE["eps_scale"], "multiplies every device's error budget eps_k"
  )
  model: str = key(
    "tiny", _RANGE["model"], "tiny | paper | a parameter count (models.py)"
  )
  p_max_w: float = key(
    0.2,
    _RANGE["p_max_w"],
    "W, every device's transmit power cap p_max; 0.2 W (23 dBm) is ours: LTE"
    " UE power class 3 (Yang et al. 2021: 10 dBm)",
  )
  f_max_hz: float = key(
    2e9,
    _RANGE["f_max_hz"],
    "Hz, every device's highest CPU frequency f_max; 2 GHz: Yang et al. TWC"
    " 2021, Sec. VI",
  )
  fading: bool = key(
    False,
    _RANGE["fading"],
    "Rayleigh block fading |h|^2 ~ Exp(1) on every device's gain (off: ours)",
  )
  cycles_per_sample: float = key(
    0.0,
    _RANGE["cycles_per_sample"],
    "0: the regime's c (config.cycles_per_sample) or, regime flops, the "
    "model's FLOPs / FLOPs per cycle; > 0: c_k = value x U[1 - s, 1 + s], "
    "s = devices.cycles_spread",
  )

  def with_value(self, axis: str, value: Any) -> "Scenario":
    return dataclasses.replace(self, **{axis: value})


@dataclasses.dataclass(frozen=True)
class Axes:
  """The values each axis takes, one axis at a time around `base`.

  Iterating gives the swept (axis, values) pairs in AXES order, the keys'
  alphabetical order (empty axes left out): `dict(settings.axes)`,
  `settings.axes[0][0]`. The CSV rows and the figures' panels follow it.
  """

  # literature (Yang et al.: 1e4-3e4) to FLOPs / 16 of the tiny (6.6e7) and
  # the paper U-Net (2.2e9) and beyond
  cycles_per_sample: Tuple[float, ...] = _axis(
    (1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10), "cycles_per_sample"
  )

  deadline_factor: Tuple[float, ...] = _axis(
    (1.05, 1.2, 1.5, 2.0, 3.0, 5.0, 10.0), "deadline_factor"
  )
  eps_scale: Tuple[float, ...] = _axis(
    (0.01, 0.1, 0.3, 1.0, 3.0, 10.0, 100.0), "eps_scale"
  )
  f_max_hz: Tuple[float, ...] = _axis((0.5e9, 1e9, 2e9, 4e9), "f_max_hz")
  fading: Tuple[bool, ...] = _axis((False, True), "fading")
  model: Tuple[str, ...] = _axis(("tiny", "paper", "100000000"), "model")
  num_devices: Tuple[int, ...] = _axis((10, 100, 1000, 10000), "num_devices")
  p_max_w: Tuple[float, ...] = _axis((0.05, 0.1, 0.2, 0.5, 1.0), "p_max_w")
  total_bandwidth_hz: Tuple[float, ...] = _axis(
    (2e6, 5e6, 10e6, 20e6, 50e6, 100e6), "total_bandwidth_hz"
  )

  def swept(self) -> Tuple[Tuple[str, Tuple[Any, ...]], ...]:
    """The (axis, values) pairs of the non-empty axes, in AXES order."""
    return tuple((a, getattr(self, a)) for a in AXES if getattr(self, a))

  def __iter__(self):
    return iter(self.swept())

  def __len__(self) -> int:
    return len(self.swept())

  def __getitem__(self, i):
    return self.swept()[i]


AXES = tuple(f.name for f in dataclasses.fields(Axes))
assert AXES == tuple(sorted(AXES)), AXES


@dataclasses.dataclass(frozen=True)
class Quant:
  method: str = key(
    "minmax",
    one_of(*METHODS),
    "stochastic quantizer priced: minmax (per-bucket min-max levels) | qsgd "
    "(Alistarh et al. 2017); docs/model.md sec. 2",
  )
  bucket_size: int = key(0, between(0, _MAX_INT), "0 = one bucket per tensor")
  b_min: int = key(1, between(1, 32), "smallest on-demand bit-width")


@dataclasses.dataclass(frozen=True)
class Deadline:
  """T = factor x `rule`'s statistic of the fp32 minimal round times.

  fp32_feasible: the largest (every device can upload every scheme) |
  median | quantile (`quantile`). `seconds` > 0 fixes T instead (the factor
  is then unused). `reference`: "scenario" (T from each scenario's own
  devices and model: it moves with p_max, f_max, W, N, the model, fading) or
  "base" (the base scenario's T per draw, held fixed while the other axes
  move; devices that can no longer meet it skip the round).
  """

  rule: str = key(
    "fp32_feasible",
    one_of(*DEADLINE_RULES),
    "statistic of the fp32 minimal round times that T scales: fp32_feasible"
    " = the largest | median | quantile; ours, docs/model.md sec. 7",
  )
  quantile: float = key(
    0.95,
    between(0, 1, lo_open=True),
    "the quantile of rule quantile (devices above it skip the round)",
  )
  seconds: float = key(0.0, between(0, 1e9), "> 0: a fixed deadline T")
  reference: str = key(
    "scenario",
    one_of(*DEADLINE_REFERENCES),
    "scenario: T from each scenario's own devices and model | base: the "
    "base scenario's T per draw, held fixed while the axes move",
  )


_SOURCE = Check(
  lambda v: bool(v),
  f"{' | '.join(BITS_SOURCES)} | a path to "
  "a training sweep's workdir (or an ondemand history.json)",
)


@dataclasses.dataclass(frozen=True)
class Settings:
  """The energy sweep's settings tree (defaults: the `default` preset)."""

  regime: str = key(
    "flops",
    one_of(*REGIMES),
    "device-energy constants: " + " | ".join(REGIMES) + " "
    "(fedqjax.energy.regimes)",
  )
  cycles_per_sample: float = key(
    0.0,
    between(0, 1e15),
    "c of regime cycles_per_sample (> 0 then; 0 otherwise)",
  )
  seed: int = key(
    0,
    between(0, _MAX_INT),
    "device draws: keys fold_in(key(seed), r), r < num_seeds",
  )
  num_seeds: int = key(
    10, between(1, 1000), "device draws; mean and std over them"
  )
  bits_schemes: Tuple[str, ...] = key(
    BITS_SCHEMES,
    each(one_of(*BITS_SCHEMES), distinct=True),
    "bits schemes priced: fp32 (32 bits) | fixed (fixed_bits) | ondemand "
    "(b_k from each device's eps_k: the paper's method)",
  )
  fixed_bits: int = key(8, between(1, 32), "b of the fixed scheme")
  allocations: Tuple[str, ...] = key(
    ("kkt", "deadline", "split", "max", "shared"),
    each(one_of(*SWEEP_ALLOCATIONS), distinct=True),
    "fedqjax.energy.policies; shared: allocate_shared_bandwidth",
  )
  bits_source: str = key(
    "gaussian",
    _SOURCE,
    "gaussian (analytic) | measured (one real local update; slow) | a "
    "finished training sweep's workdir (bits_sources.py)",
  )
  samples_per_round: int = key(
    16,
    between(1, 10**9),
    "n, samples a device computes per round; 16 = I B: the training "
    "sweep's cpu preset, 2 steps x batch 8",
  )
  heatmap: Tuple[str, ...] = key(
    ("deadline_factor", "eps_scale"),
    each(one_of(*AXES), min_len=0, distinct=True),
    "() or two axes swept jointly",
  )
  figures: bool = key(True, doc="write figures/")
  quant: Quant = section(Quant)
  deadline: Deadline = section(Deadline)
  base: Scenario = section(Scenario)
  axes: Axes = section(Axes)
  devices: Devices = section(Devices)

  @classmethod
  def from_dict(cls, config) -> "Settings":
    """A ConfigDict (or nested mapping) -> the validated settings."""
    return parse(config)

  def validate(self) -> None:
    """Checks across keys (named with their section)."""
    axes = dict(self.axes)
    if self.heatmap and (
      len(self.heatmap) != 2
      or any(len(axes.get(a, ())) < 2 for a in self.heatmap)
    ):
      raise Invalid(
        "heatmap",
        self.heatmap,
        "() or two distinct axes, each with >= 2 values in axes",
      )
    f_min = self.devices.f_min_hz
    valid = f"(config.devices.f_min_hz={f_min:g}, 1e+12]"
    if self.base.f_max_hz <= f_min:
      raise Invalid("base.f_max_hz", self.base.f_max_hz, valid)
    if any(f <= f_min for f in self.axes.f_max_hz):
      raise Invalid("axes.f_max_hz", self.axes.f_max_hz, f"each in {valid}")
    _check_source(self)


def _check_source(s: Settings) -> None:
  """What a bits source cannot serve (a history: no eps scale; measured:
  the preset models only)."""
  if s.bits_source not in BITS_SOURCES:
    valid = (
      "() with a sweep's history as bits_source (its bits cannot be "
      "rescaled): set config.axes.eps_scale=() and config.heatmap=() "
      "or two other axes"
    )
    if s.axes.eps_scale:
      raise Invalid("axes.eps_scale", s.axes.eps_scale, valid)
    if s.base.eps_scale != 1.0:
      raise Invalid(
        "base.eps_scale",
        s.base.eps_scale,
        "1 with a sweep's history as bits_source",
      )
  if s.bits_source == "measured":
    valid = f"{' | '.join(models.MODEL_PRESETS)} with bits_source=measured"
    if s.base.model not in models.MODEL_PRESETS:
      raise Invalid("base.model", s.base.model, valid)
    if any(m not in models.MODEL_PRESETS for m in s.axes.model):
      raise Invalid("axes.model", s.axes.model, f"each {valid}")


def _models_as_names(config) -> Dict[str, Any]:
  """The config as a nested dict, parameter counts given as numbers (what
  `--config.axes.model=1e8` gives) turned into names ("100000000.0")."""
  d = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  name = lambda v: (
    str(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v
  )
  for group in ("base", "axes"):
    sub = d.get(group)
    if isinstance(sub, Mapping) and "model" in sub:
      sub = d[group] = dict(sub)
      v = sub["model"]
      sub["model"] = (
        type(v)(map(name, v)) if isinstance(v, (tuple, list)) else name(v)
      )
  return d


def parse(config) -> Settings:
  """A ConfigDict (or nested mapping) -> the validated `Settings`.

  Raises:
    ValueError: an unknown key (with a did-you-mean), a wrong type, a value
      outside its range or a failed cross-key check, naming the key path.
  """
  if isinstance(config, Settings):
    return config
  tree = settings_lib.parse(Settings, _models_as_names(config), removed=REMOVED)
  return regime_lib.apply(tree)


# The name the notebook and benchmarks/energy.py use.
SweepSettings = Settings


def scenarios_of(s: Settings) -> Dict[str, Any]:
  """The sweep's scenario list and its rows (models normalized).

  Returns:
    dict(scenarios=[unique Scenario, base first], rows=[(axis, value, axis2,
    value2, scenario index)]): one row per axis value (axis "base" for the
    base scenario itself) and per heat-map cell (axis2 set).
  """
  index: Dict[Tuple, int] = {}
  scenarios = []

  def add(sc: Scenario) -> int:
    k = dataclasses.astuple(sc)
    if k not in index:
      index[k] = len(scenarios)
      scenarios.append(sc)
    return index[k]

  value = lambda a, v: models.model_name(v) if a == "model" else v
  base = s.base.with_value("model", models.model_name(s.base.model))
  axes = {a: tuple(value(a, v) for v in vs) for a, vs in s.axes}
  rows = [("base", "", "", "", add(base))]
  for axis, values in axes.items():
    for v in values:
      rows.append((axis, v, "", "", add(base.with_value(axis, v))))
  if s.heatmap:
    a, b = s.heatmap
    for va in axes[a]:
      for vb in axes[b]:
        sc = base.with_value(a, va).with_value(b, vb)
        rows.append((a, va, b, vb, add(sc)))
  return dict(scenarios=scenarios, rows=rows)
