"""Benchmark of the vectorized energy allocator (arXiv 2403.04430 sec. 4; Yang et al. TWC 2021).

Times `fedqjax.energy.allocate` (warm, jitted, block_until_ready) for N = 10,
1e3, 1e5 devices and scipy's bounded scalar minimization solving a subset of
the same devices one by one, then reports the rate ratio and the largest
relative energy difference (positive: fedqjax uses more energy).

  python benchmarks/energy.py            # float32 (the simulator's default)
  python benchmarks/energy.py --x64      # float64
  python benchmarks/energy.py --grid     # the energy sweep's one-call grid
  python benchmarks/energy.py --grid --grid_devices=100000 --grid_draws=10 --shared

--grid times `fedqjax.energy.sweep` on one scenario of N devices x R draws
(10^6 devices in total by default) x 3 bits schemes x the allocation policies
kkt, deadline, split, max (and the shared-bandwidth allocator with --shared),
all in ONE jitted call: first call (compile included) and a second one.
"""

import argparse
import math
import os
import platform
import time

import jax
import numpy as np

from fedqjax.testing.energy_oracles import scipy_energy

LN2 = math.log(2.0)


def scipy_solve(tau, cyc, bits, h, W, n0, pmax, fmin, fmax, T):
  """Per-device reference (scipy, bounded Brent over f); None if infeasible."""
  return scipy_energy(tau, cyc, bits, h, W, n0, pmax, fmin, fmax, T)


def problem(n, seed=0):
  from fedqjax import energy as E

  d = E.sample_devices(E.EnergyConfig(num_devices=n), jax.random.key(seed))
  rng = np.random.default_rng(seed)
  d_params, flops, samples = (
    35.7e6,
    35.0e9,
    80.0,
  )  # paper UNet; I = 10 steps x B = 8
  bits = (d_params * rng.integers(1, 33, n) + 64.0).astype(
    np.asarray(d.gain).dtype
  )
  T = E.deadline_for(d, d_params, samples, flops, "median", 1.2)
  return d, bits, samples, T, flops


def grid(devices: int, draws: int, shared: bool):
  """One jitted sweep call over draws x devices (and the schemes and policies)."""
  from experiments.energy_sweep import settings as scenarios  # pylint: disable=g-import-not-at-top
  from experiments.energy_sweep import sweep

  allocs = ("kkt", "deadline", "split", "max") + (("shared",) if shared else ())
  settings = scenarios.SweepSettings(
    num_seeds=draws,
    allocations=allocs,
    base=scenarios.Scenario(
      num_devices=devices, total_bandwidth_hz=2e6 * devices
    ),
  )
  prep = sweep.prepare(settings, log=lambda m: None)
  times = []
  for _ in range(2):
    t0 = time.perf_counter()
    out = sweep.run_chunk(settings, prep, [0], jax.numpy.zeros((draws,)))
    times.append(time.perf_counter() - t0)
  n = devices * draws
  feas = float(np.mean(out["n_feasible"])) / devices
  print(
    f"grid: {n:,} devices ({draws} draws x {devices:,}) x 3 bits schemes x "
    f"{len(allocs)} allocations ({', '.join(allocs)}) in one call: first "
    f"{times[0]:.2f} s (compile included), second {times[1]:.2f} s "
    f"({n * 3 / times[1]:.3g} device-schemes/s); feasible fraction {feas:.3f}"
  )


def _parse_args() -> argparse.Namespace:
  ap = argparse.ArgumentParser()
  ap.add_argument("--x64", action="store_true")
  ap.add_argument("--grid", action="store_true")
  ap.add_argument("--grid_devices", type=int, default=100000)
  ap.add_argument("--grid_draws", type=int, default=10)
  ap.add_argument("--shared", action="store_true")
  ap.add_argument("--scipy_devices", type=int, default=50)
  ap.add_argument("--repeats", type=int, default=5)
  return ap.parse_args()


def _time_allocate(solve, n: int, repeats: int):
  """Times the jitted allocator on N devices: (rate, allocation, problem)."""
  prob = problem(n)
  t0 = time.perf_counter()
  jax.block_until_ready(solve(*prob))
  compile_s = time.perf_counter() - t0
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    al = jax.block_until_ready(solve(*prob))
    times.append(time.perf_counter() - t0)
  best = min(times)
  rate = n / best
  print(
    f"fedqjax N={n:>6}: {best * 1e3:9.3f} ms (best of {repeats}, first call "
    f"{compile_s:.2f} s) {rate:.3g} devices/s, feasible {np.mean(al.feasible):.2f}"
  )
  return rate, al, prob


def _vs_scipy(prob, al, num: int) -> float:
  """Solves the first `num` devices with scipy one by one, prints the rate
  and the largest relative energy difference; returns scipy's rate."""
  from fedqjax import energy as E

  d, bits, samples, T, flops = prob
  sub = range(num)
  g = lambda v: np.asarray(v, np.float64)
  cyc = g(E.cycles_per_sample(flops, d.flops_per_cycle)) * samples
  ref_args = [
    (
      g(d.tau)[i],
      cyc[i],
      g(bits)[i],
      g(d.gain)[i],
      g(d.bandwidth_hz)[i],
      g(d.noise_psd_w_hz)[i],
      g(d.p_max_w)[i],
      g(d.f_min_hz)[i],
      g(d.f_max_hz)[i],
      float(T),
    )
    for i in sub
  ]
  t0 = time.perf_counter()
  ref = [scipy_solve(*a) for a in ref_args]
  scipy_s = time.perf_counter() - t0
  scipy_rate = len(ref) / scipy_s
  e = g(al.energy_j)
  rel = [(e[i] - r) / r for i, r in zip(sub, ref) if r is not None]
  print(
    f"scipy  {len(ref)} devices one by one: {scipy_s * 1e3:.1f} ms, "
    f"{scipy_rate:.3g} devices/s;"
    f" max rel. energy diff (fedqjax - scipy)/scipy over {len(rel)} feasible: "
    f"{max(rel):+.2e} (min {min(rel):+.2e})"
  )
  return scipy_rate


def main():
  args = _parse_args()
  jax.config.update("jax_enable_x64", args.x64)
  from fedqjax import energy as E

  if args.grid:
    print(
      f"machine: {platform.platform()} | cpu_count={os.cpu_count()} | "
      f"jax {jax.__version__} {jax.default_backend()}"
    )
    grid(args.grid_devices, args.grid_draws, args.shared)
    return
  print(
    f"machine: {platform.platform()} | {platform.processor() or platform.machine()} | "
    f"cpu_count={os.cpu_count()} | jax {jax.__version__} {jax.default_backend()} | "
    f"dtype={'float64' if args.x64 else 'float32'}"
  )
  solve = jax.jit(E.allocate)
  rates = {}
  for n in (10, 1000, 100000):
    rates[n], al, prob = _time_allocate(solve, n, args.repeats)
    if n == 1000:
      scipy_rate = _vs_scipy(prob, al, args.scipy_devices)
  print(
    f"rate ratio fedqjax(N=1e5) / scipy: {rates[100000] / scipy_rate:.3g}x; "
    f"N=1e5 solve {100000 / rates[100000]:.3f} s (target <= 0.2 s)"
  )


if __name__ == "__main__":
  main()
