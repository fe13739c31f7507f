"""Side by side with the peers: the same federated DDPM round in fedqjax
(`jit_round_step`, all K clients in one compiled XLA program), in a PyTorch
sequential client loop (how most papers' code does FedAvg), and in Flower's
simulation engine (NumPyClient + FedAvg on the Ray backend).

  python -m benchmarks.peers --model tiny --clients 8 --rounds 3 \
      --local_steps 2 --batch 4 --res 32 --peers torch,flower
  PYTHONPATH=. python -m benchmarks.peers ...        # same thing

Every runner runs in its own subprocess (clean peak-RSS accounting; Flower's
Ray workers are counted as that process tree), with the same config and the
same synthetic client data, for 1 warm-up round + `--rounds` timed rounds.
fedqjax's compile time is reported separately from its steady-state rounds.
A peer whose package (torch, flwr, ray) is missing is skipped with the reason.
Flower can be run from another interpreter (`--flower_python`), e.g. a venv
that has `flwr[simulation]` when the main venv's pins conflict with it.

Prints a markdown table for benchmarks/RESULTS.md. Throughput is
images/s = K * I * B / mean round time (training images only).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from benchmarks.peers import common  # noqa: E402  pylint: disable=wrong-import-position

RUNNERS = {
  "fedqjax": "benchmarks.peers.fedqjax_run",
  "torch": "benchmarks.peers.torch_loop",
  "flower": "benchmarks.peers.flower_sim",
}
REQUIRES = {
  "fedqjax": ("jax", "flax", "optax"),
  "torch": ("torch",),
  "flower": ("torch", "flwr", "ray"),
}


def _probe(python: str, modules) -> tuple[bool, str, dict]:
  """Whether `python` can import `modules`; their versions, or why not."""
  code = (
    "import importlib, json, sys\n"
    "out = {}\n"
    f"for m in {list(modules)!r}:\n"
    "  try:\n"
    "    mod = importlib.import_module(m)\n"
    "    out[m] = getattr(mod, '__version__', '?')\n"
    "  except Exception as e:\n"
    "    print(json.dumps({'missing': m, 'why': f'{type(e).__name__}: {e}'})); sys.exit(0)\n"
    "print(json.dumps({'versions': out}))\n"
  )
  try:
    res = subprocess.run(
      [python, "-c", code],
      capture_output=True,
      text=True,
      timeout=300,
      env=_env(),
    )
  except (OSError, subprocess.TimeoutExpired) as e:
    return False, f"cannot run {python}: {e}", {}
  lines = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
  if not lines:
    return (
      False,
      f"probe failed (rc={res.returncode}): {res.stderr.strip()[-300:]}",
      {},
    )
  info = json.loads(lines[-1])
  if "missing" in info:
    return (
      False,
      f"`{info['missing']}` not importable ({info['why'][:200]})",
      {},
    )
  return True, "", info["versions"]


def _env() -> dict:
  env = dict(os.environ)
  env["PYTHONPATH"] = ROOT + (
    os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""
  )
  env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  return env


def _run(
  python: str,
  module: str,
  cfg: common.BenchConfig,
  log_path: str,
  timeout: float,
) -> dict:
  t0 = time.perf_counter()
  with open(log_path, "w") as log:
    try:
      res = subprocess.run(
        [python, "-m", module, cfg.to_json()],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        timeout=timeout,
        env=_env(),
        cwd=ROOT,
      )
    except subprocess.TimeoutExpired:
      return {"error": f"timed out after {timeout:.0f} s (log: {log_path})"}
    log.write("\n--- stdout ---\n" + res.stdout)
  for line in res.stdout.splitlines():
    if line.startswith(common.RESULT_TAG):
      out = json.loads(line[len(common.RESULT_TAG) :])
      out["process_wall_s"] = time.perf_counter() - t0
      return out
  with open(log_path) as f:
    tail = f.read()[-1500:]
  return {"error": f"rc={res.returncode}, no result (log: {log_path}):\n{tail}"}


def _fmt(x, nd=2):
  return "n/a" if x is None else f"{x:.{nd}f}"


def _add_workload_args(ap: argparse.ArgumentParser) -> None:
  """The federated round every runner runs: model, K, rounds, I, B, data."""
  ap.add_argument("--model", default="tiny", choices=("tiny", "paper"))
  ap.add_argument("--clients", type=int, default=8)
  ap.add_argument(
    "--rounds", type=int, default=3, help="timed rounds (after 1 warm-up)"
  )
  ap.add_argument("--local_steps", type=int, default=2)
  ap.add_argument("--batch", type=int, default=4)
  ap.add_argument(
    "--res",
    type=int,
    default=32,
    choices=(28, 32),
    help="32 -> 32x32x3, 28 -> 28x28x1",
  )
  ap.add_argument("--n_max", type=int, default=64, help="images per client")


def _add_peer_args(ap: argparse.ArgumentParser) -> None:
  """Which peers run and how each one executes."""
  ap.add_argument(
    "--peers",
    default="torch,flower",
    help="comma list of torch, flower (fedqjax always runs)",
  )
  ap.add_argument(
    "--fedqjax_client_loop",
    default="auto",
    choices=("auto", "vmap", "unrolled", "map"),
    help="fedqjax's fed.client_loop; fed.resolve_execution derives the "
    "client layout, local-step unroll and convolution form (auto: "
    "unrolled on CPU up to fed.AUTO_MAX_UNROLLED clients, then map; "
    "vmap on GPU/TPU)",
  )
  ap.add_argument(
    "--threads", type=int, default=2, help="torch threads (torch loop)"
  )
  ap.add_argument(
    "--torch_device",
    default="cpu",
    choices=("cpu", "cuda"),
    help="device of the PyTorch loop (cuda for the GPU comparison)",
  )
  ap.add_argument(
    "--flower_cpus_per_client",
    type=float,
    default=1.0,
    help="Ray CPUs per virtual client (1 on 2 cores = 2 concurrent clients)",
  )


def _add_process_args(ap: argparse.ArgumentParser) -> None:
  """Interpreters, logs, time limit and JSON output of the runner processes."""
  ap.add_argument(
    "--python", default=sys.executable, help="interpreter for fedqjax/torch"
  )
  ap.add_argument(
    "--flower_python",
    default=None,
    help="interpreter with flwr[simulation] (default: --python)",
  )
  ap.add_argument("--logdir", default="/tmp/fedqjax_peers")
  ap.add_argument(
    "--timeout", type=float, default=1800, help="per runner, seconds"
  )
  ap.add_argument(
    "--json_out", default=None, help="also write all results as JSON here"
  )


def _parser() -> argparse.ArgumentParser:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  _add_workload_args(ap)
  _add_peer_args(ap)
  _add_process_args(ap)
  return ap


def _run_all(cfg, peers, pythons, args):
  """Runs fedqjax and each peer in its own process: (versions, results,
  skipped)."""
  versions, results, skipped = {}, {}, {}
  for name in ["fedqjax"] + peers:
    ok, why, vers = _probe(pythons[name], REQUIRES[name])
    versions.update({f"{name}:{k}": v for k, v in vers.items()})
    if not ok:
      skipped[name] = why
      print(f"[peers] skipping {name}: {why}", file=sys.stderr, flush=True)
      continue
    print(
      f"[peers] running {name} ({RUNNERS[name]}) ...",
      file=sys.stderr,
      flush=True,
    )
    r = _run(
      pythons[name],
      RUNNERS[name],
      cfg,
      os.path.join(args.logdir, f"{name}.log"),
      args.timeout,
    )
    if "error" in r:
      skipped[name] = r["error"]
      print(f"[peers] {name} failed: {r['error']}", file=sys.stderr, flush=True)
      continue
    results[name] = r
    print(
      f"[peers] {name}: {r['round_s_mean']:.3f} s/round",
      file=sys.stderr,
      flush=True,
    )
  return versions, results, skipped


def main(argv=None):
  ap = _parser()
  args = ap.parse_args(argv)
  cfg = common.BenchConfig(
    model=args.model,
    clients=args.clients,
    rounds=args.rounds,
    local_steps=args.local_steps,
    batch=args.batch,
    res=args.res,
    n_max=args.n_max,
    threads=args.threads,
    torch_device=args.torch_device,
    fedqjax_client_loop=args.fedqjax_client_loop,
    flower_cpus_per_client=args.flower_cpus_per_client,
  )
  os.makedirs(args.logdir, exist_ok=True)
  peers = [p.strip() for p in args.peers.split(",") if p.strip()]
  for p in peers:
    if p not in ("torch", "flower"):
      ap.error(f"--peers: unknown peer {p!r}; valid: torch, flower")
  pythons = {
    "fedqjax": args.python,
    "torch": args.python,
    "flower": args.flower_python or args.python,
  }

  versions, results, skipped = _run_all(cfg, peers, pythons, args)
  _report(cfg, args, versions, results, skipped)
  if args.json_out:
    with open(args.json_out, "w") as f:
      json.dump(
        dict(
          config=json.loads(cfg.to_json()),
          versions=versions,
          results=results,
          skipped=skipped,
        ),
        f,
        indent=1,
      )
  return results


def _rows(results):
  """(label, result) of each runner that finished, fedqjax first."""
  fq = results.get("fedqjax")
  rows = []
  if fq:
    rows.append(
      (
        f"fedqjax `jit_round_step` (client_loop {fq['client_loop']} -> "
        f"{fq['mode']}, conv {fq['conv_impl']}, local unroll {fq['local_unroll']})",
        fq,
      )
    )
    rows.append(
      (
        "fedqjax `round_step_reference` (python loop over clients)",
        dict(
          fq["reference"], peak_rss_tree_mb=None, num_params=fq["num_params"]
        ),
      )
    )
  if "torch" in results:
    tr = results["torch"]
    where = (
      f"{tr['threads']} threads"
      if tr.get("device", "cpu") == "cpu"
      else tr["device"]
    )
    rows.append((f"PyTorch sequential loop ({where})", tr))
  if "flower" in results:
    fl = results["flower"]
    rows.append(
      (
        f"Flower {fl['version']} simulation (Ray, {fl['cpus_per_client']:g} "
        f"CPU/client)",
        fl,
      )
    )
  return rows


def _report(cfg, args, versions, results, skipped) -> None:
  """The markdown table of round times, side by side, and the machine."""
  n_img = cfg.images_per_round
  try:
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
  except OSError:
    load = "n/a"
  jv = versions.get("fedqjax:jax", "n/a")
  tv = versions.get("torch:torch") or versions.get("flower:torch") or "n/a"
  fv = versions.get("flower:flwr", "n/a")
  rv = versions.get("flower:ray", "n/a")
  print(
    f"### Peers: federated DDPM round, {args.model} U-Net, {cfg.res}x{cfg.res}x"
    f"{cfg.channels}, K={cfg.clients}, I={cfg.local_steps}, B={cfg.batch} "
    f"({n_img} images/round), {cfg.bits}-bit update quantization, float32\n"
  )
  print(
    f"Machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
    f"{os.cpu_count()} CPUs, Python {platform.python_version()}; "
    f"jax {jv}, torch {tv}, flwr {fv}, ray {rv}. "
    f"Load average after the run (1/5/15 min): {load}. "
    f"{cfg.rounds} timed rounds after 1 warm-up round; mean round time.\n"
  )
  fq = results.get("fedqjax")
  print(
    "| runner | params | round time (s) | images/s | fedqjax speed-up | peak RSS (MB) "
    "| first round (s) | compile / start-up (s) |"
  )
  print("|---|---:|---:|---:|---:|---:|---:|---:|")
  for label, r in _rows(results):
    t = r["round_s_mean"]
    speed = f"{t / fq['round_s_mean']:.2f}x" if fq else "n/a"
    extra = (
      f"compile {_fmt(r['compile_s'], 1)}"
      if "compile_s" in r
      else f"Ray+engine {_fmt(r['startup_s'], 1)}"
      if "startup_s" in r
      else ""
    )
    print(
      f"| {label} | {r.get('num_params', 'n/a'):,} | {t:.3f} | {n_img / t:.1f} | {speed} "
      f"| {_fmt(r.get('peak_rss_tree_mb'), 0)} | {_fmt(r.get('first_round_s'), 2)} "
      f"| {extra} |"
    )
  print()
  print(
    "fedqjax speed-up = peer round time / fedqjax round time. Peak RSS: summed over the "
    "runner's process tree (Flower: driver + Ray GCS/raylet/workers; shared pages counted "
    "per process); the reference loop shares fedqjax's process, so no separate figure. "
    "First round: the warm-up round (torch allocator warm-up; Flower: Ray actor start "
    "and imports; fedqjax: first call of the compiled program)."
  )
  for name, why in skipped.items():
    print(f"\n- {name} skipped: {why}")


if __name__ == "__main__":
  main()
