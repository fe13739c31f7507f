"""Config validation and conversion at the boundary (before anything compiles).

The sweep's ml_collections ConfigDict is checked field by field against
SCHEMA: every key has a type and a valid range; errors name the key, the
value and the range; unknown keys are rejected with the closest valid name.
Then it is turned into frozen dataclasses (RoundSpec, EnergyConfig,
UNetConfig): no ConfigDict is ever traced.
"""
from __future__ import annotations

import difflib
import math
from typing import Any, Callable, Dict, Tuple

import jax

from fedqjax import energy
from fedqjax.federated import spec as spec_lib

_NUM = (int, float)


def _as_float(v):
  """float(v), or None when v is not a finite number (huge ints included)."""
  try:
    f = float(v)
  except (OverflowError, TypeError, ValueError):
    return None
  return f if math.isfinite(f) else None


def _rng(lo=None, hi=None, lo_open=False, hi_open=False):
  def check(v):
    if _as_float(v) is None:  # NaN, inf, or an int too large for a float
      return False
    if lo is not None and (v <= lo if lo_open else v < lo):
      return False
    if hi is not None and (v >= hi if hi_open else v > hi):
      return False
    return True
  lb = "(" if lo_open else "["
  rb = ")" if hi_open else "]"
  desc = f"{lb}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{rb}"
  return check, desc


def _choice(*options):
  return (lambda v: v in options), f"one of {options}"


def _tuple_of(elem_check, min_len=1, desc="values"):
  def check(v):
    return (isinstance(v, (tuple, list)) and len(v) >= min_len and
            all(elem_check(x) for x in v))
  return check, f"a tuple of >= {min_len} {desc}"


_pos = lambda x: isinstance(x, _NUM) and not isinstance(x, bool) and \
    (_as_float(x) or 0) > 0
_ANY = (lambda v: True), "any"

