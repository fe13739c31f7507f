"""The energy sweep's `regime` key: a named set of device-energy constants
(`fedqjax.energy.regimes`) applied to the settings tree.

  flops              c_k = the model's FLOPs per sample / FLOPs per cycle
                     (nothing changes; config.cycles_per_sample must be 0).
  yang2021           Yang et al., IEEE TWC 2021, Sec. VI as transcribed:
                     the library's REGIMES table (written nowhere else)
                     replaces the devices section's values and the base
                     scenario's (num_devices 50, p_max_w 0.01, f_max_hz
                     2e9, total_bandwidth_hz 20e6), sets
                     config.cycles_per_sample to its c (2e4 cycles per
                     sample) and samples_per_round to its samples_per_step
                     (D_k = 500: one local iteration is one pass over a
                     device's 500 samples).
  yang2021_code      the same for the constants of the public MATLAB code
                     of that paper's figures (num_devices 20, c = 2e5 with
                     no spread, so C_k D_k = 1e8; shadowing_law
                     lognormal_offset; min_distance_m 1).
  cycles_per_sample  c_k = config.cycles_per_sample x U[1 - s, 1 + s]
                     (config.cycles_per_sample > 0 required).

A key the regime sets that the user set to a value other than its default
(and other than the regime's) is an error naming both keys. Applying a
regime twice changes nothing.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict

from experiments.common.settings import PREFIX, Invalid
from fedqjax.energy.regimes import REGIMES

# EnergyConfig field -> the key that holds it (the rest: devices.<field>).
SCENARIO_KEYS = dict(
  num_devices="base.num_devices",
  p_max_w="base.p_max_w",
  f_max_hz="base.f_max_hz",
  total_bandwidth_hz="base.total_bandwidth_hz",
  rayleigh_fading="base.fading",
  cycles_per_sample="cycles_per_sample",
)


def key_of(field: str) -> str:
  """The settings key that holds EnergyConfig field `field`."""
  return SCENARIO_KEYS.get(field, f"devices.{field}")


def _get(tree, path: str) -> Any:
  for name in path.split("."):
    tree = getattr(tree, name)
  return tree


def _set(tree, path: str, value: Any):
  head, _, rest = path.partition(".")
  if not rest:
    return dataclasses.replace(tree, **{head: value})
  return dataclasses.replace(
    tree, **{head: _set(getattr(tree, head), rest, value)}
  )


def overrides(name: str) -> Dict[str, Any]:
  """{settings key: value} that regime `name` sets."""
  regime = REGIMES[name]
  out = {key_of(f): v for f, v in regime.energy.items()}
  if regime.samples_per_step is not None:
    out["samples_per_round"] = regime.samples_per_step
  return out


def apply(settings):
  """The settings tree with its regime applied (idempotent).

  Raises:
    Invalid: a key the regime sets, set by the user to another value; or
      config.cycles_per_sample missing (regime cycles_per_sample) or set
      where no regime uses it.
  """
  name = settings.regime
  defaults = type(settings)()
  c = settings.cycles_per_sample
  if name == "cycles_per_sample" and c <= 0:
    raise Invalid(
      f"{PREFIX}.cycles_per_sample",
      c,
      "> 0 with config.regime=cycles_per_sample",
    )
  if name == "flops" and c != 0:
    raise Invalid(
      f"{PREFIX}.cycles_per_sample",
      c,
      "0 with config.regime=flops (set config.regime=cycles_per_sample to "
      "use it)",
    )
  for path, value in overrides(name).items():
    mine = _get(settings, path)
    if mine != _get(defaults, path) and mine != value:
      raise ValueError(
        f"{PREFIX}.{path}={mine!r} conflicts with {PREFIX}.regime={name}, "
        f"which sets it to {value!r}"
      )
    settings = _set(settings, path, value)
  settings.validate()
  return settings
