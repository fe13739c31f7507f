"""Per-device memory of the federated round and of the evaluator, before
anything compiles, and the accelerator's capacity.

The round (`round_bytes`): an analytic model in two traced sizes of ONE
client's local step, no compile:

  R  the residuals the backward pass of one local step keeps (bytes of
     `jax.vjp`'s saved values for the DDPM loss at batch B, model dtype);
  P  the float32 bytes of the parameters.

  bytes = args + L * (ALPHA * R + BETA * P) + Kd * GAMMA * P + DELTA * P

with Kd the (padded) clients per device, L = Kd for the vmap and unrolled
layouts (all clients' activations at once) and L = 1 for map (one client
at a time), args the round's inputs (server state, the client data on this
device). ALPHA..DELTA were fitted (ours) to XLA's buffer assignment
(`compiled.memory_analysis()`: arguments + temporaries) of the compiled
round on XLA:CPU for an activation-bound and a parameter-bound U-Net at
K = 1 and 3 (vmap and map); a third U-Net (two levels, attention) checks
them (tests/fedqjax/federated/test_memory.py states the error).

The evaluator (`forward_bytes`): the peak of the live values of a forward
pass's jaxpr (every value from its definition to its last use, nested calls
included), i.e. no fusion: an upper bound of what XLA keeps.

Capacity (`device_capacity`): `device.memory_stats()["bytes_limit"]` where
the backend reports it, else `KNOWN_BYTES` by device kind.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jax_core

from fedqjax.diffusion import losses
from fedqjax.diffusion import schedule as schedule_lib
from fedqjax.diffusion.unet_config import UNetConfig

# Fitted on XLA:CPU (ours; see the module docstring).
ALPHA, BETA, GAMMA, DELTA = 1.4, 0.8, 2.7, 1.1
GB = 1e9
# Memory per device by device kind (decimal GB, vendors' figures; "usable":
# what the runtime leaves to programs). Matched as lower-case substrings.
KNOWN_BYTES = (
  ("v5 lite", 16 * GB),  # TPU v5e: 16 GB HBM per chip
  ("v5e", 16 * GB),
  ("v6 lite", 32 * GB),  # TPU v6e (Trillium): 32 GB HBM per chip
  ("v6e", 32 * GB),
  ("v5p", 95 * GB),
  ("v4", 32 * GB),
  ("v3", 16 * GB),  # per core pair
  ("v2", 8 * GB),
  ("t4", 15 * GB),  # 16 GB card, ~15 GB usable (Colab reports 15.0 GiB)
  ("a100-sxm4-80gb", 80 * GB),
  ("a100 80gb", 80 * GB),
  ("a100", 40 * GB),
  ("h100", 80 * GB),
  ("h200", 141 * GB),
  ("l4", 24 * GB),
  ("v100", 16 * GB),
)
ENV_BYTES = "FEDQJAX_DEVICE_MEMORY_GB"  # overrides the capacity (GB)
HEADROOM = 0.9  # fraction of the capacity a program may plan to use


def tree_bytes(tree: Any) -> int:
  """Bytes of every array (or ShapeDtypeStruct) leaf of `tree`."""
  return int(
    sum(
      int(np.prod(x.shape)) * jnp.dtype(x.dtype).itemsize
      for x in jax.tree.leaves(tree)
    )
  )


@functools.lru_cache(maxsize=16)
def param_shapes(unet: UNetConfig, image_shape: Sequence[int]):
  """The U-Net's variables as ShapeDtypeStructs (traced, not initialized)."""
  from fedqjax import diffusion  # pylint: disable=g-import-not-at-top

  return jax.eval_shape(
    lambda k: diffusion.init_unet(unet, k, tuple(image_shape)),
    jax.random.key(0),
  )


@functools.lru_cache(maxsize=16)
def step_residual_bytes(
  unet: UNetConfig, image_shape: Sequence[int], batch_size: int
) -> int:
  """R: bytes the backward pass of one DDPM step at `batch_size` keeps
  (`image_shape` a tuple)."""
  params = param_shapes(unet, tuple(image_shape))
  model, sched = unet.make(), schedule_lib.linear_schedule(1000, 1e-4, 0.02)
  x = jax.ShapeDtypeStruct((batch_size,) + tuple(image_shape), jnp.float32)

  def vjp_fn(p, x0):
    loss = lambda q: losses.ddpm_loss(
      q, model.apply, x0, jax.random.key(0), sched
    )
    return jax.vjp(loss, p)[1]

  return tree_bytes(jax.eval_shape(vjp_fn, params, x)) - tree_bytes(params)


