"""Throughput of the jitted quantizer vs a plain copy of the same data.

  python benchmarks/quantization.py                      # defaults: 35.7M params, K = 1 and 8
  python benchmarks/quantization.py --clients=1,4 --scale=0.25 --bucket_size=512

Reports GB/s of float32 read + written (2 · 4 · K · d bytes per call) for
`Quantizer.quantize` on the packed update (pack, quantize, unpack: dequantized
pytree out; min-max and QSGD) of a pytree of conv-shaped leaves (~35.7M
float32, the size of the paper's DDPM UNet), vmapped over K clients with
different bits, beside a jitted `x + 0` copy of the same data in the same run.
Also reports the compile time of the vmapped quantizer (O(1) in the number of
leaves) and of the on-demand bit-width.
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
LEAVES = [
  ((3, 3, 512, 512), 6),
  ((3, 3, 256, 512), 8),
  ((3, 3, 256, 256), 16),
  ((512, 2048), 2),
  ((3, 3, 128, 256), 1),
  ((3, 3, 128, 128), 2),
]
BITS = [2, 4, 8, 16, 3, 6, 12, 32]


def make_tree(k_clients: int, scale: float, key):
  tree = {}
  for shape, count in LEAVES:
    for i in range(count):
      key, sub = jax.random.split(key)
      shp = (k_clients,) + shape[:-1] + (max(1, int(shape[-1] * scale)),)
      tree[f"conv{shape[-2]}x{shape[-1]}_{i}"] = jax.random.normal(
        sub, shp, jnp.float32
      )
  return tree


def timeit(fn, *args, reps: int):
  t0 = time.perf_counter()
  jax.block_until_ready(fn(*args))  # compile + warm up
  first = time.perf_counter() - t0
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return statistics.median(times), first


def main():
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("--clients", default="1,8", help="comma-separated K values")
  p.add_argument(
    "--scale", type=float, default=1.0, help="shrink the last dim of every leaf"
  )
  p.add_argument("--methods", default=",".join(Q.METHODS))
  p.add_argument("--bucket_size", type=int, default=None)
  p.add_argument("--reps", type=int, default=3)
  args = p.parse_args()

  print(
    f"platform={platform.platform()} machine={platform.machine()} cpus={os.cpu_count()} "
    f"jax={jax.__version__} backend={jax.default_backend()} device={jax.devices()[0].device_kind}"
  )
  copy = jax.jit(lambda t: jax.tree_util.tree_map(lambda x: x + 0, t))
  for k in [int(c) for c in args.clients.split(",")]:
    tree = make_tree(k, args.scale, jax.random.key(0))
    template = jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), tree
    )
    d = sum(x.size for x in jax.tree_util.tree_leaves(tree)) // k
    gbytes = 2 * 4 * k * d / 1e9
    t_copy, _ = timeit(copy, tree, reps=args.reps)
    print(
      f"K={k} d={d:,} params/client  copy x+0: {t_copy * 1e3:9.1f} ms  {gbytes / t_copy:7.2f} GB/s"
    )
    bits = jnp.array([BITS[i % len(BITS)] for i in range(k)], jnp.int32)
    eps = jnp.full((k,), 1e-3, jnp.float32)
    keys = jax.random.split(jax.random.key(1), k)
    for method in args.methods.split(","):
      q = Q.make_quantizer(template, method, args.bucket_size)
      fn = jax.jit(
        jax.vmap(lambda t, b, key: q.unpack(q.quantize(q.pack(t), b, key)))
      )
      t, first = timeit(fn, tree, bits, keys, reps=args.reps)
      print(
        f"K={k} quantize method={method:6s} bits={bits.tolist()}: {t * 1e3:9.1f} ms  "
        f"{gbytes / t:7.2f} GB/s  ratio to copy {t_copy / t:5.3f}  (first call {first:.1f} s)"
      )
      ond = jax.jit(jax.vmap(lambda t, e: q.bits_for(q.pack(t), e)))
      t, first = timeit(ond, tree, eps, reps=args.reps)
      print(
        f"K={k} bits_for method={method:6s}: {t * 1e3:9.1f} ms  (first call {first:.1f} s)  "
        f"bits={ond(tree, eps).tolist()}"
      )
      del fn, ond
    del tree


if __name__ == "__main__":
  main()
