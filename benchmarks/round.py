r"""Round throughput: fedqjax's compiled round vs the sequential reference vs
centralized training at the same total batch (the ceiling).

  PYTHONPATH=. python benchmarks/round.py --model=tiny --clients=8 --batch=4
  PYTHONPATH=. python benchmarks/round.py --client_loop=auto,map,vmap
  PYTHONPATH=. python benchmarks/round.py --model=paper --clients=32 \
      --batch=32 --local_steps=2 --dtype=bfloat16        # on a GPU

Reports, for one config in one run: images/s of `round_step` for each
`--client_loop` (each resolved by `fed.resolve_execution` into the client
layout, the local-step unroll and the convolution form; the resolved values
are printed), of `round_step_reference` (Python loop over clients, with the
first client loop's convolution form and unroll), and of centralized training
of one model at batch K*B; compile times; MFU from the XLA-CPU-counted FLOPs
per image (docs/model.md sec. 3) and a peak you give.
"""

import argparse
import functools
import platform
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedqjax import diffusion, energy
from fedqjax import federated as fed
from fedqjax import quantization as Q
from fedqjax.testing.reference_round import round_step_reference


def _timeit(fn, n):
  fn()  # warm
  t0 = time.perf_counter()
  for _ in range(n):
    fn()
  return (time.perf_counter() - t0) / n


def _args():
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--model", default="tiny", choices=["tiny", "paper"])
  ap.add_argument("--clients", type=int, default=8)
  ap.add_argument("--local_steps", type=int, default=2)
  ap.add_argument("--batch", type=int, default=4)
  ap.add_argument("--res", type=int, default=32)
  ap.add_argument("--channels", type=int, default=3)
  ap.add_argument("--dtype", default="float32")
  ap.add_argument(
    "--client_loop",
    default="auto",
    help="comma list of " + ", ".join(fed.CLIENT_LOOPS) + "; "
    "fed.resolve_execution decides the client layout, local-step "
    "unroll and convolution form of each (no separate conv / "
    "unroll / chunk options)",
  )
  ap.add_argument(
    "--allocations",
    default="kkt",
    help="comma list of allocation policies priced every round "
    f"({', '.join(energy.ALLOCATIONS)})",
  )
  ap.add_argument("--rounds", type=int, default=3)
  ap.add_argument(
    "--peak_tflops",
    type=float,
    default=0.0,
    help="accelerator peak for MFU (e.g. 989 for H100 bf16)",
  )
  ap.add_argument("--skip_reference", action="store_true")
  a = ap.parse_args()
  loops = [s.strip() for s in a.client_loop.split(",") if s.strip()]
  for loop in loops:
    if loop not in fed.CLIENT_LOOPS:
      ap.error(
        f"--client_loop: {loop!r} is invalid; valid: "
        f"{', '.join(fed.CLIENT_LOOPS)}"
      )
  if not loops:
    ap.error(
      "--client_loop: give at least one of " + ", ".join(fed.CLIENT_LOOPS)
    )
  a.loops = loops
  a.allocations = energy.check_policies(a.allocations)
  return a


def _setup(a):
  """(unet, params, shape, flops, data, devices, scheme)."""
  ucfg = (
    diffusion.UNetConfig.tiny(dtype=a.dtype)
    if a.model == "tiny"
    else diffusion.UNetConfig(dtype=a.dtype)
  )
  shape = (a.res, a.res, a.channels)
  params = diffusion.init_unet(ucfg, jax.random.key(0), shape)
  # FLOPs of the model with XLA's convolutions (im2col's patches would count).
  flops = diffusion.train_flops_per_image(ucfg, shape, compiled=False)
  k, n_max = a.clients, 4 * a.batch
  rng = np.random.default_rng(0)
  data = fed.FedData(
    images=jnp.asarray(rng.uniform(-1, 1, (k, n_max) + shape), jnp.float32),
    counts=jnp.full((k,), n_max, jnp.int32),
  )
  devices = energy.sample_devices(
    energy.EnergyConfig(num_devices=k), jax.random.key(1)
  )
  nparams = sum(x.size for x in jax.tree.leaves(params))
  deadline = float(
    energy.deadline_for(
      devices, nparams, a.local_steps * a.batch, flops, "median", 1.2
    )
  )
  scheme = fed.make_scheme("ondemand", deadline_s=deadline)
  return ucfg, params, shape, flops, data, devices, scheme


def _spec(a, ucfg, params, flops, loop):
  execution = fed.resolve_execution(loop, jax.default_backend(), a.clients)
  return fed.RoundSpec(
    unet=ucfg,
    quantizer=Q.make_quantizer(params, "minmax"),
    num_clients=a.clients,
    clients_per_round=a.clients,
    local_steps=a.local_steps,
    batch_size=a.batch,
    flops_per_sample=flops,
    allocations=a.allocations,
    execution=execution,
  )


def _label(loop, ex):
  unroll = "full" if ex.local_unroll is True else ex.local_unroll
  return (
    f"round_step[{loop} -> {ex.layout}, conv {ex.conv_impl}, "
    f"local unroll {unroll}]"
  )


