"""Kill points for the sweep CLI, observed and verified from outside.

A seeded schedule of kill points covers every phase of a sweep (start-up,
a run's first round, a checkpoint write, between checkpoints, the last
round, the final evaluation, the history / summary writes, the results
write). Each point fires on an event seen from outside the process: the
console's progress lines in its log, an orbax temporary checkpoint directory
(`<step>.orbax-checkpoint-tmp`) or a final one (`<step>`) appearing, a JSON
file rewritten. After the SIGKILL the state on disk and in the log is
checked against the point: a kill that landed elsewhere is not counted.
"""

from __future__ import annotations

import dataclasses
import os
import random
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

ROUNDS, CKPT_EVERY = 5, 2  # checkpoints at 2, 4, 5; held-out loss at 2, 4, 5
RUNS = ("fp32", "ondemand")
TMP = ".orbax-checkpoint-tmp"  # orbax 0.12: `<step>.orbax-checkpoint-tmp`
META = "_CHECKPOINT_METADATA"  # the first file orbax writes into it
KINDS = (
  "startup",
  "first_round",
  "mid_ckpt",
  "between",
  "last_round",
  "eval",
  "history",
  "results",
)
_PER_RUN = KINDS[1:-1]
_LAST = (ROUNDS - 1) // CKPT_EVERY * CKPT_EVERY  # newest step before ROUNDS
# Delays after the event (s): short against the phase (a round takes
# ~0.1-0.5 s on 2 CPU cores); a kill that lands past it is retried at 0.
_DELAY_S = dict(
  startup=(0.3, 2.0),
  first_round=(0.0, 0.2),
  between=(0.0, 0.1),
  last_round=(0.0, 0.05),
  eval=(0.0, 0.1),
  results=(0.0, 0.3),
)


@dataclasses.dataclass
class KillPoint:
  """Where to kill: `kind`, the run and checkpoint step it concerns, the
  delay after the triggering event, and whether to damage the run's newest
  checkpoint after the kill."""

  kind: str
  run: str = ""
  step: int = 0
  delay_s: float = 0.0
  corrupt: bool = False

  def position(self) -> Tuple[int, float]:
    """(run index, time in rounds): the order in which a sweep passes."""
    if self.kind == "results":
      return len(RUNS), 0.0
    t = dict(
      first_round=0.5,
      mid_ckpt=self.step + 0.1,
      between=self.step + 0.5,
      last_round=self.step + 0.5,
      eval=ROUNDS + 1.0,
      history=ROUNDS + 2.0,
    )[self.kind]
    return RUNS.index(self.run), t

  def __str__(self) -> str:
    where = f" {self.run}" if self.run else ""
    where += (
      f"@{self.step}"
      if self.kind in ("mid_ckpt", "between", "last_round")
      else ""
    )
    return f"{self.kind}{where}+{self.delay_s:.3f}s"


def _draw(rng: random.Random, kind: str, run: str = "") -> KillPoint:
  lo, hi = _DELAY_S.get(kind, (0.0, 0.0))
  p = KillPoint(kind, delay_s=round(rng.uniform(lo, hi), 3))
  if kind in _PER_RUN:
    p.run = run or rng.choice(RUNS)
  if kind == "mid_ckpt":
    p.step = rng.choice(
      sorted({*range(CKPT_EVERY, ROUNDS + 1, CKPT_EVERY), ROUNDS})
    )
  elif kind == "between":
    p.step = rng.choice(range(CKPT_EVERY, _LAST, CKPT_EVERY))
  elif kind == "last_round":
    p.step = _LAST
  return p


def schedule(seed: int, kills: int) -> List[KillPoint]:
  """`kills` points in sweep order: every per-run kind once, in a run
  drawn so that both runs get half of them (a run's state and checkpoints
  go through the same code whatever its scheme; a kill in the second run
  also has the first one to skip), the results write and a start-up (at a
  drawn place: every process starts up), then drawn ones; delays and
  checkpoint steps drawn. The last-round kill (its run then holds steps
  _LAST - CKPT_EVERY and _LAST) is followed by damaging the newest step."""
  rng = random.Random(seed)
  kinds = list(_PER_RUN)
  rng.shuffle(kinds)
  half = len(kinds) // 2
  points = [_draw(rng, k, RUNS[n >= half]) for n, k in enumerate(kinds)]
  points += [_draw(rng, "results"), _draw(rng, "startup")]
  points += [
    _draw(rng, rng.choice(("startup",) + _PER_RUN))
    for _ in range(kills - len(points))
  ]
  rng.choice([p for p in points if p.kind == "last_round"]).corrupt = True
  timed = sorted(
    (p for p in points if p.kind != "startup"), key=KillPoint.position
  )
  for p in (p for p in points if p.kind == "startup"):
    timed.insert(rng.randrange(len(timed)), p)
  return timed


