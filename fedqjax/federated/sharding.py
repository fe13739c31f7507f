"""Sharding of the client axis over all devices (and hosts).

The client axis is a mesh axis named "clients"; server parameters are
replicated. The same program runs on one CPU, 8 forced CPU devices, a GPU, a
TPU slice, or several processes after `jax.distributed.initialize`.
"""

from __future__ import annotations

from typing import Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from fedqjax.typing import PyTree

AXIS = "clients"


def client_mesh(devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """A 1-D mesh over `devices` (default: all devices of all processes)."""
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(np.asarray(devices), (AXIS,))


def num_shards(mesh: Optional[Mesh]) -> int:
  """Devices the client axis is split over (1 without a mesh)."""
  return 1 if mesh is None else int(mesh.shape[AXIS])


def padded_clients(clients: int, mesh: Optional[Mesh]) -> int:
  """`clients` rounded up to a multiple of the shard count (masked slots)."""
  s = num_shards(mesh)
  return -(-clients // s) * s


def client_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def put_global(tree: PyTree, sharding: NamedSharding) -> PyTree:
  """Host arrays (identical on every process) -> global jax arrays.

  `make_array_from_callback` works for single- and multi-process meshes: each
  process materializes only its addressable shards.
  """

  def put(x):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda i: x[i])

  return jax.tree.map(put, tree)


def shard_clients(tree: PyTree, mesh: Mesh) -> PyTree:
  """Leading (client) axis sharded over the mesh."""
  return put_global(tree, client_sharding(mesh))


def replicate(tree: PyTree, mesh: Mesh) -> PyTree:
  return put_global(tree, replicated(mesh))


def constrain_clients(tree: PyTree, mesh: Optional[Mesh]) -> PyTree:
  """Inside jit: pin the leading axis of every leaf to the client axis."""
  if mesh is None:
    return tree
  s = client_sharding(mesh)
  return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, s), tree)


def to_host(tree: PyTree) -> PyTree:
  """Fetch (replicated or fully addressable) arrays to numpy on any process."""
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

  def get(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      if x.sharding.is_fully_replicated:
        return np.asarray(x.addressable_data(0))
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)

  return jax.tree.map(get, tree)
