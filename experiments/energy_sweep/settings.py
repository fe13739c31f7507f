"""Settings of the system-level energy sweep: scenarios, models, validation (issue 17).

A sweep moves one setting at a time around a base `Scenario` (and optionally
two at once, a heat map) and evaluates every bits scheme x allocation policy
on several device draws (`fedqjax.energy.sweep`). This module holds the
frozen, self-validating settings (`SweepSettings.from_dict` maps the
experiment's config keys onto them; error messages name the config key and
the valid range), and the model descriptions (`model_spec`): the parameter
template whose quantizer gives the payload sizes, and the training FLOPs per
sample that set the computation.

Models:
  "tiny"   `UNetConfig.tiny()` (the CPU preset's U-Net) on 28x28x1
           Fashion-MNIST: 1,062,497 parameters in 152 tensors (no attention
           at 28x28); 1.0532e9 training FLOPs per image
           (`diffusion.train_flops_per_image`, lowered HLO, as the training
           sweep counts them).
  "paper"  `UNetConfig()` (Ho et al.'s CIFAR-10 U-Net) on 32x32x3:
           35,746,307 parameters in 328 tensors; 35.006e9 FLOPs per image.
  a count  e.g. "1e8": a synthetic template of ceil(d / 2^17) tensors of
           2^17 = 131,072 entries (the last one partial; about the paper
           U-Net's mean tensor size, 109k), so one bucket per 2^17 entries
           with the default bucket_size 0; FLOPs = d x 979.3, the paper
           U-Net's training FLOPs per parameter.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import math
from typing import Any, Dict, Mapping, NamedTuple, Tuple

import jax
import jax.numpy as jnp

from fedqjax.energy.allocator import DEADLINE_RULES
from fedqjax.energy.devices import EnergyConfig
from fedqjax.energy.policies import ALLOCATIONS

AXES = ("deadline_factor", "num_devices", "total_bandwidth_hz", "eps_scale", "model",
        "p_max_w", "f_max_hz", "fading")
BITS_SCHEMES = ("fp32", "fixed", "ondemand")
SWEEP_ALLOCATIONS = ALLOCATIONS + ("shared",)  # shared = allocate_shared_bandwidth
BITS_SOURCES = ("gaussian", "measured")  # or a path to a finished sweep
DEADLINE_REFERENCES = ("scenario", "base")
MAX_DEVICES = 10**7
SYNTHETIC_LEAF = 2**17
PAPER_FLOPS, PAPER_PARAMS = 35.006e9, 35_746_307
MODEL_PRESETS = {  # name -> (U-Net config factory, image shape, FLOPs per image)
    "tiny": ("tiny", (28, 28, 1), 1.0532e9),
    "paper": ("paper", (32, 32, 3), PAPER_FLOPS),
}
# Scenario fields the sweep sets on the devices; EnergyConfig must not set them.
_SCENARIO_DEVICE_FIELDS = ("num_devices", "total_bandwidth_hz", "p_max_w", "f_max_hz",
                           "rayleigh_fading", "bandwidth_shares")


def _bad(key: str, value: Any, valid: str):
  raise ValueError(f"{key}={value!r} is invalid; valid range: {valid}")


def _number(key, v, lo=0.0, hi=math.inf, lo_open=True, integer=False):
  ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
  ok = ok and (v > lo if lo_open else v >= lo) and v <= hi
  if integer:
    ok = ok and float(v) == int(v)
  if not ok:
    kind = "integer" if integer else "finite number"
    _bad(key, v, f"{kind} in {'(' if lo_open else '['}{lo:g}, {hi:g}]")
  return int(v) if integer else float(v)


def parse_model(key: str, v: Any) -> str:
  """"tiny" | "paper" | a parameter count (int or numeric string), normalized to a str."""
  if isinstance(v, str) and v in MODEL_PRESETS:
    return v
  try:
    d = float(v) if not isinstance(v, bool) else math.nan
  except (TypeError, ValueError):
    d = math.nan
  if not (math.isfinite(d) and d == int(d) and 1 <= d <= 1e10):
    _bad(key, v, f"{' | '.join(MODEL_PRESETS)} | a parameter count in [1, 1e10]")
  return str(int(d))


@dataclasses.dataclass(frozen=True)
class Scenario:
  """One point of the sweep (the values an axis moves).

  Attributes:
    num_devices: N devices sharing the total bandwidth in the round.
    deadline_factor: T = factor x the deadline rule's statistic.
    total_bandwidth_hz: W (equal FDMA shares W / N; `shared` optimizes them).
    eps_scale: multiplies every device's error budget eps_k.
    model: "tiny" | "paper" | a parameter count (see the module docstring).
    p_max_w, f_max_hz: every device's transmit power and CPU frequency caps.
    fading: Rayleigh block fading |h|^2 ~ Exp(1) on the large-scale gain.
  """
  num_devices: int = 10
  deadline_factor: float = 1.2
  total_bandwidth_hz: float = 20e6
  eps_scale: float = 1.0
  model: str = "tiny"
  p_max_w: float = 0.2
  f_max_hz: float = 2e9
  fading: bool = False

  def checked(self, prefix: str, f_min_hz: float, key: str = "") -> "Scenario":
    """A normalized copy; raises ValueError naming `key` or else `prefix + field`."""
    k = lambda field: key or prefix + field
    if not isinstance(self.fading, bool):
      _bad(k("fading"), self.fading, "True | False")
    return Scenario(
        num_devices=_number(k("num_devices"), self.num_devices, 1, MAX_DEVICES, False, True),
        deadline_factor=_number(k("deadline_factor"), self.deadline_factor, 0.0, 1e6),
        total_bandwidth_hz=_number(k("total_bandwidth_hz"), self.total_bandwidth_hz, 0, 1e12),
        eps_scale=_number(k("eps_scale"), self.eps_scale, 0.0, 1e12),
        model=parse_model(k("model"), self.model),
        p_max_w=_number(k("p_max_w"), self.p_max_w, 0.0, 1e3),
        f_max_hz=_number(k("f_max_hz"), self.f_max_hz, f_min_hz, 1e12),
        fading=self.fading)

  def with_value(self, axis: str, value: Any) -> "Scenario":
    return dataclasses.replace(self, **{axis: value})


@dataclasses.dataclass(frozen=True)
class SweepSettings:
  """Everything a sweep needs; built by `from_dict`, validated on construction.

  Attributes:
    seed, num_seeds: device draws use keys fold_in(key(seed), r), r < num_seeds.
    bits_schemes: subset of BITS_SCHEMES; fixed_bits: b of "fixed".
    allocations: subset of SWEEP_ALLOCATIONS.
    bits_source: "gaussian" | "measured" | a path to a finished training
      sweep (its workdir or an ondemand history.json): see `fedqjax.energy.bits_sources`.
    quant_method, bucket_size (0 = one bucket per tensor), b_min: the quantizer.
    deadline_rule, deadline_quantile: `energy.deadline_for`'s rule;
      deadline_s > 0 fixes T instead (deadline_factor then unused).
    deadline_reference: "scenario" (T = factor x the rule's statistic of each
      scenario's own devices and model: under fp32_feasible every device can
      always upload, but T moves with p_max, f_max, W, N, the model, fading)
      or "base" (the statistic of the base scenario, per draw, held fixed
      while the other axes move; devices that can no longer meet T skip).
    samples_per_round: n = I B samples each device trains on per round.
    base: the base scenario; axes: (axis, values) pairs swept one at a time;
    heatmap: () or two axis names swept jointly.
    devices: the rest of the device model (channel, CPU, error budgets).
    figures: write the figures.
  """
  seed: int = 0
  num_seeds: int = 10
  bits_schemes: Tuple[str, ...] = BITS_SCHEMES
  fixed_bits: int = 8
  allocations: Tuple[str, ...] = ("kkt", "deadline", "split", "max", "shared")
  bits_source: str = "gaussian"
  quant_method: str = "minmax"
  bucket_size: int = 0
  b_min: int = 1
  deadline_rule: str = "fp32_feasible"
  deadline_quantile: float = 0.95
  deadline_s: float = 0.0
  deadline_reference: str = "scenario"
  samples_per_round: int = 16
  base: Scenario = Scenario()
  axes: Tuple[Tuple[str, Tuple[Any, ...]], ...] = ()
  heatmap: Tuple[str, ...] = ()
  devices: EnergyConfig = EnergyConfig()
  figures: bool = True

  def __post_init__(self):
    _validate(self)

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "SweepSettings":
    """Maps the experiment's config (nested dict / ConfigDict) onto the settings."""
    return from_config_dict(d)