def _identity(path: Path) -> Optional[Tuple[int, int]]:
  try:
    st = os.stat(path)
  except FileNotFoundError:
    return None
  return st.st_ino, st.st_ctime_ns


class Probe:
  """What one sweep process has done, seen from outside: its log and the
  workdir, against a snapshot taken when it was started."""

  def __init__(self, workdir: Path, log_path: Path):
    self.wd, self.log_path = Path(workdir), Path(log_path)
    self.t0 = time.monotonic()
    self.spawned = {p: _identity(p) for p in self._paths()}

  def _paths(self) -> List[Path]:
    out = [self.wd / "results.json"]
    for run in RUNS:
      out += [self.wd / run / "history.json", self.wd / run / "summary.json"]
      ck = self.wd / run / "checkpoints"
      for d in ck.iterdir() if ck.is_dir() else []:
        out += [d, d / META]
    return out

  def fresh(self, path: Path) -> bool:
    """`path` exists and is not the file or directory there at spawn."""
    now = _identity(path)
    return now is not None and now != self.spawned.get(path)

  def log(self) -> str:
    return self.log_path.read_text(errors="replace")

  def logged(self, pattern: str) -> bool:
    return re.search(pattern, self.log(), re.M) is not None

  def steps(self, run: str) -> List[int]:
    ck = self.wd / run / "checkpoints"
    return (
      sorted(int(d.name) for d in ck.iterdir() if d.name.isdigit())
      if ck.is_dir()
      else []
    )

  def writing(self, run: str, step: int) -> bool:
    """This process is writing `step`: its temporary directory holds a
    metadata file (orbax writes it first) that was not there at spawn. (A
    directory a killed process left is removed and written anew; while it
    is being removed its files are old or gone.)"""
    return self.fresh(self.wd / run / "checkpoints" / f"{step}{TMP}" / META)

  def fresh_tmp(self, run: str) -> List[str]:
    """Names of the run's temporary step directories this process made."""
    ck = self.wd / run / "checkpoints"
    return [
      d.name
      for d in (ck.iterdir() if ck.is_dir() else [])
      if d.name.endswith(TMP) and self.fresh(d / META)
    ]


def _tag(run: str) -> str:
  return rf"\b{run} \[\d+/\d+\]: "  # the console's progress-line prefix


def triggered(p: KillPoint, probe: Probe) -> bool:
  """The event after which `p` waits `delay_s` and kills."""
  k, run = p.kind, p.run
  if k == "startup":
    return time.monotonic() - probe.t0 >= p.delay_s
  if k == "first_round":
    return probe.logged(_tag(run) + "training ")
  if k == "mid_ckpt":
    return probe.writing(run, p.step)
  if k in ("between", "last_round"):
    return probe.fresh(probe.wd / run / "checkpoints" / str(p.step)) or (
      probe.logged(rf"run {run}: resumed at round {p.step}$")
    )
  if k == "eval":
    return probe.logged(_tag(run) + "evaluating")
  if k == "history":
    return probe.fresh(probe.wd / run / "history.json")
  return probe.fresh(probe.wd / "results.json")  # results


def mismatch(p: KillPoint, probe: Probe) -> Optional[str]:
  """None when the killed process's state is `p`'s, else what it is."""
  k, run = p.kind, p.run
  steps = probe.steps(run) if run else []
  if k == "startup" and probe.logged(r"\]: (training|resuming) "):
    return "a run had started"
  if k == "first_round" and (steps or probe.logged(_tag(run) + "round 1/")):
    return f"round 1 was done (steps {steps})"
  if k == "mid_ckpt" and (not probe.writing(run, p.step) or p.step in steps):
    return f"the write of step {p.step} had finished"
  if k in ("between", "last_round"):
    if not steps or steps[-1] != p.step or probe.fresh_tmp(run):
      return f"steps {steps}, writing {probe.fresh_tmp(run)}"
  if k in ("between", "last_round", "eval") and (
    probe.logged(_tag(run) + "evaluated")
    or (probe.wd / run / "summary.json").exists()
  ):
    return "the run had finished its evaluation"
  return None


