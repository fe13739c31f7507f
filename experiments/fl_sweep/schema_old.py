"""The sweep config's keys: their types, the ranges of experiment-only keys,
and which core settings field each core key feeds (for error messages).

Ranges of core keys (fed, optim, diffusion, quant.b_min/target, energy,
model) live in the core's own dataclasses, not here.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, Tuple

from fedqjax import energy
from fedqjax.federated import execution, spec
from fedqjax.quantization import METHODS

_NUM = (int, float)
_TUP = (tuple, list)


def finite(v) -> bool:
  """float(v) is a finite number (huge ints, NaN, inf and non-numbers: no)."""
  try:
    return math.isfinite(float(v))
  except (OverflowError, TypeError, ValueError):
    return False


def _rng(lo=None, hi=None, lo_open=False, hi_open=False):
  def check(v):
    if not finite(v):
      return False
    if lo is not None and (v <= lo if lo_open else v < lo):
      return False
    return hi is None or (v < hi if hi_open else v <= hi)
  desc = (f"{'(' if lo_open else '['}{'-inf' if lo is None else lo}, "
          f"{'inf' if hi is None else hi}{')' if hi_open else ']'}")
  return check, desc


def _choice(*options):
  return (lambda v: v in options), f"one of {options}"


def _tuple_of(elem: Callable[[Any], bool], min_len: int, desc: str):
  def check(v):
    return len(v) >= min_len and all(elem(x) for x in v)
  return check, f"a tuple of >= {min_len} {desc}"


_ANY = (lambda v: True), "any"
_POS = lambda x: isinstance(x, _NUM) and not isinstance(x, bool) and \
    finite(x) and x > 0

# Experiment-only keys: key -> (check, description).
SCHEMA: Dict[str, Tuple[Callable[[Any], bool], str]] = {
    "preset": _choice("cpu", "quality", "paper", "test"),
    "seed": _rng(0, 2**31 - 1),
    "data.name": _choice("auto", "cifar10", "fashion_mnist", "synthetic"),
    "data.data_dir": _ANY, "data.tarball": _ANY,
    "data.resolution": _choice(0, 8, 16, 28, 32),  # 0 = native
    "data.partition": _choice("iid", "dirichlet", "shards"),
    "data.dirichlet_alpha": _rng(0, None, lo_open=True),
    "data.labels_per_client": _rng(1, 10),
    "data.max_train": _rng(0), "data.num_test": _rng(2),
    "fed.rounds": _rng(1, 10_000_000),
    "fed.client_loop": _choice(*execution.CLIENT_LOOPS),
    "fed.mesh": _choice("auto", "none"),
    "quant.method": _choice(*METHODS),
    "quant.bucket_size": _rng(0),
    "quant.fixed_bits": _rng(1, 32),
    "energy.deadline_s": _rng(0),
    "energy.deadline_rule": _choice(*energy.DEADLINE_RULES),
    "energy.deadline_factor": _rng(0, None, lo_open=True),
    "energy.deadline_quantile": _rng(0, 1, lo_open=True),
    "eval.every": _rng(0), "eval.heldout_size": _rng(0, 100_000),
    "eval.num_samples": _rng(2, 1_000_000),
    "eval.batch_size": _rng(1, 100_000),
    "eval.sampler": _choice("ddim", "ddpm"),
    "eval.ddim_steps": _rng(1, 100_000), "eval.eta": _rng(0, 1),
    "eval.fid": _ANY, "eval.kid_subset_size": _rng(2, 1_000_000),
    "eval.grid": _rng(1, 1024),
    "eval.vlb_size": _rng(0, 100_000), "eval.vlb_t_stride": _rng(1, 999),
    "sweep.schemes": _tuple_of(
        lambda s: s in spec.BITS_SCHEMES + ("naive",), 1,
        f"names in {spec.BITS_SCHEMES + ('naive',)}"),
    "sweep.allocations": _tuple_of(lambda s: s in energy.ALLOCATIONS, 1,
                                   f"names in {energy.ALLOCATIONS}"),
    "sweep.seeds": _tuple_of(lambda s: isinstance(s, int) and not isinstance(
        s, bool) and 0 <= s < 2**31, 1, "ints in [0, 2^31)"),
    "sweep.eps_scales": _tuple_of(_POS, 1, "values > 0"),
    "sweep.target_margin": _rng(0, 10),
    "log_every": _rng(1), "ckpt_every": _rng(1),
    "max_rounds_this_run": _rng(0), "compilation_cache": _ANY,
}

# Core keys: key -> "Owner.field" of the settings dataclass that checks it.
_CORE = {
    "model.ch": "UNetConfig.ch", "model.ch_mult": "UNetConfig.ch_mult",
    "model.num_res_blocks": "UNetConfig.num_res_blocks",
    "model.attn_resolutions": "UNetConfig.attn_resolutions",
    "model.dropout": "UNetConfig.dropout",
    "model.num_groups": "UNetConfig.num_groups",
    "model.dtype": "UNetConfig.dtype",
    "data.resolution": "UNetConfig.resolution",
    "diffusion.T": "RoundSpec.T", "diffusion.beta_start":
    "RoundSpec.beta_start", "diffusion.beta_end": "RoundSpec.beta_end",
    "fed.num_clients": "RoundSpec.num_clients",
    "fed.clients_per_round": "RoundSpec.clients_per_round",
    "fed.local_steps": "RoundSpec.local_steps",
    "fed.batch_size": "RoundSpec.batch_size",
    "fed.server_lr": "RoundSpec.server_lr",
    "fed.ema_decay": "RoundSpec.ema_decay",
    "optim.optimizer": "RoundSpec.optimizer", "optim.lr": "RoundSpec.lr",
    "optim.grad_clip": "RoundSpec.grad_clip",
    "quant.b_min": "RoundSpec.b_min", "quant.target": "RoundSpec.target",
    "energy.infeasible_policy": "RoundSpec.infeasible_policy",
    "energy.rayleigh_fading": "RoundSpec.fading",
    "sweep.allocations": "RoundSpec.allocations",
}
_CORE.update({f"energy.{k}": f"EnergyConfig.{k}" for k in (
    "radius_m", "shadowing_db", "total_bandwidth_hz", "noise_psd_dbm_hz",
    "p_max_w", "f_min_hz", "f_max_hz", "tau_mean", "tau_spread",
    "flops_per_cycle_choices", "eps_choices")})
CORE_KEYS = {owner: key for key, owner in _CORE.items()}
CORE_KEYS["EnergyConfig.num_devices"] = "fed.num_clients"
CORE_KEYS["EnergyConfig.bandwidth_shares"] = "fed.clients_per_round"

_BOOL, _INT, _STR = (bool,), (int,), (str,)
TYPES: Dict[str, tuple] = {k: _NUM for k in list(SCHEMA) + list(_CORE)}
TYPES.update({k: _INT for k in (
    "seed", "data.resolution", "data.labels_per_client", "data.max_train",
    "data.num_test", "model.ch", "model.num_res_blocks", "model.num_groups",
    "diffusion.T", "fed.num_clients", "fed.clients_per_round",
    "fed.local_steps", "fed.batch_size", "fed.rounds", "quant.bucket_size",
    "quant.b_min", "quant.fixed_bits", "eval.every", "eval.heldout_size",
    "eval.num_samples", "eval.batch_size", "eval.ddim_steps",
    "eval.kid_subset_size", "eval.grid", "eval.vlb_size",
    "eval.vlb_t_stride", "log_every", "ckpt_every",
    "max_rounds_this_run")})
TYPES.update({k: _STR for k in (
    "preset", "data.name", "data.data_dir", "data.tarball", "data.partition",
    "model.dtype", "fed.client_loop", "fed.mesh", "optim.optimizer", "quant.method",
    "quant.target", "energy.deadline_rule", "energy.infeasible_policy",
    "eval.sampler")})
TYPES.update({k: _BOOL for k in ("energy.rayleigh_fading", "eval.fid",
                                 "compilation_cache")})
TYPES.update({k: _TUP for k in (
    "model.ch_mult", "model.attn_resolutions",
    "energy.flops_per_cycle_choices", "energy.eps_choices", "sweep.schemes",
    "sweep.allocations", "sweep.seeds", "sweep.eps_scales")})

_LOOP = ("replaced by fed.client_loop (one of "
         f"{execution.CLIENT_LOOPS}), which also sets the local-step unroll "
         "and the convolution form (fedqjax/federated/execution.py)")
REMOVED_KEYS = {"fed.parallelism": _LOOP, "fed.chunk_size": _LOOP,
                "fed.unroll": _LOOP, "model.conv_impl": _LOOP}


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