def _names(key, v, valid, allow_empty=False) -> Tuple[str, ...]:
  items = [v] if isinstance(v, str) else list(v) if isinstance(v, (tuple, list)) else None
  if items is None or not all(isinstance(x, str) for x in items):
    _bad(key, v, f"a comma list from {', '.join(valid)}")
  out = tuple(x.strip() for item in items for x in item.split(",") if x.strip())
  if any(x not in valid for x in out) or (not out and not allow_empty) or len(set(out)) < len(out):
    _bad(key, v, f"distinct names from {', '.join(valid)}")
  return out


def _validate(s: SweepSettings) -> None:
  """Checks every field in config-key names; normalizes tuples in place."""
  set_ = lambda name, v: object.__setattr__(s, name, v)
  _number("seed", s.seed, 0, 2**31 - 1, False, True)
  set_("num_seeds", _number("num_seeds", s.num_seeds, 1, 1000, False, True))
  set_("bits_schemes", _names("bits_schemes", s.bits_schemes, BITS_SCHEMES))
  set_("fixed_bits", _number("fixed_bits", s.fixed_bits, 1, 32, False, True))
  set_("allocations", _names("allocations", s.allocations, SWEEP_ALLOCATIONS))
  if not isinstance(s.bits_source, str) or not s.bits_source:
    _bad("bits_source", s.bits_source, f"{' | '.join(BITS_SOURCES)} | a path to a sweep workdir")
  if s.quant_method not in ("minmax", "qsgd"):
    _bad("quant.method", s.quant_method, "minmax | qsgd")
  set_("bucket_size", _number("quant.bucket_size", s.bucket_size, 0, 2**31 - 1, False, True))
  set_("b_min", _number("quant.b_min", s.b_min, 1, 32, False, True))
  if s.deadline_rule not in DEADLINE_RULES:
    _bad("deadline.rule", s.deadline_rule, " | ".join(DEADLINE_RULES))
  set_("deadline_quantile", _number("deadline.quantile", s.deadline_quantile, 0.0, 1.0))
  set_("deadline_s", _number("deadline.seconds", s.deadline_s, 0.0, 1e9, lo_open=False))
  if s.deadline_reference not in DEADLINE_REFERENCES:
    _bad("deadline.reference", s.deadline_reference, " | ".join(DEADLINE_REFERENCES))
  set_("samples_per_round", _number("samples_per_round", s.samples_per_round, 1, 10**9,
                                    False, True))
  if not isinstance(s.figures, bool):
    _bad("figures", s.figures, "True | False")
  f_min = s.devices.f_min_hz
  set_("base", s.base.checked("base.", f_min))
  axes = []
  for name, values in s.axes:
    if name not in AXES:
      _bad(f"axes.{name}", values, f"axis names {', '.join(AXES)}")
    if not isinstance(values, (tuple, list)):
      values = (values,)
    vals = tuple(getattr(s.base.with_value(name, v).checked("", f_min, f"axes.{name}[{i}]"),
                         name) for i, v in enumerate(values))
    axes.append((name, vals))
  set_("axes", tuple(axes))
  _check_source(s)
  hm = s.heatmap
  if hm:
    hm = _names("heatmap", hm, AXES)
    swept = dict(axes)
    if len(hm) != 2 or any(len(swept.get(a, ())) < 2 for a in hm):
      _bad("heatmap", s.heatmap, "'' or two distinct axes, each with >= 2 values in axes")
  set_("heatmap", tuple(hm))