def fire(
  proc: subprocess.Popen, probe: Probe, p: KillPoint, timeout_s: float
) -> Dict[str, str]:
  """Waits for `p`'s event, sleeps its delay, SIGKILLs, checks the state.

  Returns {"status", "why"}: status "killed" when the signal ended a live
  process in `p`'s state, "elsewhere" when it ended it in another state,
  "exited" when the process ended first, "timeout" when no event came.
  """
  t_end = time.monotonic() + timeout_s
  while not triggered(p, probe):
    if proc.poll() is not None:
      return dict(status="exited", why=f"rc={proc.returncode} before the event")
    if time.monotonic() > t_end:
      proc.kill()
      proc.wait()
      return dict(status="timeout", why=f"no event in {timeout_s:.0f}s")
    time.sleep(0.001)
  if p.kind != "startup":
    time.sleep(p.delay_s)
  if proc.poll() is None:
    os.kill(proc.pid, signal.SIGKILL)
  if proc.wait() != -signal.SIGKILL:  # a zombie ignores the signal
    return dict(status="exited", why=f"rc={proc.returncode} before the kill")
  why = mismatch(p, probe)
  return dict(status="elsewhere" if why else "killed", why=why or "")


def corrupt_newest(run_dir: Path, seed: int) -> Tuple[int, int, str]:
  """Flips 64 bytes inside the largest array-data file of the run's newest
  checkpoint step, keeping its size; returns (damaged step, previous step,
  file)."""
  ck = run_dir / "checkpoints"
  steps = sorted(int(d.name) for d in ck.iterdir() if d.name.isdigit())
  assert len(steps) >= 2, f"need two steps to fall back, have {steps}"
  files = [
    f
    for f in (ck / str(steps[-1]) / "state").rglob("*")
    if f.is_file() and f.parent.name == "d"
  ]
  target = max(files, key=lambda f: f.stat().st_size)
  data = bytearray(target.read_bytes())
  at = random.Random(seed).randrange(len(data) // 4, len(data) * 3 // 4 - 64)
  data[at : at + 64] = bytes(b ^ 0xA5 for b in data[at : at + 64])
  size = target.stat().st_size
  target.write_bytes(bytes(data))
  assert target.stat().st_size == size
  return steps[-1], steps[-2], str(target.relative_to(run_dir))


def run_chain(
  points: List[KillPoint],
  start: Callable[[], tuple],
  timeout_s: float,
  seed: int,
  tries: int = 3,
) -> Dict[str, list]:
  """Kills one process per point, damaging a checkpoint after the point
  marked `corrupt`. A kill that landed elsewhere (the process was killed,
  but not in the planned state) is retried at the triggering event itself,
  up to `tries` processes per point; a process that exits or never triggers
  ends the chain. `start()` -> (Popen, Probe).

  Returns:
    {"points": [(point, [attempt records])], "damage": [dict(run, step,
     prev, file, next_process)], "processes": count}.
  """
  results, damage, started = [], [], 0
  for p in points:
    attempts = []
    results.append((str(p), attempts))
    for _ in range(tries):
      proc, probe = start()
      started += 1
      out = fire(proc, probe, p, timeout_s)
      attempts.append(dict(out, wall_s=round(time.monotonic() - probe.t0, 1)))
      if out["status"] != "elsewhere":
        break
      p.delay_s = 0.0
    if attempts[-1]["status"] in ("exited", "timeout"):
      break  # the sweep went on without this kill: the plan cannot go on
    if p.corrupt and attempts[-1]["status"] == "killed":
      step, prev, path = corrupt_newest(probe.wd / p.run, seed)
      damage.append(
        dict(run=p.run, step=step, prev=prev, file=path, next_process=started)
      )
  return dict(points=results, damage=damage, processes=started)
