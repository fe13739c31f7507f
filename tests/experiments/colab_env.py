"""A Colab-like Python for the notebook test: a fresh virtual environment
that sees the test environment's packages (symbolic links) except fedqjax
itself and tensorflow-cpu's metadata, with TensorFlow hidden until pip
installs "tensorflow-cpu" (a stand-in wheel from a local folder, no
network), and a Jupyter kernel running it."""

import base64
import hashlib
import json
import pathlib
import site
import subprocess
import sys
import zipfile

MARK = "tensorflow_installed"  # written into sys.prefix by the stand-in
HIDE = """import importlib.abc, os, sys


class _HideTensorFlow(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path=None, target=None):
    mark = os.path.join(sys.prefix, "{mark}")
    if name.split(".")[0] == "tensorflow" and not os.path.exists(mark):
      raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
    return None


sys.meta_path.insert(0, _HideTensorFlow())
"""
SKIP = ("fedqjax", "__editable__", "tensorflow_cpu-", "experiments")


def _link_farm(dest: pathlib.Path) -> None:
  dest.mkdir()
  (src,) = [p for p in site.getsitepackages() if p.endswith("site-packages")]
  for entry in pathlib.Path(src).iterdir():
    if not entry.name.startswith(SKIP) and entry.suffix != ".pth":
      (dest / entry.name).symlink_to(entry)


def _record_line(name: str, data: bytes) -> str:
  digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest())
  return f"{name},sha256={digest.rstrip(b'=').decode()},{len(data)}"


def stand_in_tensorflow(folder: pathlib.Path) -> pathlib.Path:
  """tensorflow_cpu-99.0.0-py3-none-any.whl: installs only the mark."""
  info, name = "tensorflow_cpu-99.0.0.dist-info", "tensorflow_cpu"
  files = {
    f"{name}-99.0.0.data/data/{MARK}": b"",
    f"{info}/METADATA": b"Metadata-Version: 2.1\nName: tensorflow-cpu\n"
    b"Version: 99.0.0\n",
    f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\n"
    b"Root-Is-Purelib: true\nTag: py3-none-any\n",
  }
  record = [_record_line(k, v) for k, v in files.items()]
  files[f"{info}/RECORD"] = ("\n".join(record + [f"{info}/RECORD,,"])).encode()
  path = folder / f"{name}-99.0.0-py3-none-any.whl"
  with zipfile.ZipFile(path, "w") as z:
    for k, v in files.items():
      z.writestr(k, v)
  return path


def make(root: pathlib.Path) -> dict:
  """The environment; returns {python, jupyter_path, find_links}."""
  venv = root / "venv"
  subprocess.run(
    [sys._base_executable, "-m", "venv", "--without-pip", str(venv)],
    check=True,
  )
  python = venv / "bin" / "python"
  purelib = subprocess.run(
    [
      str(python),
      "-c",
      "import sysconfig; print(sysconfig.get_paths()['purelib'])",
    ],
    check=True,
    capture_output=True,
    text=True,
  ).stdout.strip()
  _link_farm(root / "shared")
  (pathlib.Path(purelib) / "_hide_tensorflow.py").write_text(
    HIDE.format(mark=MARK)
  )
  (pathlib.Path(purelib) / "zz_shared.pth").write_text(
    f"import site; site.addsitedir({str(root / 'shared')!r})\n"
    "import _hide_tensorflow\n"
  )
  links = root / "find_links"
  links.mkdir()
  stand_in_tensorflow(links)
  kernel = root / "jupyter" / "kernels" / "colab_like"
  kernel.mkdir(parents=True)
  (kernel / "kernel.json").write_text(
    json.dumps(
      dict(
        argv=[
          str(python),
          "-m",
          "ipykernel_launcher",
          "-f",
          "{connection_file}",
        ],
        display_name="colab-like",
        language="python",
      )
    )
  )
  return dict(python=python, jupyter_path=root / "jupyter", find_links=links)
