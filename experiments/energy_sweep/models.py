"""The models of the energy sweep: parameter template and training FLOPs.

A model, as the sweep sees it, is the parameter template whose quantizer
gives the payload sizes and the training FLOPs per sample that set the
computation:

  "tiny"   `UNetConfig.tiny()` (the CPU preset's U-Net) on 28x28x1
           Fashion-MNIST: 1,062,497 parameters in 152 tensors (no attention
           at 28x28); 1.0532e9 training FLOPs per image
           (`diffusion.train_flops_per_image`, lowered HLO, as the training
           sweep counts them).
  "paper"  `UNetConfig()` (Ho et al.'s CIFAR-10 U-Net) on 32x32x3:
           35,746,307 parameters in 328 tensors; 35.006e9 FLOPs per image.
  a count  e.g. "1e8": a synthetic template of ceil(d / 2^17) tensors of
           2^17 = 131,072 entries (the last one partial; about the paper
           U-Net's mean tensor size, 109k), so one bucket per 2^17 entries
           with the default bucket_size 0; FLOPs = d x 979.3, the paper
           U-Net's training FLOPs per parameter.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

SYNTHETIC_LEAF = 2**17
MAX_PARAMS = 1e10
PAPER_FLOPS, PAPER_PARAMS = 35.006e9, 35_746_307
# name -> (U-Net config factory, image shape, FLOPs per image)
MODEL_PRESETS = {
  "tiny": ("tiny", (28, 28, 1), 1.0532e9),
  "paper": ("paper", (32, 32, 3), PAPER_FLOPS),
}
VALID = f"{' | '.join(MODEL_PRESETS)} | a parameter count in [1, 1e10]"


def model_name(value: Any) -> str:
  """ "tiny" | "paper" | a parameter count (int, float or numeric string),
  normalized ("1e8" -> "100000000"); raises ValueError otherwise."""
  if isinstance(value, str) and value in MODEL_PRESETS:
    return value
  try:
    d = math.nan if isinstance(value, bool) else float(value)
  except (TypeError, ValueError):
    d = math.nan
  if not (math.isfinite(d) and d == int(d) and 1 <= d <= MAX_PARAMS):
    raise ValueError(f"model {value!r} is invalid; valid: {VALID}")
  return str(int(d))


def is_model(value: Any) -> bool:
  """Whether `model_name(value)` accepts `value`."""
  try:
    model_name(value)
  except ValueError:
    return False
  return True


class ModelSpec(NamedTuple):
  """A model as the energy sweep sees it."""

  name: str
  num_params: int
  flops_per_sample: float
  template: Any  # pytree of jax.ShapeDtypeStruct


def unet_config(model: str):
  """The `UNetConfig` of a preset ("tiny" | "paper")."""
  from fedqjax import diffusion  # pylint: disable=g-import-not-at-top

  factory = MODEL_PRESETS[model][0]
  return (
    diffusion.UNetConfig.tiny() if factory == "tiny" else diffusion.UNetConfig()
  )


@functools.lru_cache(maxsize=16)
def model_spec(model: str) -> ModelSpec:
  """Template, parameter count and FLOPs of a (normalized) model (cached)."""
  if model in MODEL_PRESETS:
    from fedqjax import diffusion  # pylint: disable=g-import-not-at-top

    _, shape, flops = MODEL_PRESETS[model]
    cfg = unet_config(model)
    template = jax.eval_shape(
      lambda k: diffusion.init_unet(cfg, k, shape), jax.random.key(0)
    )
  else:
    d = int(model)
    full, rest = divmod(d, SYNTHETIC_LEAF)
    sizes = [SYNTHETIC_LEAF] * full + ([rest] if rest else [])
    template = [jax.ShapeDtypeStruct((n,), jnp.float32) for n in sizes]
    flops = d * (PAPER_FLOPS / PAPER_PARAMS)
  num = sum(math.prod(x.shape) for x in jax.tree.leaves(template))
  return ModelSpec(model, int(num), float(flops), template)
