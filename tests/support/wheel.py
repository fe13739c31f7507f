"""The package as a wheel, built once per test run from this checkout."""

import pathlib
import subprocess
import sys

from tests.support import ROOT


def build_wheel(tmp_path_factory) -> pathlib.Path:
  """`pip wheel --no-deps --no-build-isolation` of the checkout into a
  fresh temporary folder; returns the wheel's path (no network)."""
  out = tmp_path_factory.mktemp("wheel")
  subprocess.run(
    [
      sys.executable,
      "-m",
      "pip",
      "wheel",
      "--no-deps",
      "--no-build-isolation",
      "--no-index",
      "-q",
      "-w",
      str(out),
      str(ROOT),
    ],
    check=True,
    capture_output=True,
  )
  (wheel,) = out.glob("fedqjax-*.whl")
  return wheel
