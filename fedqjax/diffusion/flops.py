"""Per-image FLOPs of DDPM training and sampling from XLA's cost analysis.

docs/model.md sec. 3: the computation energy needs the training FLOPs of ONE
image's forward + backward pass, counted by XLA's HLO cost analysis of the
program compiled for the CPU (XLA's GPU cost analysis of a vmapped round
undercounts convolutions). Sampling energy (docs/model.md sec. 6) needs the
FLOPs of one denoising step: `sample_flops_per_image` is the forward pass
alone at batch 1; `sampling_step_flops` is one step of the sampler's actual
loop body (forward + the DDPM / DDIM update + the step's noise draw, a few
hundred FLOPs per pixel, ~0.2% of the small test U-Net's forward). Parameters
and inputs are abstract
(`jax.ShapeDtypeStruct` on the CPU device), so nothing is initialized or run;
results are cached per (config, image shape) because compiling the paper model
takes minutes on a small CPU.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, List, Tuple

import jax
import jax.extend as jex
import jax.numpy as jnp

from fedqjax.diffusion import sampling
from fedqjax.diffusion.schedule import linear_schedule
from fedqjax.diffusion.unet import UNetConfig

SAMPLERS = ("ddpm", "ddim")


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
    compiled: count on the CPU-compiled (optimized) HLO, as docs/model.md sec. 3
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


def _sampler(name: str, eps_fn, shape, num_steps: int) -> Callable:
  """(params, schedule, key) -> samples of the named sampler (eta traced)."""
  if name == "ddpm":
    return lambda v, s, k: sampling.ddpm_sample(eps_fn, v, s, k, shape)
  return lambda v, s, k: sampling.ddim_sample(
    eps_fn, v, s, k, shape, num_steps=num_steps
  )


def _sampler_setup(unet_config, image_shape, sampler, num_timesteps, steps):
  """The sampler at batch 1 and its abstract (params, schedule, key)."""
  if sampler not in SAMPLERS:
    raise ValueError(f"sampler={sampler!r} is invalid; valid: {SAMPLERS}")
  model, variables, x, _ = _abstract_setup(unet_config, tuple(image_shape))
  eps_fn = sampling.eps_fn_from_module(model)
  fn = _sampler(sampler, eps_fn, x.shape, steps)
  schedule = jax.tree_util.tree_map(
    lambda a: _cpu_struct(a.shape, a.dtype),
    jax.eval_shape(lambda: linear_schedule(num_timesteps)),
  )
  key = jax.eval_shape(lambda: jax.random.key(0))
  return fn, (variables, schedule, _cpu_struct(key.shape, key.dtype))


def _find_loops(jaxpr) -> List[Any]:
  """Every scan / while equation in `jaxpr` and the jaxprs it calls."""
  out = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name in ("scan", "while"):
      out.append(eqn)
      continue
    for p in eqn.params.values():
      inner = getattr(p, "jaxpr", p)
      if hasattr(inner, "eqns"):
        out.extend(_find_loops(inner))
  return out


def sampling_step_fn(
  unet_config: UNetConfig,
  image_shape: Tuple[int, int, int],
  sampler: str = "ddim",
  *,
  num_timesteps: int = 1000,
) -> Tuple[Callable, Tuple[Any, ...]]:
  """The sampler's own loop body (one step, one image) and its abstract args.

  The body is cut out of the traced `ddpm_sample` / `ddim_sample` (their one
  `fori_loop`, a scan), so it is the code that runs, not a copy of it.

  Returns:
    (step, args): `step(*args)` runs one step and returns the loop carry
    (step index, x [1, H, W, C]), the last two of args (the loop's consts
    come first: params, tables, keys), so steps chain as
    `step(*args[:-2], *step(*args))`; args are `jax.ShapeDtypeStruct`s on
    the CPU.
  """
  fn, args = _sampler_setup(unet_config, image_shape, sampler, num_timesteps, 2)
  with jax.default_device(jax.devices("cpu")[0]):
    closed = jax.make_jaxpr(fn)(*args)
  loops = _find_loops(closed.jaxpr)
  if len(loops) != 1:
    raise RuntimeError(f"{sampler}: expected one sampling loop, found {loops}")
  eqn = loops[0]
  if eqn.primitive.name == "scan":
    body, invars = eqn.params["jaxpr"], eqn.invars
  else:  # while: [cond consts, body consts, carry]
    body = eqn.params["body_jaxpr"]
    invars = eqn.invars[eqn.params["cond_nconsts"] :]
  run = jex.core.jaxpr_as_fun(body)
  n_carry = len(body.out_avals)  # fori_loop's scan: (i, x), no outputs
  step = lambda *xs: tuple(run(*xs))[:n_carry]
  # Literal inputs (the loop's start index) become arguments too.
  structs = tuple(_cpu_struct(v.aval.shape, v.aval.dtype) for v in invars)
  return step, structs


@functools.lru_cache(maxsize=None)
def sampling_step_flops(
  unet_config: UNetConfig,
  image_shape: Tuple[int, int, int],
  sampler: str = "ddim",
  *,
  num_timesteps: int = 1000,
  compiled: bool = True,
) -> float:
  """FLOPs of ONE step of `sampler` ("ddpm" | "ddim") for one image.

  XLA's cost analysis of the sampler's loop body (`sampling_step_fn`): the
  U-Net forward (dropout off) + the update arithmetic + the step's Gaussian
  draw; a sampler of S steps costs S x this (+ the x_T draw, O(H W C)).
  Use this, not a cost analysis of a whole sampler: XLA counts a while
  loop's body ONCE whatever its trip count (`sampler_program_flops` of 2 and
  of 50 steps are equal).

  Args:
    unet_config: the model.
    image_shape: (H, W, C).
    sampler: "ddpm" (ancestral) or "ddim"; their bodies differ by a few
      elementwise ops per pixel.
    num_timesteps: T of the schedule (sets the size of the gathered tables
      only; the count does not depend on it).
    compiled: count on the CPU-compiled HLO (as `train_flops_per_image`);
      False: the lowered HLO (faster, within ~1% of it).
  """
  step, args = sampling_step_fn(
    unet_config, image_shape, sampler, num_timesteps=num_timesteps
  )
  with jax.default_device(jax.devices("cpu")[0]):
    return _flops(step, args, compiled)


def sampler_program_flops(
  unet_config: UNetConfig,
  image_shape: Tuple[int, int, int],
  sampler: str = "ddim",
  num_steps: int = 1,
  *,
  num_timesteps: int = 1000,
  compiled: bool = True,
) -> float:
  """XLA's cost analysis of the whole jitted sampler at batch 1.

  Counts the loop body once (XLA does not multiply a while loop by its trip
  count) plus the one-off x_T draw and final clip: a check on
  `sampling_step_flops`, not a sampler's total (that is steps x the step).
  num_steps is DDIM's (DDPM runs all T steps).
  """
  fn, args = _sampler_setup(
    unet_config, image_shape, sampler, num_timesteps, num_steps
  )
  with jax.default_device(jax.devices("cpu")[0]):
    return _flops(fn, args, compiled)
