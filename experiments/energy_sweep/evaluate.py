"""The jitted evaluation of the energy sweep: one flat device axis.

Every (scenario, draw) of a call is a segment of ONE flat device axis L, so
scenarios with 10 and 10^4 devices share the call without padding;
per-scenario settings are traced data, scenario sums and shared-bandwidth
budgets are segment sums, and the bits schemes are a vmapped axis (policies
a static unroll).

Per (draw, scenario): device j of draw r is drawn from its own key
fold_in(fold_in(key(seed), r), j) (`population`; populations of any size are
nested, and a device is the same in every scenario), gets the scenario's
bandwidth share W / N, p_max, f_max and, with fading, its Rayleigh draw
|h|^2 ~ Exp(1); T comes from `deadline_for` per (scenario, draw) (or is
fixed); each bits scheme's bit-widths give payloads through the quantizer's
S(b) table (`Quantizer.payload_bits`); every allocation policy prices the
same uploads (`allocate_policies`; "shared" is `allocate_shared_bandwidth`,
which also splits W). Infeasible devices skip the round (the "drop" policy:
no energy, no upload).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple, Tuple

import jax
import jax.numpy as jnp

from experiments.energy_sweep import bits_sources
from fedqjax.energy.allocator import deadline_for
from fedqjax.energy.devices import (
  Devices,
  EnergyConfig,
  cycles_factor,
  sample_devices_from_keys,
)
from fedqjax.energy.policies import allocate_policies
from fedqjax.energy.shared_bandwidth import allocate_shared_bandwidth
from fedqjax.typing import Array, ArrayLike


class Statics(NamedTuple):
  """The static (hashable) part of one jitted evaluation."""

  schemes: tuple
  policies: tuple  # allocate_policies names, in the settings' order
  shared: bool
  fixed_bits: int
  b_min: int
  rule: str
  quantile: float
  deadline_s: float  # > 0: fixed T
  samples: float
  use_history: bool
  num_draws: int  # R
  num_segments: int  # G = scenarios x draws in this call
  base_devices: int  # > 0: also return the first base_devices per device
  devices: EnergyConfig  # the device model (fading drawn, applied per scen.)
  reference: str  # "scenario": T from each scenario's devices; "base": base's


def _bits(d: Devices, hist, ratio, eps_scale, st: Statics):
  """[B, L] int32 bit-widths of each scheme."""
  n = d.gain.shape[-1]
  out = []
  for name in st.schemes:
    if name == "fp32":
      out.append(jnp.full((n,), 32, jnp.int32))
    elif name == "fixed":
      out.append(jnp.full((n,), st.fixed_bits, jnp.int32))
    elif st.use_history:
      out.append(jnp.minimum(hist, d.bit_cap).astype(jnp.int32))
    else:
      out.append(
        bits_sources.ondemand_bits(
          ratio, d.eps * eps_scale, st.b_min, d.bit_cap
        )
      )
  return jnp.stack(out)


def _allocate_all(d, payload, T, flops, w_seg, seg, st: Statics):
  """(e_comp, e_comm, feasible) [B, P', L] and shared's budget excess."""
  parts = []
  if st.policies:
    al = jax.vmap(
      lambda p: allocate_policies(d, p, st.samples, T, flops, st.policies)
    )(payload)
    parts.append((al.e_comp_j, al.e_comm_j, al.feasible))  # [B, P, L]
  over = jnp.zeros((payload.shape[0], st.num_segments), bool)
  if st.shared:
    sh, w, _ = jax.vmap(
      lambda p: allocate_shared_bandwidth(
        d,
        p,
        st.samples,
        T,
        flops,
        w_seg,
        segments=seg,
        num_segments=st.num_segments,
      )
    )(payload)  # [B, L]
    parts.append(
      (sh.e_comp_j[:, None], sh.e_comm_j[:, None], sh.feasible[:, None])
    )
    used = jax.vmap(
      lambda v: jax.ops.segment_sum(v, seg, num_segments=st.num_segments)
    )(w)
    over = used > w_seg * (1 + 1e-3)
  e_comp, e_comm, feas = (jnp.concatenate(x, axis=1) for x in zip(*parts))
  return e_comp, e_comm, feas, over


def population(
  devices: EnergyConfig, seed: ArrayLike, draw: ArrayLike, index: ArrayLike
) -> Tuple[Devices, Array]:
  """Device `index` of draw `draw`, key fold_in(fold_in(key(seed), draw),
  index) (traceable).

  Fields as `sample_devices_from_keys` with Rayleigh fading drawn: `gain`
  includes it, `large_scale_gain` does not. Device j of a draw is the same in
  every scenario and every population size (populations are nested).

  Returns:
    (Devices [L], their keys [L]).
  """
  root = jax.random.key(seed)
  keys = jax.vmap(
    lambda r, j: jax.random.fold_in(jax.random.fold_in(root, r), j)
  )(jnp.asarray(draw), jnp.asarray(index))
  cfg = dataclasses.replace(devices, rayleigh_fading=True)
  return sample_devices_from_keys(cfg, keys), keys


def with_cycles(d: Devices, keys, cycles, flops, spread) -> Devices:
  """Devices whose c_k = cycles x U[1 - spread, 1 + spread] where
  cycles > 0 (traced, [L]): flops_per_cycle = flops / c_k, the factor from
  fold_in(key, 7), as `sample_devices_from_keys` with
  EnergyConfig.cycles_per_sample set; cycles = 0 keeps the FLOPs regime's."""
  u = jax.vmap(lambda k: cycles_factor(k, spread, (), d.gain.dtype))(keys)
  c_k = cycles * u
  fpc = jnp.where(cycles > 0, flops / jnp.where(cycles > 0, c_k, 1.0), 0.0)
  return d.replace(
    flops_per_cycle=jnp.where(cycles > 0, fpc, d.flops_per_cycle)
  )


def _scenario_devices(seed, draw, index, scen, sc, st: Statics):
  """Each (scenario, draw)'s devices: its W / N, p_max, f_max, fading,
  cycles per sample."""
  d, keys = population(st.devices, seed, draw, index)
  d = with_cycles(
    d,
    keys,
    sc["cycles"][scen],
    sc["flops"][scen],
    st.devices.cycles_spread,
  )
  n = sc["n"][scen].astype(d.gain.dtype)
  d = d.replace(
    bandwidth_hz=sc["W"][scen] / n,
    p_max_w=sc["p_max"][scen],
    f_max_hz=sc["f_max"][scen],
    gain=jnp.where(sc["fading"][scen], d.gain, d.large_scale_gain),
  )
  return d, keys


@functools.partial(jax.jit, static_argnums=4)
def base_statistic(seed, draw, index, sc, st: Statics):
  """The deadline rule's statistic (factor 1) of the base scenario, [R]."""
  scen = jnp.zeros_like(draw)
  d, _ = _scenario_devices(seed, draw, index, scen, sc, st)
  return deadline_for(
    d,
    sc["num_params"][scen],
    st.samples,
    sc["flops"][scen],
    st.rule,
    1.0,
    st.quantile,
    segments=draw,
    num_segments=st.num_draws,
  )


def _deadlines(d, scen, seg, sc, base_stat, st: Statics):
  """T of every segment [G]: fixed, the base's, or each scenario's own."""
  g = st.num_segments
  factor = jnp.repeat(sc["factor"], st.num_draws)  # [G]
  if st.deadline_s > 0:
    return jnp.full((g,), st.deadline_s, d.gain.dtype)
  if st.reference == "base":
    return factor * jnp.tile(base_stat, g // st.num_draws)
  return deadline_for(
    d,
    sc["num_params"][scen],
    st.samples,
    sc["flops"][scen],
    st.rule,
    factor,
    st.quantile,
    segments=seg,
    num_segments=g,
  )


@functools.partial(jax.jit, static_argnums=7)
def evaluate(seed, draw, index, pool, scen, sc, base_stat, st: Statics):
  """Every (scenario, draw) of the call as one flat device axis L; sums per
  segment.

  draw, index, scen: [L] int32 draw, device index and (call-local) scenario
  of each device; pool: pooled history bits; sc: [S] scenario settings;
  base_stat: [R] the base scenario's deadline statistic (reference "base").
  Segment of a device: scen * R + draw.
  """
  g = st.num_segments
  d, keys = _scenario_devices(seed, draw, index, scen, sc, st)
  seg = scen * st.num_draws + draw
  hist = pool[
    jax.vmap(
      lambda k: jax.random.randint(
        jax.random.fold_in(k, 1), (), 0, pool.shape[0]
      )
    )(keys)
  ]
  flops = sc["flops"][scen]
  t_seg = _deadlines(d, scen, seg, sc, base_stat, st)
  bits = _bits(d, hist, sc["ratio"][scen], sc["eps_scale"][scen], st)
  payload = sc["table"][scen, bits - 1]  # [B, L]
  w_seg = jnp.repeat(sc["W"], st.num_draws)
  e_comp, e_comm, feas, over = _allocate_all(
    d, payload, t_seg[seg], flops, w_seg, seg, st
  )
  ssum = lambda v: jax.ops.segment_sum(
    jnp.moveaxis(v, -1, 0), seg, num_segments=g
  )
  out = dict(
    e_comp=ssum(jnp.where(feas, e_comp, 0.0)),  # [G, B, P']
    e_comm=ssum(jnp.where(feas, e_comm, 0.0)),
    n_feasible=ssum(feas.astype(jnp.float32)),
    bits_sum=ssum(bits.astype(jnp.float32)),  # [G, B]
    payload_sum=ssum(payload),
    deadline_s=t_seg,
    budget_over=over.T,
  )  # [G], [G, B]
  if st.base_devices:
    k = st.base_devices
    out["dev_energy"] = jnp.where(feas, e_comp + e_comm, jnp.nan)[
      ..., :k
    ]  # [B, P', k]
    out["dev_bits"] = bits[:, :k]
  return out
