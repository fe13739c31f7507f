r"""XLA:CPU back-ends and convolution forms for the tiny U-Net's training.

  PYTHONPATH=. python benchmarks/cpu_backends.py                  # all parts
  PYTHONPATH=. python benchmarks/cpu_backends.py --parts=step --batches=4,32
  PYTHONPATH=. python benchmarks/cpu_backends.py --parts=round --clients=8

Every measurement runs in its own fresh process (XLA_FLAGS are read once,
at backend start), one after the other, and prints one markdown row:

  step   one jitted training step (forward + backward + Adam) at each batch,
         under each XLA:CPU option set (FLAG_SETS): compile s, ms/step (best
         of --repeats), img/s, peak RSS, and the relative difference of the
         loss and of the gradients from the default flags on the same
         parameters, batch and key; "engaged" counts the library fusions
         (lines of the optimized HLO naming oneDNN / XNNPACK / YNNPACK), so an
         option that silently does nothing shows 0.
  loop   I local steps as one `lax.scan`, rolled (unroll 1 or 2) and
         unrolled, per convolution form (xla | im2col): the cost
         of a loop body on XLA:CPU (jax-ml/jax#12868).
  round  `federated.round_step` at K clients in each client layout
         (federated.Execution), compile s and s/round.

Results and the machine they ran on: benchmarks/RESULTS.md, "XLA:CPU
back-ends".
"""

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

FLAG_SETS = {
  "default": "",
  "fast_math": "--xla_cpu_enable_fast_math=true",
  "onednn": "--xla_cpu_use_onednn=true",
  "onednn_custom_call": "--xla_cpu_experimental_onednn_custom_call=true",
  "onednn_fusion_conv": (
    "--xla_cpu_experimental_onednn_fusion_type="
    "LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION,"
    "LIBRARY_FUSION_TYPE_DOT"
  ),
  "xnnpack": "--xla_cpu_use_xnnpack=true",
  "xnn_greedy": (
    "--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY"
  ),
  "ynn_conv": (
    "--xla_cpu_experimental_ynn_fusion_type="
    "LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION,"
    "LIBRARY_FUSION_TYPE_DOT"
  ),
  "no_eigen_threads": "--xla_cpu_multi_thread_eigen=false",
  "opt_level_0": "--xla_backend_optimization_level=0",
  "split_codegen_4": "--xla_cpu_parallel_codegen_split_count=4",
}
ENGAGED = ("onednn", "xnn", "ynn")  # HLO lines naming a library fusion / call


def _rss_gb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def _best(fn, repeats: int) -> float:
  import jax  # pylint: disable=g-import-not-at-top

  jax.block_until_ready(fn())
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    best = min(best, time.perf_counter() - t0)
  return best


def _model(conv: str, batch: int):
  """(apply, schedule, params, x, key) for the tiny U-Net at 28x28x1."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from fedqjax import diffusion as dm  # pylint: disable=g-import-not-at-top

  cfg = dm.UNetConfig.tiny(conv_impl=conv)
  params = dm.init_unet(cfg, jax.random.key(0), (28, 28, 1))
  x = np.random.default_rng(0).uniform(-1, 1, (batch, 28, 28, 1))
  return (
    cfg.make().apply,
    dm.linear_schedule(),
    params,
    x.astype(np.float32),
    jax.random.key(1),
  )


def worker_step(w):
  """One train step's loss, gradients (saved for comparison) and speed."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top

  from fedqjax import diffusion as dm  # pylint: disable=g-import-not-at-top

  apply, sched, params, x, key = _model(w["conv"], w["batch"])
  tx = optax.adam(1e-3)
  step = dm.make_train_step(apply, tx, sched)
  grad = jax.jit(lambda p: dm.loss_and_grad(p, apply, x, key, sched))
  t0 = time.perf_counter()
  compiled = jax.jit(step).lower((params, tx.init(params)), x, key).compile()
  compile_s = time.perf_counter() - t0
  hlo = compiled.as_text()
  carry = (params, tx.init(params))
  secs = _best(lambda: compiled(carry, x, key)[1], w["repeats"])
  loss, g = grad(params)
  flat = np.concatenate([np.ravel(v) for v in jax.tree.leaves(g)])
  np.savez(w["out"], loss=np.asarray(loss), grad=flat)
  return dict(
    compile_s=compile_s,
    ms=1e3 * secs,
    img_s=w["batch"] / secs,
    rss_gb=_rss_gb(),
    engaged=sum(any(m in ln for m in ENGAGED) for ln in hlo.splitlines()),
  )


