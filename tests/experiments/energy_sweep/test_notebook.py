"""notebooks/energy_explorer.ipynb executes headless on CPU (small preset)."""

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
  outputs = [
    o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
  ]
  text = "".join(o.get("text", "") for o in outputs)
  images = sum("image/png" in o.get("data", {}) for o in outputs)
  assert "| ondemand | kkt |" in text and images >= 4
  assert os.path.exists(tmp_path / "nb" / "results.csv")