def _check_source(s: SweepSettings) -> None:
  """Settings a bits source cannot serve (history: no eps scale; measured: presets only)."""
  axes = dict(s.axes)
  if s.bits_source not in BITS_SOURCES:
    if s.base.eps_scale != 1.0 or axes.get("eps_scale"):
      key, v = (("axes.eps_scale", axes["eps_scale"]) if axes.get("eps_scale")
                else ("base.eps_scale", s.base.eps_scale))
      _bad(key, v, "1 / () with bits_source = a sweep's history (its bits cannot be rescaled)")
  if s.bits_source == "measured":
    models = [("base.model", s.base.model)] + [
        (f"axes.model[{i}]", m) for i, m in enumerate(axes.get("model", ()))]
    for key, m in models:
      if m not in MODEL_PRESETS:
        _bad(key, m, f"{' | '.join(MODEL_PRESETS)} with bits_source=measured")


def from_config_dict(d: Mapping[str, Any]) -> SweepSettings:
  """Nested dict (or ConfigDict) with the config file's keys -> SweepSettings.

  Raises:
    ValueError: unknown keys (with a "did you mean"), or invalid values,
      naming the config key and the valid range.
  """
  d = d.to_dict() if hasattr(d, "to_dict") else dict(d)
  top = {"seed", "num_seeds", "bits_schemes", "fixed_bits", "allocations", "bits_source",
         "samples_per_round", "heatmap", "figures", "quant", "deadline", "base", "axes",
         "devices"}
  subs = {"quant": {"method": "quant_method", "bucket_size": "bucket_size", "b_min": "b_min"},
          "deadline": {"rule": "deadline_rule", "quantile": "deadline_quantile",
                       "seconds": "deadline_s", "reference": "deadline_reference"}}
  _unknown("", d, top)
  kw = {k: d[k] for k in top - {"quant", "deadline", "base", "axes", "devices"} if k in d}
  for group, mapping in subs.items():
    sub = dict(d.get(group, {}))
    _unknown(group + ".", sub, set(mapping))
    kw.update({mapping[k]: v for k, v in sub.items()})
  scen_fields = {f.name for f in dataclasses.fields(Scenario)}
  base = dict(d.get("base", {}))
  _unknown("base.", base, scen_fields)
  kw["base"] = Scenario(**base)
  axes = dict(d.get("axes", {}))
  _unknown("axes.", axes, set(AXES))
  kw["axes"] = tuple((a, _split_values(v)) for a, v in axes.items() if _split_values(v))
  if isinstance(kw.get("heatmap"), str):
    kw["heatmap"] = tuple(x for x in kw["heatmap"].split(",") if x.strip())
  dev = dict(d.get("devices", {}))
  if dev.get("bit_caps") in ((), []):
    dev["bit_caps"] = None  # the config's () = no caps
  dev_fields = {f.name for f in dataclasses.fields(EnergyConfig)} - set(_SCENARIO_DEVICE_FIELDS)
  _unknown("devices.", dev, dev_fields)
  try:
    kw["devices"] = EnergyConfig.from_dict(dev)
  except ValueError as e:  # "EnergyConfig.f_min_hz=..." -> "devices.f_min_hz=..."
    raise ValueError(str(e).replace("EnergyConfig.", "devices.")) from None
  return SweepSettings(**kw)


