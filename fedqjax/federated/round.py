"""ONE compiled federated round for all K clients (arXiv 2403.04430).

Data flow (ARCHITECTURE.md): broadcast w -> local DDPM steps (client axis
vmapped / lax.mapped) -> u_k -> on-demand bits b_k -> energy allocation ->
stochastic quantization -> mask (absent, padded, infeasible) -> n_k-weighted
average -> server update + EMA -> metrics. No Python loop over clients or
steps, no host transfer: `jit_round_step(spec)` compiles once per run; the
scheme (fp32 / fixed / on-demand, optimized / naive) is traced data.
"""
from __future__ import annotations

import functools
from typing import Any, Dict, Tuple

import jax
import jax.numpy as jnp
from flax import struct

from fedqjax import energy, quantization
from fedqjax.diffusion import losses
from fedqjax.federated import packed, sharding
from fedqjax.federated.client import client_update
from fedqjax.federated.spec import (BITS_FIXED, BITS_FP32, RoundSpec, Scheme)
from fedqjax.typing import Array, Params, PRNGKey, PyTree

Metrics = Dict[str, Array]


@struct.dataclass
class ServerState:
  """Immutable server state; everything a resumed run needs."""
  params: Params  # global variables {'params': ...}
  ema_params: Params
  round: Array  # int32, rounds completed
  rng: Array  # uint32[2] root key of the run (raw key data: checkpointable)
  energy_comp_j: Array  # cumulative computation energy, all clients
  energy_comm_j: Array  # cumulative communication energy
  uploaded_bits: Array  # cumulative payload bits actually sent


@struct.dataclass
class FedData:
  """Padded client data on device: images [N, n_max, H, W, C], counts [N]."""
  images: Array
  counts: Array


def init_server_state(params: Params, key: PRNGKey) -> ServerState:
  key = jnp.asarray(jax.random.key_data(key) if jnp.issubdtype(
      getattr(key, "dtype", jnp.uint32), jax.dtypes.prng_key) else key,
                    jnp.uint32)
  # Fresh buffers throughout: the jitted round donates the state, and the
  # caller's params (or one shared zero) must not be donated twice.
  z = lambda: jnp.zeros((), jnp.float32)
  copy = lambda t: jax.tree.map(lambda x: jnp.array(x, copy=True), t)
  return ServerState(params=copy(params), ema_params=copy(params),
                     round=jnp.zeros((), jnp.int32), rng=jnp.array(key),
                     energy_comp_j=z(), energy_comm_j=z(), uploaded_bits=z())


def round_keys(rng: Array, rnd: Array) -> Dict[str, Array]:
  """Named streams of one round; client keys are folded in by client id."""
  k = jax.random.fold_in(rng, rnd)
  k_sel, k_fade, k_train, k_quant = jax.random.split(k, 4)
  return dict(select=k_sel, fade=k_fade, train=k_train, quant=k_quant)


def client_keys(key: Array, ids: Array) -> Array:
  """One key per client id (independent of the slot the client lands in)."""
  return jax.vmap(lambda i: jax.random.fold_in(key, i))(ids)


def select_participants(key: Array, spec: RoundSpec) -> Tuple[Array, Array]:
  """K of N uniformly without replacement (or all), padded to the mesh.

  Returns:
    (ids int32 [Kp], present bool [Kp]); padded slots repeat id 0, masked.
  """
  n, k, kp = spec.num_clients, spec.clients_per_round, spec.padded_clients
  if k == n:
    ids = jnp.arange(n, dtype=jnp.int32)
  else:
    ids = jax.random.permutation(key, n)[:k].astype(jnp.int32)
  present = jnp.arange(kp) < k
  ids = jnp.concatenate([ids, jnp.zeros((kp - k,), jnp.int32)])
  return ids, present


def map_clients(fn, args, spec: RoundSpec):
  """Applies a one-client `fn` over the leading axis of `args` by mode."""
  if spec.parallelism == "vmap":
    return jax.vmap(fn)(*args)
  if spec.parallelism == "map":
    return jax.lax.map(lambda a: fn(*a), args)
  if spec.parallelism == "unrolled":
    return _unrolled(fn, args, spec.num_shards)
  c = spec.chunk_size  # chunked: lax.map over vmapped chunks of C clients
  chunked = jax.tree.map(lambda x: x.reshape((-1, c) + x.shape[1:]), args)
  out = jax.lax.map(lambda a: jax.vmap(fn)(*a), chunked)
  return jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), out)


