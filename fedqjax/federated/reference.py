"""Sequential reference round: a Python loop over clients calling the same
pieces as `round_step`, one client at a time (what most FL simulators do).

Used by tests (the compiled round must equal it) and by benchmarks (the
"one client after another" baseline).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Tuple

import jax
import jax.numpy as jnp
import numpy as np

from fedqjax import energy
from fedqjax.diffusion import losses
from fedqjax.federated import round as round_lib
from fedqjax.federated.client import client_update
from fedqjax.federated.spec import RoundSpec, Scheme


def _jitted_pieces(spec: RoundSpec):
  # The per-client pieces do not depend on how clients are laid out: share
  # one compile across parallelism modes, client counts and meshes.
  return _jitted_pieces_cached(dataclasses.replace(
      spec, num_clients=1, clients_per_round=1, parallelism="vmap",
      chunk_size=1, mesh=None))


@functools.lru_cache(maxsize=None)
def _jitted_pieces_cached(spec: RoundSpec):
  local = jax.jit(functools.partial(client_update, spec=spec))
  quant = jax.jit(functools.partial(round_lib.quantize_upload, spec=spec))
  bits = jax.jit(functools.partial(round_lib.choose_bits, spec=spec))
  alloc = jax.jit(functools.partial(round_lib.allocate_all, spec=spec))
  return local, quant, bits, alloc


def round_step_reference(state: round_lib.ServerState,
                         data: round_lib.FedData, devices: energy.Devices,
                         scheme: Scheme, *, spec: RoundSpec
                         ) -> Tuple[round_lib.ServerState, dict]:
  """Same inputs/outputs as `round_step`, clients processed one by one."""
  local, quant, choose, alloc_fn = _jitted_pieces(spec)
  keys = round_lib.round_keys(state.rng, state.round)
  ids, present = round_lib.select_participants(keys["select"], spec)
  ids_np, present_np = np.asarray(ids), np.asarray(present)
  take = lambda x: jnp.take(x, ids, axis=0)
  dev_all = jax.tree.map(take, devices)
  dev_all = energy.redraw_fading(dev_all, jax.random.fold_in(keys["fade"], 0),
                                 enabled=spec.fading)
  w = state.params
  uploads, bits_l, losses_l = [], [], []
  for slot, cid in enumerate(ids_np):  # the sequential loop, on purpose
    d_k = jax.tree.map(lambda x: x[slot], dev_all)
    k_train = jax.random.fold_in(keys["train"], cid)
    w_k, loss = local(w, data.images[cid], data.counts[cid], k_train)
    u_k = (jax.tree.map(jnp.subtract, w_k, w) if spec.target == "update"
           else w_k)
    uploads.append(u_k)
    losses_l.append(loss)
    bits_l.append(choose(u_k, d_k, scheme))
  bits, payload, alloc = alloc_fn(dev_all, jnp.stack(bits_l), scheme, w)
  counts = np.asarray(data.counts)[ids_np]
  uploaded = present_np & np.asarray(alloc.feasible)
  total = float(np.sum(np.where(uploaded, counts, 0)))
  avg = jax.tree.map(jnp.zeros_like, w)
  for slot, cid in enumerate(ids_np):
    k_q = jax.random.fold_in(keys["quant"], cid)
    deq = quant(uploads[slot], bits[slot], k_q)
    if uploaded[slot]:
      c = counts[slot] / total
      avg = jax.tree.map(lambda a, x: a + c * x, avg, deq)
  if total > 0:
    if spec.target == "update":
      new_w = jax.tree.map(lambda p, a: p + spec.server_lr * a, w, avg)
    else:
      new_w = jax.tree.map(lambda p, a: p + spec.server_lr * (a - p), w, avg)
  else:
    new_w = w
  ema = losses.ema_update(state.ema_params, new_w, spec.ema_decay)
  e_comp = np.where(present_np, np.asarray(alloc.e_comp_j), 0.0)
  e_comm = np.where(uploaded, np.asarray(alloc.e_comm_j), 0.0)
  sent = np.where(uploaded, np.asarray(payload), 0.0)
  pf = present_np.astype(np.float32)
  metrics = dict(loss=float(np.sum(np.asarray(losses_l) * pf) / pf.sum()),
                 bits=np.asarray(bits), payload_bits=sent,
                 energy_comp_j=e_comp, energy_comm_j=e_comm,
                 uploaded=uploaded, client_ids=ids_np)
  new_state = state.replace(
      params=new_w, ema_params=ema, round=state.round + 1,
      energy_comp_j=state.energy_comp_j + e_comp.sum(),
      energy_comm_j=state.energy_comm_j + e_comm.sum(),
      uploaded_bits=state.uploaded_bits + sent.sum())
  return new_state, metrics
