"""The system-level energy sweep: scenarios x device draws x bits schemes x allocations (issue 17).

Energy-efficient FL papers (Yang et al., IEEE TWC 2021, and the seed paper
arXiv 2403.04430) show how system energy moves with the deadline, the number
of devices, the bandwidth, the error demands, the model size and the power /
CPU limits. None of it needs training: it is the quantizer's payload model and
the allocators evaluated over a grid. Here the whole grid is ONE jitted call
(more only past MAX_DEVICES_PER_CALL devices): every (scenario, draw) is a
segment of one flat device axis, so scenarios with 10 and 10^4 devices share
the call without padding; per-scenario settings are traced data, scenario
sums and shared-bandwidth budgets are segment sums, and the bits schemes are a
vmapped axis (policies a static unroll).

Per (draw, scenario): device j of draw r is drawn from its own key
fold_in(fold_in(key(seed), r), j) (`population`; populations of any size are
nested, and a device is the same in every scenario), gets the scenario's
bandwidth share W / N, p_max, f_max and, with fading, its Rayleigh draw
|h|^2 ~ Exp(1); T comes from `deadline_for` per (scenario, draw) (or is
fixed); each bits scheme's bit-widths give payloads through the quantizer's
S(b) table (`Quantizer.payload_bits`); every allocation policy prices the same
uploads (`allocate_policies`; "shared" is `allocate_shared_bandwidth`, which
also splits W). Infeasible devices skip the round (the "drop" policy: no
energy, no upload); totals are over the devices that upload, and the feasible
fraction is reported beside them.
"""
from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Callable, Dict, List, NamedTuple, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from fedqjax import quantization as Q
from experiments.energy_sweep import bits_sources, settings as sc_lib
from fedqjax.energy.allocator import deadline_for
from fedqjax.energy.devices import Devices, EnergyConfig, sample_devices_from_keys
from fedqjax.energy.policies import allocate_policies
from fedqjax.energy.shared_bandwidth import allocate_shared_bandwidth
from fedqjax.typing import Array, ArrayLike

MAX_DEVICES_PER_CALL = 2**21  # draws x scenarios x devices evaluated by one call


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
  base_devices: int  # > 0: also return the first base_devices per-device arrays
  devices: EnergyConfig  # the device model (fading drawn, applied per scenario)
  reference: str  # "scenario": T from each scenario's devices; "base": from the base's


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
      out.append(bits_sources.ondemand_bits(ratio, d.eps * eps_scale, st.b_min, d.bit_cap))
  return jnp.stack(out)


def _allocate_all(d, payload, T, flops, w_seg, seg, st: Statics):
  """(e_comp, e_comm, feasible) [B, P', L] and shared's budget excess [B, G]."""
  parts = []
  if st.policies:
    al = jax.vmap(lambda p: allocate_policies(d, p, st.samples, T, flops, st.policies))(payload)
    parts.append((al.e_comp_j, al.e_comm_j, al.feasible))  # [B, P, L]
  over = jnp.zeros((payload.shape[0], st.num_segments), bool)
  if st.shared:
    sh, w, _ = jax.vmap(lambda p: allocate_shared_bandwidth(
        d, p, st.samples, T, flops, w_seg, segments=seg,
        num_segments=st.num_segments))(payload)  # [B, L]
    parts.append((sh.e_comp_j[:, None], sh.e_comm_j[:, None], sh.feasible[:, None]))
    used = jax.vmap(lambda v: jax.ops.segment_sum(v, seg, num_segments=st.num_segments))(w)
    over = used > w_seg * (1 + 1e-3)
  e_comp, e_comm, feas = (jnp.concatenate(x, axis=1) for x in zip(*parts))
  return e_comp, e_comm, feas, over


