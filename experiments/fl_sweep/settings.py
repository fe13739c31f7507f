"""Config keys -> settings dataclasses, validated before anything compiles.

The sweep's ml_collections ConfigDict is mapped key by key onto the frozen
settings of the core (`RoundSpec`, `EnergyConfig`, `UNetConfig`), which
validate themselves in their own field names; this layer checks types,
unknown keys ("did you mean"), removed keys (naming their replacement), the
ranges of keys that only the experiment uses (data, eval, sweep, logging),
and rewrites a core message "RoundSpec.local_steps=0 is invalid; valid: >= 1"
as "config.fed.local_steps=0 is invalid; valid: >= 1". No ConfigDict is ever
traced, and the core never names a config path.
"""
from __future__ import annotations

import difflib
import re
from typing import Any, Dict

import jax

from fedqjax import energy
from fedqjax import quantization as quant_lib
from experiments.fl_sweep.schema_old import (CORE_KEYS, REMOVED_KEYS, SCHEMA, TYPES,
                                   finite as _finite, flatten)
from fedqjax.diffusion import UNetConfig
from fedqjax.federated import execution as execution_lib
from fedqjax.federated import spec as spec_lib

_NUMBER, _INTEGER = (int, float), (int,)
_CORE_MESSAGE = re.compile(r"^(\w+)\.(\w+)=(.*?) is invalid; (.*)$", re.S)


def _normalize(config) -> None:
  """Comma lists -> tuples for the sweep's list keys.

  Accepts "fp32,ondemand" (a string) and ('fp32,ondemand',) (what
  config_flags makes of `--config.sweep.schemes=fp32,ondemand`).
  """
  for name in ("schemes", "allocations"):
    s = config.sweep.get(name) if hasattr(config, "sweep") else None
    items = [s] if isinstance(s, str) else list(s) if isinstance(
        s, (tuple, list)) else None
    if items is None or not all(isinstance(x, str) for x in items):
      continue
    split = tuple(x.strip() for item in items for x in item.split(",")
                  if x.strip())
    if split != tuple(s if not isinstance(s, str) else (s,)):
      if hasattr(config.sweep, "ignore_type"):  # a type-safe ConfigDict
        with config.sweep.ignore_type():
          config.sweep[name] = split
      else:
        config.sweep[name] = split


def _check_keys(flat: Dict[str, Any]) -> None:
  for key in flat:
    if key in REMOVED_KEYS:
      raise ValueError(f"config.{key} was removed; {REMOVED_KEYS[key]}")
    if key not in TYPES:
      close = difflib.get_close_matches(key, TYPES.keys(), n=1)
      hint = f"; did you mean {close[0]!r}?" if close else ""
      raise ValueError(f"unknown config key {key!r}{hint}")
  missing = sorted(set(TYPES) - set(flat))
  if missing:
    raise ValueError(f"config is missing key(s) {missing}")


def _check_types_and_ranges(flat: Dict[str, Any]) -> None:
  for key, types in TYPES.items():
    v = flat[key]
    ok = isinstance(v, types) and not (isinstance(v, bool) and
                                       bool not in types)
    if not ok:
      names = "/".join(t.__name__ for t in types)
      raise ValueError(f"config.{key}={v!r} is invalid; valid: a {names}"
                       + (f" in {SCHEMA[key][1]}" if key in SCHEMA else ""))
    if types in (_NUMBER, _INTEGER) and not _finite(v):
      raise ValueError(f"config.{key}={v!r} is invalid; valid: a finite "
                       "number")
    if key in SCHEMA and not SCHEMA[key][0](v):
      raise ValueError(f"config.{key}={v!r} is invalid; valid: "
                       f"{SCHEMA[key][1]}")


def _core(section: str, build):
  """Runs a settings constructor; rewrites its message in config keys."""
  try:
    return build()
  except ValueError as e:
    m = _CORE_MESSAGE.match(str(e))
    key = m and CORE_KEYS.get(f"{m.group(1)}.{m.group(2)}")
    if key:
      owner = m.group(1)
      valid = re.sub(r"\b([a-z_]+)=", lambda f: CORE_KEYS.get(
          f"{owner}.{f.group(1)}", f.group(1)) + "=", m.group(4))
      raise ValueError(f"config.{key}={m.group(3)} is invalid; "
                       f"{valid}") from None
    raise ValueError(f"config.{section}: {e}") from None


