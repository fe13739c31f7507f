"""ONE compiled federated round for all K clients (arXiv 2403.04430).

`round_step` reads as its data-flow diagram (phases.py): select -> screen ->
local train -> upload -> allocate (every policy) -> aggregate -> EMA ->
metrics. No Python loop over clients or steps, no host transfer:
`jit_round_step(spec)` compiles once per run; the scheme (fp32 / fixed /
on-demand bits, deadline, error-demand scale) is traced data and every
allocation policy is priced on the same uploads.

Metrics: names starting with `client_` are per-slot arrays ([Kp], or
[P, Kp] for energies and misses); the rest are round totals (energies,
`deadline_misses`, `energy_wasted_j` and `latency_s` [P]).

Channel estimates (devices with a `realized_gain`, `fedqjax.energy.channel`):
the plan is judged on the realized channel per policy. The training follows
the first policy's deliveries (`client_uploaded`, `num_uploaded`,
`dropped_client_rounds` and the bits count its misses as drops); every
policy's energies count the communication energy actually spent by every
device that transmitted (trained and feasible), delivered or not;
`deadline_misses` [P] counts the devices that transmitted and missed T under
that policy's plan, `energy_wasted_j` [P] their computation plus spent
communication energy, `client_missed` [P, Kp] flags them; `latency_s` is the
latest realized finish among the delivered uploads. Without a realized_gain
the misses and the waste are 0 and everything else is the perfect-knowledge
round, bitwise.
"""

from __future__ import annotations

import functools
from typing import Dict, Optional, Tuple

import jax
import jax.numpy as jnp

from fedqjax import energy
from fedqjax.energy import channel
from fedqjax.federated import phases
from fedqjax.federated.client import client_update
from fedqjax.federated.execution import map_clients
from fedqjax.federated.spec import RoundSpec, Scheme
from fedqjax.federated.state import (
  FedData,
  ServerState,
  client_keys,
  round_keys,
)
from fedqjax.typing import Array

Metrics = Dict[str, Array]


def local_train(params, sel: phases.Selection, key: Array, spec: RoundSpec):
  """(w_k [Kp], mean local loss [Kp]): I local steps of every participant."""
  local = functools.partial(client_update, params, spec=spec)
  k_train = client_keys(key, sel.ids)
  return map_clients(
    local, (sel.images, sel.counts, k_train), spec.execution, spec.num_shards
  )


def round_step(
  state: ServerState,
  data: FedData,
  devices: energy.Devices,
  scheme: Scheme,
  *,
  spec: RoundSpec,
) -> Tuple[ServerState, Metrics]:
  """One federated round of all participants; pure, jit with `jit_round_step`.

  Args:
    state: server state (params, EMA, round, rng, cumulative totals).
    data: all N clients' padded data (client axis leading; may be sharded).
    devices: the N devices' energy parameters ([N] fields).
    scheme: traced scheme switches.
    spec: static settings.

  Returns:
    (new state, metrics); see the module docstring for the metric layout.
  """
  keys = round_keys(state.rng, state.round)
  sel = phases.select(keys, data, devices, spec)
  ok = phases.feasible_bits(sel.devices, scheme, spec)  # [Kp, 32]
  trained = sel.present & ~phases.screen(ok, scheme, spec)
  w_k, loss_k = local_train(state.params, sel, keys["train"], spec)
  flat_u = phases.uploads_of(state.params, w_k, spec)  # [Kp, d]
  up = jax.vmap(
    lambda u, e, c, o, k: phases.client_upload(u, e, c, o, k, scheme, spec)
  )(
    flat_u,
    sel.devices.eps,
    sel.devices.bit_cap,
    ok,
    client_keys(keys["quant"], sel.ids),
  )
  payload, alloc = phases.allocate(sel.devices, up.bits, scheme, spec)
  uploaded, outcome = phases.deliver(
    sel.devices, trained, alloc, payload, scheme
  )
  weight = jnp.where(uploaded, sel.counts.astype(jnp.float32), 0.0)
  new_w = phases.aggregate(state.params, up.dequantized, weight, spec)
  ema = phases.update_ema(state.ema_params, new_w, state.round, spec)
  m = round_metrics(sel, trained, uploaded, loss_k, up, payload, alloc, outcome)
  return next_state(state, new_w, ema, m), m


