"""Per-image FLOPs of DDPM training and sampling from XLA's cost analysis.

MODEL.md section 3: the computation energy needs the training FLOPs of ONE
image's forward + backward pass, counted by XLA's HLO cost analysis of the
program compiled for the CPU (XLA's GPU cost analysis of a vmapped round
undercounts convolutions). Sampling energy (MODEL.md section 6.1) needs the
FLOPs of one denoising step, i.e. one forward pass at batch 1 (the update
arithmetic is O(H*W*C) and ignored). Parameters and inputs are abstract
(`jax.ShapeDtypeStruct` on the CPU device), so nothing is initialized or run;
results are cached per (config, image shape) because compiling the paper model
takes minutes on a small CPU.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Tuple

import jax
import jax.numpy as jnp

from fedqjax.diffusion.unet import UNetConfig


def _cpu_struct(shape, dtype) -> jax.ShapeDtypeStruct:
  cpu = jax.devices("cpu")[0]
  return jax.ShapeDtypeStruct(
    shape, dtype, sharding=jax.sharding.SingleDeviceSharding(cpu)
  )


def _flops(fn: Callable, args: Tuple[Any, ...], compiled: bool) -> float:
  lowered = jax.jit(fn).lower(*args)
  cost = (
    lowered.compile().cost_analysis() if compiled else lowered.cost_analysis()
  )
  if isinstance(cost, (list, tuple)):  # older JAX returns one dict per program
    cost = cost[0]
  return float(cost["flops"])


def _abstract_setup(unet_config: UNetConfig, image_shape: Tuple[int, int, int]):
  unet_config.check_image_shape(tuple(image_shape))
  model = unet_config.make()
  x = _cpu_struct((1, *image_shape), jnp.float32)  # [1, H, W, C]
  t = _cpu_struct((1,), jnp.int32)
  variables = jax.eval_shape(
    lambda: model.init(
      {"params": jax.random.key(0)},
      jnp.zeros(x.shape),
      jnp.zeros(t.shape, jnp.int32),
      train=False,
    )
  )
  variables = jax.tree_util.tree_map(
    lambda s: _cpu_struct(s.shape, s.dtype), variables
  )
  return model, variables, x, t


@functools.lru_cache(maxsize=None)
def train_flops_per_image(
  unet_config: UNetConfig,
  image_shape: Tuple[int, int, int],
  *,
  compiled: bool = True,
) -> float:
  """FLOPs of one image's forward + backward pass (eps-MSE loss, dropout on).

  Args:
    unet_config: the model.
    image_shape: (H, W, C).
    compiled: count on the CPU-compiled (optimized) HLO, as MODEL.md
      prescribes; False counts the unoptimized lowered HLO (no compile, much
      faster, usually within a few percent).

  Returns:
    FLOPs per training image (about 35e9 for the paper model at 32x32x3).
  """
  model, variables, x, t = _abstract_setup(unet_config, tuple(image_shape))
  noise = _cpu_struct(x.shape, jnp.float32)

  def loss_grad(v, x, t, noise):
    def loss(v):
      eps = model.apply(
        v, x, t, train=True, rngs={"dropout": jax.random.key(0)}
      )
      return jnp.mean(jnp.square(eps - noise))

    return jax.grad(loss)(v)

  with jax.default_device(jax.devices("cpu")[0]):
    return _flops(loss_grad, (variables, x, t, noise), compiled)


@functools.lru_cache(maxsize=None)
def sample_flops_per_image(
  unet_config: UNetConfig,
  image_shape: Tuple[int, int, int],
  *,
  compiled: bool = True,
) -> float:
  """FLOPs of one sampling step for one image (a forward pass, dropout off).

  Multiply by the number of steps (T for DDPM, num_steps for DDIM).
  """
  model, variables, x, t = _abstract_setup(unet_config, tuple(image_shape))
  fwd = lambda v, x, t: model.apply(v, x, t, train=False)
  with jax.default_device(jax.devices("cpu")[0]):
    return _flops(fwd, (variables, x, t), compiled)
