"""Host-side checks of an `EnergyConfig` and of a `Devices` pytree.

Kept apart from devices.py (the population model) so that each module stays
short; `fedqjax.energy.devices` re-exports `validate_devices`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from fedqjax.errors import InvalidSetting

if TYPE_CHECKING:
  from fedqjax.energy.devices import Devices

CELL_SHAPES = ("disc", "square")
SHADOWING_LAWS = ("normal", "lognormal_offset")


def _is_bad_number(x: Any) -> bool:
  return (
    not isinstance(x, (int, float))
    or isinstance(x, bool)
    or not math.isfinite(x)
  )


def check_energy_config(cfg) -> None:
  """Checks every field of an `EnergyConfig`; raises InvalidSetting naming
  the field, its value and the valid range."""

  def bad(name, rng):
    raise InvalidSetting("EnergyConfig", name, getattr(cfg, name), rng)

  if not isinstance(cfg.num_devices, (int, np.integer)) or cfg.num_devices < 1:
    bad("num_devices", "integer >= 1")
  positive = (
    "radius_m",
    "min_distance_m",
    "total_bandwidth_hz",
    "p_max_w",
    "f_min_hz",
    "f_max_hz",
    "tau_mean",
  )
  for name in positive:
    v = getattr(cfg, name)
    if _is_bad_number(v) or v <= 0:
      bad(name, "finite and > 0")
  for name in ("pathloss_const_db", "pathloss_exp_db", "noise_psd_dbm_hz"):
    if _is_bad_number(getattr(cfg, name)):
      bad(name, "finite")
  if _is_bad_number(cfg.shadowing_db) or cfg.shadowing_db < 0:
    bad("shadowing_db", "finite and >= 0")
  if cfg.min_distance_m >= cfg.radius_m:
    bad("min_distance_m", f"(0, radius_m={cfg.radius_m})")
  if cfg.f_min_hz >= cfg.f_max_hz:
    bad("f_min_hz", f"(0, f_max_hz={cfg.f_max_hz})")
  if _is_bad_number(cfg.tau_spread) or not 0 <= cfg.tau_spread < 1:
    bad("tau_spread", "[0, 1)")
  cps = cfg.cycles_per_sample
  if cps is not None and (_is_bad_number(cps) or cps <= 0):
    bad("cycles_per_sample", "None or finite and > 0")
  if _is_bad_number(cfg.cycles_spread) or not 0 <= cfg.cycles_spread < 1:
    bad("cycles_spread", "[0, 1)")
  if cfg.cell_shape not in CELL_SHAPES:
    bad("cell_shape", " | ".join(CELL_SHAPES))
  if cfg.shadowing_law not in SHADOWING_LAWS:
    bad("shadowing_law", " | ".join(SHADOWING_LAWS))
  if cfg.bandwidth_shares is not None and (
    not isinstance(cfg.bandwidth_shares, (int, np.integer))
    or cfg.bandwidth_shares < 1
  ):
    bad("bandwidth_shares", "None or integer >= 1")
  if not cfg.flops_per_cycle_choices or any(
    _is_bad_number(float(c)) or c <= 0 for c in cfg.flops_per_cycle_choices
  ):
    bad("flops_per_cycle_choices", "non-empty, each finite and > 0")
  if not cfg.eps_choices or any(
    _is_bad_number(float(e)) or e <= 0 for e in cfg.eps_choices
  ):
    bad("eps_choices", "non-empty, each finite and > 0")
  if cfg.bit_caps is not None and (
    not cfg.bit_caps
    or any(int(b) != b or not 1 <= b <= 32 for b in cfg.bit_caps)
  ):
    bad("bit_caps", "None or non-empty integers in [1, 32]")


def validate_devices(devices: Devices) -> Devices:
  """Host-side check of a Devices pytree; raises ValueError naming the field."""
  positive = (
    "gain",
    "large_scale_gain",
    "bandwidth_hz",
    "p_max_w",
    "f_min_hz",
    "f_max_hz",
    "tau",
    "flops_per_cycle",
    "eps",
    "noise_psd_w_hz",
    "distance_m",
  )
  if devices.realized_gain is not None:
    positive = positive + ("realized_gain",)
  for name in positive + ("shadowing_db",):
    v = np.asarray(getattr(devices, name), np.float64)
    if not np.all(np.isfinite(v)):
      i = int(np.flatnonzero(~np.isfinite(v).ravel())[0])
      raise ValueError(
        f"Devices.{name} has non-finite value {v.ravel()[i]!r} at index {i}; "
        "valid range: finite"
      )
    if name in positive and not np.all(v > 0):
      i = int(np.flatnonzero(~(v > 0).ravel())[0])
      raise ValueError(
        f"Devices.{name} has value {v.ravel()[i]!r} at index {i}; "
        "valid range: > 0"
      )
  fmin, fmax = np.asarray(devices.f_min_hz), np.asarray(devices.f_max_hz)
  if np.any(fmin >= fmax):
    i = int(np.flatnonzero((fmin >= fmax).ravel())[0])
    raise ValueError(
      f"Devices.f_min_hz={fmin.ravel()[i]!r} >= f_max_hz={fmax.ravel()[i]!r} "
      f"at index {i}; valid range: f_min_hz < f_max_hz"
    )
  cap = np.asarray(devices.bit_cap)
  if np.any((cap < 1) | (cap > 32)):
    i = int(np.flatnonzero(((cap < 1) | (cap > 32)).ravel())[0])
    raise ValueError(
      f"Devices.bit_cap={cap.ravel()[i]!r} at index {i}; valid range: [1, 32]"
    )
  return devices
