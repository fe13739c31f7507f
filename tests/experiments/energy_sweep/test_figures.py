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


def test_make_and_write_figures(small, tmp_path):
  settings, result, rows, _ = small
  figs = figures.make_figures(rows, result, settings)
  assert set(figs) == set(SWEEP_FIGURES) | {"saving_vs_comp_share"}
  assert all(isinstance(f, Figure) for f in figs.values())
  # one panel (and a legend) per swept axis, the rest switched off
  panels = [a for a in figs["energy_vs_axes"].axes if a.axison]
  assert len(panels) == len(settings.axes)
  paths = figures.write_figures(rows, result, settings, str(tmp_path))
  assert sorted(paths) == sorted(figs)
  assert all(os.path.getsize(p) > 0 for p in paths.values())
  for p in paths.values():  # and a PDF beside each PNG
    assert os.path.getsize(p[: -len(".png")] + ".pdf") > 0, p
