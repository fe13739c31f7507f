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
  assert rows[2][col + "_n"] == 1
  assert paired.log_interval([None, -1.0, float("nan")]) == (
    None,
    None,
    None,
    0,
  )


def _sweep(scales, fp32_at=None, seeds=(0, 1, 2)):
  """fp32 and fixed (kkt) per seed at `fp32_at` (default: every scale) and
  on-demand at every scale; energies differ by scale so a wrong baseline
  scale changes every ratio."""
  rows = []
  for s in seeds:
    for eps in scales:
      if fp32_at is None or eps == fp32_at:
        rows.append(_row("fp32", "kkt", s, 100.0 * eps * (1 + s), eps))
        rows.append(_row("fixed", "kkt", s, 10.0 * eps * (1 + s), eps))
      rows.append(_row("ondemand", "kkt", s, 5.0 * (1 + s), eps))
  return rows


def test_baseline_scale_is_one_if_swept_else_the_first():
  """Scales (0.5, 2) without 1.0: the baseline is fp32 at 0.5 (the first),
  for every row: on-demand 5 (1 + s) vs fp32 50 (1 + s) -> 10 everywhere;
  its interval is a point with n = 3. (Before: None in every column.)"""
  rows = paired.add_paired(_sweep((0.5, 2.0)))
  assert paired.resolve_baseline_scale(rows) == 0.5
  col = paired.column("fp32", "kkt")
  od = [r for r in rows if r["bits_scheme"] == "ondemand"]
  assert [r[col] for r in od] == pytest.approx([10.0] * 6)
  assert all(r[col + "_n"] == 3 for r in od)
  assert all(r[col + "_lo"] == pytest.approx(10.0) for r in od)
  fp = [r for r in rows if r["bits_scheme"] == "fp32" and r["eps_scale"] == 2]
  assert [r[col] for r in fp] == pytest.approx([0.25] * 3)  # 50 / 200
  with_one = paired.add_paired(_sweep((0.5, 1.0, 2.0)))
  assert paired.resolve_baseline_scale(with_one) == 1.0
  assert with_one[2][col] == pytest.approx(20.0)  # fp32 at 1: 100 / 5


def test_explicit_baseline_scale_and_its_one_line_error():
  rows = paired.add_paired(_sweep((0.5, 2.0)), baseline_scale=2.0)
  col = paired.column("fixed", "kkt")
  od = [r[col] for r in rows if r["bits_scheme"] == "ondemand"]
  assert od == pytest.approx([4.0] * 6)  # fixed at 2: 20 (1 + s) / 5 (1 + s)
  with pytest.raises(ValueError) as e:
    paired.add_paired(_sweep((0.5, 2.0)), baseline_scale=1.0)
  msg = str(e.value)
  assert "\n" not in msg and msg.startswith("baseline_scale=1.0 is invalid")
  assert "[0.5, 2.0]" in msg


def test_pipeline_rows_fp32_once_at_scale_one():
  """The sweep trains fp32 / fixed once per seed, recorded at eps scale 1,
  whatever eps_scales is: on-demand at 0.5 and 2 pair with them."""
  rows = paired.add_paired(_sweep((0.5, 1.0, 2.0), fp32_at=1.0))
  rows = [r for r in rows if r["eps_scale"] != 1.0]
  col = paired.column("fp32", "kkt")
  assert [r[col] for r in rows] == pytest.approx([20.0] * 6)
  assert paired.notes(rows + _sweep((1.0,), fp32_at=1.0)) == []


def test_missing_baseline_seed_is_counted_and_named():
  """Seed 2 has no fp32 run and no fixed run is there at all: the
  intervals say n = 2 (fp32) and n = 0 (fixed), and `notes` names the
  seeds. (Before: a 2-seed interval, no n, no word.)"""
  rows = [
    r
    for r in _sweep((1.0,))
    if not (r["bits_scheme"] == "fp32" and r["seed"] == 2)
    and r["bits_scheme"] != "fixed"
  ]
  paired.add_paired(rows)
  fp, fx = paired.column("fp32", "kkt"), paired.column("fixed", "kkt")
  od = [r for r in rows if r["bits_scheme"] == "ondemand"]
  assert [r[fp] for r in od] == [20.0, 20.0, None]
  assert all(r[fp + "_n"] == 2 and r[fx + "_n"] == 0 for r in od)
  assert all(r[fx + "_gmean"] is None for r in od)
  lines = paired.notes(rows)
  assert len(lines) == 2, lines
  assert "fp32/kkt at eps scale 1" in lines[0]
  assert "seed(s) [2]" in lines[0] and "2 of 3 seeds" in lines[0]
  assert "fixed/kkt" in lines[1] and "seed(s) [0, 1, 2]" in lines[1]
  assert all(c in paired.COLUMNS for c in (fp + "_n", fx + "_n"))
