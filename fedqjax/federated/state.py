"""Server state, client data and the round's named random streams."""

from __future__ import annotations

from typing import Dict

import jax
import jax.numpy as jnp
from flax import struct

from fedqjax.typing import Array, Params, PRNGKey


@struct.dataclass
class ServerState:
  """Immutable server state; everything a resumed run needs.

  Energy totals have one entry per allocation policy (RoundSpec.allocations,
  same order): the policies price the same uploads.
  """

  params: Params  # global variables {'params': ...}
  ema_params: Params
  round: Array  # int32, rounds completed
  rng: Array  # uint32[2] root key of the run (raw key data: checkpointable)
  energy_comp_j: Array  # [P] cumulative computation energy, all clients
  energy_comm_j: Array  # [P] cumulative communication energy
  uploaded_bits: Array  # cumulative payload bits actually sent
  skipped_client_rounds: Array  # int32, client-rounds skipped before training
  dropped_client_rounds: Array  # int32, trained but not delivered in time
  # [P] int32 / float32: uploads that missed T on the realized channel and
  # the energy they wasted (zero unless the channel is estimated,
  # fedqjax.energy.channel).
  deadline_misses: Array
  energy_wasted_j: Array


@struct.dataclass
class FedData:
  """Padded client data on device: images [N, n_max, H, W, C], counts [N]."""

  images: Array
  counts: Array


def init_server_state(
  params: Params, key: PRNGKey, num_policies: int = 1
) -> ServerState:
  """Round-0 state for `params` with energy totals for `num_policies`."""
  if jnp.issubdtype(getattr(key, "dtype", jnp.uint32), jax.dtypes.prng_key):
    key = jax.random.key_data(key)
  # Fresh buffers throughout: the jitted round donates the state, and the
  # caller's params (or one shared zero) must not be donated twice.
  copy = lambda t: jax.tree.map(lambda x: jnp.array(x, copy=True), t)
  zeros = lambda: jnp.zeros((num_policies,), jnp.float32)
  count = lambda: jnp.zeros((), jnp.int32)
  return ServerState(
    params=copy(params),
    ema_params=copy(params),
    round=count(),
    rng=jnp.array(key, jnp.uint32),
    energy_comp_j=zeros(),
    energy_comm_j=zeros(),
    uploaded_bits=jnp.zeros((), jnp.float32),
    skipped_client_rounds=count(),
    dropped_client_rounds=count(),
    deadline_misses=jnp.zeros((num_policies,), jnp.int32),
    energy_wasted_j=zeros(),
  )


def round_keys(rng: Array, rnd: Array) -> Dict[str, Array]:
  """Named streams of one round; client keys are folded in by client id."""
  k = jax.random.fold_in(rng, rnd)
  k_sel, k_fade, k_train, k_quant = jax.random.split(k, 4)
  return dict(select=k_sel, fade=k_fade, train=k_train, quant=k_quant)


def client_keys(key: Array, ids: Array) -> Array:
  """One key per client id (independent of the slot the client lands in)."""
  return jax.vmap(lambda i: jax.random.fold_in(key, i))(ids)