def _floats(config, key: str) -> tuple:
  """A tuple key's values as floats, or a ValueError naming the key."""
  section, name = key.split(".")
  values = config[section][name]
  try:
    return tuple(float(x) for x in values)
  except (TypeError, ValueError, OverflowError):
    raise ValueError(f"config.{key}={values!r} is invalid; valid: a tuple "
                     "of numbers") from None


def validate_config(config) -> None:
  """Checks every key; raises ValueError naming key, value and range."""
  _normalize(config)
  flat = flatten(config)
  _check_keys(flat)
  _check_types_and_ranges(flat)
  c = config
  if c.data.resolution:
    _core("model", lambda: unet_config(config, c.data.resolution))
  _core("energy", lambda: energy_config(config))
  unet = _core("model", lambda: unet_config(config, None))
  # backend="cpu": validating must not initialize a backend (the CLI may
  # still call jax.distributed.initialize); the layout is resolved later.
  _core("fed", lambda: round_spec(config, unet, None, 1.0, backend="cpu"))
  if c.eval.ddim_steps > c.diffusion.T:  # after T's own range
    raise ValueError(f"config.eval.ddim_steps={c.eval.ddim_steps} is invalid;"
                     f" valid: 1..diffusion.T={c.diffusion.T}")
  if c.eval.vlb_t_stride > c.diffusion.T - 1:
    raise ValueError(f"config.eval.vlb_t_stride={c.eval.vlb_t_stride} is "
                     f"invalid; valid: 1..diffusion.T-1={c.diffusion.T - 1}")
  if c.eval.vlb_size > c.data.num_test:
    raise ValueError(f"config.eval.vlb_size={c.eval.vlb_size} is invalid; "
                     f"valid: 0..data.num_test={c.data.num_test}")


def unet_config(config, resolution) -> UNetConfig:
  m = config.model
  return UNetConfig(ch=m.ch, ch_mult=tuple(m.ch_mult),
                    num_res_blocks=m.num_res_blocks,
                    attn_resolutions=tuple(m.attn_resolutions),
                    dropout=float(m.dropout), num_groups=m.num_groups,
                    dtype=m.dtype, resolution=resolution or None)


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
      flops_per_cycle_choices=_floats(config,
                                      "energy.flops_per_cycle_choices"),
      eps_choices=_floats(config, "energy.eps_choices"))


def make_quantizer(config, template) -> Any:
  q = config.quant
  return quant_lib.make_quantizer(template, method=q.method,
                                  bucket_size=q.bucket_size or None)


def sweep_plan(config):
  """(bits schemes to train, allocation policies to price), aliases resolved.

  `naive` = on-demand bits priced at f_max / p_max (the "max" policy).
  """
  bits, allocs = [], list(config.sweep.allocations)
  for name in config.sweep.schemes:
    b = "ondemand" if name == "naive" else name
    if b not in bits:
      bits.append(b)
    if name == "naive" and "max" not in allocs:
      allocs.append("max")
  return tuple(bits), tuple(allocs)


def round_spec(config, unet: UNetConfig, quantizer, flops_per_sample: float,
               mesh=None, backend: str | None = None) -> spec_lib.RoundSpec:
  """The round's static settings; `fed.client_loop` resolved here."""
  f, o, d = config.fed, config.optim, config.diffusion
  shards = 1 if mesh is None else int(mesh.shape["clients"])
  execution = execution_lib.resolve_execution(
      f.client_loop, backend or jax.default_backend(),
      -(-f.clients_per_round // shards))
  return spec_lib.RoundSpec(
      unet=unet, quantizer=quantizer, num_clients=f.num_clients,
      clients_per_round=f.clients_per_round, local_steps=f.local_steps,
      batch_size=f.batch_size, lr=float(o.lr), optimizer=o.optimizer,
      grad_clip=float(o.grad_clip), server_lr=float(f.server_lr),
      ema_decay=float(f.ema_decay), T=d.T, beta_start=float(d.beta_start),
      beta_end=float(d.beta_end), b_min=config.quant.b_min,
      target=config.quant.target,
      infeasible_policy=config.energy.infeasible_policy,
      flops_per_sample=float(flops_per_sample),
      allocations=sweep_plan(config)[1], execution=execution,
      fading=bool(config.energy.rayleigh_fading), mesh=mesh)


def flat_hparams(config, run: str) -> Dict[str, Any]:
  """Scalars for clu's write_hparams (tuples as strings)."""
  out = {"run": run}
  for k, v in flatten(config).items():
    out[k] = v if isinstance(v, (int, float, str, bool)) else str(v)
  return out
