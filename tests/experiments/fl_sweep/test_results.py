"""Tests for fedqjax.results: rows per (run, policy), seed statistics and
energy-to-target (no training: synthetic summaries and histories)."""

import numpy as np
import pytest
from scipy import stats

from experiments.fl_sweep import results as R


def _history(losses, energies, mbs):
  """Rows with a held-out point every round (round 0 = initialization)."""
  rows = [dict(round=0, heldout_ema=losses[0], heldout_raw=losses[0])]
  for r, (loss, e, mb) in enumerate(zip(losses[1:], energies, mbs), start=1):
    rows.append(
      dict(
        round=r,
        heldout_ema=loss,
        heldout_raw=loss,
        cum_uploaded_mb=mb,
        energy={"kkt": dict(cum_j=e), "max": dict(cum_j=3 * e)},
      )
    )
  return rows


def _summary(run, bits, seed, heldout, energy=1.0, scale=1.0):
  return dict(
    run=run,
    bits_scheme=bits,
    seed=seed,
    eps_scale=scale,
    heldout_loss=heldout,
    uploaded_mb=2.0,
    energy={
      "kkt": dict(
        total_energy_j=energy, comp_energy_j=energy, comm_energy_j=0.0
      ),
      "max": dict(
        total_energy_j=3 * energy, comp_energy_j=3 * energy, comm_energy_j=0.0
      ),
    },
  )


def test_to_target_first_crossing_per_policy():
  h = _history([1.0, 0.8, 0.55, 0.5, 0.45], [1, 2, 3, 4], [10, 20, 30, 40])
  assert R.to_target(h, 0.56, "kkt") == dict(
    energy_to_target_j=2, mb_to_target=20
  )
  assert R.to_target(h, 0.56, "max") == dict(
    energy_to_target_j=6, mb_to_target=20
  )
  assert R.to_target(h, 0.1, "kkt") == dict(
    energy_to_target_j=None, mb_to_target=None
  )
  assert R.to_target(h, 1.0, "kkt")["energy_to_target_j"] == 0.0


def test_rows_target_is_the_same_seeds_fp32_with_margin():
  summaries = [
    _summary("fp32", "fp32", 0, 0.50),
    _summary("ondemand", "ondemand", 0, 0.52),
  ]
  hist = {
    "fp32": _history([1.0, 0.7, 0.5], [5, 10], [8, 16]),
    "ondemand": _history([1.0, 0.6, 0.52], [1, 2], [1, 2]),
  }
  rows = {
    (r["run"], r["allocation"]): r
    for r in R.rows_of(summaries, hist, margin=0.02)
  }
  assert len(rows) == 4
  # target 0.51: fp32 reaches it at round 2, on-demand never (0.52).
  assert rows[("fp32", "kkt")]["energy_to_target_j"] == 10
  assert rows[("fp32", "max")]["energy_to_target_j"] == 30
  assert rows[("ondemand", "kkt")]["energy_to_target_j"] is None
  rows = {
    (r["run"], r["allocation"]): r
    for r in R.rows_of(summaries, hist, margin=0.05)
  }  # target 0.525
  assert rows[("ondemand", "kkt")]["energy_to_target_j"] == 2
  assert rows[("ondemand", "kkt")]["mb_to_target"] == 2


@pytest.mark.parametrize(
  "values", [[1.0, 2.0], [3.0, 1.5, 2.25], [0.1, 0.2, 0.4, 0.8, 1.6]]
)
def test_ci_columns_match_scipy_t_interval(values):
  summaries = [
    _summary(f"ondemand_seed{i}", "ondemand", i, 0.5, energy=v)
    for i, v in enumerate(values)
  ]
  rows = [r for r in R.rows_of(summaries, {}, 0.02) if r["allocation"] == "kkt"]
  lo, hi = stats.t.interval(
    0.95, len(values) - 1, loc=np.mean(values), scale=stats.sem(values)
  )
  for r in rows:
    np.testing.assert_allclose(
      r["total_energy_j_mean"], np.mean(values), rtol=1e-12
    )
    np.testing.assert_allclose(
      r["total_energy_j_ci95"], (hi - lo) / 2, rtol=1e-9
    )
    assert r["heldout_loss_ci95"] == 0.0


