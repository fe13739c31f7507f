"""Figures of the training sweep: Figure objects (no pyplot state, no
backend switch), PNG + PDF, the on-demand-only bits histogram."""

import matplotlib
import pytest

from experiments.fl_sweep import figures


def _results():
  rows, runs = [], []
  for s in (0, 1, 2):
    for bits, energy in (("fp32", 60.0), ("ondemand", 5.0)):
      for eps in (1.0, 2.0) if bits == "ondemand" else (1.0,):
        runs.append(
          dict(
            run=f"{bits}_seed{s}_eps{eps:g}",
            bits_scheme=bits,
            seed=s,
            eps_scale=eps,
          )
        )
        for alloc, f in (("kkt", 1.0), ("max", 5.0)):
          rows.append(
            dict(
              bits_scheme=bits,
              allocation=alloc,
              seed=s,
              eps_scale=eps,
              total_energy_j=energy * f * (1 + s),
              mean_bits=32.0 if bits == "fp32" else 4.0 / eps,
              uploaded_mb=100.0,
              heldout_loss=0.1,
            )
          )
  meta = dict(
    allocations=["kkt", "max"], seeds=[0, 1, 2], dataset="x", preset="y"
  )
  return dict(rows=rows, runs=runs, meta=meta)


def test_figures_are_objects_saved_as_png_and_pdf(tmp_path):
  backend = matplotlib.get_backend()
  res = _results()
  hist = {
    r["run"]: [
      dict(round=1, bits=[3, 4] if "ondemand" in r["run"] else [32, 32])
    ]
    for r in res["runs"]
  }
  made = [
    figures.schemes_figure(str(tmp_path), res),
    figures.demand_figure(str(tmp_path), res),
    figures.bits_figure(str(tmp_path), res, hist),
  ]
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

  assert all(isinstance(f, Figure) for f in made)
  assert matplotlib.get_backend() == backend  # untouched
  for name in ("schemes", "demand_tradeoff", "bits_histogram"):
    for ext in ("png", "pdf"):
      assert (tmp_path / "figures" / f"{name}.{ext}").stat().st_size > 1000
  # On-demand uploads only (fp32's 32s left out), pooled over seeds, one
  # series per error-demand scale: 3 seeds x one 3 and one 4 each.
  ax = made[2].axes[0]
  heights = sorted(p.get_height() for p in ax.patches if p.get_height())
  assert heights == [3.0] * 4
  assert [t.get_text() for t in ax.get_legend().get_texts()] == [
    "eps x1",
    "eps x2",
  ]
  assert ax.get_xlim()[1] < 10


def test_schemes_paired_panel_shows_the_per_seed_ratio(tmp_path):
  fig = figures.schemes_figure(str(tmp_path), _results())
  paired = fig.axes[1]
  tops = [p.get_height() for p in paired.patches]
  # fp32/kkt over the row's energy, same seed: fp32 1 and 1/5, on-demand
  # 12 and 12/5 (constant over seeds, so the interval is a point).
  assert sorted(tops) == pytest.approx(sorted([1.0, 0.2, 12.0, 2.4]))


def test_schemes_figure_without_scale_one_shows_on_demand_with_n(tmp_path):
  """On-demand swept at 0.5 and 2 only (fp32 recorded at 1): its bars are
  there, at the first scale (0.5), and every bar says its n."""
  res = _results()
  for r in res["rows"]:
    if r["bits_scheme"] == "ondemand":
      r["eps_scale"] = {1.0: 0.5, 2.0: 2.0}[r["eps_scale"]]
  fig = figures.schemes_figure(str(tmp_path), res)
  tops = sorted(p.get_height() for p in fig.axes[1].patches)
  assert tops == pytest.approx(sorted([1.0, 0.2, 12.0, 2.4]))
  for ax in fig.axes:
    labels = [t.get_text() for t in ax.texts]
    assert labels == ["n=3"] * 4, labels
