"""fedqjax's compiled round and the DrJAX round in ONE process, rounds
alternated (A B A B ...), so both see the same load on a shared machine.

  PYTHONPATH=. python -m benchmarks.peers.interleaved --clients 4 \
      --local_steps 1 --batch 8 --rounds 4 [--drjax_conv auto|xla]

Prints one JSON line per round and a summary: median wall and process CPU
seconds per round of each, their ratio, compile times and peak RSS of the
process (both programs live in it).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import numpy as np

from benchmarks.peers import common


def _compile(step_fn, state, data, devices, scheme):
  t0 = time.perf_counter()
  compiled = step_fn.lower(state, data, devices, scheme).compile()
  return compiled, time.perf_counter() - t0


def _one_round(compiled, state, data, devices, scheme):
  import jax  # pylint: disable=g-import-not-at-top

  t0, c0 = time.perf_counter(), time.process_time()
  state, _ = compiled(state, data, devices, scheme)
  jax.block_until_ready(state)
  return state, time.perf_counter() - t0, time.process_time() - c0


def run(cfg: common.BenchConfig, conv: str) -> dict:
  import jax  # pylint: disable=g-import-not-at-top

  from benchmarks.peers import drjax_run, fedqjax_run  # pylint: disable=g-import-not-at-top
  from fedqjax import federated as fed  # pylint: disable=g-import-not-at-top

  spec, params, data, devices, scheme, _ = fedqjax_run._setup(cfg)  # pylint: disable=protected-access
  ex = drjax_run.drjax_execution(conv, jax.default_backend(), cfg.clients)
  dspec = dataclasses.replace(spec, execution=ex)
  key = jax.random.PRNGKey(cfg.seed + 2)
  states = {
    "fedqjax": fed.init_server_state(params, key),
    "drjax": fed.init_server_state(params, key),
  }
  progs, compile_s = {}, {}
  for name, fn in (
    ("fedqjax", fed.jit_round_step(spec)),
    ("drjax", drjax_run.jit_round_step(dspec)),
  ):
    progs[name], compile_s[name] = _compile(
      fn, states[name], data, devices, scheme
    )
  wall = {n: [] for n in progs}
  cpu = {n: [] for n in progs}
  for r in range(cfg.rounds + 1):  # round 0: warm-up, not counted
    for name, prog in progs.items():
      states[name], w, c = _one_round(prog, states[name], data, devices, scheme)
      print(json.dumps(dict(round=r, runner=name, wall_s=w, cpu_s=c)))
      if r:
        wall[name].append(w)
        cpu[name].append(c)
  med = lambda xs: float(np.median(xs))
  return dict(
    fedqjax_execution=str(spec.execution),
    drjax_execution=str(ex),
    compile_s=compile_s,
    wall_s_median={n: med(v) for n, v in wall.items()},
    cpu_s_median={n: med(v) for n, v in cpu.items()},
    drjax_over_fedqjax_wall=med(wall["drjax"]) / med(wall["fedqjax"]),
    drjax_over_fedqjax_cpu=med(cpu["drjax"]) / med(cpu["fedqjax"]),
    peak_rss_mb=common.self_peak_rss_mb(),
  )


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--clients", type=int, default=4)
  ap.add_argument("--local_steps", type=int, default=1)
  ap.add_argument("--batch", type=int, default=8)
  ap.add_argument("--res", type=int, default=32, choices=(28, 32))
  ap.add_argument("--rounds", type=int, default=4)
  ap.add_argument("--drjax_conv", default="auto", choices=("auto", "xla"))
  args = ap.parse_args(argv)
  cfg = common.BenchConfig(
    model="tiny",
    clients=args.clients,
    local_steps=args.local_steps,
    batch=args.batch,
    res=args.res,
    rounds=args.rounds,
  )
  print(json.dumps(run(cfg, args.drjax_conv), indent=1))


if __name__ == "__main__":
  main()
