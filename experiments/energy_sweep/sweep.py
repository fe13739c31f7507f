"""The system-level energy sweep: scenarios x device draws x bits schemes x
allocations.

Energy-efficient FL papers (Yang et al., IEEE TWC 2021, and the seed paper
arXiv 2403.04430) show how system energy moves with the deadline, the number
of devices, the bandwidth, the error demands, the model size and the power /
CPU limits. None of it needs training: it is the quantizer's payload model
and the allocators evaluated over a grid. Here the whole grid is ONE jitted
call (more only past MAX_DEVICES_PER_CALL devices; `evaluate.py`). This
module is the host side: scenarios, model specs, payload tables and
on-demand statistics (`prepare`), the calls, and their statistics (`run`).
Totals are over the devices that upload (infeasible ones skip the round),
and the feasible fraction is reported beside them.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from experiments.energy_sweep import bits_sources, evaluate, models
from experiments.energy_sweep.settings import (
  BITS_SOURCES,
  Settings,
  scenarios_of,
)
from fedqjax import quantization as Q

MAX_DEVICES_PER_CALL = 2**21  # draws x scenarios x devices of one call


class Prepared(NamedTuple):
  """Host-side inputs of every scenario."""

  scenarios: list
  rows: list
  arrays: Dict[str, np.ndarray]  # [S] per-scenario settings, table [S, 32]
  models: Dict[str, models.ModelSpec]
  ratios: Dict[str, float]
  history: Any  # pooled history bits or None


def _ratio(settings: Settings, name: str, q, log) -> float:
  """rho of the model's on-demand bits (bits_sources.py)."""
  source = settings.bits_source
  if source == "gaussian":
    return bits_sources.gaussian_ratio(q)
  if source == "measured":
    log(f"energy_sweep: measuring one local update of model {name} (slow) ...")
    return bits_sources.measured_ratio(name, q, settings.seed)
  return 1.0  # unused: bits come from the history


def cycles_of(settings: Settings, scenario) -> float:
  """The scenario's c (cycles per sample): its own, else the regime's
  (config.cycles_per_sample); 0 = the model's FLOPs / FLOPs per cycle."""
  return float(scenario.cycles_per_sample or settings.cycles_per_sample)


def _arrays(scen, specs, ratios, tables, c0) -> Dict[str, np.ndarray]:
  """[S] per-scenario settings and the [S, 32] payload tables (c0: the
  regime's cycles per sample, for scenarios without their own)."""
  f = lambda get: np.asarray([get(s) for s in scen], np.float32)
  return dict(
    cycles=f(lambda s: s.cycles_per_sample or c0),
    n=np.asarray([s.num_devices for s in scen], np.int32),
    W=f(lambda s: s.total_bandwidth_hz),
    factor=f(lambda s: s.deadline_factor),
    eps_scale=f(lambda s: s.eps_scale),
    p_max=f(lambda s: s.p_max_w),
    f_max=f(lambda s: s.f_max_hz),
    fading=np.asarray([s.fading for s in scen]),
    flops=f(lambda s: specs[s.model].flops_per_sample),
    num_params=f(lambda s: specs[s.model].num_params),
    ratio=f(lambda s: ratios[s.model]),
    table=np.stack([tables[s.model] for s in scen]),
  )


def prepare(settings: Settings, log: Callable[[str], None] = print) -> Prepared:
  """Scenarios, model specs, payload tables and on-demand statistics.

  Raises:
    ValueError: a bits source that cannot be read, naming config.bits_source.
  """
  grid = scenarios_of(settings)
  scen = grid["scenarios"]
  history = None
  if settings.bits_source not in BITS_SOURCES:
    history = bits_sources.history_bits(settings.bits_source)
  specs, ratios, tables = {}, {}, {}
  q_set = settings.quant
  for name in dict.fromkeys(s.model for s in scen):
    spec = models.model_spec(name)
    q = Q.make_quantizer(spec.template, q_set.method, q_set.bucket_size or None)
    specs[name] = spec
    tables[name] = np.asarray(
      q.payload_bits(np.arange(1, 33, dtype=np.int32)), np.float32
    )
    ratios[name] = _ratio(settings, name, q, log)
    log(
      f"energy_sweep: model {name}: d={spec.num_params:,} params, "
      f"{q.num_buckets} buckets, {spec.flops_per_sample:.4g} FLOPs/sample, "
      f"rho={ratios[name]:.4g}"
    )
  return Prepared(
    scen,
    grid["rows"],
    _arrays(scen, specs, ratios, tables, settings.cycles_per_sample),
    specs,
    ratios,
    history,
  )


def statics(
  settings: Settings, num_segments: int, base_devices: int
) -> evaluate.Statics:
  """The static part of one jitted call."""
  return evaluate.Statics(
    schemes=settings.bits_schemes,
    policies=tuple(a for a in settings.allocations if a != "shared"),
    shared="shared" in settings.allocations,
    fixed_bits=settings.fixed_bits,
    b_min=settings.quant.b_min,
    rule=settings.deadline.rule,
    quantile=settings.deadline.quantile,
    deadline_s=settings.deadline.seconds,
    samples=float(settings.samples_per_round),
    use_history=settings.bits_source not in BITS_SOURCES,
    num_draws=settings.num_seeds,
    num_segments=num_segments,
    base_devices=base_devices,
    devices=settings.devices.energy_config(),
    reference=settings.deadline.reference,
  )