def worker_loop(w):
  """I steps in one lax.scan (rolled or unrolled) for one conv form."""
  import jax  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top

  from fedqjax import diffusion as dm  # pylint: disable=g-import-not-at-top

  apply, sched, params, x, key = _model(w["conv"], w["batch"])
  tx = optax.adam(1e-3)
  step = dm.make_train_step(apply, tx, sched)
  keys = jax.random.split(key, w["steps"])
  unroll = True if w["unroll"] == "full" else int(w["unroll"])
  run = jax.jit(
    lambda c, ks: jax.lax.scan(lambda c, k: step(c, x, k), c, ks, unroll=unroll)
  )
  carry = (params, tx.init(params))
  t0 = time.perf_counter()
  compiled = run.lower(carry, keys).compile()
  compile_s = time.perf_counter() - t0
  secs = _best(lambda: compiled(carry, keys)[1], w["repeats"])
  return dict(
    compile_s=compile_s,
    ms=1e3 * secs / w["steps"],
    img_s=w["batch"] * w["steps"] / secs,
    rss_gb=_rss_gb(),
  )


def worker_round(w):
  """s/round and compile s of the jitted round in one client layout."""
  import dataclasses  # pylint: disable=g-import-not-at-top

  import jax  # pylint: disable=g-import-not-at-top

  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  import round as round_bench  # pylint: disable=g-import-not-at-top

  from fedqjax import federated as fed  # pylint: disable=g-import-not-at-top

  sys.argv = [
    sys.argv[0],
    f"--clients={w['clients']}",
    f"--local_steps={w['steps']}",
    f"--batch={w['batch']}",
    "--res=28",
    "--channels=1",
  ]
  a = round_bench._args()  # pylint: disable=protected-access
  ucfg, params, _, flops, data, devices, scheme = round_bench._setup(a)  # pylint: disable=protected-access
  spec = round_bench._spec(a, ucfg, params, flops, "auto")  # pylint: disable=protected-access
  layout, clients_unroll, unroll, conv = w["execution"]
  if layout == "scan":  # a rolled scan over clients, `clients_unroll` per
    from fedqjax.federated import execution as ex_lib  # pylint: disable=g-import-not-at-top

    ex_lib._unrolled = lambda fn, args, _: jax.lax.scan(  # pylint: disable=protected-access
      lambda c, x: (c, fn(*x)), None, args, unroll=int(clients_unroll)
    )[1]
    layout = "unrolled"  # iteration: not a layout of the library (yet)
  spec = dataclasses.replace(
    spec,
    execution=fed.Execution(
      layout, True if unroll == "full" else int(unroll), conv
    ),
  )
  secs, compile_s = round_bench._time_round(  # pylint: disable=protected-access
    spec, params, data, devices, scheme, w["repeats"]
  )
  imgs = w["clients"] * w["steps"] * w["batch"]
  return dict(
    compile_s=compile_s, s_round=secs, img_s=imgs / secs, rss_gb=_rss_gb()
  )


WORKERS = {"step": worker_step, "loop": worker_loop, "round": worker_round}


def _spawn(part: str, flags: str, **w):
  """Runs one measurement in a fresh process; returns its dict or an error."""
  env = dict(
    os.environ,
    XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") + " " + flags).strip(),
    TF_CPP_MIN_LOG_LEVEL="2",
  )
  cmd = [
    sys.executable,
    os.path.abspath(__file__),
    "--worker",
    json.dumps(dict(w, part=part)),
  ]
  p = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
  lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
  if p.returncode or not lines:
    tail = (p.stderr.strip().splitlines() or ["?"])[-1][:120]
    return dict(error=f"exit {p.returncode}: {tail}")
  return json.loads(lines[-1])


def _rel(a, b) -> float:
  import numpy as np  # pylint: disable=g-import-not-at-top

  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def part_step(a, tmp: str) -> None:
  import numpy as np  # pylint: disable=g-import-not-at-top

  print("\n### One training step (tiny U-Net, 28x28x1), per XLA:CPU option")
  print(
    "| options | conv | batch | compile s | ms/step | img/s | vs default "
    "| peak RSS GB | engaged | loss rel diff | grad rel diff |"
  )
  print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
  for batch in a.batches:
    base = None
    for name in a.flag_sets:
      for conv in ("xla", "im2col") if name == "default" else ("xla",):
        out = os.path.join(tmp, f"{name}_{conv}_{batch}.npz")
        r = _spawn(
          "step",
          FLAG_SETS[name],
          conv=conv,
          batch=batch,
          repeats=a.repeats,
          out=out,
        )
        if "error" in r:
          print(f"| {name} | {conv} | {batch} | {r['error']} |||||||||")
          continue
        got = np.load(out)
        if base is None:
          base = (r["ms"], got)
        print(
          f"| {name} | {conv} | {batch} | {r['compile_s']:.1f} | "
          f"{r['ms']:.1f} | {r['img_s']:.1f} | {base[0] / r['ms']:.2f}x | "
          f"{r['rss_gb']:.2f} | {r['engaged']} | "
          f"{_rel(got['loss'], base[1]['loss']):.1e} | "
          f"{_rel(got['grad'], base[1]['grad']):.1e} |",
          flush=True,
        )


