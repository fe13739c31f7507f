"""Energy and time of generating images on a device.

A sampler of S steps generating n images runs n x S steps of
F = `fedqjax.diffusion.flops.sampling_step_flops` FLOPs each, so device k
spends c_k = n S F / (FLOPs per cycle)_k cycles: at CPU frequency f it takes
t = c_k / f and E = tau_k c_k f^2 (`fedqjax.energy.model.comp_energy`, the
training round's formula). Energy grows as f^2 while time falls as 1 / f:

  "f_max"  the fastest (the default, and what the reports price): a device
           that samples at full speed.
  T_s > 0  a latency budget in seconds: f = clip(c_k / T_s, f_min, f_max),
           the lowest (so energy-minimal) frequency that meets it;
           infeasible (`feasible` False, priced at f_max) when
           c_k / f_max > T_s.
  "f_min"  the device model's lower bound. Not a default: f_min is an
           arbitrary bound of the model, not a frequency anyone samples
           at (E(f_min) / E(f_max) = (f_min / f_max)^2: 1/400 with the
           default devices, 2.5e-7 in the yang2021 regime).

Pure and elementwise over the devices' [N] arrays (jit-able; the settings
are checked on the host).
"""

from __future__ import annotations

import math
import numbers
from typing import Dict, NamedTuple, Union

import jax.numpy as jnp
import numpy as np

from fedqjax.energy.devices import Devices
from fedqjax.energy.model import comp_energy, cycles_per_sample
from fedqjax.errors import InvalidSetting
from fedqjax.typing import Array

FREQS = ("f_min", "f_max")
Freq = Union[str, float]


class SamplingCost(NamedTuple):
  """Per-device cost of generating the images, each [N]."""

  energy_j: Array
  time_s: Array
  freq_hz: Array
  feasible: Array  # bool: meets the latency budget (always True otherwise)


def _positive(v) -> bool:
  return (
    isinstance(v, numbers.Real)
    and not isinstance(v, bool)
    and math.isfinite(v)
    and v > 0
  )


def _check(flops_per_step, steps, num_images, freq) -> None:
  """Host-side checks; InvalidSetting naming the argument and its range."""
  bad = lambda name, v, valid: InvalidSetting("sampling_energy", name, v, valid)
  if not _positive(flops_per_step):
    raise bad("flops_per_step", flops_per_step, "a finite number > 0")
  for name, v in (("steps", steps), ("num_images", num_images)):
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
      raise bad(name, v, "an integer >= 1")
  if freq not in FREQS and (isinstance(freq, str) or not _positive(freq)):
    raise bad("freq", freq, f"{' | '.join(FREQS)} | a deadline in s > 0")


def sampling_cycles(
  devices: Devices, flops_per_step: float, steps: int, num_images: int
) -> Array:
  """[N] CPU cycles for `num_images` images of `steps` steps each."""
  per_image = cycles_per_sample(flops_per_step * steps, devices.flops_per_cycle)
  return per_image * num_images


def sampling_energy(
  devices: Devices,
  flops_per_step: float,
  steps: int,
  num_images: int,
  *,
  freq: Freq = "f_max",
) -> SamplingCost:
  """Energy and time for each device to generate `num_images` images.

  Args:
    devices: the population ([N] fields; uses tau, flops_per_cycle,
      f_min_hz, f_max_hz).
    flops_per_step: FLOPs of one sampling step for one image
      (`sampling_step_flops`).
    steps: the sampler's steps (T for DDPM, num_steps for DDIM).
    num_images: images each device generates.
    freq: "f_max" (fastest, the default), a latency budget T_s in seconds
      (the energy-minimal frequency meeting it: clip(cycles / T_s, f_min,
      f_max)) or "f_min" (the model's lower bound).

  Returns:
    SamplingCost(energy_j, time_s, freq_hz, feasible), each [N]; with a
    budget a device that cannot meet it even at f_max is priced at f_max and
    marked infeasible.

  Raises:
    InvalidSetting: an argument out of range (named, with its range).
  """
  _check(flops_per_step, steps, num_images, freq)
  per_image = cycles_per_sample(flops_per_step * steps, devices.flops_per_cycle)
  cycles = per_image * num_images  # = sampling_cycles(...)
  if freq == "f_min":
    f = devices.f_min_hz
  elif freq == "f_max":
    f = devices.f_max_hz
  else:
    f = jnp.clip(cycles / freq, devices.f_min_hz, devices.f_max_hz)
  f = jnp.broadcast_to(jnp.asarray(f, cycles.dtype), cycles.shape)
  time_s = cycles / f
  if isinstance(freq, str):
    feasible = jnp.ones(cycles.shape, bool)
  else:  # a tiny relative slack: f = cycles / T_s rounds
    feasible = cycles / devices.f_max_hz <= freq * (1 + 1e-6)
  energy = comp_energy(devices.tau, per_image, num_images, f)
  return SamplingCost(energy, time_s, f, feasible)


def freq_tag(freq: Freq) -> str:
  """The frequency's name in report keys: "fmax", "fmin", or "t<T_s>s"
  (e.g. "t0.5s") for a latency budget."""
  return freq.replace("_", "") if isinstance(freq, str) else f"t{freq:g}s"


def cost_stats(
  devices: Devices,
  flops_per_step: float,
  steps: int,
  num_images: int,
  freqs=("f_max",),
) -> Dict[str, float]:
  """The population's sampling cost at each of `freqs` (default f_max),
  host floats keyed by the frequency's `freq_tag`: energy_<tag>_j_{mean,
  min,max}, time_<tag>_s_{mean,max} and freq_<tag>_hz_mean (the frequency
  the devices ran at, their mean): what both programs' sampling tables
  report."""
  out: Dict[str, float] = {}
  for freq in freqs:
    tag = freq_tag(freq)
    cost = sampling_energy(
      devices, flops_per_step, steps, num_images, freq=freq
    )
    e = np.asarray(cost.energy_j, np.float64)
    t = np.asarray(cost.time_s, np.float64)
    for s in ("mean", "min", "max"):
      out[f"energy_{tag}_j_{s}"] = float(getattr(np, s)(e))
    out[f"time_{tag}_s_mean"] = float(t.mean())
    out[f"time_{tag}_s_max"] = float(t.max())
    out[f"freq_{tag}_hz_mean"] = float(np.mean(np.asarray(cost.freq_hz)))
  return out
