"""A figure saved as PNG and PDF: the layout is solved once, the PDF keeps
the PNG's positions, and the figure keeps its layout engine. A notebook
shows the saved PNGs by name, at its own dpi."""

import numpy as np
import pytest
from matplotlib.figure import Figure
from matplotlib.layout_engine import ConstrainedLayoutEngine

from experiments.common import figfiles


def _figure():
  fig = Figure(figsize=(6, 3), layout="constrained")
  axes = fig.subplots(1, 2)
  for n, ax in enumerate(axes):
    ax.plot([0, 1e5], [0, 1e-3 * (n + 1)])
    ax.set_ylabel("a long label that moves the axes " * (n + 1))
    ax.set_title(f"panel {n}")
  return fig, axes


def _boxes(axes):
  return np.array([a.get_position().bounds for a in axes])


def test_layout_solved_once_and_kept(tmp_path, monkeypatch):
  solves = []
  solve = ConstrainedLayoutEngine.execute
  monkeypatch.setattr(
    ConstrainedLayoutEngine,
    "execute",
    lambda self, fig: (solves.append(fig), solve(self, fig))[1],
  )
  fig, axes = _figure()
  png = figfiles.save_png_and_pdf(fig, str(tmp_path / "f"), dpi=120)
  assert png == str(tmp_path / "f.png")
  assert len(solves) == 1, len(solves)
  # Both files are the real formats, not empty.
  assert (tmp_path / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert (tmp_path / "f.pdf").read_bytes()[:5] == b"%PDF-"
  assert isinstance(fig.get_layout_engine(), ConstrainedLayoutEngine)

  # The kept positions are the PNG's constrained layout.
  ref, ref_axes = _figure()
  ref.savefig(tmp_path / "r.png", dpi=120)
  np.testing.assert_array_equal(_boxes(axes), _boxes(ref_axes))
  # ... and not the positions of no layout at all.
  bare, bare_axes = _figure()
  bare.set_layout_engine("none")
  assert np.abs(_boxes(bare_axes) - _boxes(axes)).max() > 0.02


def test_show_saved_displays_each_png_after_its_name(
  tmp_path, monkeypatch, capsys
):
  display = pytest.importorskip("IPython.display")
  shown = []
  monkeypatch.setattr(display, "display", shown.append)
  for name, inches in (("b_wide", 6.0), ("a_small", 2.0)):
    fig = Figure(figsize=(inches, 1))
    figfiles.save_png_and_pdf(fig, str(tmp_path / name), dpi=150)
  (tmp_path / "notes.txt").write_text("not a figure")
  names = figfiles.show_saved(str(tmp_path), dpi=100, saved_dpi=150)
  assert names == ["a_small", "b_wide"]
  assert capsys.readouterr().out.split() == names
  # 2 and 6 inches saved at 150 dpi (300 and 900 px), shown at 100 dpi.
  assert [im.width for im in shown] == [200, 600]
  assert [im.data for im in shown] == [
    (tmp_path / f"{n}.png").read_bytes() for n in names
  ]
