"""Side by side with the peers: the same federated DDPM round in fedqjax
(`jit_round_step`, all K clients in one compiled XLA program), in a PyTorch
sequential client loop (how most papers' code does FedAvg), in Flower's
simulation engine (NumPyClient + FedAvg on the Ray backend), and with DrJAX's
primitives (broadcast / map_fn / reduce_weighted_mean around fedqjax's client
update and quantizer; drjax_run.py).

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
import dataclasses
import json
import os
import subprocess
import sys
import time

# The repository root (benchmarks/peers/__main__.py -> three levels up): on
# sys.path here and in every runner's PYTHONPATH and working directory.
ROOT = os.path.dirname(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from benchmarks.peers import common, report  # noqa: E402  pylint: disable=wrong-import-position

RUNNERS = {
  "fedqjax": "benchmarks.peers.fedqjax_run",
  "drjax": "benchmarks.peers.drjax_run",
  "drjax_xla": "benchmarks.peers.drjax_run",
  "torch": "benchmarks.peers.torch_loop",
  "flower": "benchmarks.peers.flower_sim",
}
REQUIRES = {
  "fedqjax": ("jax", "flax", "optax"),
  "drjax": ("jax", "flax", "optax", "drjax"),
  "drjax_xla": ("jax", "flax", "optax", "drjax"),
  "torch": ("torch",),
  "flower": ("torch", "flwr", "ray"),
}
PEERS = tuple(n for n in RUNNERS if n != "fedqjax")


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


def _env(extra=None) -> dict:
  env = dict(os.environ)
  env.update(extra or {})
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
  extra_env=None,
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
        env=_env(extra_env),
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


def _add_workload_args(ap: argparse.ArgumentParser) -> None:
  """The federated round every runner runs: model, K, rounds, I, B, data."""
  ap.add_argument("--model", default="tiny", choices=("tiny", "paper"))
  ap.add_argument(
    "--clients",
    default="8",
    help="K, or a comma list of K run one after the other (e.g. 8,10)",
  )
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
    help=f"comma list of {', '.join(PEERS)} (fedqjax always runs, unless "
    "--skip_fedqjax); drjax: DrJAX's vmap with the client program "
    "fedqjax's vmap layout uses on this backend; drjax_xla: with XLA's "
    "convolutions and unrolled local steps",
  )
  ap.add_argument(
    "--drjax_mesh",
    type=int,
    default=0,
    help="DrJAX runners: a 'clients' mesh over this many devices (on CPU "
    "forced with XLA_FLAGS=--xla_force_host_platform_device_count)",
  )
  ap.add_argument(
    "--skip_reference",
    action="store_true",
    help="skip fedqjax's round_step_reference (python loop over clients)",
  )
  ap.add_argument(
    "--skip_fedqjax", action="store_true", help="run the peers only"
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


def _runner_env(name: str, cfg: common.BenchConfig) -> dict:
  """Extra environment of one runner: forced CPU devices for a DrJAX mesh."""
  if not name.startswith("drjax") or cfg.drjax_mesh <= 1:
    return {}
  flag = f"--xla_force_host_platform_device_count={cfg.drjax_mesh}"
  return {"XLA_FLAGS": (os.environ.get("XLA_FLAGS", "") + " " + flag).strip()}


def _runner_cfg(name: str, cfg: common.BenchConfig) -> common.BenchConfig:
  if name == "drjax_xla":
    return dataclasses.replace(cfg, drjax_conv="xla")
  return cfg


def _run_all(cfg, names, pythons, args):
  """Runs each runner in its own process: (versions, results, skipped)."""
  versions, results, skipped = {}, {}, {}
  for name in names:
    ok, why, vers = _probe(pythons[name], REQUIRES[name])
    versions.update({f"{name}:{k}": v for k, v in vers.items()})
    if not ok:
      skipped[name] = why
      print(f"[peers] skipping {name}: {why}", file=sys.stderr, flush=True)
      continue
    print(f"[peers] K={cfg.clients}: running {name} ...", file=sys.stderr)
    log = os.path.join(args.logdir, f"{name}_k{cfg.clients}.log")
    rcfg = _runner_cfg(name, cfg)
    r = _run(
      pythons[name],
      RUNNERS[name],
      rcfg,
      log,
      args.timeout,
      _runner_env(name, rcfg),
    )
    if "error" in r:
      skipped[name] = r["error"]
      print(f"[peers] {name} failed: {r['error']}", file=sys.stderr, flush=True)
      continue
    results[name] = r
    print(f"[peers] {name}: {r['round_s_mean']:.3f} s/round", file=sys.stderr)
  return versions, results, skipped


def _config(args, clients: int) -> common.BenchConfig:
  return common.BenchConfig(
    model=args.model,
    clients=clients,
    rounds=args.rounds,
    local_steps=args.local_steps,
    batch=args.batch,
    res=args.res,
    n_max=args.n_max,
    threads=args.threads,
    torch_device=args.torch_device,
    fedqjax_client_loop=args.fedqjax_client_loop,
    flower_cpus_per_client=args.flower_cpus_per_client,
    drjax_mesh=args.drjax_mesh,
    skip_reference=args.skip_reference,
    dump_dir=args.logdir,
  )


def _parse_lists(ap, args):
  """(clients list, peer names) from the comma-list arguments."""
  try:
    ks = [int(k) for k in args.clients.split(",") if k.strip()]
  except ValueError:
    ks = []
  if not ks or min(ks) < 1:
    ap.error(f"--clients={args.clients!r}: one or more integers >= 1")
  peers = [p.strip() for p in args.peers.split(",") if p.strip()]
  for p in peers:
    if p not in PEERS:
      ap.error(f"--peers: unknown peer {p!r}; valid: {', '.join(PEERS)}")
  return ks, ([] if args.skip_fedqjax else ["fedqjax"]) + peers


def main(argv=None):
  ap = _parser()
  args = ap.parse_args(argv)
  ks, names = _parse_lists(ap, args)
  os.makedirs(args.logdir, exist_ok=True)
  pythons = {n: args.python for n in RUNNERS}
  pythons["flower"] = args.flower_python or args.python
  load_before = report.load_average()
  runs = []
  for k in ks:
    cfg = _config(args, k)
    versions, results, skipped = _run_all(cfg, names, pythons, args)
    diffs = report.param_diffs(cfg, results)
    runs.append(
      dict(
        config=json.loads(cfg.to_json()),
        versions=versions,
        results=results,
        skipped=skipped,
        round1_param_diff_vs_fedqjax=diffs,
        load_before=load_before,
        load_after=report.load_average(),
      )
    )
    if args.json_out:  # after every K: a late failure keeps the earlier ones
      with open(args.json_out, "w") as f:
        json.dump(runs, f, indent=1)
    report.table(cfg, args, versions, results, skipped, diffs, load_before)
  return runs


if __name__ == "__main__":
  main()