def _chunks(prep: Prepared, r: int) -> List[List[int]]:
  """Consecutive scenario lists of at most MAX_DEVICES_PER_CALL draws x
  devices each."""
  chunks, cur, size = [], [], 0
  for i, s in enumerate(prep.scenarios):
    if cur and size + r * s.num_devices > MAX_DEVICES_PER_CALL:
      chunks.append(cur)
      cur, size = [], 0
    cur.append(i)
    size += r * s.num_devices
  return chunks + [cur]


def run_chunk(
  settings: Settings, prep: Prepared, idx: List[int], base_stat
) -> Dict[str, np.ndarray]:
  """One jitted call over the scenarios `idx` x every draw; statistics
  [R, len(idx), ...] (and the base's per-device arrays if idx[0] == 0)."""
  r = settings.num_seeds
  ns = [prep.scenarios[i].num_devices for i in idx]
  scen = np.repeat(np.arange(len(idx)), [r * n for n in ns]).astype(np.int32)
  draw = np.concatenate([np.repeat(np.arange(r), n) for n in ns]).astype(
    np.int32
  )
  index = np.concatenate([np.tile(np.arange(n), r) for n in ns]).astype(
    np.int32
  )
  pool = prep.history if prep.history is not None else np.ones((1,), np.int32)
  sc = {k: jnp.asarray(v[idx]) for k, v in prep.arrays.items()}
  st = statics(settings, len(idx) * r, r * ns[0] if idx[0] == 0 else 0)
  out = jax.device_get(
    evaluate.evaluate(
      settings.seed,
      draw,
      index,
      jnp.asarray(pool, jnp.int32),
      scen,
      sc,
      base_stat,
      st,
    )
  )
  res = {}
  for k, v in out.items():
    if k.startswith("dev_"):  # [B, (P',) R * N0] -> [R, B, (P',) N0]
      v = v.reshape(v.shape[:-1] + (r, ns[0]))
      res[k] = np.moveaxis(v, -2, 0)
    else:  # [S * R, ...] -> [R, S, ...]
      res[k] = np.swapaxes(v.reshape((len(idx), r) + v.shape[1:]), 0, 1)
  return res


def _base_statistic(settings: Settings, prep: Prepared):
  """[R] the base scenario's deadline statistic (reference "base"), else 0."""
  r = settings.num_seeds
  if settings.deadline.reference != "base" or settings.deadline.seconds > 0:
    return jnp.zeros((r,), jnp.float32)
  n0 = prep.scenarios[0].num_devices
  draw = np.repeat(np.arange(r), n0).astype(np.int32)
  index = np.tile(np.arange(n0), r).astype(np.int32)
  sc0 = {k: jnp.asarray(v[:1]) for k, v in prep.arrays.items()}
  return evaluate.base_statistic(
    settings.seed, draw, index, sc0, statics(settings, r, 0)
  )


def run(
  settings: Settings,
  log: Callable[[str], None] = print,
  prepared: Prepared | None = None,
) -> Dict[str, Any]:
  """Runs the sweep: per-scenario per-draw statistics and the base's
  per-device arrays.

  Returns:
    dict(prepared, stats={e_comp, e_comm, n_feasible: [R, S, B, P'];
    bits_sum, payload_sum, budget_over: [R, S, B]; deadline_s: [R, S]},
    base={dev_energy [R, B, P', N0], dev_bits [R, B, N0]}, allocations (the
    P' names, "shared" last), timings {what: seconds}).
  """
  prep = prepare(settings, log) if prepared is None else prepared
  r = settings.num_seeds
  timings = {}
  base_stat = _base_statistic(settings, prep)
  parts = []
  for c, idx in enumerate(_chunks(prep, r)):
    log(
      f"energy_sweep: call {c}: compiling and evaluating {len(idx)} "
      "scenarios ..."
    )
    t0 = time.perf_counter()
    parts.append(run_chunk(settings, prep, idx, base_stat))
    timings[f"call {c}"] = time.perf_counter() - t0
    devices = r * sum(prep.scenarios[i].num_devices for i in idx)
    log(
      f"energy_sweep: call {c} done: {len(idx)} scenarios x {r} draws "
      f"({devices:,} devices) x {len(settings.bits_schemes)} bits schemes "
      f"x {len(settings.allocations)} allocations in "
      f"{timings[f'call {c}']:.1f} s (compile included)"
    )
  base = {k: v for k, v in parts[0].items() if k.startswith("dev_")}
  stats = {
    k: np.concatenate([p[k] for p in parts], axis=1)
    for k in parts[0]
    if not k.startswith("dev_")
  }
  allocations = tuple(a for a in settings.allocations if a != "shared") + (
    ("shared",) if "shared" in settings.allocations else ()
  )
  return dict(
    prepared=prep,
    stats=stats,
    base=base,
    allocations=allocations,
    timings=timings,
  )