def _unrolled(fn, args, num_shards: int):
  """`lax.scan` over clients, fully unrolled (`parallelism="unrolled"`).

  Each client's convolutions keep plain (unbatched) weights and no convolution
  sits in a rolled loop body: on XLA:CPU both of those run convolutions several
  times slower (benchmarks/RESULTS.md). XLA may run independent clients'
  operations concurrently. The program grows linearly with the clients per
  shard, and so does compile time. On a mesh the client axis is split into
  [shards, K / shards]: the shard axis is vmapped (one client per device per
  step), the rest unrolled.
  """
  def scan(a):
    return jax.lax.scan(lambda c, x: (c, fn(*x)), None, a, unroll=True)[1]
  if num_shards == 1:
    return scan(args)
  split = jax.tree.map(lambda x: x.reshape((num_shards, -1) + x.shape[1:]),
                       args)
  out = jax.vmap(scan)(split)
  return jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), out)


def _tree_sub(a, b):
  return jax.tree.map(jnp.subtract, a, b)


def _sq_norm(tree) -> Array:
  return sum(jnp.sum(jnp.square(x.astype(jnp.float32)))
             for x in jax.tree.leaves(tree))


def _packed(spec: RoundSpec) -> bool:
  """min-max uses the packed fast path (O(1) compile in the leaf count)."""
  return spec.quantizer == "minmax"


def choose_bits(upload: PyTree, devices: energy.Devices, scheme: Scheme,
                spec: RoundSpec) -> Array:
  """Bit-width of ONE client by scheme (traced): 32, fixed, or on demand.

  On demand: the least b whose variance bound meets eps_k ||u_k||^2
  (MODEL.md section 2), then capped by the device's bit cap.
  """
  if _packed(spec):
    lay = packed.layout_of(upload, spec.bucket_size)
    ondemand = packed.ondemand_bits(packed.pack(upload), devices.eps, lay,
                                    spec.b_min, 32)
  else:
    q = quantization.make_quantizer(spec.quantizer, spec.bucket_size)
    ondemand = q.bits_for(upload, devices.eps, spec.b_min, 32)
  ondemand = jnp.minimum(ondemand, devices.bit_cap)
  return jnp.where(scheme.bits_mode == BITS_FP32, 32,
                   jnp.where(scheme.bits_mode == BITS_FIXED,
                             scheme.fixed_bits, ondemand)).astype(jnp.int32)


def payload_fn(template: PyTree, spec: RoundSpec):
  """bits (int array, any shape) -> payload bits (float32), from shapes only."""
  if _packed(spec):
    lay = packed.layout_of(template, spec.bucket_size)
    return lambda bits: packed.payload_bits(bits, lay)
  q = quantization.make_quantizer(spec.quantizer, spec.bucket_size)
  one = lambda b: q.payload_bits(template, b)
  def fn(bits):
    flat = bits.reshape(-1)
    return jax.vmap(one)(flat).reshape(bits.shape).astype(jnp.float32)
  return fn


def quantize_upload(upload: PyTree, bits: Array, key: PRNGKey,
                    spec: RoundSpec) -> PyTree:
  """Dequantized Q_b(u) of ONE client's upload."""
  if _packed(spec):
    lay = packed.layout_of(upload, spec.bucket_size)
    flat = packed.quantize(packed.pack(upload), bits, key, lay)
    return packed.unpack(flat, upload)
  q = quantization.make_quantizer(spec.quantizer, spec.bucket_size)
  return q.quantize(upload, bits, key)


def allocate_all(devices: energy.Devices, bits: Array, scheme: Scheme,
                 template: PyTree, spec: RoundSpec
                 ) -> Tuple[Array, Array, energy.Allocation]:
  """Bits after the infeasibility policy, payload and allocation, [Kp]."""
  pay = payload_fn(template, spec)
  n = spec.samples_per_round
  if spec.policy == "degrade":
    bits, _ = energy.degrade_bits(devices, bits, pay, n, scheme.deadline_s,
                                  spec.flops_per_sample, b_min=spec.b_min)
  payload = pay(bits)
  opt = energy.allocate(devices, payload, n, scheme.deadline_s,
                        spec.flops_per_sample)
  naive = energy.naive_allocation(devices, payload, n, scheme.deadline_s,
                                  spec.flops_per_sample)
  alloc = jax.tree.map(lambda a, b: jnp.where(scheme.optimize, a, b), opt,
                       naive)
  return bits, payload, alloc


