"""Progress of a training sweep: the compile notice (with a measured
estimate), progress lines with ETAs per run and for the sweep, evaluation
lines, and where the outputs are."""

from __future__ import annotations

import logging
import math
import shlex
import sys
import time
from typing import Callable, Dict, Optional, Sequence

from experiments.common.logs import LOGGER as _LOG


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


def estimate_compile_s(
  backend: str, client_loop: str, clients_per_shard: int, num_params: int
) -> Optional[float]:
  """Rough compile time of the federated round, from measurements.

  A 2-core x86 CPU, jax 0.10.2, tiny U-Net (~1.06M params; docs/results.md,
  benchmarks/RESULTS.md). Unrolled clients: the default CPU sweep (K = 10)
  compiled in ~6 min (36 s per client), benchmarks/round.py at K = 8 in
  347 s, benchmarks/peers/__main__.py in 330 s (41-43 s per client): rule 40 s per
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
    _MEASURED_PARAMS[0] <= num_params <= _MEASURED_PARAMS[1]
  ):
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

  def __init__(
    self,
    runs: Sequence[str],
    rounds: int,
    *,
    logger: Optional[logging.Logger] = None,
    min_interval_s: float = 10.0,
    clock: Callable[[], float] = time.monotonic,
  ):
    runs = list(runs)
    if (
      not runs
      or not all(isinstance(r, str) and r for r in runs)
      or len(set(runs)) != len(runs)
    ):
      raise ValueError(
        f"runs={runs!r} is invalid; valid: a non-empty list of "
        "distinct non-empty names"
      )
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
      raise ValueError(f"rounds={rounds!r} is invalid; valid: an int >= 1")
    if not min_interval_s >= 0:
      raise ValueError(
        f"min_interval_s={min_interval_s!r} is invalid; valid: >= 0"
      )
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
      raise ValueError(
        f"run {name!r} is not in this sweep; valid: {', '.join(self.runs)}"
      )
    return f"{name} [{self.runs.index(name) + 1}/{len(self.runs)}]"

  def compiling(
    self, what: str, estimate_s: Optional[float], cached_hint: bool = True
  ) -> None:
    """One line before the first compile: what, how long, the cache."""
    est = (
      f"about {fmt_duration(estimate_s)}"
      if estimate_s is not None
      else "time not measured for this setup"
    )
    hint = (
      "; later runs of this command load it from the persistent "
      "compilation cache in seconds"
      if cached_hint
      else ""
    )
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
      self._log.info(
        "%s: resuming at round %d/%d (from its checkpoint)",
        tag,
        start_round,
        self.rounds,
      )
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
      "upload %.1f MB  loss %.4g",
      tag,
      rnd,
      self.rounds,
      "?s" if self._run_rate is None else f"{self._run_rate:.2f}s",
      fmt_duration(run_eta),
      ">=" if evals_unknown and sweep_eta else "",
      fmt_duration(sweep_eta),
      row["cum_energy_j"],
      row["cum_uploaded_mb"],
      row["loss"],
    )

  def eta_run_s(self, rnd: int) -> Optional[float]:
    """Seconds of training left in the current run (None: no rate yet)."""
    if rnd >= self.rounds:
      return 0.0
    return (
      None if self._run_rate is None else ((self.rounds - rnd) * self._run_rate)
    )

  def eta_sweep_s(self, name: str, rnd: int) -> Optional[float]:
    """Seconds left in the sweep: training of this run and of the runs not
    finished yet at the measured rate, plus, once evaluations were timed,
    their mean per run for every run still to finish (this one included)."""
    rate = self._run_rate if self._run_rate is not None else self._rate
    later = [
      r
      for r in self.runs[self.runs.index(name) + 1 :]
      if r not in self._finished
    ]
    if rate is None:
      return 0.0 if rnd >= self.rounds and not later else None
    left = max(0, self.rounds - rnd) * rate + len(later) * self.rounds * rate
    if self._eval_s:
      left += (len(later) + 1) * (
        sum(self._eval_s.values()) / len(self._eval_s)
      )
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
    shown = ", ".join(
      f"{k} {v:.4g}"
      for k, v in values.items()
      if isinstance(v, (int, float))
      and not isinstance(v, bool)
      and not k.endswith("wall_s")
    )
    self._log.info(
      "%s: %s (%s)", self._tag(name), shown or "evaluated", fmt_duration(took)
    )

  def run_finished(self, name: str, skipped: bool = False) -> None:
    tag = self._tag(name)
    self._finished.add(name)
    if skipped:
      self._log.info("%s: already finished; skipped", tag)
    else:
      self._log.info(
        "%s: done in %s", tag, fmt_duration(self._clock() - self._run_t0)
      )

  def sweep_finished(self, workdir: str) -> None:
    """After the results table: total time and where everything is."""
    show_outputs(workdir, self._clock() - self._t0, logger=self._log)


def show_outputs(
  workdir: str,
  wall_s: Optional[float] = None,
  *,
  figures: bool = True,
  logger: Optional[logging.Logger] = None,
) -> None:
  """Logs where the sweep's outputs are and how to open TensorBoard.

  Flushes stdout first, so the lines follow a results table printed there.
  """
  sys.stdout.flush()
  log = logger or logging.getLogger(_LOG)
  w = workdir.rstrip("/") or "/"
  if wall_s is not None:
    log.info("sweep finished in %s", fmt_duration(wall_s))
  log.info("results: %s/results.csv, %s/results.json", w, w)
  if figures:
    log.info("figures: %s/figures/", w)
  log.info(
    "per run: %s/<run>/ (TensorBoard events, checkpoints/, "
    "history.json, summary.json)",
    w,
  )
  log.info("TensorBoard: tensorboard --logdir %s", shlex.quote(w))