def next_state(
  state: ServerState, params, ema_params, m: Metrics
) -> ServerState:
  """The state after a round: new parameters, totals advanced by `m`."""
  return state.replace(
    params=params,
    ema_params=ema_params,
    round=state.round + 1,
    energy_comp_j=state.energy_comp_j + m["energy_comp_j"],
    energy_comm_j=state.energy_comm_j + m["energy_comm_j"],
    uploaded_bits=state.uploaded_bits + m["uploaded_bits"],
    skipped_client_rounds=(
      state.skipped_client_rounds + m["skipped_client_rounds"]
    ),
    dropped_client_rounds=(
      state.dropped_client_rounds + m["dropped_client_rounds"]
    ),
    deadline_misses=state.deadline_misses + m["deadline_misses"],
    energy_wasted_j=state.energy_wasted_j + m["energy_wasted_j"],
  )


def policy_energies(
  trained: Array,
  uploaded: Array,
  alloc: energy.Allocation,
  outcome: Optional[channel.Delivery],
) -> Tuple[Array, Array, Array, Array]:
  """(E^cmp, E^com, latency [P], missed bool) per policy, [P, Kp] arrays.

  Without an outcome (perfect channel knowledge): the planned energies of
  the uploaders, nobody misses. With one: the spent communication energy of
  every device that transmitted, misses judged per policy.
  """
  e_comp = jnp.where(trained, alloc.e_comp_j, 0.0)  # [P, Kp]
  if outcome is None:
    e_comm = jnp.where(uploaded, alloc.e_comm_j, 0.0)
    latency = jnp.max(jnp.where(uploaded, alloc.latency_s, 0.0), axis=-1)
    return e_comp, e_comm, latency, jnp.zeros(alloc.feasible.shape, bool)
  sent = trained & alloc.feasible[0]  # transmitted: policy-independent
  e_comm = jnp.where(sent, outcome.e_comm_j, 0.0)
  ok = sent & outcome.delivered
  latency = jnp.max(jnp.where(ok, outcome.latency_s, 0.0), axis=-1)
  return e_comp, e_comm, latency, sent & ~outcome.delivered


def round_metrics(
  sel: phases.Selection,
  trained: Array,
  uploaded: Array,
  loss_k: Array,
  up: phases.Upload,
  payload: Array,
  alloc: energy.Allocation,
  outcome: Optional[channel.Delivery] = None,
) -> Metrics:
  """Per-client arrays (`client_*`) and round totals; energies per policy."""
  e_comp, e_comm, latency, missed = policy_energies(
    trained, uploaded, alloc, outcome
  )
  sent = jnp.where(uploaded, payload, 0.0)
  tf, uf = trained.astype(jnp.float32), uploaded.astype(jnp.float32)
  count = lambda x: jnp.sum(x).astype(jnp.int32)
  return dict(
    loss=jnp.sum(loss_k * tf) / jnp.maximum(jnp.sum(tf), 1.0),
    energy_comp_j=jnp.sum(e_comp, axis=-1),
    energy_comm_j=jnp.sum(e_comm, axis=-1),
    energy_j=jnp.sum(e_comp + e_comm, axis=-1),
    latency_s=latency,
    deadline_misses=jnp.sum(missed, axis=-1).astype(jnp.int32),
    energy_wasted_j=jnp.sum(jnp.where(missed, e_comp + e_comm, 0.0), axis=-1),
    uploaded_bits=jnp.sum(sent),
    mean_bits=jnp.sum(up.bits * uf) / jnp.maximum(jnp.sum(uf), 1.0),
    bit_shortfall=jnp.sum(
      jnp.where(trained, up.requested_bits - up.bits, 0)
    ).astype(jnp.int32),
    num_trained=count(trained),
    num_uploaded=count(uploaded),
    skipped_client_rounds=count(sel.present & ~trained),
    dropped_client_rounds=count(trained & ~uploaded),
    client_ids=sel.ids,
    client_present=sel.present,
    client_trained=trained,
    client_uploaded=uploaded,
    client_loss=loss_k,
    client_bits=up.bits,
    client_requested_bits=up.requested_bits,
    client_payload_bits=sent,
    client_energy_comp_j=e_comp,
    client_energy_comm_j=e_comm,
    client_missed=missed,
    client_freq_hz=alloc.freq_hz,
    client_power_w=alloc.power_w,
    client_rel_quant_error=up.sq_error / jnp.maximum(up.sq_norm, 1e-30),
    client_update_norm=jnp.sqrt(up.sq_norm),
  )


@functools.lru_cache(maxsize=None)
def jit_round_step(spec: RoundSpec):
  """The jitted round for `spec` (state donated); cached per spec."""
  return jax.jit(functools.partial(round_step, spec=spec), donate_argnums=0)
