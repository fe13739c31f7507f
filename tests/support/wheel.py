"""fedqjax as a user installs it: a wheel built from this checkout (once per
test session) and a separate environment holding it, offline.

The environment reuses the test environment's packages (a path entry, whose
.pth files are not processed: this checkout's editable install is not
seen) and installs the wheel alone (`--no-deps --no-index`). Packages that
only the extras bring (TensorFlow, clu, tfds, TensorBoard, torch) can be
made unimportable, as after a plain `pip install fedqjax`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Dict, Sequence

from tests.support import ROOT

# What `pip install fedqjax` (no extras) does not install.
EXTRAS_ONLY = (
  "tensorflow",
  "tensorflow_datasets",
  "clu",
  "tensorboard",
  "torch",
)
# The files a wheel is built from (the sdist's content).
_SOURCES = ("pyproject.toml", "README.md", "LICENSE", "fedqjax", "experiments")
_BUILT: Dict[str, Path] = {}

_BLOCKER = '''"""Makes {names} unimportable (a plain install has none of them)."""
import importlib.abc
import sys

_BLOCKED = {names!r}


class _Blocker(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] in _BLOCKED:
      raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
    return None


sys.meta_path.insert(0, _Blocker())
'''


def _run(cmd: Sequence[str], cwd=None) -> None:
  out = subprocess.run(
    list(cmd), cwd=cwd, text=True, capture_output=True, timeout=600
  )
  assert out.returncode == 0, (cmd, out.stdout[-3000:], out.stderr[-3000:])


def build_wheel(tmp_path_factory) -> Path:
  """The fedqjax wheel of this checkout, built once per session (offline:
  the test environment's setuptools, no build isolation).

  Args:
    tmp_path_factory: pytest's session-scoped factory of temporary
      directories.

  Returns:
    The path of the .whl file.
  """
  if "wheel" not in _BUILT:
    src = tmp_path_factory.mktemp("wheel_src")
    for name in _SOURCES:
      from_, to = ROOT / name, src / name
      if from_.is_dir():
        shutil.copytree(
          from_, to, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )
      else:
        shutil.copy2(from_, to)
    out = tmp_path_factory.mktemp("wheel")
    pip = (sys.executable, "-m", "pip", "-q", "--disable-pip-version-check")
    _run(
      (*pip, "wheel", "--no-deps", "--no-index", "--no-build-isolation")
      + ("-w", str(out), str(src)),
    )
    (_BUILT["wheel"],) = out.glob("fedqjax-*.whl")
  return _BUILT["wheel"]


def install(
  wheel: Path, env_dir: Path, blocked: Sequence[str] = EXTRAS_ONLY
) -> Path:
  """A new environment at `env_dir` with `wheel` installed (no deps from an
  index: the test environment's packages, `blocked` ones unimportable).

  Returns:
    Its bin/ directory (python and the console scripts).
  """
  _run((sys.executable, "-m", "venv", "--without-pip", str(env_dir)))
  bin_dir = env_dir / "bin"
  site = Path(
    subprocess.run(
      [
        str(bin_dir / "python"),
        "-c",
        "import sysconfig; print(sysconfig.get_paths()['purelib'])",
      ],
      text=True,
      capture_output=True,
      check=True,
    ).stdout.strip()
  )
  # The wheel first, into the empty environment (pip sees nothing else).
  _run(
    (sys.executable, "-m", "pip", "-q", "--disable-pip-version-check")
    + ("--python", str(bin_dir / "python"), "install", "--no-deps")
    + ("--no-index", str(wheel)),
  )
  # Then the test environment's packages, after the new environment's own.
  (site / "test_env_packages.pth").write_text(
    sysconfig.get_paths()["purelib"] + "\n"
  )
  (site / "sitecustomize.py").write_text(_BLOCKER.format(names=tuple(blocked)))
  return bin_dir


def user_env() -> Dict[str, str]:
  """A user's environment: no checkout on the path, CPU only, the quiet
  console, this test run's compilation cache."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  for name in ("PYTHONPATH", "FEDQJAX_VERBOSE", "PYTHONHOME"):
    env.pop(name, None)
  return env
