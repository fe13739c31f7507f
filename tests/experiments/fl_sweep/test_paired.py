"""Paired saving factors (experiments/fl_sweep/paired.py) against a hand
computation."""

import math

import pytest

from experiments.fl_sweep import paired

T_975_DF2 = 4.302652729749462  # Student-t 97.5% quantile, 2 degrees of freedom


def _row(bits, alloc, seed, energy, eps=1.0):
  return dict(
    bits_scheme=bits,
    allocation=alloc,
    seed=seed,
    eps_scale=eps,
    total_energy_j=energy,
  )


def test_saving_factors_and_log_interval_by_hand():
  fp32, fixed, ondemand = [10.0, 20.0, 40.0], [2.0, 5.0, 8.0], [1.0, 4.0, 5.0]
  rows = (
    [_row("fp32", "kkt", s, e) for s, e in enumerate(fp32)]
    + [_row("fp32", "max", s, 2 * e) for s, e in enumerate(fp32)]
    + [_row("fixed", "kkt", s, e) for s, e in enumerate(fixed)]
    + [_row("ondemand", "kkt", s, e) for s, e in enumerate(ondemand)]
    + [
      _row("ondemand", "kkt", s, 2 * e, eps=0.5) for s, e in enumerate(ondemand)
    ]
  )
  paired.add_paired(rows)
  od = [
    r for r in rows if r["bits_scheme"] == "ondemand" and r["eps_scale"] == 1.0
  ]
  col = paired.column("fp32", "kkt")
  assert [r[col] for r in od] == [10.0, 5.0, 8.0]  # fp32 / ondemand, per seed
  assert [r[paired.column("fixed", "kkt")] for r in od] == [2.0, 1.25, 1.6]
  logs = [math.log(10), math.log(5), math.log(8)]
  mean = sum(logs) / 3
  sd = math.sqrt(sum((x - mean) ** 2 for x in logs) / 2)
  half = T_975_DF2 * sd / math.sqrt(3)
  for r in od:
    assert r[col + "_gmean"] == pytest.approx(400 ** (1 / 3), rel=1e-12)
    assert r[col + "_lo"] == pytest.approx(math.exp(mean - half), rel=1e-12)
    assert r[col + "_hi"] == pytest.approx(math.exp(mean + half), rel=1e-12)
  half_eps = [r for r in rows if r["eps_scale"] == 0.5]  # same seed's fp32
  assert [r[col] for r in half_eps] == [5.0, 2.5, 4.0]
  fp32_max = [r for r in rows if r["allocation"] == "max"]
  assert [r[col] for r in fp32_max] == [0.5, 0.5, 0.5]
  assert fp32_max[0][col + "_lo"] == pytest.approx(0.5)  # no spread
  base = [
    r for r in rows if r["bits_scheme"] == "fp32" and r["allocation"] == "kkt"
  ]
  assert all(r[col] == 1.0 for r in base)


def test_missing_baseline_and_one_seed():
  rows = [
    _row("ondemand", "kkt", 0, 1.0),
    _row("fp32", "kkt", 1, 3.0),
    _row("ondemand", "kkt", 1, 1.5),
  ]
  paired.add_paired(rows)
  col = paired.column("fp32", "kkt")
  assert rows[0][col] is None and rows[2][col] == 2.0
  assert rows[2][col + "_gmean"] == 2.0  # one seed with a baseline
  assert rows[2][col + "_lo"] is None and rows[2][col + "_hi"] is None
  assert paired.log_interval([None, -1.0, float("nan")]) == (None, None, None)
