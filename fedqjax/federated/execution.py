"""How the client axis is laid out: ONE knob, resolved in ONE place.

`fed.client_loop` in {auto, vmap, unrolled, map} is the only user setting.
`resolve_execution` turns it into everything it implies, from measurements on
a 2-core x86 CPU (benchmarks/RESULTS.md, "Round throughput"):

| backend | layout   | local-step scan | convolutions | why (K = 8, I = 2, B = 4) |
|---------|----------|-----------------|--------------|---------------------------|
| cpu     | unrolled | unrolled        | XLA's        | 1.48 s/round, the fastest |
| cpu     | map      | rolled          | im2col       | 2.42 s (fwd_form 2.77 s)  |
| cpu     | vmap     | rolled          | im2col       | 2.53 s (XLA's: 10.6 s)    |
| gpu/tpu | vmap     | unrolled        | XLA's        | the accelerator default   |

`auto` is `unrolled` on CPU up to AUTO_MAX_UNROLLED clients per device (its
compile time grows with K: about 35-45 s per client for the tiny U-Net on 2
cores), then `map` (compile time independent of K); `vmap` elsewhere.
XLA:CPU runs per-client (vmapped, i.e. feature-grouped) convolutions and
gradient convolutions inside rolled loop bodies several times slower than
plain ones; im2col (patches x kernel matmuls) avoids both.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Union

import jax

CLIENT_LOOPS = ("auto", "vmap", "unrolled", "map")
LAYOUTS = ("vmap", "unrolled", "map")
AUTO_MAX_UNROLLED = 16


@dataclasses.dataclass(frozen=True)
class Execution:
  """A resolved client layout (hashable; part of RoundSpec).

  Attributes:
    layout: "vmap" (all K at once) | "unrolled" (a lax.scan over clients with
      unroll=True: K plain per-client programs) | "map" (lax.map, one client
      at a time).
    local_unroll: `unroll` of the local-step lax.scan (True = fully).
    conv_impl: the U-Net's convolution form, "xla" | "im2col".
  """

  layout: str = "vmap"
  local_unroll: Union[bool, int] = True
  conv_impl: str = "xla"


def resolve_execution(
  client_loop: str,
  backend: str,
  clients_per_shard: int = 1,
  fits: Optional[Callable[[str], bool]] = None,
) -> Execution:
  """`client_loop` on `backend` ("cpu", "gpu", "tpu") -> Execution.

  `fits(layout)`: whether the round fits the device's memory in `layout`
  (fedqjax.federated.memory). On every accelerator backend `auto` is
  `vmap` when it fits (or `fits` is None), else `map` (one client at a
  time per device: the same FLOPs, one client's activations).

  Raises:
    ValueError: unknown client_loop.
  """
  if client_loop not in CLIENT_LOOPS:
    raise ValueError(
      f"client_loop={client_loop!r} is invalid; valid: {CLIENT_LOOPS}"
    )
  layout = client_loop
  if client_loop == "auto":
    if backend != "cpu":
      layout = "vmap" if fits is None or fits("vmap") else "map"
    else:
      layout = "unrolled" if clients_per_shard <= AUTO_MAX_UNROLLED else "map"
  if backend != "cpu" or layout == "unrolled":
    return Execution(layout=layout, local_unroll=True, conv_impl="xla")
  return Execution(layout=layout, local_unroll=1, conv_impl="im2col")


def map_clients(
  fn: Callable[..., Any], args: tuple, execution: Execution, num_shards: int = 1
):
  """Applies a one-client `fn` over the leading (client) axis of `args`."""
  if execution.layout == "vmap":
    return jax.vmap(fn)(*args)
  if execution.layout == "map":
    return jax.lax.map(lambda a: fn(*a), args)
  return _unrolled(fn, args, num_shards)


def _unrolled(fn, args, num_shards: int):
  """`lax.scan` over clients, fully unrolled.

  Each client's convolutions keep plain (unbatched) weights and no convolution
  sits in a rolled loop body; XLA may run independent clients concurrently.
  On a mesh the client axis is split into [shards, K / shards]: the shard
  axis is vmapped (one client per device per step), the rest unrolled.
  """

  def scan(a):
    return jax.lax.scan(lambda c, x: (c, fn(*x)), None, a, unroll=True)[1]

  if num_shards == 1:
    return scan(args)
  split = jax.tree.map(
    lambda x: x.reshape((num_shards, -1) + x.shape[1:]), args
  )
  out = jax.vmap(scan)(split)
  return jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), out)
