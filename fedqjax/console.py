"""What a person sees while the main job runs: a quiet console, a compile
notice, progress with ETAs, and one-line command-line errors.

Plain log lines on the "fedqjax" logger (stderr), readable in a terminal, a
CI log and a file alike. Standard library at module level; jax is imported
lazily, so `setup()` can set the C++ log level before jaxlib loads.
"""
from __future__ import annotations

import importlib
import logging
import math
import os
import re
import shlex
import sys
import tempfile
import time
from typing import Callable, Dict, Optional, Sequence

VERBOSE_ENV = "FEDQJAX_VERBOSE"
_CPP_ENV = "TF_CPP_MIN_LOG_LEVEL"  # read by jaxlib and TensorFlow at load
_CPP_ENV_AT_IMPORT = os.environ.get(_CPP_ENV)
# absl / TSL C++ levels: 0 INFO, 1 WARNING, 2 ERROR, 3 FATAL.
_CPP_QUIET, _CPP_DEFAULT, _CPP_ALL = "3", "1", "0"
_LOG = "fedqjax"


def resolve_verbosity(verbosity: int = 0) -> int:
  """max(verbosity, $FEDQJAX_VERBOSE); raises ValueError on a bad env value."""
  raw = os.environ.get(VERBOSE_ENV, "").strip()
  try:
    env = int(raw) if raw else 0
  except ValueError:
    raise ValueError(f"{VERBOSE_ENV}={raw!r} is invalid; valid: an integer "
                     "(0 quiet, 1 library warnings, 2 everything)") from None
  return max(int(verbosity), env)


def setup(verbosity: int = 0) -> int:
  """Sets up the fedqjax logger and the libraries' log levels; call it first.

  Verbosity, the larger of `verbosity` (`--verbosity`) and $FEDQJAX_VERBOSE:
  0 quiet: C++ logging of jaxlib and TensorFlow below FATAL off (XLA's
  ERROR-level "slow_operation_alarm.cc ... Very slow compile?" included),
  absl-py loggers (orbax, clu) at WARNING; Python exceptions and warnings and
  fedqjax's own lines are never hidden (a C++ failure that matters surfaces
  as a Python exception). 1: the libraries' defaults (C++ WARNING and up),
  absl INFO. 2: everything (C++ INFO, DEBUG). Measured with jaxlib 0.10.2:
  jaxlib reads TF_CPP_MIN_LOG_LEVEL once, at `import jax`, so once it is
  loaded the level is set through its `absl_set_min_log_level` (what
  `jax_logging_level` calls); TensorFlow reads the variable when it loads.

  Returns:
    The resolved verbosity.
  """
  v = resolve_verbosity(verbosity)
  _set_cpp_log_level(_CPP_QUIET if v <= 0 else _CPP_ALL if v >= 2 else (
      _CPP_ENV_AT_IMPORT or _CPP_DEFAULT))
  logging.getLogger("absl").setLevel(
      logging.WARNING if v <= 0 else logging.INFO if v == 1 else logging.DEBUG)
  log = logging.getLogger(_LOG)
  log.setLevel(logging.DEBUG if v >= 2 else logging.INFO)
  if not any(getattr(h, "_fedqjax_console", False) for h in log.handlers):
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    handler._fedqjax_console = True  # pylint: disable=protected-access
    log.addHandler(handler)
  log.propagate = False
  return v


def _set_cpp_log_level(level: str) -> None:
  """C++ (absl/TSL) minimum log level, for jaxlib now and TF when it loads."""
  os.environ[_CPP_ENV] = level
  if "jax._src.lib" in sys.modules:  # jaxlib loaded: env var already read
    try:
      from jax._src.lib import utils  # pylint: disable=g-import-not-at-top
      utils.absl_set_min_log_level(int(level))
    except (ImportError, AttributeError):  # a jaxlib without the hook
      pass


# C++ INFO lines ("I1128 21:40:14.35 5499 port.cc:153] ...") and absl's
# banner, which TensorFlow 2.21 prints while loading, before it applies
# TF_CPP_MIN_LOG_LEVEL ("oneDNN custom operations are on ...", twice).
_LOAD_NOISE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called"
    r" are written to STDERR|I\d{4} [\d:. ]+\d+ [\w.]+:\d+\] .*)$")


def import_quietly(module: str) -> None:
  """Imports `module`, dropping C++ INFO lines it prints to stderr (fd 2)
  while loading; every other line (warnings, errors) is written back."""
  if module in sys.modules:
    return
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as tmp:
    os.dup2(tmp.fileno(), 2)
    try:
      importlib.import_module(module)
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      tmp.seek(0)
      text = tmp.read().decode("utf-8", "replace")
      sys.stderr.write("".join(ln for ln in text.splitlines(keepends=True)
                               if not _LOAD_NOISE.match(ln.rstrip("\n"))))
      sys.stderr.flush()


