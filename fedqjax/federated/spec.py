"""Static round settings (RoundSpec) and traced scheme switches (Scheme).

RoundSpec is hashable and static under jit: everything that changes the
program (model, quantizer layout, shapes, loop lengths, client layout,
allocation policies). Scheme is a pytree of traced scalars: everything a sweep
varies per run (fp32 / fixed / on-demand bits, the deadline, the error-demand
scale), so one compiled round serves the whole sweep (docs/model.md sec. 1,
"schemes every sweep compares").

Schemes have two axes. Bits (`BITS_SCHEMES`) decide what a client uploads and
so the training trajectory: each trains once. Allocation policies
(`fedqjax.energy.ALLOCATIONS`) only price the same uploads: every policy in
`RoundSpec.allocations` is evaluated inside the same round, [P, K].

Settings validate themselves in their own field names ("RoundSpec.local_steps
=0 is invalid; valid: >= 1"); the config layer maps its keys onto these fields
and adds the key path to the message.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional, Tuple

import jax.numpy as jnp
from flax import struct

from fedqjax import energy
from fedqjax.diffusion import UNetConfig
from fedqjax.errors import InvalidSetting
from fedqjax.federated import sharding
from fedqjax.federated.execution import LAYOUTS, Execution

BITS_FP32, BITS_FIXED, BITS_ONDEMAND = 0, 1, 2
BITS_SCHEMES = ("fp32", "fixed", "ondemand")
TARGETS = ("update", "weights")
INFEASIBLE_POLICIES = ("drop", "degrade")
OPTIMIZERS = ("adam", "sgd")


@struct.dataclass
class Scheme:
  """Traced per-run switches (scalars). Build with `make_scheme`."""

  bits_mode: jnp.ndarray  # int32: BITS_FP32 | BITS_FIXED | BITS_ONDEMAND
  fixed_bits: jnp.ndarray  # int32, used when bits_mode == BITS_FIXED
  deadline_s: jnp.ndarray  # float32 round deadline T
  eps_scale: jnp.ndarray  # float32, multiplies every device's error budget


def _bad(owner: str, name: str, value: Any, valid: Any):
  raise InvalidSetting(owner, name, value, valid)


def make_scheme(
  bits: str, *, deadline_s: float, fixed_bits: int = 8, eps_scale: float = 1.0
) -> Scheme:
  """A bits scheme by name (docs/model.md sec. 1) as traced data.

  Raises:
    ValueError: unknown name, fixed_bits outside 1..32, deadline or eps_scale
      not a finite value > 0.
  """
  if bits not in BITS_SCHEMES:
    _bad("Scheme", "bits", bits, BITS_SCHEMES)
  if not 1 <= int(fixed_bits) <= 32:
    _bad("Scheme", "fixed_bits", fixed_bits, "1..32")
  for name, v in (("deadline_s", deadline_s), ("eps_scale", eps_scale)):
    if not (math.isfinite(float(v)) and float(v) > 0):
      _bad("Scheme", name, v, "a finite value > 0")
  mode = {"fp32": BITS_FP32, "fixed": BITS_FIXED, "ondemand": BITS_ONDEMAND}
  return Scheme(
    bits_mode=jnp.int32(mode[bits]),
    fixed_bits=jnp.int32(fixed_bits),
    deadline_s=jnp.float32(deadline_s),
    eps_scale=jnp.float32(eps_scale),
  )


@dataclasses.dataclass(frozen=True)
class RoundSpec:
  """Static settings of a federated round (hashable; a jit static argument).

  Attributes:
    unet: the U-Net (its convolution form is set by `execution`).
    quantizer: `fedqjax.quantization.Quantizer` built once from the
      parameter template (method, buckets and flat layout).
    num_clients: N, clients that hold data (the leading axis of the data).
    clients_per_round: K participants per round (K == N: everyone).
    local_steps: I optimizer steps per client per round.
    batch_size: B, minibatch per local step.
    samples_per_step: samples a device's energy is priced for per local
      step; None: the batch B (the literature's regimes price one local
      iteration as a pass over D_k samples, `fedqjax.energy.regimes`).
    lr: client learning rate; optimizer: "adam" | "sgd" (fresh client
      optimizer state each round: clients are stateless, as in FedAvg).
    grad_clip: global-norm clip of client gradients (0 disables).
    server_lr: 1.0 is plain FedAvg.
    ema_decay: the EMA's per-round decay cap; the decay warms up as
      min(ema_decay, (1 + r) / (ema_warmup + r)) so the initial weights hold
      < 1% of the EMA after 10 rounds (docs/model.md sec. 1).
    T, beta_start, beta_end: the linear DDPM schedule.
    b_min: smallest bit-width on demand (and under "degrade").
    target: "update" uploads w_k - w, "weights" uploads w_k (paper-literal).
    infeasible_policy: a device that cannot deliver by the deadline is
      "drop"ped or "degrade"d to fewer bits (docs/model.md sec. 4).
    flops_per_sample: training FLOPs per image (forward + backward), XLA CPU
      cost analysis (docs/model.md sec. 3).
    allocations: allocation policies priced every round (energy.ALLOCATIONS).
    execution: how the client axis is laid out (`resolve_execution`).
    rayleigh_fading: redraw Rayleigh fading each round (as EnergyConfig).
    mesh: optional jax.sharding.Mesh with a "clients" axis.
  """

  unet: UNetConfig
  quantizer: Any
  num_clients: int
  clients_per_round: int
  local_steps: int = 2
  batch_size: int = 8
  samples_per_step: Optional[int] = None
  lr: float = 2e-4
  optimizer: str = "adam"
  grad_clip: float = 1.0
  server_lr: float = 1.0
  ema_decay: float = 0.999
  ema_warmup: float = 10.0
  T: int = 1000
  beta_start: float = 1e-4
  beta_end: float = 0.02
  b_min: int = 1
  target: str = "update"
  infeasible_policy: str = "drop"
  flops_per_sample: float = 1e9
  allocations: Tuple[str, ...] = ("kkt",)
  execution: Execution = Execution()
  rayleigh_fading: bool = False
  mesh: Optional[Any] = None

  def __post_init__(self):
    object.__setattr__(self, "allocations", tuple(self.allocations))
    for check in (
      self._check_clients,
      self._check_training,
      self._check_upload,
    ):
      check()

  def _check_clients(self):
    bad = lambda n, v: _bad("RoundSpec", n, getattr(self, n), v)
    if not _is_int(self.num_clients) or self.num_clients < 1:
      bad("num_clients", ">= 1")
    if not _is_int(self.clients_per_round) or not (
      1 <= self.clients_per_round <= self.num_clients
    ):
      bad("clients_per_round", f"1..num_clients={self.num_clients}")
    if not isinstance(self.execution, Execution) or (
      self.execution.layout not in LAYOUTS
    ):
      bad("execution", "an Execution from resolve_execution(...)")

  def _check_training(self):
    bad = lambda n, v: _bad("RoundSpec", n, getattr(self, n), v)
    if not _is_int(self.local_steps) or self.local_steps < 1:
      bad("local_steps", ">= 1")
    if not _is_int(self.batch_size) or self.batch_size < 1:
      bad("batch_size", ">= 1")
    if self.samples_per_step is not None and (
      not _is_int(self.samples_per_step) or self.samples_per_step < 1
    ):
      bad("samples_per_step", "None or an integer >= 1")
    if not 0 < self.lr < 10:
      bad("lr", "(0, 10)")
    if self.optimizer not in OPTIMIZERS:
      bad("optimizer", OPTIMIZERS)
    if not self.grad_clip >= 0:
      bad("grad_clip", ">= 0 (0 disables)")
    if not 0 < self.server_lr <= 10:
      bad("server_lr", "(0, 10]")
    if not 0 <= self.ema_decay < 1:
      bad("ema_decay", "[0, 1)")
    if not 1 <= self.ema_warmup < 1e9:
      bad("ema_warmup", "[1, 1e9)")
    if not _is_int(self.T) or self.T < 2:
      bad("T", ">= 2")
    if not 0 < self.beta_end < 1:
      bad("beta_end", "(0, 1)")
    if not 0 < self.beta_start < self.beta_end:
      bad("beta_start", f"(0, beta_end={self.beta_end})")

  def _check_upload(self):
    bad = lambda n, v: _bad("RoundSpec", n, getattr(self, n), v)
    if not _is_int(self.b_min) or not 1 <= self.b_min <= 32:
      bad("b_min", "1..32")
    if self.target not in TARGETS:
      bad("target", TARGETS)
    if self.infeasible_policy not in INFEASIBLE_POLICIES:
      bad("infeasible_policy", INFEASIBLE_POLICIES)
    if not (math.isfinite(self.flops_per_sample) and self.flops_per_sample > 0):
      bad("flops_per_sample", "a finite value > 0")
    if (
      not self.allocations
      or any(a not in energy.ALLOCATIONS for a in self.allocations)
      or len(set(self.allocations)) != len(self.allocations)
    ):
      bad("allocations", f"distinct names from {energy.ALLOCATIONS}")

  @property
  def model(self):
    """The flax U-Net with the convolution form the execution implies."""
    return dataclasses.replace(
      self.unet, conv_impl=self.execution.conv_impl
    ).make()

  @property
  def num_shards(self) -> int:
    return sharding.num_shards(self.mesh)

  @property
  def padded_clients(self) -> int:
    """K rounded up to a multiple of the mesh's client axis (masked slots)."""
    return sharding.padded_clients(self.clients_per_round, self.mesh)

  @property
  def samples_per_round(self) -> int:
    """Samples a participant's energy is priced for per round, I * B
    (docs/model.md sec. 3), or I * samples_per_step when that is set."""
    per_step = self.samples_per_step or self.batch_size
    return self.local_steps * per_step


def _is_int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)