# key -> (types, (check, description))
SCHEMA: Dict[str, Tuple[tuple, Tuple[Callable[[Any], bool], str]]] = {
    "preset": ((str,), _choice("cpu", "paper", "test")),
    "seed": ((int,), _rng(0, 2**31 - 1)),
    "data.name": ((str,), _choice("auto", "cifar10", "fashion_mnist",
                                  "synthetic")),
    "data.data_dir": ((str,), _ANY),
    "data.tarball": ((str,), _ANY),
    "data.resolution": ((int,), _choice(0, 8, 16, 28, 32)),  # 0 = native
    "data.partition": ((str,), _choice("iid", "dirichlet", "shards")),
    "data.dirichlet_alpha": (_NUM, _rng(0, None, lo_open=True)),
    "data.labels_per_client": ((int,), _rng(1, 10)),
    "data.max_train": ((int,), _rng(0)),
    "data.num_test": ((int,), _rng(2)),
    "model.ch": ((int,), _rng(1, 1024)),
    "model.ch_mult": ((tuple, list), _tuple_of(
        lambda x: isinstance(x, int) and x >= 1, 1, "ints >= 1")),
    "model.num_res_blocks": ((int,), _rng(1, 8)),
    "model.attn_resolutions": ((tuple, list), _tuple_of(
        lambda x: isinstance(x, int) and x >= 1, 0, "ints")),
    "model.dropout": (_NUM, _rng(0, 1, hi_open=True)),
    "model.num_groups": ((int,), _rng(1, 1024)),
    "model.dtype": ((str,), _choice("float32", "bfloat16")),
    "model.conv_impl": ((str,), _choice("xla", "im2col", "fwd_form")),
    "diffusion.T": ((int,), _rng(2, 100000)),
    "diffusion.beta_start": (_NUM, _rng(0, 1, lo_open=True, hi_open=True)),
    "diffusion.beta_end": (_NUM, _rng(0, 1, lo_open=True, hi_open=True)),
    "fed.num_clients": ((int,), _rng(1, 1_000_000)),
    "fed.clients_per_round": ((int,), _rng(1, 1_000_000)),
    "fed.local_steps": ((int,), _rng(1, 10_000)),
    "fed.batch_size": ((int,), _rng(1, 100_000)),
    "fed.rounds": ((int,), _rng(1, 10_000_000)),
    "fed.server_lr": (_NUM, _rng(0, 10, lo_open=True)),
    "fed.ema_decay": (_NUM, _rng(0, 1, hi_open=True)),
    "fed.parallelism": ((str,), _choice("auto", *spec_lib.PARALLELISM)),
    "fed.chunk_size": ((int,), _rng(1, 1_000_000)),
    "fed.unroll": ((bool, int), (lambda v: isinstance(v, bool) or v >= 1,
                                 "True/False or an int >= 1")),
    "optim.optimizer": ((str,), _choice(*spec_lib.OPTIMIZERS)),
    "optim.lr": (_NUM, _rng(0, 10, lo_open=True, hi_open=True)),
    "optim.grad_clip": (_NUM, _rng(0)),
    "quant.method": ((str,), _choice("minmax", "qsgd")),
    "quant.bucket_size": ((int,), _rng(0)),
    "quant.b_min": ((int,), _rng(1, 32)),
    "quant.fixed_bits": ((int,), _rng(1, 32)),
    "quant.target": ((str,), _choice(*spec_lib.TARGETS)),
    "energy.radius_m": (_NUM, _rng(0, None, lo_open=True)),
    "energy.shadowing_db": (_NUM, _rng(0, 40)),
    "energy.rayleigh_fading": ((bool,), _ANY),
    "energy.total_bandwidth_hz": (_NUM, _rng(0, None, lo_open=True)),
    "energy.noise_psd_dbm_hz": (_NUM, _rng(-250, 0)),
    "energy.p_max_w": (_NUM, _rng(0, None, lo_open=True)),
    "energy.f_min_hz": (_NUM, _rng(0, None, lo_open=True)),
    "energy.f_max_hz": (_NUM, _rng(0, None, lo_open=True)),
    "energy.tau_mean": (_NUM, _rng(0, None, lo_open=True)),
    "energy.tau_spread": (_NUM, _rng(0, 1, hi_open=True)),
    "energy.flops_per_cycle_choices": ((tuple, list), _tuple_of(_pos, 1,
                                                                "values > 0")),
    "energy.eps_choices": ((tuple, list), _tuple_of(_pos, 1, "values > 0")),
    "energy.deadline_s": (_NUM, _rng(0)),
    "energy.deadline_factor": (_NUM, _rng(0, None, lo_open=True)),
    "energy.infeasible_policy": ((str,), _choice(*spec_lib.POLICIES)),
    "eval.every": ((int,), _rng(0)),
    "eval.num_samples": ((int,), _rng(2, 1_000_000)),
    "eval.batch_size": ((int,), _rng(1, 100_000)),
    "eval.sampler": ((str,), _choice("ddim", "ddpm")),
    "eval.ddim_steps": ((int,), _rng(1, 100_000)),
    "eval.eta": (_NUM, _rng(0, 1)),
    "eval.fid": ((bool,), _ANY),
    "eval.kid_subset_size": ((int,), _rng(2, 1_000_000)),
    "eval.grid": ((int,), _rng(1, 1024)),
    "sweep.schemes": ((tuple, list, str), _tuple_of(
        lambda s: s in spec_lib.SCHEMES, 1, f"names in {spec_lib.SCHEMES}")),
    "log_every": ((int,), _rng(1)),
    "ckpt_every": ((int,), _rng(1)),
    "max_rounds_this_run": ((int,), _rng(0)),
    "compilation_cache": ((bool,), _ANY),
}


def flatten(config, prefix: str = "") -> Dict[str, Any]:
  """ConfigDict / dict -> {"a.b": value}."""
  out = {}
  items = config.items() if hasattr(config, "items") else []
  for k, v in items:
    key = f"{prefix}{k}"
    if hasattr(v, "items"):
      out.update(flatten(v, key + "."))
    else:
      out[key] = v
  return out


def _normalize(config) -> None:
  """Comma lists -> tuples for sweep.schemes.

  Accepts "fp32,ondemand" (a string) and ('fp32,ondemand',) (what
  config_flags makes of `--config.sweep.schemes=fp32,ondemand`, the default
  being a tuple).
  """
  s = config.sweep.schemes
  items = [s] if isinstance(s, str) else list(s) if isinstance(
      s, (tuple, list)) else None
  if items is None or not all(isinstance(x, str) for x in items):
    return
  split = tuple(x.strip() for item in items for x in item.split(",")
                if x.strip())
  if split != tuple(s if not isinstance(s, str) else (s,)):
    if hasattr(config.sweep, "ignore_type"):  # a type-safe ConfigDict
      with config.sweep.ignore_type():
        config.sweep.schemes = split
    else:
      config.sweep.schemes = split