@dataclasses.dataclass(frozen=True)
class RoundMemory:
  """The round's estimated bytes per device and the sizes it came from."""

  layout: str
  clients_per_device: int
  args: int
  residuals: int  # R
  params: int  # P
  total: int

  def describe(self) -> str:
    return (
      f"~{self.total / GB:.2f} GB per device ({self.layout}, "
      f"{self.clients_per_device} client(s) per device)"
    )


def round_bytes(
  layout: str,
  clients_per_device: int,
  residuals: int,
  params: int,
  args: int,
) -> RoundMemory:
  """The model of the module docstring for one layout."""
  kd = int(clients_per_device)
  live = kd if layout in ("vmap", "unrolled") else 1
  temp = live * (ALPHA * residuals + BETA * params) + kd * GAMMA * params
  total = int(args + temp + DELTA * params)
  return RoundMemory(layout, kd, int(args), int(residuals), int(params), total)


def forward_bytes(fn: Callable[..., Any], *args) -> int:
  """Peak live bytes of `fn(*args)`'s jaxpr (no fusion: an upper bound)."""
  closed = jax.make_jaxpr(fn)(*args)
  return _peak(closed.jaxpr)


def _aval_bytes(v) -> int:
  aval = getattr(v, "aval", None)
  if aval is None or not hasattr(aval, "shape"):
    return 0
  return int(np.prod(aval.shape)) * jnp.dtype(aval.dtype).itemsize


def _inner_peak(eqn) -> int:
  peak = 0
  for p in eqn.params.values():
    for sub in p if isinstance(p, (list, tuple)) else (p,):
      inner = getattr(sub, "jaxpr", sub)
      if hasattr(inner, "eqns"):
        peak = max(peak, _peak(inner))
  return peak


def _is_var(v) -> bool:
  return isinstance(v, jax_core.Var) and not isinstance(v, jax_core.Literal)


def _peak(jaxpr) -> int:
  """Peak over equations of the bytes of values defined and not yet dead."""
  last = {}
  for i, eqn in enumerate(jaxpr.eqns):
    for v in eqn.invars:
      if _is_var(v):
        last[v] = i
  for v in jaxpr.outvars:
    if _is_var(v):
      last[v] = len(jaxpr.eqns)
  live = {v: _aval_bytes(v) for v in list(jaxpr.invars) + list(jaxpr.constvars)}
  now = sum(live.values())
  peak = now
  for i, eqn in enumerate(jaxpr.eqns):
    out = sum(_aval_bytes(v) for v in eqn.outvars)
    peak = max(peak, now + max(out, _inner_peak(eqn)))
    for v in eqn.outvars:
      live[v] = _aval_bytes(v)
      now += live[v]
    for v in list(eqn.invars) + list(eqn.outvars):
      if _is_var(v) and last.get(v, -1) <= i and v in live:
        now -= live.pop(v)
  return int(peak)


def device_capacity(device: Optional[Any] = None) -> Optional[int]:
  """Bytes a program may use on `device` (default: the first device):
  $FEDQJAX_DEVICE_MEMORY_GB, else the backend's `bytes_limit`, else
  `KNOWN_BYTES` by device kind; on a CPU the host's memory; None unknown."""
  if os.environ.get(ENV_BYTES):
    return int(float(os.environ[ENV_BYTES]) * GB)
  device = jax.devices()[0] if device is None else device
  try:
    stats = device.memory_stats() or {}
  except Exception:  # pylint: disable=broad-except
    stats = {}
  if stats.get("bytes_limit"):
    return int(stats["bytes_limit"])
  if device.platform == "cpu":
    try:
      return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
      return None
  return known_capacity(device.device_kind)


def known_capacity(device_kind: str) -> Optional[int]:
  """`KNOWN_BYTES` of a device kind ("TPU v5 lite", "Tesla T4", ...)."""
  kind = device_kind.lower()
  for name, size in KNOWN_BYTES:
    if name in kind:
      return int(size)
  return None


def fit_layout(
  layout: str, estimate: Callable[[str], RoundMemory], capacity: Optional[int]
) -> RoundMemory:
  """The round's layout that fits `capacity` x HEADROOM: `layout`, else
  (vmap or unrolled) map, the same FLOPs one client at a time. Returns the
  estimate of the layout chosen (it may still not fit: the caller says)."""
  first = estimate(layout)
  if capacity is None or first.total <= HEADROOM * capacity:
    return first
  if layout != "map":
    other = estimate("map")
    if other.total < first.total:
      return other
  return first
