r"""Per-client convolutions on one backend: which layout of the client axis
and which convolution form run fast (the measurement behind the client-loop
resolver and `UNetConfig.conv_impl`).

  PYTHONPATH=. python benchmarks/conv_cpu.py            # K=8, B=4, 32x32x32

K clients, each with its own 3x3 kernel, run `depth` conv+tanh layers and
take the gradient w.r.t. their kernel and input. The client axis is laid out
as: `vmap` (batched weights), `unrolled` (lax.scan, unroll=True: K plain
convolutions in one program), `rolled` (lax.scan, one client per iteration),
and `pyloop` (a Python loop calling one jitted client, the sequential
baseline). Convolution forms: XLA's ("xla") and `im2col_conv`
(fedqjax.diffusion.conv; the removed custom-VJP "fwd_form" is in git
history and in benchmarks/RESULTS.md). Prints ms per call (best of 5) and
compile seconds, warm, `block_until_ready`.
"""

import argparse
import platform
import time

import jax
import jax.numpy as jnp
from jax import lax

from fedqjax.diffusion import conv as conv_lib


def _xla(x, w):
  return lax.conv_general_dilated(
    x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
  )


FORMS = {
  "xla": _xla,
  "im2col": lambda x, w: conv_lib.im2col_conv(x, w, (1, 1), "SAME"),
}


def _best_ms(fn, *args, n=5):
  jax.block_until_ready(fn(*args))
  best = float("inf")
  for _ in range(n):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    best = min(best, time.perf_counter() - t0)
  return 1e3 * best


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--clients", type=int, default=8)
  ap.add_argument("--batch", type=int, default=4)
  ap.add_argument("--res", type=int, default=32)
  ap.add_argument("--channels", type=int, default=32)
  ap.add_argument("--depth", type=int, default=4)
  a = ap.parse_args()
  k, b, r, c = a.clients, a.batch, a.res, a.channels
  x = jax.random.normal(jax.random.PRNGKey(0), (k, b, r, r, c))
  w = 0.1 * jax.random.normal(jax.random.PRNGKey(1), (k, 3, 3, c, c))
  print(
    f"# {platform.platform()} | jax {jax.__version__} | "
    f"{jax.default_backend()} x{jax.device_count()} | K={k} B={b} "
    f"{r}x{r}x{c} depth={a.depth}, grad w.r.t. kernel and input"
  )
  print("| conv form | client layout | ms / call | compile s |")
  print("|---|---|---:|---:|")
  for form, conv in FORMS.items():

    def loss(w1, x1, conv=conv):
      h = x1
      for _ in range(a.depth):
        h = jnp.tanh(conv(h, w1))
      return jnp.mean(h**2)

    g = jax.grad(loss, argnums=(0, 1))
    scan = lambda unroll, g=g: jax.jit(
      lambda w, x: lax.scan(
        lambda c_, wx: (c_, g(*wx)), 0, (w, x), unroll=unroll
      )[1]
    )
    one = jax.jit(g)
    layouts = {
      "vmap": jax.jit(jax.vmap(g)),
      "unrolled": scan(True),
      "rolled": scan(1),
      "pyloop": lambda w, x: [one(w[i], x[i]) for i in range(k)],
    }
    for name, fn in layouts.items():
      t0 = time.perf_counter()
      jax.block_until_ready(fn(w, x))
      compile_s = time.perf_counter() - t0
      print(
        f"| {form} | {name} | {_best_ms(fn, w, x):.1f} | {compile_s:.1f} |",
        flush=True,
      )


if __name__ == "__main__":
  main()
