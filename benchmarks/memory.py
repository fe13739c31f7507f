r"""Peak host memory of one round vs the number of participants K, and the
round time with a large population.

Each K runs in its own process (peak RSS is per process): N clients of
synthetic 28x28x1 data (n images each) held on the host side as one padded
[N, n, 28, 28, 1] array, the cpu preset's tiny U-Net (1.06M parameters),
I = 2 local steps at B = 8, one compile + 2 timed rounds of
`fed.client_loop=map` (compile time and program size independent of K).

  python benchmarks/memory.py --clients_per_round=8,32,64 --num_clients=10000

Prints one row per K: peak RSS (MB), compile s, s/round; then the slope
(bytes per participant) of a least-squares line through the peaks.

  python benchmarks/memory.py --table

prints instead the estimated per-device memory of the round
(fedqjax.federated.memory, traced, nothing compiles) of the paper and
quality presets on one 16 / 40 / 80 GB device, vmap and map, and the
layout `fed.client_loop=auto` picks (docs/accelerators.md).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _client_data(n: int, per_client: int):
  """N clients of synthetic 28x28x1 images, one padded [N, n, ...] array."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from fedqjax import federated as fed  # pylint: disable=g-import-not-at-top
  from fedqjax.data import loaders  # pylint: disable=g-import-not-at-top

  imgs, _ = loaders.make_synthetic(
    "train", num=n * per_client, size=28, channels=1
  )
  images = (imgs.astype(np.float32) / 127.5 - 1).reshape(
    (n, per_client, 28, 28, 1)
  )  # host side until the round gathers
  return fed.FedData(
    images=jnp.asarray(images), counts=jnp.full((n,), per_client, jnp.int32)
  )


def _setup(n: int, k: int, per_client: int):
  """The jitted round and its inputs: (step, state, data, devices, scheme)."""
  import jax  # pylint: disable=g-import-not-at-top

  from fedqjax import (  # pylint: disable=g-import-not-at-top
    diffusion,  # pylint: disable=g-import-not-at-top
    energy,
  )
  from fedqjax import federated as fed
  from fedqjax import quantization as Q  # pylint: disable=g-import-not-at-top

  unet = diffusion.UNetConfig(
    ch=32,
    ch_mult=(1, 2, 2),
    num_res_blocks=1,
    attn_resolutions=(14,),
    dropout=0.1,
    num_groups=8,
  )
  data = _client_data(n, per_client)
  params = diffusion.init_unet(unet, jax.random.key(0), (28, 28, 1))
  devices = energy.sample_devices(
    energy.EnergyConfig(num_devices=n, bandwidth_shares=k), jax.random.key(1)
  )
  spec = fed.RoundSpec(
    unet=unet,
    quantizer=Q.make_quantizer(params),
    num_clients=n,
    clients_per_round=k,
    local_steps=2,
    batch_size=8,
    lr=1e-3,
    flops_per_sample=1.05e9,
    allocations=("kkt", "deadline", "max"),
    execution=fed.resolve_execution("map", "cpu", k),
  )
  t = float(energy.deadline_for(devices, 1062497, 16, 1.05e9))
  scheme = fed.make_scheme("ondemand", deadline_s=t)
  step = fed.jit_round_step(spec)
  state = fed.init_server_state(params, jax.random.key(2), 3)
  return step, state, data, devices, scheme


def one(n: int, k: int, per_client: int) -> dict:
  """Runs in the child: one compile and 2 rounds; returns the numbers."""
  import jax  # pylint: disable=g-import-not-at-top

  step, state, data, devices, scheme = _setup(n, k, per_client)
  t0 = time.time()
  state, m = step(state, data, devices, scheme)
  jax.block_until_ready(state.params)
  compile_s = time.time() - t0
  t0 = time.time()
  for _ in range(2):
    state, m = step(state, data, devices, scheme)
  jax.block_until_ready(state.params)
  return dict(
    clients=n,
    k=k,
    compile_s=compile_s,
    s_per_round=(time.time() - t0) / 2,
    uploaded=int(m["num_uploaded"]),
    peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
  )


def table() -> None:
  """Markdown rows: preset, K, dtype, vmap GB, map GB, the pick per size."""
  import dataclasses  # pylint: disable=g-import-not-at-top

  from experiments.configs import cifar_sweep  # pylint: disable=g-import-not-at-top
  from experiments.fl_sweep import preflight, settings  # pylint: disable=g-import-not-at-top
  from fedqjax.federated import memory as mem  # pylint: disable=g-import-not-at-top

  sizes = (15, 16, 40, 80)
  print(
    "| preset | K | dtype | vmap GB | map GB | "
    + " | ".join(f"{g} GB" for g in sizes)
    + " |"
  )
  print("|---" * (5 + len(sizes)) + "|")
  for preset, ks in (("paper", (8, 10, 32)), ("quality", (6,))):
    base = settings.parse(cifar_sweep.get_config(preset))
    _, shape = preflight.check_data(base)
    for dtype in ("bfloat16", "float32") if preset == "paper" else ("",):
      for k in ks:
        model = base.model
        if dtype:
          model = dataclasses.replace(model, dtype=dtype)
        fed = dataclasses.replace(
          base.fed,
          clients_per_round=k,
          num_clients=max(k, base.fed.num_clients),
        )
        c = dataclasses.replace(base, fed=fed, model=model)
        est = {
          lay: preflight.round_estimate(c, shape, lay, 1)
          for lay in ("vmap", "map")
        }
        picks = []
        for g in sizes:
          r = mem.fit_layout("vmap", est.__getitem__, int(g * mem.GB))
          fits = r.total <= mem.HEADROOM * g * mem.GB
          picks.append(r.layout if fits else "does not fit")
        print(
          f"| {preset} | {k} | {dtype or c.model.dtype} | "
          f"{est['vmap'].total / mem.GB:.1f} | {est['map'].total / mem.GB:.1f}"
          f" | " + " | ".join(picks) + " |",
          flush=True,
        )


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--clients_per_round", default="8,32,64")
  ap.add_argument("--num_clients", type=int, default=10000)
  ap.add_argument("--per_client", type=int, default=2)
  ap.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
  ap.add_argument("--table", action="store_true")
  a = ap.parse_args()
  if a.table:
    table()
    return
  if a.child:
    print(json.dumps(one(a.num_clients, a.child, a.per_client)))
    return
  rows = []
  for k in (int(x) for x in a.clients_per_round.split(",")):
    out = subprocess.run(
      [
        sys.executable,
        __file__,
        f"--child={k}",
        f"--num_clients={a.num_clients}",
        f"--per_client={a.per_client}",
      ],
      cwd=ROOT,
      env=dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu"),
      capture_output=True,
      text=True,
      check=True,
    )
    rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    r = rows[-1]
    print(
      f"N={r['clients']} K={r['k']}: peak RSS {r['peak_rss_mb']:.0f} MB, "
      f"compile {r['compile_s']:.1f} s, {r['s_per_round']:.2f} s/round, "
      f"{r['uploaded']} uploads",
      flush=True,
    )
  if len(rows) >= 2:
    import numpy as np  # pylint: disable=g-import-not-at-top

    k = np.array([r["k"] for r in rows], float)
    mb = np.array([r["peak_rss_mb"] for r in rows])
    slope, icpt = np.polyfit(k, mb, 1)
    print(f"peak RSS ~ {icpt:.0f} MB + {slope:.1f} MB per participant")


if __name__ == "__main__":
  main()
