"""The phases of one federated round, each a small pure function.

`round_step` (round.py) composes them with the client axis lifted by the
execution layout; `round_step_reference` (fedqjax/testing/reference_round.py)
composes the same per-client functions with a Python loop over clients and
computes the aggregate and the EMA by its own code. Data flow
(docs/development.md, "Data flow of one round"):

  select -> screen (skip devices that cannot deliver even their smallest
  payload: they know their channel before training) -> local train ->
  upload (bits, infeasibility policy, quantize; one client) -> allocate
  (every policy, [P, K]) -> deliver -> aggregate -> EMA -> metrics

Channel estimates (`fedqjax.energy.channel`): when the devices carry a
`realized_gain`, screening and allocation use `gain` (the estimate) and
`deliver` judges every policy's plan on the realized channel; the training
follows the FIRST policy's deliveries, every other policy reports what its
own plan would have missed. Without it (a static, trace-time check) the
round is exactly the perfect-knowledge one.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from fedqjax import energy
from fedqjax.diffusion import ema_decay, ema_update
from fedqjax.energy import channel
from fedqjax.errors import InvalidSetting
from fedqjax.federated import sharding
from fedqjax.federated.spec import BITS_FIXED, BITS_FP32, RoundSpec, Scheme
from fedqjax.federated.state import FedData, client_keys
from fedqjax.typing import Array, Params

CANDIDATE_BITS = np.arange(
  1, 33, dtype=np.int32
)  # [32] (numpy: no backend at import)


@struct.dataclass
class Selection:
  """The round's participants, slot-major [Kp] (padded slots not present)."""

  ids: Array  # int32 [Kp]
  present: Array  # bool [Kp]
  images: Array  # [Kp, n_max, H, W, C]
  counts: Array  # int32 [Kp]
  devices: energy.Devices  # [Kp] fields, this round's channel


@struct.dataclass
class Upload:
  """One client's upload (stacked to [Kp] by the round)."""

  bits: Array  # int32, bits actually used
  requested_bits: Array  # int32, what the scheme asked for (before degrade)
  dequantized: Array  # float32 [d], Q_b(u) as the server decodes it
  sq_error: Array  # ||Q_b(u) - u||^2
  sq_norm: Array  # ||u||^2


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


def select(
  keys: Dict[str, Array],
  data: FedData,
  devices: energy.Devices,
  spec: RoundSpec,
) -> Selection:
  """Participants, their data and devices; fading drawn per client id.

  Raises (at trace time):
    InvalidSetting: spec.rayleigh_fading with devices that carry a
      realized_gain (their channel process already draws the fading).
  """
  if spec.rayleigh_fading and devices.realized_gain is not None:
    raise InvalidSetting(
      "RoundSpec",
      "rayleigh_fading",
      True,
      "False when the devices carry a realized_gain (the channel process "
      "of fedqjax.energy.channel draws the fading)",
    )
  ids, present = select_participants(keys["select"], spec)
  take = lambda x: jnp.take(x, ids, axis=0)
  dev = jax.tree.map(take, devices)  # realized_gain too (None: no leaf)
  if spec.rayleigh_fading:
    fade = client_keys(keys["fade"], ids)
    dev = jax.vmap(energy.redraw_fading)(dev, fade)
  images = sharding.constrain_clients(take(data.images), spec.mesh)
  return Selection(
    ids=ids,
    present=present,
    images=images,
    counts=take(data.counts),
    devices=dev,
  )


def feasible_bits(
  devices: energy.Devices, scheme: Scheme, spec: RoundSpec
) -> Array:
  """bool [Kp, 32]: can device k deliver a b-bit upload (b = 1..32) by T
  at f_max / p_max? Known before training: the channel is drawn first."""
  pay = spec.quantizer.payload_bits(CANDIDATE_BITS)  # [32]
  ok = jax.vmap(
    lambda p: energy.feasible_mask(
      devices,
      p,
      spec.samples_per_round,
      scheme.deadline_s,
      spec.flops_per_sample,
    )
  )(pay)  # [32, Kp]
  return ok.T


def screen(ok: Array, scheme: Scheme, spec: RoundSpec) -> Array:
  """bool [Kp]: devices that skip the round (no training, energy, upload).

  A device skips when it cannot deliver even the smallest payload it may
  send: the scheme's bit-width (fp32, fixed) or b_min (on demand, and any
  scheme under "degrade"). On-demand devices that pass may still miss T
  with the bits their update needs: under "drop" they are dropped after
  training (their computation is spent), counted separately.
  """
  smallest = jnp.where(
    scheme.bits_mode == BITS_FP32,
    32,
    jnp.where(scheme.bits_mode == BITS_FIXED, scheme.fixed_bits, spec.b_min),
  )
  if spec.infeasible_policy == "degrade":
    smallest = jnp.int32(spec.b_min)
  return ~jnp.take(ok, smallest - 1, axis=1)


