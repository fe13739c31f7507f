"""Throughput of the jitted quantizer vs a plain copy of the same data.

  python benchmarks/quantization.py                       # defaults: 35.7M params, K = 1 and 8
  python benchmarks/quantization.py --clients=1,4 --scale=0.25 --rng=hash,key

Reports GB/s of float32 read + written (2 · 4 · K · d bytes per call) for
`quantize_tree` (dequantized output, min-max and QSGD) on a pytree of conv-shaped
leaves (~35.7M float32, the size of the paper's DDPM UNet), vmapped over K clients
with different bits, beside a jitted `x + 0` copy of the same data in the same run.
"""
import argparse
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp

from fedqjax import quantization as Q

# (shape, count): 3x3 conv kernels and dense layers, 35,717,120 float32 in total.
LEAVES = [((3, 3, 512, 512), 6), ((3, 3, 256, 512), 8), ((3, 3, 256, 256), 16),
          ((512, 2048), 2), ((3, 3, 128, 256), 1), ((3, 3, 128, 128), 2)]
BITS = [2, 4, 8, 16, 3, 6, 12, 32]


def make_tree(k_clients: int, scale: float, key):
  tree = {}
  for shape, count in LEAVES:
    for i in range(count):
      key, sub = jax.random.split(key)
      shp = (k_clients,) + shape[:-1] + (max(1, int(shape[-1] * scale)),)
      tree[f"conv{shape[-2]}x{shape[-1]}_{i}"] = jax.random.normal(sub, shp, jnp.float32)
  return tree


def timeit(fn, *args, reps: int):
  jax.block_until_ready(fn(*args))  # compile + warm up
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--clients", default="1,8", help="comma-separated K values")
  p.add_argument("--scale", type=float, default=1.0, help="shrink the last dim of every leaf")
  p.add_argument("--methods", default="minmax,qsgd")
  p.add_argument("--rng", default="hash", help="comma-separated: hash (default), key (threefry)")
  p.add_argument("--bucket_size", type=int, default=None)
  p.add_argument("--reps", type=int, default=3)
  args = p.parse_args()

  print(f"platform={platform.platform()} machine={platform.machine()} cpus={os.cpu_count()} "
        f"jax={jax.__version__} backend={jax.default_backend()} device={jax.devices()[0].device_kind}")
  copy = jax.jit(lambda t: jax.tree_util.tree_map(lambda x: x + 0, t))
  for k in [int(c) for c in args.clients.split(",")]:
    tree = make_tree(k, args.scale, jax.random.key(0))
    d = sum(x.size for x in jax.tree_util.tree_leaves(tree)) // k
    gbytes = 2 * 4 * k * d / 1e9
    t_copy = timeit(copy, tree, reps=args.reps)
    print(f"K={k} d={d:,} params/client  copy x+0: {t_copy * 1e3:9.1f} ms  {gbytes / t_copy:7.2f} GB/s")
    bits = jnp.array([BITS[i % len(BITS)] for i in range(k)], jnp.int32)
    keys = jax.random.split(jax.random.key(1), k)
    for method in args.methods.split(","):
      for rng in args.rng.split(","):
        fn = jax.jit(jax.vmap(lambda t, b, key: Q.quantize_tree(
            t, b, key, method=method, bucket_size=args.bucket_size, rng=rng)))
        t = timeit(fn, tree, bits, keys, reps=args.reps)
        print(f"K={k} quantize_tree method={method:6s} rng={rng:4s} bits={bits.tolist()}: "
              f"{t * 1e3:9.1f} ms  {gbytes / t:7.2f} GB/s  ratio to copy {t_copy / t:5.3f}")
        del fn
    del tree


if __name__ == "__main__":
  main()