class _Formatter(logging.Formatter):
  """`HH:MM:SS message`; WARNING and above say their level."""

  def __init__(self):
    super().__init__("%(asctime)s %(message)s", datefmt="%H:%M:%S")

  def format(self, record):
    line = super().format(record)
    if record.levelno >= logging.WARNING:
      stamp, _, rest = line.partition(" ")
      line = f"{stamp} {record.levelname}: {rest}"
    return line


def fmt_duration(seconds: Optional[float]) -> str:
  """42s, 5m58s, 1h02m; '?' for None or a non-finite value."""
  if seconds is None or not math.isfinite(seconds):
    return "?"
  s = max(0, int(round(seconds)))
  if s < 60:
    return f"{s}s"
  if s < 3600:
    return f"{s // 60}m{s % 60:02d}s"
  return f"{s // 3600}h{s % 3600 // 60:02d}m"


# Compile-time rule, 2-core x86_64 CPU, jax/jaxlib 0.10.2 (see docstring).
_CPU_S_PER_UNROLLED_CLIENT = 40.0
_CPU_ROLLED_S = 65.0
_MEASURED_PARAMS = (0.5e6, 2.0e6)


def estimate_compile_s(backend: str, client_loop: str, clients_per_shard: int,
                       num_params: int) -> Optional[float]:
  """Rough compile time of the federated round, from measurements.

  The project's 2-core CPU, jax 0.10.2, tiny U-Net (~1.06M params; README,
  benchmarks/RESULTS.md). Unrolled clients: the default CPU sweep (K = 10)
  compiled in ~6 min (36 s per client), benchmarks/round.py at K = 8 in
  347 s, benchmarks/peers.py in 330 s (41-43 s per client): rule 40 s per
  unrolled client on a shard. map / vmap (rolled local steps): 63-68 s
  whatever K: rule 65 s. None (unknown) outside 0.5M-2M params (not
  measured) and on accelerators (no measurement yet).

  Args:
    backend: jax.default_backend() ("cpu", "gpu", "tpu").
    client_loop: the resolved layout: "unrolled", "map" or "vmap".
    clients_per_shard: clients per round on one device (padded).
    num_params: parameters of the model.

  Returns:
    Seconds, or None when no measurement covers the case.
  """
  if backend != "cpu" or not (
      _MEASURED_PARAMS[0] <= num_params <= _MEASURED_PARAMS[1]):
    return None
  if client_loop == "unrolled":
    return _CPU_S_PER_UNROLLED_CLIENT * max(1, int(clients_per_shard))
  if client_loop in ("map", "vmap"):
    return _CPU_ROLLED_S
  return None


