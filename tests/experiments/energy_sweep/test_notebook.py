"""notebooks/energy_explorer.ipynb executes headless on CPU (small preset):
the summary table and every figure `write_all` saved, inline as
PNGs. The training notebook's test is tests/experiments/test_notebooks.py."""

import base64
import os

import pytest

from tests.experiments.energy_sweep.conftest import ROOT


def test_notebook_runs_headless(tmp_path, monkeypatch):
  nbformat = pytest.importorskip("nbformat")
  nbclient = pytest.importorskip("nbclient")
  monkeypatch.setenv("FEDQJAX_WORKDIR", str(tmp_path / "nb"))
  monkeypatch.setenv("FEDQJAX_ROOT", str(ROOT))
  monkeypatch.setenv("FEDQJAX_ENERGY_PRESET", "small")
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  nb = nbformat.read(
    os.path.join(ROOT, "notebooks", "energy_explorer.ipynb"), as_version=4
  )
  client = nbclient.NotebookClient(
    nb,
    timeout=600,
    kernel_name="python3",
    resources={"metadata": {"path": str(ROOT)}},
  )
  client.execute()
  cells = {c.get("id"): c.get("outputs", []) for c in nb.cells}
  summary = "".join(
    o.get("data", {}).get("text/markdown", "") for o in cells["sweep"]
  )
  assert "| ondemand | kkt |" in summary
  figs = cells["figures"]
  names = "".join(o.get("text", "") for o in figs).split()
  pngs = [
    o["data"]["image/png"] for o in figs if "image/png" in o.get("data", {})
  ]
  assert {"energy_vs_axes", "energy_split", "energy_cdf", "heatmap"} <= set(
    names
  )
  assert len(pngs) == len(names) and all(
    base64.b64decode(p).startswith(b"\x89PNG") for p in pngs
  )
  # write_all saved the same figures as files.
  assert sorted(os.listdir(tmp_path / "nb" / "figures")) == sorted(
    n + ext for n in names for ext in (".png", ".pdf")
  )
  assert os.path.exists(tmp_path / "nb" / "results.csv")
