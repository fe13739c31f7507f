"""What the tests share: the repository root, one launcher for the programs'
command lines (a subprocess like a user's, or a Popen to kill), and workdir
snapshots. Fixtures live in the conftest.py files."""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence

ROOT = Path(__file__).resolve().parents[2]
SWEEP = ("-m", "experiments.cifar_sweep")
ENERGY_SWEEP = ("-m", "experiments.energy_sweep")
TEST_CONFIG = "--config=experiments/configs/test.py"
# The suite compiles every XLA:CPU program fast (tests/conftest.py puts
# FAST_XLA in XLA_FLAGS, which the programs it starts inherit): LLVM at -O0
# (2-3x faster compiles) and XLA:CPU's older elemental emitter for fusions
# (a cold sweep of the test preset: 26 s instead of 31 s). Convolutions and
# matmuls are library calls either way, but an elementwise fusion's last bits
# may differ (contracted multiply-adds): tests of the exact bits users get
# pin XLA's defaults per program with `jax.jit(...,
# compiler_options=DEFAULT_XLA)`, which overrides the flags.
FAST_XLA = (
  "--xla_backend_optimization_level=0",
  "--xla_cpu_use_fusion_emitters=false",
)
# Tests that compare two different programs bit for bit compile both with
# XLA:CPU's default fusion emitter (the elemental one may round an op the
# programs share differently in each).
FUSION_EMITTER = {"xla_cpu_use_fusion_emitters": True}
DEFAULT_XLA = {"xla_backend_optimization_level": 3, **FUSION_EMITTER}
# Eager dispatch cannot take compiler options: tests marked `xla_default`
# run in a process of their own with this set (tests/conftest.py).
AT_DEFAULT_LEVEL = os.environ.get("FEDQJAX_TEST_XLA") == "default"


def run_at_default_level(nodeid: str) -> None:
  """Runs one test (a pytest node id) in a new pytest process that compiles
  at XLA's default level; fails with its output unless it passed."""
  env = dict(os.environ, FEDQJAX_TEST_XLA="default")
  env["XLA_FLAGS"] = " ".join(
    f for f in env.get("XLA_FLAGS", "").split() if f not in FAST_XLA
  )
  out = subprocess.run(
    [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", nodeid],
    cwd=ROOT,
    env=env,
    text=True,
    capture_output=True,
    timeout=600,
  )
  assert out.returncode == 0 and "1 passed" in out.stdout, out.stdout[-3000:]


def xla_flags(devices: int) -> str:
  """XLA_FLAGS for `devices` forced host devices, keeping the suite's."""
  kept = [
    f
    for f in os.environ.get("XLA_FLAGS", "").split()
    if not f.startswith("--xla_force_host_platform_device_count")
  ]
  return " ".join(kept + [f"--xla_force_host_platform_device_count={devices}"])


def cli_env(devices: int = 0, **extra: str) -> Dict[str, str]:
  """The environment of a program under test: this checkout on the path,
  CPU only, the quiet console (no FEDQJAX_VERBOSE), `devices` > 0 forced
  host devices; the persistent compilation cache the conftest chose."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
  env.pop("FEDQJAX_VERBOSE", None)
  if devices:
    env["XLA_FLAGS"] = xla_flags(devices)
  env.update(extra)
  return env


def start_cli(
  args: Sequence[str],
  program: Sequence[str] = SWEEP,
  *,
  env: Optional[Mapping[str, str]] = None,
  cwd=ROOT,
  stdout=None,
  merge_stderr: bool = True,
) -> subprocess.Popen:
  """Starts `python <program> <args>` (text mode; stdout piped unless a file
  is given; stderr merged into it unless merge_stderr=False)."""
  return subprocess.Popen(
    [sys.executable, *program, *args],
    cwd=cwd,
    env=dict(env) if env is not None else cli_env(),
    stdout=stdout if stdout is not None else subprocess.PIPE,
    stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE,
    text=True,
  )


def wait_or_kill(proc: subprocess.Popen, timeout: float) -> int:
  """`proc`'s exit status; killed (and TimeoutExpired raised) if it is
  still running after `timeout` seconds."""
  try:
    return proc.wait(timeout)
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()


def run_cli(
  args: Sequence[str],
  program: Sequence[str] = SWEEP,
  *,
  env: Optional[Mapping[str, str]] = None,
  cwd=ROOT,
  timeout: float = 900,
  merge_stderr: bool = False,
) -> subprocess.CompletedProcess:
  """Runs `python <program> <args>` to the end; stdout and stderr captured
  (separately unless merge_stderr)."""
  return subprocess.run(
    [sys.executable, *program, *args],
    cwd=cwd,
    env=dict(env) if env is not None else cli_env(),
    text=True,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE,
    timeout=timeout,
  )


def snapshot(root: Path) -> Dict[str, tuple]:
  """Every entry under `root`: kind, size, mtime and content hash."""
  out = {}
  for p in sorted(Path(root).rglob("*")):
    st_ = p.lstat()
    digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else ""
    out[str(p.relative_to(root))] = (
      p.is_dir(),
      st_.st_size,
      st_.st_mtime_ns,
      digest,
    )
  return out


class Lines(logging.Handler):
  """Collects the messages of a logger."""

  def __init__(self):
    super().__init__()
    self.lines = []

  def emit(self, record):
    self.lines.append(record.getMessage())


def assert_one_line_errors(procs, cases, workdir: Path, keep: str) -> None:
  """Each process exited 2 with ONE stderr line holding the case's words,
  printed nothing, and wrote nothing into `workdir` (which holds `keep`)."""
  for p, (args, words) in zip(procs, cases):
    out, err = p.communicate(timeout=300)
    lines = err.splitlines()
    assert p.returncode == 2, (args, err[-2000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), (args, err)
    assert out == ""
    for w in words:
      assert w in lines[0], (args, w, lines[0])
  assert sorted(os.listdir(workdir)) == [keep]  # nothing written


def tiny_config(**overrides):
  """The tiny test config (experiments/configs/test.py) with dotted-key
  overrides, e.g. tiny_config(**{"fed.rounds": 4}); the session's
  compilation cache (conftest) is used, not the workdir's."""
  from experiments.configs import test as test_preset  # pylint: disable=g-import-not-at-top

  c = test_preset.get_config()
  c.compilation_cache = False
  for k, v in overrides.items():
    node = c
    *path, last = k.split(".")
    for p in path:
      node = node[p]
    node[last] = v
  return c