def _time_round(spec, params, data, devices, scheme, rounds):
  """(s/round, compile s) of the jitted round; the state is not donated, as
  in this benchmark's earlier results, which stay comparable."""
  state = fed.init_server_state(
    params, jax.random.key(2), len(spec.allocations)
  )
  step = jax.jit(functools.partial(fed.round_step, spec=spec))
  t0 = time.perf_counter()
  compiled = step.lower(state, data, devices, scheme).compile()
  c_s = time.perf_counter() - t0
  holder = [state]

  def run():
    holder[0], m = compiled(holder[0], data, devices, scheme)
    jax.block_until_ready(m["loss"])

  return _timeit(run, rounds), c_s


def _time_reference(spec, params, data, devices, scheme, rounds):
  """(s/round, first round s incl. compiles) of the Python-loop reference."""
  holder = [
    fed.init_server_state(params, jax.random.key(2), len(spec.allocations))
  ]
  t0 = time.perf_counter()
  round_step_reference(holder[0], data, devices, scheme, spec=spec)
  c_s = time.perf_counter() - t0

  def run_ref():
    holder[0], _ = round_step_reference(
      holder[0], data, devices, scheme, spec=spec
    )
    jax.block_until_ready(holder[0].params)

  return _timeit(run_ref, rounds), c_s


def _time_central(a, ucfg, params, data, shape):
  """(s/round, compile s): one model, batch K*B, I steps per "round"."""
  model = ucfg.make()
  sched = diffusion.linear_schedule(1000)
  tx = optax.adam(2e-4)
  x = data.images.reshape((-1,) + shape)[: a.clients * a.batch]

  @jax.jit
  def central(p, o, key):
    def one(c, kk):
      p, o = c
      loss, g = jax.value_and_grad(diffusion.ddpm_loss)(
        p, model.apply, x, kk, sched
      )
      u, o = tx.update(g, o, p)
      return (optax.apply_updates(p, u), o), loss

    (p, o), _ = jax.lax.scan(
      one, (p, o), jax.random.split(key, a.local_steps), unroll=True
    )
    return p, o

  opt = tx.init(params)
  t0 = time.perf_counter()
  cc = central.lower(params, opt, jax.random.key(3)).compile()
  c_s = time.perf_counter() - t0
  hold = [params, opt]

  def run_c():
    hold[0], hold[1] = cc(hold[0], hold[1], jax.random.key(3))
    jax.block_until_ready(hold[0])

  return _timeit(run_c, a.rounds), c_s


def _report(rows):
  print("| what | s/round | img/s | compile s | MFU |")
  print("|---|---|---|---|---|")
  for name, secs, ips, c_s, mfu in rows:
    mfu_s = f"{100 * mfu:.1f}%" if mfu is not None else "-"
    print(f"| {name} | {secs:.3f} | {ips:.1f} | {c_s:.1f} | {mfu_s} |")
  ref = {r[0]: r[2] for r in rows}
  loop = ref.get("reference (python loop)")
  cen = rows[-1][2]
  for name, _, ips, _, _ in rows:
    if name.startswith("round_step"):
      extra = f" = {ips / loop:.2f}x the loop," if loop else ""
      print(f"# {name}:{extra} {100 * ips / cen:.0f}% of centralized")
  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
  print(f"# peak RSS {rss:.2f} GB")


def main():
  a = _args()
  ucfg, params, shape, flops, data, devices, scheme = _setup(a)
  k = a.clients
  nparams = sum(x.size for x in jax.tree.leaves(params))
  imgs = k * a.local_steps * a.batch
  print(
    f"# machine: {platform.platform()} | {platform.processor() or ''} "
    f"| jax {jax.__version__} | backend {jax.default_backend()} "
    f"{[d.device_kind for d in jax.devices()][:1]} x{jax.device_count()}"
  )
  print(
    f"# model={a.model} params={nparams:,} dtype={a.dtype} "
    f"res={shape} K={k} I={a.local_steps} B={a.batch} "
    f"allocations={','.join(a.allocations)} "
    f"train GFLOPs/img={flops / 1e9:.3f}"
  )
  rows = []

  def add(name, secs, compile_s):
    ips = imgs / secs
    mfu = (ips * flops / (a.peak_tflops * 1e12)) if a.peak_tflops else None
    rows.append((name, secs, ips, compile_s, mfu))
    print(
      f"# {name}: {secs:.3f} s/round, {ips:.1f} img/s, compile "
      f"{compile_s:.1f} s",
      flush=True,
    )

  specs = [(loop, _spec(a, ucfg, params, flops, loop)) for loop in a.loops]
  for loop, spec in specs:
    add(
      _label(loop, spec.execution),
      *_time_round(spec, params, data, devices, scheme, a.rounds),
    )
  if not a.skip_reference:
    add(
      "reference (python loop)",
      *_time_reference(specs[0][1], params, data, devices, scheme, a.rounds),
    )
  add(
    f"centralized (batch {k * a.batch})",
    *_time_central(a, ucfg, params, data, shape),
  )
  _report(rows)


if __name__ == "__main__":
  main()
