"""Saving a figure as PNG (to look at) and PDF (for a paper), its layout
solved once.

A constrained-layout figure solves its layout at every `savefig`: text
extents of every tick label, twice for two files. Here the PNG's draw
solves it and the PDF keeps those positions (same figure size and point
sizes; the two renderers' text extents differ by a point or two, inside
the layout's 3-point pads). The training sweep's six figures: 3.2 s
instead of 3.9 s on 2 CPU cores.

A notebook shows the PNGs a sweep wrote (`show_saved`) rather than drawing
the figures again.
"""

from __future__ import annotations

import os
from typing import List, Union


def save_png_and_pdf(
  fig, stem: str, dpi: float, pdf_dpi: Union[float, str] = "figure"
) -> str:
  """Writes `stem`.png at `dpi` and `stem`.pdf (`pdf_dpi`: its raster
  parts); returns the PNG's path. The figure's layout engine is back in
  place afterwards (a notebook may draw it again)."""
  png = stem + ".png"
  fig.savefig(png, dpi=dpi)
  engine = fig.get_layout_engine()
  if engine is not None:
    fig.set_layout_engine("none")  # keep the positions the PNG solved
  try:
    fig.savefig(stem + ".pdf", dpi=pdf_dpi)
  finally:
    if engine is not None:
      fig.set_layout_engine(engine)
  return png


def show_saved(figdir: str, dpi: float, saved_dpi: float) -> List[str]:
  """Shows every PNG in `figdir` in a notebook's output, each after its
  name, at the screen size of `dpi` (the files are at `saved_dpi`): the
  figures a sweep wrote, not drawn again. Returns the names, sorted."""
  from IPython import display  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top

  names = sorted(
    f[: -len(".png")] for f in os.listdir(figdir) if f.endswith(".png")
  )
  for name in names:
    path = os.path.join(figdir, name + ".png")
    with Image.open(path) as im:  # reads the header only
      width = round(im.size[0] * dpi / saved_dpi)
    print(name)
    display.display(display.Image(filename=path, width=width))
  return names
