"""Every key of the training sweep: its type, default and range, ONCE.

The field names are the config keys (`config.fed.local_steps` is
`Settings.fed.local_steps`). The defaults are the `cpu` preset; the config
file (experiments/configs/cifar_sweep.py) starts from `to_config_dict(
Settings())` and overrides what a preset changes. `parse(config)` turns a
ConfigDict into this tree, validated before anything compiles (unknown and
removed keys, types, ranges, cross-field checks; every message names the
key path). Where a section's keys are the fields of a library settings class
(`model` -> `UNetConfig`, `energy` -> `EnergyConfig`), that class checks
them: their ranges live in the library, in its own field names.
"""

from __future__ import annotations

import dataclasses
from typing import Tuple

from experiments.common import settings as settings_lib
from experiments.common.settings import (
  Invalid,
  between,
  each,
  key,
  one_of,
  section,
)
from experiments.fl_sweep.data_settings import Data, Diffusion, Model
from experiments.fl_sweep.energy_settings import Channel, Energy
from fedqjax import energy
from fedqjax.energy.channel import MAX_CLARKE_ROUNDS
from fedqjax.federated import execution, spec
from fedqjax.quantization import METHODS

PRESETS = ("cpu", "quality", "paper", "test")
SCHEME_NAMES = spec.BITS_SCHEMES + ("naive",)  # naive: ondemand priced "max"
_POS_INT = between(1)
_LOOP = (
  "replaced by fed.client_loop (one of "
  f"{execution.CLIENT_LOOPS}), which also sets the local-step unroll "
  "and the convolution form (fedqjax/federated/execution.py)"
)
REMOVED = {
  "fed.parallelism": _LOOP,
  "fed.chunk_size": _LOOP,
  "fed.unroll": _LOOP,
  "model.conv_impl": _LOOP,
}


@dataclasses.dataclass(frozen=True)
class Fed:
  num_clients: int = key(10, _POS_INT, "N, clients holding data")
  clients_per_round: int = key(10, _POS_INT, "K participants per round")
  local_steps: int = key(2, _POS_INT, "I local optimizer steps per round")
  batch_size: int = key(8, _POS_INT, "B, images per local step")
  rounds: int = key(
    30, between(1, 10_000_000), "R, federated rounds of every run"
  )
  server_lr: float = key(
    1.0,
    between(0, 10, lo_open=True),
    "server learning rate on the averaged upload; 1 = FedAvg (docs/model.md "
    "sec. 7)",
  )
  ema_decay: float = key(
    0.9,
    between(0, 1, hi_open=True),
    "per-round cap; warms up as (1 + r) / (w + r)",
  )
  ema_warmup: float = key(
    10.0,
    between(1, 1e9, hi_open=True),
    "w of the EMA's warm-up (1 + r) / (w + r)",
  )
  client_loop: str = key(
    "auto",
    one_of(*execution.CLIENT_LOOPS),
    "client layout (fedqjax/federated/execution.py)",
  )
  mesh: str = key(
    "auto",
    one_of("auto", "none"),
    "auto: shard the client axis over every device",
  )

  def validate(self) -> None:
    if self.clients_per_round > self.num_clients:
      raise Invalid(
        "clients_per_round",
        self.clients_per_round,
        f"1..num_clients={self.num_clients}",
      )


@dataclasses.dataclass(frozen=True)
class Optim:
  optimizer: str = key(
    "adam",
    one_of(*spec.OPTIMIZERS),
    "client optimizer, a fresh state every round (stateless clients, as in "
    "FedAvg)",
  )
  lr: float = key(
    1e-3,
    between(0, 10, lo_open=True, hi_open=True),
    "client learning rate (ours; Ho et al. 2020: 2e-4, preset paper)",
  )
  grad_clip: float = key(1.0, between(0), "global-norm clip (0 disables)")