def round_step(state: ServerState, data: FedData, devices: energy.Devices,
               scheme: Scheme, *, spec: RoundSpec
               ) -> Tuple[ServerState, Metrics]:
  """One federated round of all participants; pure, jit with `jit_round_step`.

  Args:
    state: server state (params, EMA, round, rng, cumulative totals).
    data: all N clients' padded data (client axis leading; may be sharded).
    devices: the N devices' energy parameters ([N] fields).
    scheme: traced scheme switches.
    spec: static settings.

  Returns:
    (new state, metrics): per-client metrics are [Kp] arrays (padded slots
    have present == False), totals are scalars.
  """
  keys = round_keys(state.rng, state.round)
  ids, present = select_participants(keys["select"], spec)
  take = lambda x: jnp.take(x, ids, axis=0)
  images = sharding.constrain_clients(take(data.images), spec.mesh)
  counts = take(data.counts)
  dev = jax.tree.map(take, devices)
  dev = energy.redraw_fading(dev, jax.random.fold_in(keys["fade"], 0),
                             enabled=spec.fading)
  k_train = client_keys(keys["train"], ids)
  k_quant = client_keys(keys["quant"], ids)

  w = state.params
  local = functools.partial(client_update, w, spec=spec)
  w_k, loss_k = map_clients(local, (images, counts, k_train), spec)  # [Kp]

  if spec.target == "update":
    u_k = jax.vmap(lambda wk: _tree_sub(wk, w))(w_k)
  else:
    u_k = w_k
  bits = jax.vmap(lambda u, d: choose_bits(u, d, scheme, spec))(u_k, dev)
  bits, payload, alloc = allocate_all(dev, bits, scheme, w, spec)

  deq = jax.vmap(lambda u, b, k: quantize_upload(u, b, k, spec))(
      u_k, bits, k_quant)  # [Kp] dequantized uploads
  sq_err = jax.vmap(lambda a, b: _sq_norm(_tree_sub(a, b)))(deq, u_k)
  sq_norm = jax.vmap(_sq_norm)(u_k)

  uploaded = present & alloc.feasible  # policy "drop": infeasible masked out
  weight = jnp.where(uploaded, counts.astype(jnp.float32), 0.0)  # n_k
  total = jnp.sum(weight)
  coef = weight / jnp.maximum(total, 1e-30)
  avg = jax.tree.map(lambda x: jnp.tensordot(coef, x.astype(jnp.float32),
                                             axes=1).astype(x.dtype), deq)
  any_up = total > 0
  if spec.target == "update":
    new_w = jax.tree.map(lambda p, a: p + spec.server_lr * a, w, avg)
  else:
    new_w = jax.tree.map(lambda p, a: p + spec.server_lr * (a - p), w, avg)
  new_w = jax.tree.map(lambda n, o: jnp.where(any_up, n, o), new_w, w)
  ema = losses.ema_update(state.ema_params, new_w, spec.ema_decay)

  e_comp = jnp.where(present, alloc.e_comp_j, 0.0)
  e_comm = jnp.where(uploaded, alloc.e_comm_j, 0.0)
  sent_bits = jnp.where(uploaded, payload, 0.0)
  pf = present.astype(jnp.float32)
  n_present = jnp.sum(pf)
  metrics = dict(
      loss=jnp.sum(loss_k * pf) / n_present,
      client_loss=loss_k, client_ids=ids, present=present,
      uploaded=uploaded, bits=bits, payload_bits=sent_bits,
      energy_comp_j=e_comp, energy_comm_j=e_comm,
      energy_j=jnp.sum(e_comp) + jnp.sum(e_comm),
      round_energy_comp_j=jnp.sum(e_comp), round_energy_comm_j=jnp.sum(e_comm),
      freq_hz=alloc.freq_hz, power_w=alloc.power_w,
      latency_s=jnp.max(jnp.where(uploaded, alloc.latency_s, 0.0)),
      infeasible=jnp.sum(present & ~alloc.feasible),
      num_uploaded=jnp.sum(uploaded),
      rel_quant_error=sq_err / jnp.maximum(sq_norm, 1e-30),
      update_norm=jnp.sqrt(sq_norm),
      bits_mean=jnp.sum(bits * pf) / n_present,
  )
  new_state = state.replace(
      params=new_w, ema_params=ema, round=state.round + 1,
      energy_comp_j=state.energy_comp_j + jnp.sum(e_comp),
      energy_comm_j=state.energy_comm_j + jnp.sum(e_comm),
      uploaded_bits=state.uploaded_bits + jnp.sum(sent_bits))
  return new_state, metrics


@functools.lru_cache(maxsize=None)
def jit_round_step(spec: RoundSpec):
  """The jitted round for `spec` (state donated); cached per spec."""
  return jax.jit(functools.partial(round_step, spec=spec), donate_argnums=0)
