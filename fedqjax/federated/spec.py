"""Static round settings (RoundSpec) and traced scheme switches (Scheme).

RoundSpec is hashable and static under jit: everything that changes the
program (model, shapes, loop lengths, parallelism). Scheme is a pytree of
traced scalars: everything a sweep varies (fp32 / fixed / on-demand bits,
optimized / naive allocation, the deadline), so one compiled round serves the
whole sweep (MODEL.md section 1, "schemes every sweep compares").
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional, Tuple

import jax.numpy as jnp
from flax import struct

BITS_FP32, BITS_FIXED, BITS_ONDEMAND = 0, 1, 2
SCHEMES = ("fp32", "fixed", "ondemand", "naive")
PARALLELISM = ("vmap", "chunked", "map", "unrolled")
# "auto" (configs only) resolves per backend; measured in benchmarks/RESULTS.md.
AUTO_PARALLELISM = {"cpu": "unrolled"}  # every other backend: "vmap"
# Unrolling compiles one copy of the client program per client (about 45 s
# each for the tiny U-Net on 2 cores): beyond this many clients per shard,
# "auto" on CPU falls back to "map" (compile time independent of K).
AUTO_MAX_UNROLLED = 16
TARGETS = ("update", "weights")
POLICIES = ("drop", "degrade")
OPTIMIZERS = ("adam", "sgd")


@struct.dataclass
class Scheme:
  """Traced per-run switches (scalars). Build with `make_scheme`."""
  bits_mode: jnp.ndarray  # int32: BITS_FP32 | BITS_FIXED | BITS_ONDEMAND
  fixed_bits: jnp.ndarray  # int32, used when bits_mode == BITS_FIXED
  optimize: jnp.ndarray  # bool: KKT allocation (True) or f_max/p_max (False)
  deadline_s: jnp.ndarray  # float32 round deadline T


def make_scheme(name: str, *, deadline_s: float, fixed_bits: int = 8
                ) -> Scheme:
  """The paper's schemes by name (see MODEL.md section 1).

  Raises:
    ValueError: unknown name, fixed_bits outside 1..32, deadline not > 0.
  """
  if name not in SCHEMES:
    raise ValueError(f"scheme {name!r} is unknown; valid: {SCHEMES}")
  if not 1 <= int(fixed_bits) <= 32:
    raise ValueError(f"quant.fixed_bits={fixed_bits} is invalid; valid: 1..32")
  if not (deadline_s > 0 and jnp.isfinite(deadline_s)):
    raise ValueError(f"energy deadline={deadline_s} is invalid; valid: a "
                     "finite value > 0 seconds")
  mode = {"fp32": BITS_FP32, "fixed": BITS_FIXED, "ondemand": BITS_ONDEMAND,
          "naive": BITS_ONDEMAND}[name]
  return Scheme(bits_mode=jnp.int32(mode), fixed_bits=jnp.int32(fixed_bits),
                optimize=jnp.bool_(name != "naive"),
                deadline_s=jnp.float32(deadline_s))


def resolve_parallelism(name: str, backend: str,
                        clients_per_shard: int = 1) -> str:
  """`name`, or for "auto" the measured default of `backend` ("cpu", "gpu"...).

  XLA:CPU runs per-client (vmapped, grouped) convolutions and convolution
  gradients in rolled loops several times slower than plain ones, so CPU
  unrolls the clients (up to AUTO_MAX_UNROLLED per shard, then "map");
  accelerators vmap them.
  """
  if name != "auto":
    return name
  mode = AUTO_PARALLELISM.get(backend, "vmap")
  if mode == "unrolled" and clients_per_shard > AUTO_MAX_UNROLLED:
    return "map"
  return mode


@dataclasses.dataclass(frozen=True)
class RoundSpec:
  """Static settings of a federated round (hashable; a jit static argument).

  Attributes:
    model: the flax UNet module (apply_fn = model.apply).
    num_clients: N, clients that hold data (the leading axis of the data).
    clients_per_round: K participants per round (K == N: everyone).
    local_steps: I optimizer steps per client per round.
    batch_size: B, minibatch per local step.
    lr: client learning rate; optimizer: "adam" | "sgd" (fresh client
      optimizer state each round: clients are stateless, as in FedAvg).
    server_lr: 1.0 is plain FedAvg.
    ema_decay: EMA of the global parameters per round (for sampling).
    T, beta_start, beta_end: the linear DDPM schedule.
    quantizer: "minmax" | "qsgd"; bucket_size None = one bucket per tensor.
    b_min: smallest bit-width on demand.
    target: "update" uploads w_k - w, "weights" uploads w_k (paper-literal).
    policy: infeasible devices are "drop"ped or "degrade"d (fewer bits).
    flops_per_sample: training FLOPs per image (forward + backward), XLA CPU
      cost analysis (MODEL.md section 3).
    parallelism: "vmap" (all K at once) | "chunked" (lax.map over vmapped
      chunks of chunk_size) | "map" (lax.map, one client at a time) |
      "unrolled" (lax.scan over clients, fully unrolled: plain per-client
      convolutions, no rolled loop; compile time grows with K per shard).
    chunk_size: clients per vmapped chunk for "chunked".
    unroll: unroll factor of the local-step scan (True = fully unrolled).
    fading: redraw Rayleigh fading each round.
    mesh: optional jax.sharding.Mesh with a "clients" axis.
  """
  model: Any
  num_clients: int
  clients_per_round: int
  local_steps: int = 2
  batch_size: int = 8
  lr: float = 2e-4
  optimizer: str = "adam"
  grad_clip: float = 1.0
  server_lr: float = 1.0
  ema_decay: float = 0.999
  T: int = 1000
  beta_start: float = 1e-4
  beta_end: float = 0.02
  quantizer: str = "minmax"
  bucket_size: Optional[int] = None
  b_min: int = 1
  target: str = "update"
  policy: str = "drop"
  flops_per_sample: float = 1e9
  parallelism: str = "vmap"
  chunk_size: int = 1
  unroll: Any = True
  fading: bool = False
  mesh: Any = None

  def __post_init__(self):
    def bad(name, value, valid):
      raise ValueError(f"{name}={value!r} is invalid; valid: {valid}")
    if self.num_clients < 1:
      bad("fed.num_clients", self.num_clients, ">= 1")
    if not 1 <= self.clients_per_round <= self.num_clients:
      bad("fed.clients_per_round", self.clients_per_round,
          f"1..num_clients={self.num_clients}")
    if self.local_steps < 1:
      bad("fed.local_steps", self.local_steps, ">= 1")
    if self.batch_size < 1:
      bad("fed.batch_size", self.batch_size, ">= 1")
    if not (self.lr > 0 and self.lr < 10):
      bad("optim.lr", self.lr, "(0, 10)")
    if self.optimizer not in OPTIMIZERS:
      bad("optim.optimizer", self.optimizer, OPTIMIZERS)
    if not (self.grad_clip >= 0):
      bad("optim.grad_clip", self.grad_clip, ">= 0 (0 disables)")
    if not (0 < self.server_lr <= 10):
      bad("fed.server_lr", self.server_lr, "(0, 10]")
    if not 0 <= self.ema_decay < 1:
      bad("fed.ema_decay", self.ema_decay, "[0, 1)")
    if self.T < 2:
      bad("diffusion.T", self.T, ">= 2")
    if not 0 < self.beta_start < self.beta_end < 1:
      bad("diffusion.beta_start/beta_end", (self.beta_start, self.beta_end),
          "0 < beta_start < beta_end < 1")
    if self.quantizer not in ("minmax", "qsgd"):
      bad("quant.method", self.quantizer, ("minmax", "qsgd"))
    if self.bucket_size is not None and self.bucket_size < 1:
      bad("quant.bucket_size", self.bucket_size, "None or >= 1")
    if not 1 <= self.b_min <= 32:
      bad("quant.b_min", self.b_min, "1..32")
    if self.target not in TARGETS:
      bad("quant.target", self.target, TARGETS)
    if self.policy not in POLICIES:
      bad("energy.infeasible_policy", self.policy, POLICIES)
    if not self.flops_per_sample > 0:
      bad("flops_per_sample", self.flops_per_sample, "> 0")
    if self.parallelism not in PARALLELISM:
      bad("fed.parallelism", self.parallelism, PARALLELISM)
    if self.chunk_size < 1:
      bad("fed.chunk_size", self.chunk_size, ">= 1")
    if self.parallelism == "chunked" and self.padded_clients % self.chunk_size:
      bad("fed.chunk_size", self.chunk_size,
          f"a divisor of the (padded) clients per round {self.padded_clients}")

  @property
  def num_shards(self) -> int:
    return 1 if self.mesh is None else int(self.mesh.shape["clients"])

  @property
  def padded_clients(self) -> int:
    """K rounded up to a multiple of the mesh's client axis (masked slots)."""
    s = self.num_shards
    return -(-self.clients_per_round // s) * s

  @property
  def samples_per_round(self) -> int:
    """Samples a participant processes per round, I * B (MODEL.md 3)."""
    return self.local_steps * self.batch_size