@dataclasses.dataclass(frozen=True)
class Quant:
  method: str = key(
    "minmax",
    one_of(*METHODS),
    "stochastic quantizer: minmax (per-bucket min-max levels) | qsgd "
    "(Alistarh et al. 2017); docs/model.md sec. 2",
  )
  bucket_size: int = key(
    0,
    between(0),
    "entries per quantization bucket, each with its own range; 0 = one "
    "bucket per tensor",
  )
  b_min: int = key(
    1,
    between(1, 32),
    "smallest bit-width on demand (and under energy.infeasible_policy degrade)",
  )
  fixed_bits: int = key(8, between(1, 32), "the fixed scheme's bit-width")
  target: str = key(
    "update",
    one_of(*spec.TARGETS),
    "update: upload w_k - w | weights: upload w_k (the literal reading); "
    "docs/model.md sec. 1",
  )


@dataclasses.dataclass(frozen=True)
class Eval:
  every: int = key(5, between(0), "held-out loss every n rounds (0: end)")
  heldout_size: int = key(
    256,
    between(0, 100_000),
    "test images of the held-out denoising loss (fixed noise and t, the same"
    " for every run; 0: off)",
  )
  num_samples: int = key(
    64,
    between(2, 1_000_000),
    "samples at the end (FID/KID and the grid)",
  )
  batch_size: int = key(
    128,
    between(1, 100_000),
    "images per batch of the sampler and of the bits/dim bound",
  )
  sampler: str = key(
    "ddim",
    one_of("ddim", "ddpm"),
    "sampler of the end samples: ddim (ddim_steps steps) | ddpm (all T "
    "ancestral steps)",
  )
  ddim_steps: int = key(
    20, between(1, 100_000), "steps of sampler ddim (<= diffusion.T)"
  )
  eta: float = key(
    0.0,
    between(0, 1),
    "DDIM stochasticity (Song et al. 2021): 0 deterministic given x_T; 1 with"
    " T steps: DDPM with the posterior variance",
  )
  fid: bool = key(False, doc="FID/KID of the samples vs the test split")
  kid_subset_size: int = key(
    200,
    between(2, 1_000_000),
    "images per KID subset (100 subsets; capped at the sample and reference"
    " counts)",
  )
  grid: int = key(64, between(1, 1024), "samples in the logged grid")
  vlb_size: int = key(
    0, between(0, 100_000), "bits/dim bound on this many test images (0: off)"
  )
  vlb_t_stride: int = key(
    32,
    between(1, 999),
    "s of the bits/dim bound: every t < s exactly, one t per block of s "
    "above (1: the full bound, T passes per image)",
  )
  energy_images: int = key(
    100,
    between(0, 10**9),
    "images a device generates, priced per sampler (0: off)",
  )
  energy_ddim_steps: Tuple[int, ...] = key(
    (10, 20, 50, 100, 200),
    each(between(1, 100_000), distinct=True),
    "DDIM step counts priced (DDPM-T always; those > T left out)",
  )
  sampler_curve: bool = key(
    False, doc="also sample + FID/KID with each priced sampler (slow)"
  )


@dataclasses.dataclass(frozen=True)
class Sweep:
  schemes: Tuple[str, ...] = key(
    ("fp32", "fixed", "ondemand"),
    each(one_of(*SCHEME_NAMES)),
    "bits schemes: ondemand trained once per (seed, eps scale), fp32 and fixed"
    " once per seed",
  )
  allocations: Tuple[str, ...] = key(
    ("kkt", "deadline", "split", "max"),
    each(one_of(*energy.ALLOCATIONS), distinct=True),
    "allocation policies priced inside the round on the same uploads",
  )
  seeds: Tuple[int, ...] = key(
    (0, 1, 2),
    each(between(0, 2**31 - 1)),
    "one run per seed and bits scheme; a seed draws the devices, the U-Net's"
    " initialization and the data split (paired across schemes)",
  )
  eps_scales: Tuple[float, ...] = key(
    (1.0,),
    each(between(0, lo_open=True)),
    "multiplies every device's error budget eps_k; ondemand trains once per"
    " scale",
  )
  target_margin: float = key(
    0.02, between(0, 10), "energy to fp32's final held-out loss x (1+m)"
  )

  def plan(self) -> Tuple[Tuple[str, ...], Tuple[str, ...]]:
    """(bits schemes to train, policies to price), `naive` resolved."""
    bits, allocs = [], list(self.allocations)
    for name in self.schemes:
      b = "ondemand" if name == "naive" else name
      if b not in bits:
        bits.append(b)
      if name == "naive" and "max" not in allocs:
        allocs.append("max")
    return tuple(bits), tuple(allocs)


