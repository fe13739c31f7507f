"""Energy and time of generating images on a device (MODEL.md 6, question 1).

A sampler of S steps generating n images runs n x S steps of
F = `fedqjax.diffusion.flops.sampling_step_flops` FLOPs each, so device k
spends c_k = n S F / (FLOPs per cycle)_k cycles: at CPU frequency f it takes
t = c_k / f and E = tau_k c_k f^2 (`fedqjax.energy.model.comp_energy`, the
training round's formula). Energy grows as f^2 while time falls as 1 / f:

  "f_min"  the energy-minimal choice when nothing bounds the latency (the
           default of `sampling_energy`: energy is the quantity asked for).
  "f_max"  the fastest (the most energy); reports give both.
  T_s > 0  a latency budget in seconds: f = clip(c_k / T_s, f_min, f_max),
           the lowest (so energy-minimal) frequency that meets it;
           infeasible (`feasible` False, priced at f_max) when
           c_k / f_max > T_s.

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
  freq: Freq = "f_min",
) -> SamplingCost:
  """Energy and time for each device to generate `num_images` images.

  Args:
    devices: the population ([N] fields; uses tau, flops_per_cycle,
      f_min_hz, f_max_hz).
    flops_per_step: FLOPs of one sampling step for one image
      (`sampling_step_flops`).
    steps: the sampler's steps (T for DDPM, num_steps for DDIM).
    num_images: images each device generates.
    freq: "f_min" (energy-minimal, the default), "f_max" (fastest) or a
      latency budget T_s in seconds (the energy-minimal frequency meeting
      it: clip(cycles / T_s, f_min, f_max)).

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


def cost_stats(
  devices: Devices, flops_per_step: float, steps: int, num_images: int
) -> Dict[str, float]:
  """The population's sampling cost at f_min and f_max, host floats:
  energy_{fmin,fmax}_j_{mean,min,max}, time_{fmin,fmax}_s_{mean,max} (what
  both programs' sampling tables report)."""
  out: Dict[str, float] = {}
  for tag in ("fmin", "fmax"):
    cost = sampling_energy(
      devices, flops_per_step, steps, num_images, freq=f"f_{tag[1:]}"
    )
    e = np.asarray(cost.energy_j, np.float64)
    t = np.asarray(cost.time_s, np.float64)
    for s in ("mean", "min", "max"):
      out[f"energy_{tag}_j_{s}"] = float(getattr(np, s)(e))
    out[f"time_{tag}_s_mean"] = float(t.mean())
    out[f"time_{tag}_s_max"] = float(t.max())
  return out