def population(devices: EnergyConfig, seed: ArrayLike, draw: ArrayLike, index: ArrayLike
               ) -> Tuple[Devices, Array]:
  """Device `index` of draw `draw`: key fold_in(fold_in(key(seed), draw), index) (traceable).

  Fields as `sample_devices_from_keys` with Rayleigh fading drawn: `gain`
  includes it, `large_scale_gain` does not. Device j of a draw is the same in
  every scenario and every population size (populations are nested).

  Returns:
    (Devices [L], their keys [L]).
  """
  root = jax.random.key(seed)
  keys = jax.vmap(lambda r, j: jax.random.fold_in(jax.random.fold_in(root, r), j))(
      jnp.asarray(draw), jnp.asarray(index))
  cfg = dataclasses.replace(devices, rayleigh_fading=True)
  return sample_devices_from_keys(cfg, keys), keys


def _scenario_devices(seed, draw, index, scen, sc, st: Statics):
  """The devices of each (scenario, draw) with the scenario's W / N, p_max, f_max, fading."""
  d, keys = population(st.devices, seed, draw, index)
  n = sc["n"][scen].astype(d.gain.dtype)
  d = d.replace(bandwidth_hz=sc["W"][scen] / n, p_max_w=sc["p_max"][scen],
                f_max_hz=sc["f_max"][scen],
                gain=jnp.where(sc["fading"][scen], d.gain, d.large_scale_gain))
  return d, keys


@functools.partial(jax.jit, static_argnums=4)
def _base_statistic(seed, draw, index, sc, st: Statics):
  """The deadline rule's statistic (factor 1) of the base scenario, per draw [R]."""
  scen = jnp.zeros_like(draw)
  d, _ = _scenario_devices(seed, draw, index, scen, sc, st)
  return deadline_for(d, sc["num_params"][scen], st.samples, sc["flops"][scen], st.rule, 1.0,
                      st.quantile, segments=draw, num_segments=st.num_draws)


