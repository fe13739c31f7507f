"""Benchmarks of the DDPM U-Net on the local backend: compile times, step times,
Python-loop vs `lax.scan` training drivers, and FLOPs per image.

  python -m benchmarks.diffusion --model=tiny --batch=8 --steps=10
  python -m benchmarks.diffusion --model=paper --flops_only

The scan comparison matters for the federated round engine, which scans local
steps: XLA:CPU has been seen to run convolutions inside a rolled scan body much
slower than the same step jitted on its own.
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedqjax import diffusion as dm

MODELS = {
  "small": (
    dm.UNetConfig(
      ch=16,
      ch_mult=(1, 2),
      num_res_blocks=1,
      attn_resolutions=(8,),
      num_groups=8,
      dropout=0.0,
    ),
    (16, 16, 1),
  ),
  "tiny": (dm.UNetConfig.tiny(), (32, 32, 3)),
  "tiny28": (dm.UNetConfig.tiny(), (28, 28, 1)),
  "paper": (dm.UNetConfig(), (32, 32, 3)),
}


def _timed(fn, *args):
  t0 = time.perf_counter()
  out = jax.block_until_ready(fn(*args))
  return out, time.perf_counter() - t0


def _parse_args() -> argparse.Namespace:
  ap = argparse.ArgumentParser()
  ap.add_argument("--model", default="tiny", choices=sorted(MODELS))
  ap.add_argument("--batch", type=int, default=8)
  ap.add_argument("--steps", type=int, default=10)
  ap.add_argument(
    "--fast_compile",
    action="store_true",
    help="xla_backend_optimization_level=0 for every compile",
  )
  ap.add_argument("--flops_only", action="store_true")
  ap.add_argument(
    "--compiled_flops",
    action="store_true",
    help="FLOPs from the compiled HLO (slow for the paper model)",
  )
  return ap.parse_args()


def _print_flops(cfg, shape, compiled: bool) -> None:
  tr = dm.train_flops_per_image(cfg, shape, compiled=compiled)
  sa = dm.sample_flops_per_image(cfg, shape, compiled=compiled)
  print(f"FLOPs/image: train {tr / 1e9:.4f} G, sampling step {sa / 1e9:.4f} G")


def _time_forward(model, params, xb, t, batch: int, opts) -> None:
  """Compile time and warm time of one jitted forward pass."""
  fwd = jax.jit(
    lambda v, x: model.apply(v, x, t, train=False), compiler_options=opts
  )
  t0 = time.perf_counter()
  fwd_c = fwd.lower(params, xb).compile()
  print(f"forward compile: {time.perf_counter() - t0:.1f}s")
  _timed(fwd_c, params, xb)
  _, dt = _timed(fwd_c, params, xb)
  print(f"forward B={batch}: {dt * 1e3:.1f} ms")


def _time_loop(step, carry, xb, keys, steps: int, opts) -> float:
  """Compiles the jitted step, then times a Python loop of it (s/step)."""
  step_j = jax.jit(step, compiler_options=opts)
  t0 = time.perf_counter()
  step_c = step_j.lower(carry, xb, keys[0]).compile()
  print(f"train step (fwd+bwd+adam) compile: {time.perf_counter() - t0:.1f}s")
  (c, _), _ = _timed(step_c, carry, xb, keys[0])
  t0 = time.perf_counter()
  for i in range(steps):
    c, loss = step_c(c, xb, keys[i])
  jax.block_until_ready(c)
  loop_s = (time.perf_counter() - t0) / steps
  print(f"python loop of jitted step: {loop_s * 1e3:.1f} ms/step")
  return loop_s


def _time_scan(step, carry, xb, keys, steps: int, opts, loop_s: float):
  """`lax.scan` over the steps, rolled (unroll=1) and fully unrolled."""
  for unroll in (1, steps):
    run = jax.jit(
      lambda c, b, ks: jax.lax.scan(
        lambda c, k: step(c, b, k), c, ks, unroll=unroll
      ),
      compiler_options=opts,
    )
    t0 = time.perf_counter()
    run_c = run.lower(carry, xb, keys).compile()
    comp = time.perf_counter() - t0
    _timed(run_c, carry, xb, keys)
    _, dt = _timed(run_c, carry, xb, keys)
    print(
      f"lax.scan unroll={unroll}: compile {comp:.1f}s, {dt / steps * 1e3:.1f} ms/step "
      f"({dt / steps / loop_s:.2f}x loop)"
    )


def main():
  a = _parse_args()
  cfg, shape = MODELS[a.model]
  opts = {"xla_backend_optimization_level": 0} if a.fast_compile else None
  print(
    f"backend={jax.default_backend()} model={a.model} image={shape} batch={a.batch}"
  )
  _print_flops(cfg, shape, a.compiled_flops)
  if a.flops_only:
    return

  model, sched, tx = cfg.make(), dm.linear_schedule(), optax.adam(1e-4)
  x = jnp.asarray(
    np.random.default_rng(0).uniform(-1, 1, (64, *shape)), jnp.float32
  )
  t = jnp.zeros((a.batch,), jnp.int32)
  t0 = time.perf_counter()
  params = dm.init_unet(
    cfg, jax.random.key(0, impl="rbg"), shape, compiler_options=opts
  )
  jax.block_until_ready(params)
  print(f"init (jit, rbg key): {time.perf_counter() - t0:.1f}s")
  _time_forward(model, params, x[: a.batch], t, a.batch, opts)

  step = dm.make_train_step(
    model.apply, tx, sched
  )  # one fixed batch: timing only
  xb = x[: a.batch]
  carry = (params, tx.init(params))
  keys = jax.random.split(jax.random.key(1), a.steps)
  loop_s = _time_loop(step, carry, xb, keys, a.steps, opts)
  _time_scan(step, carry, xb, keys, a.steps, opts, loop_s)


if __name__ == "__main__":
  main()