def validate_config(config) -> None:
  """Checks every field; raises ValueError naming key, value and range."""
  _normalize(config)
  flat = flatten(config)
  for key in flat:
    if key not in SCHEMA:
      close = difflib.get_close_matches(key, SCHEMA.keys(), n=1)
      hint = f"; did you mean {close[0]!r}?" if close else ""
      raise ValueError(f"unknown config key {key!r}{hint}")
  missing = sorted(set(SCHEMA) - set(flat))
  if missing:
    raise ValueError(f"config is missing key(s) {missing}")
  for key, (types, (check, desc)) in SCHEMA.items():
    v = flat[key]
    ok_type = isinstance(v, types) and not (
        isinstance(v, bool) and bool not in types)
    if not ok_type or not check(v):
      raise ValueError(f"config.{key}={v!r} is invalid; valid: {desc}")
  # Cross-field constraints.
  c = config
  if c.fed.clients_per_round > c.fed.num_clients:
    raise ValueError(f"config.fed.clients_per_round={c.fed.clients_per_round}"
                     f" is invalid; valid: 1..fed.num_clients="
                     f"{c.fed.num_clients}")
  if c.diffusion.beta_start >= c.diffusion.beta_end:
    raise ValueError("config.diffusion.beta_start must be < beta_end, got "
                     f"{c.diffusion.beta_start} >= {c.diffusion.beta_end}")
  if c.energy.f_min_hz >= c.energy.f_max_hz:
    raise ValueError(f"config.energy.f_min_hz={c.energy.f_min_hz} must be < "
                     f"energy.f_max_hz={c.energy.f_max_hz}")
  if c.eval.ddim_steps > c.diffusion.T:
    raise ValueError(f"config.eval.ddim_steps={c.eval.ddim_steps} is invalid;"
                     f" valid: 1..diffusion.T={c.diffusion.T}")
  if c.model.ch % c.model.num_groups:
    raise ValueError(f"config.model.ch={c.model.ch} must be divisible by "
                     f"model.num_groups={c.model.num_groups}")
  levels = len(c.model.ch_mult)
  if c.data.resolution and c.data.resolution % (2 ** (levels - 1)):
    raise ValueError(
        f"config.data.resolution={c.data.resolution} is invalid for "
        f"{levels} UNet levels (model.ch_mult={tuple(c.model.ch_mult)}); "
        f"valid: a multiple of {2 ** (levels - 1)}")
  # Let the energy dataclass run its own checks now (before compiling).
  energy_config(config)


def energy_config(config) -> energy.EnergyConfig:
  e = config.energy
  return energy.EnergyConfig(
      num_devices=config.fed.num_clients, radius_m=float(e.radius_m),
      shadowing_db=float(e.shadowing_db),
      rayleigh_fading=bool(e.rayleigh_fading),
      total_bandwidth_hz=float(e.total_bandwidth_hz),
      bandwidth_shares=int(config.fed.clients_per_round),
      noise_psd_dbm_hz=float(e.noise_psd_dbm_hz), p_max_w=float(e.p_max_w),
      f_min_hz=float(e.f_min_hz), f_max_hz=float(e.f_max_hz),
      tau_mean=float(e.tau_mean), tau_spread=float(e.tau_spread),
      flops_per_cycle_choices=tuple(float(x) for x in
                                    e.flops_per_cycle_choices),
      eps_choices=tuple(float(x) for x in e.eps_choices))


def round_spec(config, model, flops_per_sample: float, mesh=None
               ) -> spec_lib.RoundSpec:
  f, q = config.fed, config.quant
  return spec_lib.RoundSpec(
      model=model, num_clients=f.num_clients,
      clients_per_round=f.clients_per_round, local_steps=f.local_steps,
      batch_size=f.batch_size, lr=float(config.optim.lr),
      optimizer=config.optim.optimizer,
      grad_clip=float(config.optim.grad_clip), server_lr=float(f.server_lr),
      ema_decay=float(f.ema_decay), T=config.diffusion.T,
      beta_start=float(config.diffusion.beta_start),
      beta_end=float(config.diffusion.beta_end), quantizer=q.method,
      bucket_size=q.bucket_size or None, b_min=q.b_min, target=q.target,
      policy=config.energy.infeasible_policy,
      flops_per_sample=float(flops_per_sample),
      parallelism=spec_lib.resolve_parallelism(
          f.parallelism, jax.default_backend(),
          -(-f.clients_per_round // (1 if mesh is None
                                     else int(mesh.shape["clients"])))),
      chunk_size=f.chunk_size, unroll=f.unroll,
      fading=bool(config.energy.rayleigh_fading), mesh=mesh)


def flat_hparams(config, scheme: str) -> Dict[str, Any]:
  """Scalars for clu's write_hparams (tuples as strings)."""
  out = {"scheme": scheme}
  for k, v in flatten(config).items():
    out[k] = v if isinstance(v, (int, float, str, bool)) else str(v)
  return out
