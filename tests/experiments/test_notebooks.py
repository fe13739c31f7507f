"""The Colab notebook executes headless on CPU with the tiny config."""

import os

import pytest

from tests import support

ROOT = str(support.ROOT)


def test_colab_notebook_runs_headless(tmp_path, monkeypatch):
  nbformat = pytest.importorskip("nbformat")
  nbclient = pytest.importorskip("nbclient")
  monkeypatch.setenv("FEDQJAX_NOTEBOOK_PRESET", "test")
  monkeypatch.setenv("FEDQJAX_WORKDIR", str(tmp_path / "nb"))
  monkeypatch.setenv("FEDQJAX_ROOT", ROOT)
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  path = os.path.join(ROOT, "notebooks", "colab_tpu.ipynb")
  nb = nbformat.read(path, as_version=4)
  client = nbclient.NotebookClient(
    nb,
    timeout=900,
    kernel_name="python3",
    resources={"metadata": {"path": ROOT}},
  )
  client.execute()
  outputs = "".join(
    o.get("text", "")
    for c in nb.cells
    if c.cell_type == "code"
    for o in c.get("outputs", [])
  )
  assert "backend=cpu" in outputs
  assert "| ondemand |" in outputs
  # Three bits schemes train once each; four allocation policies price them.
  assert "3 runs x 4 allocations = 12 rows" in outputs
  assert os.path.exists(tmp_path / "nb" / "results.csv")
  assert os.path.exists(tmp_path / "nb" / "figures" / "quality_vs_energy.png")
