"""Progress of a training sweep (experiments/fl_sweep/progress.py):
arithmetic of rates and ETAs with a fake clock, the compile estimate, and
where the outputs are."""

import logging
import re

import pytest

from experiments.fl_sweep import progress as console
from tests.support import Lines


class _Clock:
  def __init__(self):
    self.t = 1000.0

  def __call__(self):
    return self.t


def _progress(runs=("a", "b", "c"), rounds=10, interval=0.0):
  clock, lines = _Clock(), Lines()
  log = logging.getLogger(f"test_cli.{id(lines)}")
  log.setLevel(logging.INFO)
  log.propagate = False
  log.addHandler(lines)
  p = console.SweepProgress(
    list(runs), rounds, logger=log, min_interval_s=interval, clock=clock
  )
  return p, clock, lines.lines


_ROW = dict(loss=0.5, cum_energy_j=12.5, cum_uploaded_mb=3.25)


def _rounds(p, clock, name, rnds, times):
  for rnd, t in zip(rnds, times):
    clock.t = t
    p.round_done(name, rnd, _ROW)


def test_rate_excludes_first_round_and_eta_arithmetic():
  p, clock, lines = _progress()
  p.run_started("a", 0)
  # Round 1 ends after a 300 s compile, then 2 s per round.
  _rounds(p, clock, "a", [1, 2, 3], [1300.0, 1302.0, 1304.0])
  assert p.eta_run_s(3) == pytest.approx(7 * 2.0)
  # This run's 7 rounds + runs b and c: 2 x 10 rounds, all at 2 s.
  assert p.eta_sweep_s("a", 3) == pytest.approx(14.0 + 40.0)
  assert lines[-1] == (
    "a [1/3]: round 3/10  2.00s/round  ETA 14s (sweep "
    ">=54s)  energy 12.5 J  upload 3.2 MB  loss 0.5"
  )
  assert "round 1/10  ?s/round  ETA ?" in lines[-3]  # no rate yet


def test_eta_uses_last_rate_and_timed_evaluations():
  p, clock, lines = _progress()
  p.run_started("a", 0)
  _rounds(p, clock, "a", range(1, 11), [1300.0 + 3 * i for i in range(10)])
  clock.t = 1400.0
  p.eval_started("a", "samples")
  clock.t = 1430.0
  p.eval_done("a", {"fid": 404.25, "eval_wall_s": 30.0, "grid": [1]})
  assert lines[-1] == "a [1/3]: fid 404.2 (30s)"
  p.run_finished("a")
  p.run_started("b", 0)
  clock.t = 1500.0
  p.round_done("b", 1, _ROW)
  # No rate in run b yet: the last one (3 s); evals: 30 s for b and c.
  assert p.eta_sweep_s("b", 1) == pytest.approx(9 * 3 + 10 * 3 + 2 * 30)
  assert "(sweep 1m57s)" in lines[-1]  # timed evals: no ">=" any more


def test_interval_throttling_and_last_round():
  p, clock, lines = _progress(rounds=20, interval=10.0)
  p.run_started("a", 0)
  times = [1000.0 + 3 * i for i in range(20)]  # a round every 3 s
  _rounds(p, clock, "a", range(1, 21), times)
  shown = [
    int(re.search(r"round (\d+)/20", ln).group(1))
    for ln in lines
    if "round " in ln and "/20 " in ln
  ]
  # First report, then >= 10 s apart (every 4th round), and the last one.
  assert shown == [1, 5, 9, 13, 17, 20]


def test_resume_message_and_rate_from_resumed_rounds():
  p, clock, lines = _progress()
  p.run_finished("a", skipped=True)
  p.run_started("b", 4)
  assert lines[-2:] == [
    "a [1/3]: already finished; skipped",
    "b [2/3]: resuming at round 4/10 (from its checkpoint)",
  ]
  _rounds(p, clock, "b", [5, 6, 7], [1100.0, 1105.0, 1110.0])
  assert p.eta_run_s(7) == pytest.approx(3 * 5.0)
  assert p.eta_sweep_s("b", 7) == pytest.approx(15.0 + 10 * 5.0)


def test_compile_lines_and_bad_names():
  p, _, lines = _progress()
  p.compiling("the round", 400.0)
  p.compiling("the round", None, cached_hint=False)
  p.compiled(380.0)
  p.compiled(0.5)  # later runs: cache hits, not shown
  assert lines[0].startswith(
    "compiling the round once for all runs (about "
    "6m40s); later runs of this command load it"
  )
  assert lines[1] == (
    "compiling the round once for all runs (time not measured for this setup)"
  )
  assert lines[2:] == ["compiled in 6m20s"]
  with pytest.raises(ValueError, match=r"'zz' .*valid: a, b, c"):
    p.run_started("zz", 0)
  with pytest.raises(ValueError, match=r"rounds=0 .*valid"):
    console.SweepProgress(["a"], 0)
  with pytest.raises(ValueError, match=r"runs=.*distinct"):
    console.SweepProgress(["a", "a"], 3)


def test_estimate_compile_s_rule():
  est = console.estimate_compile_s
  assert est("cpu", "unrolled", 10, 1_060_000) == 400.0  # measured ~6 min
  assert est("cpu", "unrolled", 8, 1_060_000) == 320.0  # measured 330-347 s
  assert est("cpu", "map", 32, 1_060_000) == 65.0  # measured 63-68 s
  assert est("gpu", "vmap", 32, 1_060_000) is None  # not measured
  assert est("cpu", "unrolled", 10, 35_700_000) is None  # paper model
  assert est("cpu", "unrolled", 3, 20_000) is None  # tiny test model


def test_fmt_duration_and_outputs():
  assert [console.fmt_duration(s) for s in (None, 0.4, 59, 61, 3599, 7260)] == [
    "?",
    "0s",
    "59s",
    "1m01s",
    "59m59s",
    "2h01m",
  ]
  p, clock, lines = _progress()
  clock.t = 1000.0 + 1591.0
  p.sweep_finished("/tmp/my work/")
  assert lines[0] == "sweep finished in 26m31s"
  assert lines[-1] == "TensorBoard: tensorboard --logdir '/tmp/my work'"
  assert any("results.csv" in ln for ln in lines)
  assert "figures: /tmp/my work/figures/" in lines
  del lines[:]
  log = p._log  # pylint: disable=protected-access
  console.show_outputs("/w", 5.0, figures=False, logger=log)
  assert any("results.csv" in ln for ln in lines)
  assert not any("figures" in ln for ln in lines), lines
