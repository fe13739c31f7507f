"""The figures are Figure objects of their own: no pyplot, no backend
selection (a notebook's inline backend is untouched)."""

import inspect
import os
import re

from matplotlib.figure import Figure

from experiments.energy_sweep import figures
from tests.support.energy import SWEEP_FIGURES


def test_figures_use_no_global_state():
  source = inspect.getsource(figures)
  assert not re.search(
    r"^\s*(import matplotlib\.pyplot|from matplotlib "
    r"import pyplot)|\bplt\.|matplotlib\.use\(",
    source,
    re.M,
  )


def test_make_and_write_figures(small, tmp_path, monkeypatch):
  """The figures of `make_figures` as `write_figures` saves them: here with
  the saver recording them (drawn once, not saved again), and as files in
  the workdir that `write_all` wrote (the fixture)."""
  settings, result, rows, workdir = small
  figs = {}

  def record(fig, stem, dpi):
    assert dpi == figures.DPI
    figs[os.path.basename(stem)] = fig
    return stem + ".png"

  monkeypatch.setattr(figures.figfiles, "save_png_and_pdf", record)
  paths = figures.write_figures(rows, result, settings, str(tmp_path))
  assert set(figs) == set(SWEEP_FIGURES) | {"saving_vs_comp_share"}
  assert paths == {n: str(tmp_path / f"{n}.png") for n in figs}
  assert all(isinstance(f, Figure) for f in figs.values())
  # one panel (and a legend) per swept axis, the rest switched off
  panels = [a for a in figs["energy_vs_axes"].axes if a.axison]
  assert len(panels) == len(settings.axes)
  figdir = os.path.join(workdir, "figures")
  assert sorted(os.listdir(figdir)) == sorted(
    n + ext for n in figs for ext in (".png", ".pdf")
  )
  assert all(
    os.path.getsize(os.path.join(figdir, f)) > 0 for f in os.listdir(figdir)
  )
