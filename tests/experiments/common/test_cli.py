"""One-line command-line errors (experiments/common/cli.py)."""

import os

import pytest

from experiments.common import cli as cli_errors


def test_check_workdir(tmp_path):
  cli_errors.check_workdir(str(tmp_path))  # existing
  cli_errors.check_workdir(str(tmp_path / "new" / "deeper"))  # creatable
  assert os.listdir(tmp_path) == []  # nothing created
  (tmp_path / "f").write_text("x")
  with pytest.raises(
    ValueError,
    match=r"--workdir=.*f/sub cannot be "
    r"created: .*f is a file; valid: a writable directory",
  ):
    cli_errors.check_workdir(str(tmp_path / "f" / "sub"))
  with pytest.raises(ValueError, match=r"--workdir=.*f is a file; valid"):
    cli_errors.check_workdir(str(tmp_path / "f"))
  os.chmod(tmp_path, 0o500)
  try:  # (root may write anyway: then there is nothing to check)
    if not os.access(tmp_path, os.W_OK):
      with pytest.raises(
        ValueError,
        match=r"cannot be created: .* is not "
        "writable",
      ):
        cli_errors.check_workdir(str(tmp_path / "new"))
  finally:
    os.chmod(tmp_path, 0o700)
  with pytest.raises(ValueError, match="--workdir= is empty"):
    cli_errors.check_workdir("")
