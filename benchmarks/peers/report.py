"""The peer benchmark's markdown table, the machine line, and the check that
the JAX runners' first round equals fedqjax's (numpy only)."""

from __future__ import annotations

import os
import platform

import numpy as np

from benchmarks.peers import common

JAX_RUNNERS = ("drjax", "drjax_xla")


def load_average() -> str:
  try:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())
  except OSError:
    return "n/a"


def _fmt(x, nd=2):
  return "n/a" if x is None else f"{x:.{nd}f}"


def param_diffs(cfg: common.BenchConfig, results: dict) -> dict:
  """Max abs difference of each JAX runner's parameters after the warm-up
  round from fedqjax's (same initial state, data, keys); also the max
  |update| of fedqjax's round for scale. Files from `fedqjax_run.dump_hook`."""
  path = lambda n: os.path.join(cfg.dump_dir, f"{n}_k{cfg.clients}_round1.npy")
  if "fedqjax" not in results or not os.path.exists(path("fedqjax")):
    return {}
  ref = np.load(path("fedqjax"))
  out = {}
  for name in JAX_RUNNERS:
    r = results.get(name)
    if r is None or not os.path.exists(path(r["peer"])):
      continue
    other = np.load(path(r["peer"]))
    diff = np.abs(other.astype(np.float64) - ref)
    rounding = 4 * np.spacing(np.abs(ref)).astype(np.float64) + 1e-9
    out[name] = dict(
      max_abs=float(diff.max()),
      p99_abs=float(np.quantile(diff, 0.99)),
      frac_differing=float(np.mean(diff > 0)),
      frac_beyond_rounding=float(np.mean(diff > rounding)),
    )
  return out


def _rows(results):
  """(label, result) of each runner that finished, fedqjax first."""
  rows = []
  fq = results.get("fedqjax")
  if fq:
    rows.append(
      (
        f"fedqjax `jit_round_step` (client_loop {fq['client_loop']} -> "
        f"{fq['mode']}, conv {fq['conv_impl']}, local unroll "
        f"{fq['local_unroll']})",
        fq,
      )
    )
    if "reference" in fq:
      ref = dict(fq["reference"], peak_rss_tree_mb=None)
      rows.append(
        (
          "fedqjax `round_step_reference` (python loop over clients)",
          dict(ref, num_params=fq["num_params"]),
        )
      )
  for name in JAX_RUNNERS:
    if name in results:
      r = results[name]
      mesh = (
        f", mesh {r['mesh_devices']} devices" if r["mesh_devices"] > 1 else ""
      )
      label = (
        f"DrJAX {r['version']} `map_fn` (vmap, conv {r['conv_impl']}, local "
        f"unroll {r['local_unroll']}{mesh})"
      )
      rows.append((label, r))
  if "torch" in results:
    tr = results["torch"]
    where = tr["device"]
    if where == "cpu":
      where = f"{tr['threads']} threads"
    rows.append((f"PyTorch sequential loop ({where})", tr))
  if "flower" in results:
    fl = results["flower"]
    rows.append(
      (
        f"Flower {fl['version']} simulation (Ray, "
        f"{fl['cpus_per_client']:g} CPU/client)",
        fl,
      )
    )
  return rows


def _header(cfg, args, versions, load_before, load_after) -> None:
  jv = versions.get("fedqjax:jax") or versions.get("drjax:jax") or "n/a"
  tv = versions.get("torch:torch") or versions.get("flower:torch") or "n/a"
  dv = versions.get("drjax:drjax") or versions.get("drjax_xla:drjax") or "n/a"
  fv = versions.get("flower:flwr", "n/a")
  print(
    f"### Peers: federated DDPM round, {args.model} U-Net, "
    f"{cfg.res}x{cfg.res}x{cfg.channels}, K={cfg.clients}, "
    f"I={cfg.local_steps}, B={cfg.batch} ({cfg.images_per_round} "
    f"images/round), {cfg.bits}-bit update quantization, float32\n"
  )
  print(
    f"Machine: {platform.platform()}, "
    f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
    f"Python {platform.python_version()}; jax {jv}, drjax {dv}, torch {tv}, "
    f"flwr {fv}. Load average (1/5/15 min) at the start: {load_before}, "
    f"after: {load_after or load_average()}. {cfg.rounds} timed rounds after 1 warm-up "
    "round; mean round time.\n"
  )


def table(
  cfg, args, versions, results, skipped, diffs, load_before, load_after=None
) -> None:
  """The markdown table of round times, side by side, and the machine."""
  _header(cfg, args, versions, load_before, load_after)
  n_img = cfg.images_per_round
  fq = results.get("fedqjax")
  print(
    "| runner | params | round time (s) | images/s | fedqjax speed-up "
    "| CPU s/round (min) | peak RSS (MB) | first round (s) "
    "| compile / start-up (s) |"
  )
  print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
  for label, r in _rows(results):
    t = r["round_s_mean"]
    speed = f"{t / fq['round_s_mean']:.2f}x" if fq else "n/a"
    extra = ""
    if "compile_s" in r:
      extra = f"compile {_fmt(r['compile_s'], 1)}"
    elif "startup_s" in r:
      extra = f"Ray+engine {_fmt(r['startup_s'], 1)}"
    print(
      f"| {label} | {r.get('num_params', 0):,} | {t:.3f} | {n_img / t:.1f} "
      f"| {speed} | {_fmt(r.get('cpu_s_min'), 2)} "
      f"| {_fmt(r.get('peak_rss_tree_mb'), 0)} "
      f"| {_fmt(r.get('first_round_s'), 2)} | {extra} |"
    )
  print(
    "\nfedqjax speed-up = runner round time / fedqjax round time. CPU "
    "s/round: process CPU time (all threads) of the fastest timed round. "
    "Peak RSS: "
    "summed over the runner's process tree; the reference loop shares "
    "fedqjax's process. First round: the warm-up round."
  )
  for name, d in diffs.items():
    print(
      f"\n- {name} vs fedqjax, parameters after the first round (same "
      f"initial state, data, keys): max abs diff {d['max_abs']:.3g}, 99th "
      f"percentile {d['p99_abs']:.3g}; {100 * d['frac_differing']:.1f}% of "
      f"entries differ, {100 * d['frac_beyond_rounding']:.3f}% by more than "
      "4 float32 ulp + 1e-9"
    )
  for name, why in skipped.items():
    print(f"\n- {name} skipped: {why}")


def main(argv=None) -> None:
  """Re-renders the tables of a driver's --json_out (the parameter files
  in each run's dump_dir are compared again):
  python -m benchmarks.peers.report <json>."""
  import argparse  # pylint: disable=g-import-not-at-top
  import json  # pylint: disable=g-import-not-at-top

  ap = argparse.ArgumentParser(description=main.__doc__)
  ap.add_argument("json_path")
  args = ap.parse_args(argv)
  with open(args.json_path) as f:
    runs = json.load(f)
  for run in runs:
    cfg = common.BenchConfig(**run["config"])
    diffs = param_diffs(cfg, run["results"])
    table(
      cfg,
      argparse.Namespace(model=cfg.model),
      run["versions"],
      run["results"],
      run["skipped"],
      diffs,
      run["load_before"],
      run.get("load_after"),
    )


if __name__ == "__main__":
  main()
