"""The energy of sampling on the sweep's devices, without training.

For every model of the sweep and every sampler (DDPM over all T steps; DDIM
with each of `ddim_steps`), each device of the base scenario's draws
(`evaluate.population`: draws r < num_seeds, devices j < base.num_devices,
with the base's f_max and, in a cycles regime, its c_k) generates `num_images` images: steps x the FLOPs of
one step of the sampler's loop body (`fedqjax.diffusion.flops.
sampling_step_flops`, lowered HLO, as the sweep's training FLOPs) on the
device model (`fedqjax.energy.sampling_energy`) at f_max, each device
sampling at full speed (the columns name the frequency: energy_fmax_j_*,
and freq_fmax_hz_mean its value; f_min, the device model's lower bound, is
not a frequency anyone samples at and is not reported). A synthetic model (a parameter count) has no U-Net: its step is
d x the paper U-Net's step FLOPs per parameter (as `models.py` scales the
training FLOPs). `vs_train_round` is the sampling's computation energy over
one training round's (samples_per_round x the training FLOPs per sample) on
the same device at the same frequency: tau, FLOPs per cycle and f cancel,
so it is one number per row.

  rows = sampling_rows(settings, prepared)   # prepared = sweep.prepare(...)
  write(rows, workdir)                       # <workdir>/sampling.csv
"""

from __future__ import annotations

import csv
import functools
import os
from typing import Any, Dict, List, Sequence

import jax.numpy as jnp
import numpy as np

from experiments.energy_sweep import evaluate, models
from fedqjax.energy.sampling_energy import cost_stats

FILE = "sampling.csv"
T = 1000  # DDPM's steps (Ho et al.)
DDIM_STEPS = (10, 20, 50, 100, 200)
NUM_IMAGES = 100
# The paper U-Net's step, lowered HLO (the ddim and ddpm bodies agree to
# ~10 FLOPs): 11.66111e9 at 32x32x3; tests check it against the count.
PAPER_STEP_FLOPS = 1.166111e10
_STATS = ("mean", "min", "max")
COLUMNS = (
  ("model", "num_params", "sampler", "steps", "label", "images")
  + ("gflops_per_step", "train_gflops_per_sample")
  + tuple(f"energy_fmax_j_{s}" for s in _STATS)
  + ("energy_per_image_fmax_j_mean",)
  + ("time_fmax_s_mean", "time_fmax_s_max", "freq_fmax_hz_mean")
  + ("vs_train_round", "devices")
)


@functools.lru_cache(maxsize=16)
def step_flops(model: str, sampler: str) -> float:
  """FLOPs of one sampling step of a (normalized) model for one image."""
  if model not in models.MODEL_PRESETS:
    return int(model) * PAPER_STEP_FLOPS / models.PAPER_PARAMS
  from fedqjax.diffusion.flops import sampling_step_flops  # pylint: disable=g-import-not-at-top

  shape = models.MODEL_PRESETS[model][1]
  return sampling_step_flops(
    models.unet_config(model), shape, sampler, num_timesteps=T, compiled=False
  )


def base_devices(settings, flops_per_sample: float):
  """The base scenario's devices over every draw, one flat [R x N] axis:
  its f_max and, in a cycles regime (`sweep.cycles_of` > 0), its c_k
  (flops_per_cycle = the model's training FLOPs per sample / c_k, so that
  sampling costs c_k x its FLOPs over the training FLOPs)."""
  from experiments.energy_sweep import sweep  # pylint: disable=g-import-not-at-top

  r, n = settings.num_seeds, settings.base.num_devices
  draw = np.repeat(np.arange(r), n).astype(np.int32)
  index = np.tile(np.arange(n), r).astype(np.int32)
  d, keys = evaluate.population(
    settings.devices.energy_config(), settings.seed, draw, index
  )
  d = evaluate.with_cycles(
    d,
    keys,
    sweep.cycles_of(settings, settings.base),
    flops_per_sample,
    settings.devices.cycles_spread,
  )
  f_max = jnp.full_like(d.f_max_hz, settings.base.f_max_hz)
  return d.replace(f_max_hz=f_max)


def _row(spec, sampler, steps, flops, devices, settings, n) -> Dict[str, Any]:
  """One (model, sampler) row over the devices."""
  row = dict(
    model=spec.name,
    num_params=spec.num_params,
    sampler=sampler,
    steps=steps,
    label=f"{sampler}{steps}",
    images=n,
    gflops_per_step=flops / 1e9,
    train_gflops_per_sample=spec.flops_per_sample / 1e9,
    vs_train_round=n
    * steps
    * flops
    / (settings.samples_per_round * spec.flops_per_sample),
    devices=int(devices.f_min_hz.shape[0]),
  )
  row.update(cost_stats(devices, flops, steps, n))
  row["energy_per_image_fmax_j_mean"] = row["energy_fmax_j_mean"] / n
  return row


def sampling_rows(
  settings,
  prepared,
  *,
  ddim_steps: Sequence[int] = DDIM_STEPS,
  num_images: int = NUM_IMAGES,
) -> List[Dict[str, Any]]:
  """Per model of the sweep (`prepared.models`), DDPM-T then DDIM by steps:
  step FLOPs, energy of `num_images` images per device (mean / min / max
  over the base scenario's draws) at f_max, and time.

  Raises:
    ValueError: a DDIM step count outside [1, T] (named, with the range).
  """
  bad = [k for k in ddim_steps if not 1 <= k <= T]
  if bad:
    raise ValueError(f"sampling ddim_steps={bad} is invalid; valid: 1..{T}")
  samplers = [("ddpm", T)] + [("ddim", int(k)) for k in sorted(ddim_steps)]
  rows = []
  for name, spec in prepared.models.items():
    devices = base_devices(settings, spec.flops_per_sample)
    for sampler, steps in samplers:
      flops = step_flops(name, sampler)
      rows.append(
        _row(spec, sampler, steps, flops, devices, settings, num_images)
      )
  return rows


def write(rows: List[Dict[str, Any]], workdir: str) -> str:
  """<workdir>/sampling.csv (atomic); returns its path."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, FILE)
  with open(path + ".tmp", "w", newline="") as f:
    w = csv.DictWriter(f, COLUMNS, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
  os.replace(path + ".tmp", path)
  return path