def choose_bits(
  flat_u: Array, eps: Array, bit_cap: Array, scheme: Scheme, spec: RoundSpec
) -> Array:
  """Bit-width of ONE client by scheme (traced): 32, fixed, or on demand.

  On demand: the least b whose variance bound meets eps_k s ||u_k||^2
  (docs/model.md sec. 2, s = the scheme's error-demand scale), then capped by
  the device's bit cap.
  """
  ondemand = spec.quantizer.bits_for(
    flat_u, eps * scheme.eps_scale, spec.b_min, 32
  )
  ondemand = jnp.minimum(ondemand, bit_cap)
  return jnp.where(
    scheme.bits_mode == BITS_FP32,
    32,
    jnp.where(scheme.bits_mode == BITS_FIXED, scheme.fixed_bits, ondemand),
  ).astype(jnp.int32)


def degrade(requested: Array, ok_row: Array, b_min: int) -> Array:
  """Largest deliverable b in [b_min, requested] (policy "degrade"), else
  min(b_min, requested); ok_row: bool [32] from `feasible_bits`."""
  allowed = ok_row & (CANDIDATE_BITS <= requested) & (CANDIDATE_BITS >= b_min)
  best = jnp.max(jnp.where(allowed, CANDIDATE_BITS, 0))
  return jnp.where(best > 0, best, jnp.minimum(b_min, requested))


def client_upload(
  flat_u: Array,
  eps: Array,
  bit_cap: Array,
  ok_row: Array,
  key: Array,
  scheme: Scheme,
  spec: RoundSpec,
) -> Upload:
  """ONE client: bits (scheme, then the infeasibility policy) and Q_b(u)."""
  requested = choose_bits(flat_u, eps, bit_cap, scheme, spec)
  bits = requested
  if spec.infeasible_policy == "degrade":
    bits = degrade(requested, ok_row, spec.b_min).astype(jnp.int32)
  deq = spec.quantizer.quantize(flat_u, bits, key)
  return Upload(
    bits=bits,
    requested_bits=requested,
    dequantized=deq,
    sq_error=jnp.sum(jnp.square(deq - flat_u)),
    sq_norm=jnp.sum(jnp.square(flat_u)),
  )


def uploads_of(params: Params, local_params: Params, spec: RoundSpec) -> Array:
  """u_k, flat float32 [Kp, d]: w_k - w ("update") or w_k ("weights")."""
  flat_k = jax.vmap(spec.quantizer.pack)(local_params)
  if spec.target == "weights":
    return flat_k
  return flat_k - spec.quantizer.pack(params)[None]


def allocate(
  devices: energy.Devices, bits: Array, scheme: Scheme, spec: RoundSpec
) -> Tuple[Array, energy.Allocation]:
  """Payload bits [Kp] and every policy's allocation ([P, Kp] fields)."""
  payload = spec.quantizer.payload_bits(bits)
  alloc = energy.allocate_policies(
    devices,
    payload,
    spec.samples_per_round,
    scheme.deadline_s,
    spec.flops_per_sample,
    spec.allocations,
  )
  return payload, alloc


def deliver(
  devices: energy.Devices,
  trained: Array,
  alloc: energy.Allocation,
  payload: Array,
  scheme: Scheme,
) -> Tuple[Array, Optional[channel.Delivery]]:
  """(uploaded bool [Kp], every policy's Delivery [P, Kp] or None).

  Uploaded: trained and feasible (feasibility is policy-independent) and,
  when the devices carry a realized_gain, delivered on it under the first
  policy's plan. Without one: None, and exactly the feasibility rule.
  """
  uploaded = trained & alloc.feasible[0]
  if devices.realized_gain is None:
    return uploaded, None
  out = channel.delivery(alloc, devices, payload, scheme.deadline_s)
  return uploaded & out.delivered[0], out


def aggregate(
  params: Params, dequantized: Array, weight: Array, spec: RoundSpec
) -> Params:
  """w + lr * sum_k c_k Q(u_k) (or toward sum_k c_k Q(w_k) for "weights"),
  c_k = n_k / sum n_j over uploaders; unchanged if nobody uploaded."""
  total = jnp.sum(weight)
  coef = weight / jnp.maximum(total, 1e-30)
  avg = spec.quantizer.unpack(jnp.tensordot(coef, dequantized, axes=1))
  lr = spec.server_lr
  if spec.target == "update":
    new = jax.tree.map(lambda p, a: p + lr * a, params, avg)
  else:
    new = jax.tree.map(lambda p, a: p + lr * (a - p), params, avg)
  return jax.tree.map(lambda n, o: jnp.where(total > 0, n, o), new, params)


def update_ema(
  ema_params: Params, params: Params, rnd: Array, spec: RoundSpec
) -> Params:
  """EMA with the warm-up decay min(ema_decay, (1 + r) / (warmup + r))."""
  decay = ema_decay(rnd, spec.ema_decay, spec.ema_warmup)
  return ema_update(ema_params, params, decay)