class SweepProgress:
  """Progress lines for a sweep of runs, each of `rounds` federated rounds.

  Rates are measured per run, excluding the run's first reported round (it
  includes the compile, or the cache load); a run without a measured rate
  yet uses the last measured one for the sweep ETA. Call `round_done` after
  the round's metrics reached the host (its floats do), so the clock sees
  the device's work, not the asynchronous dispatch.
  """

  def __init__(self, runs: Sequence[str], rounds: int, *,
               logger: Optional[logging.Logger] = None,
               min_interval_s: float = 10.0,
               clock: Callable[[], float] = time.monotonic):
    runs = list(runs)
    if not runs or not all(isinstance(r, str) and r for r in runs) or len(
        set(runs)) != len(runs):
      raise ValueError(f"runs={runs!r} is invalid; valid: a non-empty list of "
                       "distinct non-empty names")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
      raise ValueError(f"rounds={rounds!r} is invalid; valid: an int >= 1")
    if not min_interval_s >= 0:
      raise ValueError(f"min_interval_s={min_interval_s!r} is invalid; "
                       "valid: >= 0")
    self.runs, self.rounds = runs, rounds
    self.min_interval_s = float(min_interval_s)
    self._log = logger or logging.getLogger(_LOG)
    self._clock = clock
    self._t0 = clock()
    self._compile_logged = False
    self._finished: set = set()
    self._rate: Optional[float] = None  # s/round, last measured
    self._eval_s: Dict[str, float] = {}  # run -> evaluation seconds so far
    self._eval_t0: Dict[str, float] = {}
    self._run: Optional[str] = None
    self._first: Optional[tuple] = None  # (round, time) of the 1st report
    self._run_rate: Optional[float] = None
    self._last_emit = -math.inf
    self._run_t0 = self._t0

  def _tag(self, name: str) -> str:
    if name not in self.runs:
      raise ValueError(f"run {name!r} is not in this sweep; valid: "
                       f"{', '.join(self.runs)}")
    return f"{name} [{self.runs.index(name) + 1}/{len(self.runs)}]"

  def compiling(self, what: str, estimate_s: Optional[float],
                cached_hint: bool = True) -> None:
    """One line before the first compile: what, how long, the cache."""
    est = (f"about {fmt_duration(estimate_s)}" if estimate_s is not None
           else "time not measured for this setup")
    hint = ("; later runs of this command load it from the persistent "
            "compilation cache in seconds" if cached_hint else "")
    self._log.info("compiling %s once for all runs (%s)%s", what, est, hint)

  def compiled(self, seconds: float) -> None:
    """The first compile's wall time (later calls: cache hits, not shown)."""
    if not self._compile_logged:
      self._compile_logged = True
      self._log.info("compiled in %s", fmt_duration(seconds))

  def run_started(self, name: str, start_round: int) -> None:
    """A run begins (start_round > 0: resumed from a checkpoint)."""
    tag = self._tag(name)
    self._run, self._first, self._run_rate = name, None, None
    self._last_emit, self._run_t0 = -math.inf, self._clock()
    if start_round > 0:
      self._log.info("%s: resuming at round %d/%d (from its checkpoint)", tag,
                     start_round, self.rounds)
    else:
      self._log.info("%s: training %d rounds", tag, self.rounds)

  def round_done(self, name: str, rnd: int, row: dict) -> None:
    """Rounds `rnd` of run `name` done; a line at most every min_interval_s
    seconds, always on the first reported and the last round."""
    tag = self._tag(name)
    now = self._clock()
    if self._run != name or self._first is None:
      self._run, self._first = name, (rnd, now)
    elif rnd > self._first[0]:
      self._run_rate = (now - self._first[1]) / (rnd - self._first[0])
      self._rate = self._run_rate
    if rnd < self.rounds and now - self._last_emit < self.min_interval_s:
      return
    self._last_emit = now
    run_eta = self.eta_run_s(rnd)
    sweep_eta = self.eta_sweep_s(name, rnd)
    evals_unknown = not self._eval_s
    self._log.info(
        "%s: round %d/%d  %s/round  ETA %s (sweep %s%s)  energy %.4g J  "
        "upload %.1f MB  loss %.4g", tag, rnd, self.rounds,
        "?s" if self._run_rate is None else f"{self._run_rate:.2f}s",
        fmt_duration(run_eta),
        ">=" if evals_unknown and sweep_eta else "", fmt_duration(sweep_eta),
        row["cum_energy_j"], row["cum_uploaded_mb"], row["loss"])

  def eta_run_s(self, rnd: int) -> Optional[float]:
    """Seconds of training left in the current run (None: no rate yet)."""
    if rnd >= self.rounds:
      return 0.0
    return None if self._run_rate is None else (
        (self.rounds - rnd) * self._run_rate)

  def eta_sweep_s(self, name: str, rnd: int) -> Optional[float]:
    """Seconds left in the sweep: training of this run and of the runs not
    finished yet at the measured rate, plus, once evaluations were timed,
    their mean per run for every run still to finish (this one included)."""
    rate = self._run_rate if self._run_rate is not None else self._rate
    later = [r for r in self.runs[self.runs.index(name) + 1:]
             if r not in self._finished]
    if rate is None:
      return 0.0 if rnd >= self.rounds and not later else None
    left = max(0, self.rounds - rnd) * rate + len(later) * self.rounds * rate
    if self._eval_s:
      left += (len(later) + 1) * (sum(self._eval_s.values()) /
                                   len(self._eval_s))
    return left

  def eval_started(self, name: str, what: str) -> None:
    self._eval_t0[name] = self._clock()
    self._log.info("%s: evaluating (%s)", self._tag(name), what)

  def eval_done(self, name: str, values: dict) -> None:
    """One line with the evaluation's scalar values and its wall time."""
    t0 = self._eval_t0.pop(name, None)
    took = None if t0 is None else self._clock() - t0
    if took is not None:
      self._eval_s[name] = self._eval_s.get(name, 0.0) + took
    shown = ", ".join(f"{k} {v:.4g}" for k, v in values.items()
                      if isinstance(v, (int, float)) and not isinstance(
                          v, bool) and not k.endswith("wall_s"))
    self._log.info("%s: %s (%s)", self._tag(name), shown or "evaluated",
                   fmt_duration(took))

  def run_finished(self, name: str, skipped: bool = False) -> None:
    tag = self._tag(name)
    self._finished.add(name)
    if skipped:
      self._log.info("%s: already finished; skipped", tag)
    else:
      self._log.info("%s: done in %s", tag,
                     fmt_duration(self._clock() - self._run_t0))

  def sweep_finished(self, workdir: str) -> None:
    """After the results table: total time and where everything is."""
    show_outputs(workdir, self._clock() - self._t0, logger=self._log)


def show_outputs(workdir: str, wall_s: Optional[float] = None, *,
                 logger: Optional[logging.Logger] = None) -> None:
  """Logs where the sweep's outputs are and how to open TensorBoard.

  Flushes stdout first, so the lines follow a results table printed there.
  """
  sys.stdout.flush()
  log = logger or logging.getLogger(_LOG)
  w = workdir.rstrip("/") or "/"
  if wall_s is not None:
    log.info("sweep finished in %s", fmt_duration(wall_s))
  log.info("results: %s/results.csv, %s/results.json", w, w)
  log.info("figures: %s/figures/", w)
  log.info("per run: %s/<run>/ (TensorBoard events, checkpoints/, "
           "history.json, summary.json)", w)
  log.info("TensorBoard: tensorboard --logdir %s", shlex.quote(w))