def _split_values(v) -> Tuple[Any, ...]:
  """An axis' values; "a,b" strings (what --config.axes.x=a,b gives) are split."""
  items = list(v) if isinstance(v, (tuple, list)) else [] if v in (None, "") else [v]
  out = []
  for x in items:
    out += [p.strip() for p in x.split(",") if p.strip()] if isinstance(x, str) else [x]
  return tuple(out)


def _unknown(prefix: str, d: Mapping[str, Any], known) -> None:
  for k in d:
    if k not in known:
      close = difflib.get_close_matches(k, sorted(known), n=1)
      hint = f"; did you mean {prefix + close[0]!r}?" if close else ""
      raise ValueError(f"unknown config key {prefix + k!r}{hint}")


class ModelSpec(NamedTuple):
  """A model as the energy sweep sees it."""
  name: str
  num_params: int
  flops_per_sample: float
  template: Any  # pytree of jax.ShapeDtypeStruct


@functools.lru_cache(maxsize=16)
def model_spec(model: str) -> ModelSpec:
  """The template, parameter count and FLOPs of "tiny" | "paper" | a count (cached)."""
  if model in MODEL_PRESETS:
    from fedqjax import diffusion  # pylint: disable=g-import-not-at-top
    factory, shape, flops = MODEL_PRESETS[model]
    cfg = diffusion.UNetConfig.tiny() if factory == "tiny" else diffusion.UNetConfig()
    template = jax.eval_shape(lambda k: diffusion.init_unet(cfg, k, shape), jax.random.key(0))
  else:
    d = int(model)
    full, rest = divmod(d, SYNTHETIC_LEAF)
    sizes = [SYNTHETIC_LEAF] * full + ([rest] if rest else [])
    template = [jax.ShapeDtypeStruct((n,), jnp.float32) for n in sizes]
    flops = d * (PAPER_FLOPS / PAPER_PARAMS)
  num = sum(math.prod(x.shape) for x in jax.tree.leaves(template))
  return ModelSpec(model, int(num), float(flops), template)


def scenarios_of(s: SweepSettings) -> Dict[str, Any]:
  """The sweep's scenario list and its rows.

  Returns:
    dict(scenarios=[unique Scenario, base first], rows=[(axis, value, axis2,
    value2, scenario index)]): one row per axis value (axis "base" for the
    base scenario itself) and per heat-map cell (axis2 set).
  """
  index: Dict[Tuple, int] = {}
  scenarios = []

  def add(sc: Scenario) -> int:
    key = dataclasses.astuple(sc)
    if key not in index:
      index[key] = len(scenarios)
      scenarios.append(sc)
    return index[key]

  rows = [("base", "", "", "", add(s.base))]
  for axis, values in s.axes:
    for v in values:
      rows.append((axis, v, "", "", add(s.base.with_value(axis, v))))
  if s.heatmap:
    a, b = s.heatmap
    axes = dict(s.axes)
    for va in axes[a]:
      for vb in axes[b]:
        rows.append((a, va, b, vb, add(s.base.with_value(a, va).with_value(b, vb))))
  return dict(scenarios=scenarios, rows=rows)
