"""Sequential reference round: a Python loop over clients, one client at a
time (what most FL simulators do).

Used by tests (the compiled round must equal it) and by benchmarks (the
"one client after another" baseline). It shares the per-client phases
(selection, local training, bits and quantization, allocation, delivery),
so for those it checks the client layout and masking; the server side, the
aggregation and the EMA, it computes by its own code written from the method
(`docs/model.md` sec. 7, "Aggregation and EMA"), so a wrong formula in
`phases.aggregate` or `phases.update_ema` makes the two rounds differ.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Tuple

import jax
import jax.numpy as jnp
import numpy as np

from fedqjax import energy
from fedqjax.federated import phases
from fedqjax.federated.client import client_update
from fedqjax.federated.round import Metrics, next_state, round_metrics
from fedqjax.federated.spec import RoundSpec, Scheme
from fedqjax.federated.state import FedData, ServerState, round_keys


def _jitted_pieces(spec: RoundSpec):
  # The per-client pieces do not depend on how clients are laid out: share
  # one compile across layouts, client counts and meshes (the convolution
  # form and local unroll stay: they change the numerics).
  ex = dataclasses.replace(spec.execution, layout="vmap")
  return _jitted_pieces_cached(
    dataclasses.replace(
      spec, num_clients=1, clients_per_round=1, execution=ex, mesh=None
    )
  )


@functools.lru_cache(maxsize=None)
def _jitted_pieces_cached(spec: RoundSpec):
  local = jax.jit(functools.partial(client_update, spec=spec))
  upload = jax.jit(functools.partial(phases.client_upload, spec=spec))
  pack = jax.jit(spec.quantizer.pack)
  return local, upload, pack


def _aggregate_flat(flat_w, deq, weight, spec: RoundSpec):
  """w + lr sum_k m_k n_k Q_k / sum_k m_k n_k ("update": Q_k ~ w_k - w), or
  w + lr (sum_k m_k n_k Q_k / sum_k m_k n_k - w) ("weights": Q_k ~ w_k);
  w itself when nobody uploaded (weight = m_k n_k, zero off the uploaders)."""
  total = jnp.sum(weight)
  mean = jnp.sum(weight[:, None] * deq, axis=0) / jnp.where(total > 0, total, 1)
  step = mean if spec.target == "update" else mean - flat_w
  return jnp.where(total > 0, flat_w + spec.server_lr * step, flat_w)


def _ema(ema_params, params, rnd, spec: RoundSpec):
  """decay e + (1 - decay) w, decay = min(cap, (1 + r) / (warmup + r)) at
  round r (r = rounds completed before this one)."""
  r = float(rnd)
  decay = min(spec.ema_decay, (1.0 + r) / (spec.ema_warmup + r))
  return jax.tree.map(
    lambda e, p: (decay * e + (1.0 - decay) * p).astype(e.dtype),
    ema_params,
    params,
  )


def round_step_reference(
  state: ServerState,
  data: FedData,
  devices: energy.Devices,
  scheme: Scheme,
  *,
  spec: RoundSpec,
) -> Tuple[ServerState, Metrics]:
  """Same inputs/outputs as `round_step`, clients processed one by one."""
  local, upload, pack = _jitted_pieces(spec)
  keys = round_keys(state.rng, state.round)
  sel = phases.select(keys, data, devices, spec)
  ok = phases.feasible_bits(sel.devices, scheme, spec)
  trained = sel.present & ~phases.screen(ok, scheme, spec)
  w = state.params
  flat_w = pack(w)
  ups, losses = [], []
  for slot, cid in enumerate(np.asarray(sel.ids)):  # the loop, on purpose
    w_k, loss = local(
      w,
      data.images[cid],
      data.counts[cid],
      jax.random.fold_in(keys["train"], cid),
    )
    u = pack(w_k) if spec.target == "weights" else pack(w_k) - flat_w
    d_k = jax.tree.map(lambda x: x[slot], sel.devices)
    ups.append(
      upload(
        u,
        d_k.eps,
        d_k.bit_cap,
        ok[slot],
        jax.random.fold_in(keys["quant"], cid),
        scheme,
      )
    )
    losses.append(loss)
  up = jax.tree.map(lambda *x: jnp.stack(x), *ups)
  payload, alloc = phases.allocate(sel.devices, up.bits, scheme, spec)
  uploaded, outcome = phases.deliver(
    sel.devices, trained, alloc, payload, scheme
  )
  weight = jnp.where(uploaded, sel.counts.astype(jnp.float32), 0.0)
  new_w = spec.quantizer.unpack(
    _aggregate_flat(flat_w, up.dequantized, weight, spec)
  )
  ema = _ema(state.ema_params, new_w, state.round, spec)
  m = round_metrics(
    sel, trained, uploaded, jnp.stack(losses), up, payload, alloc, outcome
  )
  return next_state(state, new_w, ema, m), m