@dataclasses.dataclass(frozen=True)
class Settings:
  """The training sweep's settings tree (defaults: the `cpu` preset)."""

  preset: str = key(
    "cpu",
    one_of(*PRESETS),
    "the preset's name, recorded in results.json and the figures (a "
    "preset's values are set by --config=NAME)",
  )
  seed: int = key(
    0,
    between(0, 2**31 - 1),
    "seed of the synthetic data and of the evaluation's noise (samples, "
    "bits/dim); the runs' seeds are sweep.seeds",
  )
  data: Data = section(Data)
  model: Model = section(Model)
  diffusion: Diffusion = section(Diffusion)
  fed: Fed = section(Fed)
  optim: Optim = section(Optim)
  quant: Quant = section(Quant)
  energy: Energy = section(Energy)
  channel: Channel = section(Channel)
  eval: Eval = section(Eval)
  sweep: Sweep = section(Sweep)
  log_every: int = key(
    1,
    _POS_INT,
    "rounds between history / TensorBoard / console records (and the last);"
    " the held-out loss runs on recorded rounds only",
  )
  ckpt_every: int = key(
    10, _POS_INT, "rounds between checkpoints (and the last round)"
  )
  max_rounds_this_run: int = key(
    0,
    between(0),
    "> 0: this invocation stops after n more rounds (a rerun resumes from "
    "the checkpoint)",
  )
  compilation_cache: bool = key(
    True, doc="JAX's persistent compilation cache (a rerun compiles in seconds)"
  )
  figures: bool = key(
    True, doc="write figures/ (PNG and PDF) after the results"
  )

  def validate(self) -> None:
    """Checks across sections (keys named with their section)."""
    if self.data.resolution:
      try:
        self.model.unet(self.data.resolution)
      except ValueError as e:
        raise Invalid(
          "data.resolution", self.data.resolution, getattr(e, "valid", str(e))
        ) from None
    t = self.diffusion.T
    if self.eval.ddim_steps > t:
      raise Invalid(
        "eval.ddim_steps", self.eval.ddim_steps, f"1..diffusion.T={t}"
      )
    if self.eval.vlb_t_stride > t - 1:
      raise Invalid(
        "eval.vlb_t_stride", self.eval.vlb_t_stride, f"1..diffusion.T-1={t - 1}"
      )
    c = self.channel
    span = self.fed.rounds + c.estimate_delay
    if c.model == "gauss_markov" and c.doppler_hz and span > MAX_CLARKE_ROUNDS:
      raise Invalid(
        "fed.rounds",
        self.fed.rounds,
        f"rounds + channel.estimate_delay <= {MAX_CLARKE_ROUNDS} with"
        " channel.doppler_hz > 0 (Clarke's process), or give channel.rho",
      )
    if self.eval.vlb_size > self.data.num_test:
      raise Invalid(
        "eval.vlb_size",
        self.eval.vlb_size,
        f"0..data.num_test={self.data.num_test}",
      )


def parse(config) -> Settings:
  """A ConfigDict (or nested mapping) -> the validated `Settings`."""
  if isinstance(config, Settings):
    return config
  return settings_lib.parse(Settings, config, removed=REMOVED)


def default_config():
  """The `cpu` preset as a ConfigDict (the config file starts here)."""
  return settings_lib.to_config_dict(Settings())
