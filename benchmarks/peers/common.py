"""Shared pieces of the peer benchmarks (numpy/psutil only: no jax, no torch).

Every runner (fedqjax, torch loop, Flower) is started by `benchmarks/peers/__main__.py`
in its own subprocess, gets the same `BenchConfig` as JSON, builds the same
synthetic client data from the same seed, and prints one line
`PEERS_RESULT {json}` that the driver parses.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import sys
import threading
import time
from typing import Optional

import numpy as np

RESULT_TAG = "PEERS_RESULT "


@dataclasses.dataclass
class BenchConfig:
  model: str = "tiny"  # tiny | paper
  clients: int = 8  # K (= N: every client takes part in every round)
  rounds: int = 3  # timed rounds (one extra warm-up round runs first)
  local_steps: int = 2  # I
  batch: int = 4  # B
  res: int = 32  # 32 -> 32x32x3, 28 -> 28x28x1
  n_max: int = 64  # images per client (counts drawn in [n_max/2, n_max])
  lr: float = 2e-4
  T: int = 1000
  bits: int = 8  # stochastic quantization of each client's update
  threads: int = 2  # torch intra-op threads (torch loop)
  torch_device: str = "cpu"  # torch loop device: "cpu" | "cuda"
  # fedqjax.federated.CLIENT_LOOPS; fed.resolve_execution derives the client
  # layout, local-step unroll and convolution form from it.
  fedqjax_client_loop: str = "auto"
  flower_cpus_per_client: float = 1.0  # Ray resources per virtual client
  # DrJAX runner: the client program's convolution form ("auto": what
  # fed.resolve_execution picks for a vmapped round; "xla": XLA's, local
  # steps unrolled) and the "clients" mesh size (0/1: no mesh).
  drjax_conv: str = "auto"
  drjax_mesh: int = 0
  skip_reference: bool = False  # fedqjax: skip round_step_reference
  dump_dir: str = ""  # where runners save the params after the warm-up round
  seed: int = 0

  @property
  def channels(self) -> int:
    return 3 if self.res == 32 else 1

  @property
  def images_per_round(self) -> int:
    return self.clients * self.local_steps * self.batch

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self))

  @classmethod
  def from_json(cls, s: str) -> "BenchConfig":
    return cls(**json.loads(s))


def model_kwargs(name: str) -> dict:
  """U-Net kwargs (the fields of fedqjax.diffusion.UNetConfig.tiny() / UNetConfig())."""
  if name == "tiny":
    return dict(
      ch=32,
      ch_mult=(1, 2, 2),
      num_res_blocks=1,
      attn_resolutions=(16,),
      dropout=0.1,
      resamp_with_conv=True,
      out_ch=None,
      num_groups=8,
    )
  if name == "paper":
    return dict(
      ch=128,
      ch_mult=(1, 2, 2, 2),
      num_res_blocks=2,
      attn_resolutions=(16,),
      dropout=0.1,
      resamp_with_conv=True,
      out_ch=None,
      num_groups=32,
    )
  raise ValueError(f"--model={name!r}; valid: tiny, paper")


def make_client_data(cfg: BenchConfig):
  """Synthetic client images in [-1, 1]: NHWC float32 [K, n_max, H, W, C], counts [K]."""
  rng = np.random.default_rng(cfg.seed)
  r, c = cfg.res, cfg.channels
  yy, xx = np.mgrid[0:r, 0:r] / r
  phase = rng.uniform(0, 2 * np.pi, (cfg.clients, 1, 1, 1, c))
  base = np.sin(2 * np.pi * (xx + yy)[None, None, :, :, None] + phase)
  imgs = np.clip(
    base + 0.2 * rng.standard_normal((cfg.clients, cfg.n_max, r, r, c)), -1, 1
  ).astype(np.float32)
  counts = rng.integers(cfg.n_max // 2, cfg.n_max + 1, cfg.clients).astype(
    np.int32
  )
  return imgs, counts


class TreeRSS:
  """Samples the summed RSS of this process and all its descendants.

  Needed for Flower: Ray runs the clients in worker processes (plus raylet,
  GCS, ...). Summed RSS counts shared pages once per process, so it is an
  upper bound on the real footprint.
  """

  def __init__(self, interval: float = 0.1):
    self.interval, self.peak = interval, 0
    self._stop = threading.Event()
    self._thread: Optional[threading.Thread] = None

  def _sample(self) -> int:
    import psutil

    me = psutil.Process()
    total = 0
    for p in [me] + me.children(recursive=True):
      try:
        total += p.memory_info().rss
      except (psutil.NoSuchProcess, psutil.AccessDenied):
        pass
    return total

  def _run(self):
    while not self._stop.is_set():
      try:
        self.peak = max(self.peak, self._sample())
      except Exception:  # pylint: disable=broad-except
        pass
      self._stop.wait(self.interval)

  def __enter__(self):
    try:
      import psutil  # noqa: F401

      self._thread = threading.Thread(target=self._run, daemon=True)
      self._thread.start()
    except ImportError:
      pass
    return self

  def __exit__(self, *exc):
    self._stop.set()
    if self._thread is not None:
      self._thread.join()


def self_peak_rss_mb() -> float:
  """ru_maxrss of this process (KiB on Linux)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def emit(result: dict) -> None:
  print(RESULT_TAG + json.dumps(result), flush=True)


def runner_main(run_fn) -> None:
  """`python -m benchmarks.peers.X '<BenchConfig json>'` entry point."""
  ap = argparse.ArgumentParser()
  ap.add_argument("config_json")
  args = ap.parse_args()
  cfg = BenchConfig.from_json(args.config_json)
  t0 = time.perf_counter()
  with TreeRSS() as tree:
    result = run_fn(cfg)
  result.setdefault("wall_s", time.perf_counter() - t0)
  result["peak_rss_self_mb"] = self_peak_rss_mb()
  result["peak_rss_tree_mb"] = max(
    tree.peak / 2**20, result["peak_rss_self_mb"]
  )
  result["pid"] = os.getpid()
  emit(result)
  sys.stdout.flush()


def summarize(times, cpu_times=None) -> dict:
  """Wall-time statistics of the timed rounds; with `cpu_times` (process
  CPU seconds per round, all threads: less sensitive to other jobs on a
  shared machine than wall time) also their minimum."""
  t = np.asarray(times, dtype=np.float64)
  extra = {}
  if cpu_times:
    extra = dict(
      cpu_s_min=float(np.min(cpu_times)),
      cpu_s_all=[float(x) for x in cpu_times],
    )
  return dict(
    **extra,
    round_s_mean=float(t.mean()),
    round_s_median=float(np.median(t)),
    round_s_min=float(t.min()),
    round_s_all=[float(x) for x in t],
  )