def test_one_seed_has_no_interval_and_groups_split_by_scale():
  summaries = [
    _summary("a", "ondemand", 0, 0.5, energy=1.0, scale=1.0),
    _summary("b", "ondemand", 0, 0.5, energy=2.0, scale=0.1),
  ]
  rows = [r for r in R.rows_of(summaries, {}, 0.02) if r["allocation"] == "kkt"]
  assert [r["total_energy_j_mean"] for r in rows] == [1.0, 2.0]
  assert all(r["total_energy_j_ci95"] is None for r in rows)


def test_console_table_shows_means_over_seeds():
  """Every number of a group's line is over its seeds, not the first seed's."""
  rows = [
    dict(
      run=f"od{s}",
      bits_scheme="ondemand",
      allocation="kkt",
      seed=s,
      eps_scale=1.0,
      total_energy_j=e,
      uploaded_mb=mb,
      mean_bits=b,
      heldout_loss=0.1,
      comp_share=c,
    )
    for s, e, mb, b, c in (
      (0, 1.0, 100.0, 3.0, 0.2),
      (1, 3.0, 200.0, 5.0, 0.5),
    )
  ]
  R.add_group_stats(rows)
  table = R.markdown_table(dict(rows=rows, meta=dict(seeds=[0, 1])))
  head, _, line = table.splitlines()
  assert "missed" not in head  # no channel estimate: no misses column
  cells = line.split(" | ")
  assert cells[2].startswith("2 +- ") and "n=" not in cells[2], cells
  assert cells[3:6] == ["35%", "150", "4"], cells
  assert cells[-2] == "2", cells  # n: the group's seeds


def test_console_table_shows_misses_when_the_channel_is_estimated():
  rows = [
    dict(
      run="od0",
      bits_scheme="ondemand",
      allocation="kkt",
      seed=0,
      eps_scale=1.0,
      total_energy_j=1.0,
      comp_share=0.1,
      deadline_misses=7,
    )
  ]
  table = R.markdown_table(dict(rows=R.add_group_stats(rows), meta={}))
  head, _, line = table.splitlines()
  i = head.split(" | ").index("missed")
  assert line.split(" | ")[i] == "7", line


def test_console_and_csv_carry_n_and_the_missing_baseline():
  """Three seeds, seed 2 without its fp32 run: the paired cell of on-demand
  says n=2 beside its interval (the group has 3 seeds), a warning line
  names seed 2, and the CSV has the n columns."""
  summaries = [
    _summary(f"od{s}", "ondemand", s, 0.5, energy=1.0 + s) for s in range(3)
  ] + [_summary(f"fp{s}", "fp32", s, 0.5, energy=10.0 + s) for s in range(2)]
  rows = R.rows_of(summaries, {}, 0.02)
  notes = R.paired.notes(rows)
  meta = dict(seeds=[0, 1, 2], paired_baseline_scale=1.0, paired_notes=notes)
  lines = R.markdown_table(dict(rows=rows, meta=meta)).splitlines()
  od = next(x for x in lines if x.startswith("| ondemand | kkt"))
  cells = od.split(" | ")
  assert cells[-2] == "3" and "n=" not in cells[2], cells
  assert cells[-1].endswith("n=2 |"), cells  # 10 / 1 and 11 / 2: 2 seeds
  assert any(
    x.startswith("warning: paired savings vs fp32/kkt") and "[2]" in x
    for x in lines
  ), lines
  for c in ("saving_vs_fp32_kkt_n", "total_energy_j_n", "heldout_loss_n"):
    assert c in R.CSV_COLUMNS, c
  r = next(r for r in rows if r["run"] == "od0" and r["allocation"] == "kkt")
  assert r["total_energy_j_n"] == 3 and r["saving_vs_fp32_kkt_n"] == 2