def part_loop(a) -> None:
  print(f"\n### {a.steps} local steps in one lax.scan (batch {a.loop_batch})")
  print("| conv | scan unroll | compile s | ms/step | img/s | peak RSS GB |")
  print("|---|---|---:|---:|---:|---:|")
  for conv in ("xla", "im2col"):
    for unroll in ("1", "2", "full"):
      r = _spawn(
        "loop",
        "",
        conv=conv,
        batch=a.loop_batch,
        steps=a.steps,
        unroll=unroll,
        repeats=a.repeats,
      )
      cells = (
        r["error"]
        if "error" in r
        else f"{r['compile_s']:.1f} | {r['ms']:.1f} | {r['img_s']:.1f} | "
        f"{r['rss_gb']:.2f}"
      )
      print(f"| {conv} | {unroll} | {cells} |", flush=True)


# (client layout, clients per loop iteration, local-step unroll, conv form);
# "scan": a rolled lax.scan over clients with that many clients per
# iteration (concurrency inside one loop body, a program of that size).
ROUND_LAYOUTS = (
  ("unrolled", "all", "full", "xla"),
  ("map", "1", "1", "im2col"),
  ("scan", "2", "full", "im2col"),
)


def part_round(a) -> None:
  print(
    f"\n### round_step, K = {a.clients}, I = {a.round_steps}, "
    f"B = {a.round_batch}, 28x28x1"
  )
  print(
    "| client layout | clients per iteration | local unroll | conv | "
    "compile s | s/round | img/s | peak RSS GB |"
  )
  print("|---|---|---|---|---:|---:|---:|---:|")
  for ex in ROUND_LAYOUTS:
    r = _spawn(
      "round",
      "",
      execution=ex,
      clients=a.clients,
      steps=a.round_steps,
      batch=a.round_batch,
      repeats=a.repeats,
    )
    cells = (
      r["error"]
      if "error" in r
      else f"{r['compile_s']:.1f} | {r['s_round']:.3f} | {r['img_s']:.1f} "
      f"| {r['rss_gb']:.2f}"
    )
    print(f"| {' | '.join(ex)} | {cells} |", flush=True)


def _ints(s: str):
  return [int(v) for v in s.split(",") if v.strip()]


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--parts", default="step,loop,round")
  ap.add_argument("--batches", type=_ints, default=[4, 32])
  ap.add_argument("--flag_sets", default=",".join(FLAG_SETS))
  ap.add_argument("--repeats", type=int, default=5)
  ap.add_argument("--steps", type=int, default=8, help="loop part: I")
  ap.add_argument("--loop_batch", type=int, default=8)
  ap.add_argument(
    "--clients",
    type=int,
    default=10,
    help="round part; default: the cpu preset's K, I, B",
  )
  ap.add_argument("--round_steps", type=int, default=2)
  ap.add_argument("--round_batch", type=int, default=8)
  ap.add_argument("--worker", default="", help=argparse.SUPPRESS)
  a = ap.parse_args()
  if a.worker:
    w = json.loads(a.worker)
    print(json.dumps(WORKERS[w["part"]](w)))
    return
  a.flag_sets = [s for s in a.flag_sets.split(",") if s]
  bad = [s for s in a.flag_sets if s not in FLAG_SETS]
  if bad:
    ap.error(f"--flag_sets: {bad} invalid; valid: {', '.join(FLAG_SETS)}")
  import jax  # pylint: disable=g-import-not-at-top

  print(
    f"# {platform.platform()} | {os.cpu_count()} CPUs | jax "
    f"{jax.__version__} | user XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}"
  )
  import tempfile  # pylint: disable=g-import-not-at-top

  with tempfile.TemporaryDirectory() as tmp:
    for part in a.parts.split(","):
      {
        "step": lambda: part_step(a, tmp),
        "loop": lambda: part_loop(a),
        "round": lambda: part_round(a),
      }[part]()


if __name__ == "__main__":
  main()