@functools.partial(jax.jit, static_argnums=7)
def _evaluate(seed, draw, index, pool, scen, sc, base_stat, st: Statics):
  """Every (scenario, draw) of the call as one flat device axis L; sums per segment.

  draw, index, scen: [L] int32 draw, device index and (call-local) scenario
  of each device; pool: pooled history bits; sc: [S] scenario settings;
  base_stat: [R] the base scenario's deadline statistic (reference "base").
  Segment of a device: scen * R + draw.
  """
  g = st.num_segments
  d, keys = _scenario_devices(seed, draw, index, scen, sc, st)
  seg = scen * st.num_draws + draw
  hist = pool[jax.vmap(lambda k: jax.random.randint(jax.random.fold_in(k, 1), (), 0,
                                                    pool.shape[0]))(keys)]
  flops = sc["flops"][scen]
  factor = jnp.repeat(sc["factor"], st.num_draws)  # [G]
  if st.deadline_s > 0:
    t_seg = jnp.full((g,), st.deadline_s, d.gain.dtype)
  elif st.reference == "base":
    t_seg = factor * jnp.tile(base_stat, g // st.num_draws)
  else:
    t_seg = deadline_for(d, sc["num_params"][scen], st.samples, flops, st.rule, factor,
                         st.quantile, segments=seg, num_segments=g)
  bits = _bits(d, hist, sc["ratio"][scen], sc["eps_scale"][scen], st)  # [B, L]
  payload = sc["table"][scen, bits - 1]  # [B, L]
  w_seg = jnp.repeat(sc["W"], st.num_draws)
  e_comp, e_comm, feas, over = _allocate_all(d, payload, t_seg[seg], flops, w_seg, seg, st)
  ssum = lambda v: jax.ops.segment_sum(jnp.moveaxis(v, -1, 0), seg, num_segments=g)
  out = dict(e_comp=ssum(jnp.where(feas, e_comp, 0.0)),  # [G, B, P']
             e_comm=ssum(jnp.where(feas, e_comm, 0.0)),
             n_feasible=ssum(feas.astype(jnp.float32)),
             bits_sum=ssum(bits.astype(jnp.float32)),  # [G, B]
             payload_sum=ssum(payload),
             deadline_s=t_seg, budget_over=over.T)  # [G], [G, B]
  if st.base_devices:
    k = st.base_devices
    out["dev_energy"] = jnp.where(feas, e_comp + e_comm, jnp.nan)[..., :k]  # [B, P', k]
    out["dev_bits"] = bits[:, :k]
  return out


class Prepared(NamedTuple):
  """Host-side inputs of every scenario."""
  scenarios: list
  rows: list
  arrays: Dict[str, np.ndarray]  # [S] per-scenario settings, table [S, 32]
  models: Dict[str, sc_lib.ModelSpec]
  ratios: Dict[str, float]
  history: Any  # pooled history bits or None


def prepare(settings: sc_lib.SweepSettings, log: Callable[[str], None] = print) -> Prepared:
  """Scenarios, model specs, payload tables and on-demand statistics (host side)."""
  grid = sc_lib.scenarios_of(settings)
  scen = grid["scenarios"]
  source = settings.bits_source
  history = None
  if source not in sc_lib.BITS_SOURCES:
    history = bits_sources.history_bits(source)
  models, ratios, tables = {}, {}, {}
  for name in dict.fromkeys(s.model for s in scen):
    spec = sc_lib.model_spec(name)
    q = Q.make_quantizer(spec.template, settings.quant_method, settings.bucket_size or None)
    models[name] = spec
    tables[name] = np.asarray(q.payload_bits(np.arange(1, 33, dtype=np.int32)), np.float32)
    if source == "gaussian":
      ratios[name] = bits_sources.gaussian_ratio(q)
    elif source == "measured":
      log(f"energy_sweep: measuring one local update of model {name} (slow) ...")
      ratios[name] = bits_sources.measured_ratio(name, q, settings.seed)
    else:
      ratios[name] = 1.0  # unused: bits come from the history
    log(f"energy_sweep: model {name}: d={spec.num_params:,} params, {q.num_buckets} buckets, "
        f"{spec.flops_per_sample:.4g} FLOPs/sample, rho={ratios[name]:.4g}")
  f = lambda get: np.asarray([get(s) for s in scen], np.float32)
  arrays = dict(
      n=np.asarray([s.num_devices for s in scen], np.int32), W=f(lambda s: s.total_bandwidth_hz),
      factor=f(lambda s: s.deadline_factor), eps_scale=f(lambda s: s.eps_scale),
      p_max=f(lambda s: s.p_max_w), f_max=f(lambda s: s.f_max_hz),
      fading=np.asarray([s.fading for s in scen]),
      flops=f(lambda s: models[s.model].flops_per_sample),
      num_params=f(lambda s: models[s.model].num_params),
      ratio=f(lambda s: ratios[s.model]),
      table=np.stack([tables[s.model] for s in scen]))
  return Prepared(scen, grid["rows"], arrays, models, ratios, history)


def statics(settings: sc_lib.SweepSettings, num_segments: int, base_devices: int) -> Statics:
  return Statics(
      schemes=settings.bits_schemes,
      policies=tuple(a for a in settings.allocations if a != "shared"),
      shared="shared" in settings.allocations, fixed_bits=settings.fixed_bits,
      b_min=settings.b_min, rule=settings.deadline_rule, quantile=settings.deadline_quantile,
      deadline_s=settings.deadline_s, samples=float(settings.samples_per_round),
      use_history=settings.bits_source not in sc_lib.BITS_SOURCES,
      num_draws=settings.num_seeds, num_segments=num_segments,
      base_devices=base_devices, devices=settings.devices,
      reference=settings.deadline_reference)


def _chunks(prep: Prepared, r: int) -> List[List[int]]:
  """Consecutive scenario lists of at most MAX_DEVICES_PER_CALL draws x devices each."""
  chunks, cur, size = [], [], 0
  for i, s in enumerate(prep.scenarios):
    if cur and size + r * s.num_devices > MAX_DEVICES_PER_CALL:
      chunks.append(cur)
      cur, size = [], 0
    cur.append(i)
    size += r * s.num_devices
  return chunks + [cur]


def run_chunk(settings, prep: Prepared, idx: List[int], base_stat) -> Dict[str, np.ndarray]:
  """One jitted call over the scenarios `idx` x every draw; stats [R, len(idx), ...]."""
  r = settings.num_seeds
  ns = [prep.scenarios[i].num_devices for i in idx]
  scen = np.repeat(np.arange(len(idx)), [r * n for n in ns]).astype(np.int32)
  draw = np.concatenate([np.repeat(np.arange(r), n) for n in ns]).astype(np.int32)
  index = np.concatenate([np.tile(np.arange(n), r) for n in ns]).astype(np.int32)
  pool = prep.history if prep.history is not None else np.ones((1,), np.int32)
  sc = {k: jnp.asarray(v[idx]) for k, v in prep.arrays.items()}
  st = statics(settings, len(idx) * r, r * ns[0] if idx[0] == 0 else 0)
  out = jax.device_get(_evaluate(settings.seed, draw, index, jnp.asarray(pool, jnp.int32),
                                 scen, sc, base_stat, st))
  res = {}
  for k, v in out.items():
    if k.startswith("dev_"):  # [B, (P',) R * N0] -> [R, B, (P',) N0]
      v = v.reshape(v.shape[:-1] + (r, ns[0]))
      res[k] = np.moveaxis(v, -2, 0)
    else:  # [S * R, ...] -> [R, S, ...]
      res[k] = np.swapaxes(v.reshape((len(idx), r) + v.shape[1:]), 0, 1)
  return res


def run(settings: sc_lib.SweepSettings, log: Callable[[str], None] = print,
        prepared: Prepared | None = None) -> Dict[str, Any]:
  """Runs the sweep; returns per-scenario per-draw statistics and the base's per-device arrays.

  Returns:
    dict(prepared, stats={e_comp, e_comm, n_feasible: [R, S, B, P'];
    bits_sum, payload_sum, budget_over: [R, S, B]; deadline_s: [R, S]},
    base={dev_energy [R, B, P', N0], dev_bits [R, B, N0]}, allocations (the P'
    names, "shared" last), timings {what: seconds}).
  """
  prep = prepare(settings, log) if prepared is None else prepared
  r = settings.num_seeds
  timings = {}
  base_stat = jnp.zeros((r,), jnp.float32)
  if settings.deadline_reference == "base" and settings.deadline_s <= 0:
    n0 = prep.scenarios[0].num_devices
    draw = np.repeat(np.arange(r), n0).astype(np.int32)
    index = np.tile(np.arange(n0), r).astype(np.int32)
    sc0 = {k: jnp.asarray(v[:1]) for k, v in prep.arrays.items()}
    base_stat = _base_statistic(settings.seed, draw, index, sc0, statics(settings, r, 0))
  parts = []
  for c, idx in enumerate(_chunks(prep, r)):
    log(f"energy_sweep: call {c}: compiling and evaluating {len(idx)} scenarios ...")
    t0 = time.perf_counter()
    parts.append(run_chunk(settings, prep, idx, base_stat))
    timings[f"call {c}"] = time.perf_counter() - t0
    devices = r * sum(prep.scenarios[i].num_devices for i in idx)
    log(f"energy_sweep: call {c} done: {len(idx)} scenarios x {r} draws ({devices:,} devices) x "
        f"{len(settings.bits_schemes)} bits schemes x {len(settings.allocations)} allocations "
        f"in {timings[f'call {c}']:.1f} s (compile included)")
  base = {k: v for k, v in parts[0].items() if k.startswith("dev_")}
  stats = {k: np.concatenate([p[k] for p in parts], axis=1) for k in parts[0]
           if not k.startswith("dev_")}
  allocations = tuple(a for a in settings.allocations if a != "shared") + (
      ("shared",) if "shared" in settings.allocations else ())
  return dict(prepared=prep, stats=stats, base=base, allocations=allocations, timings=timings)
