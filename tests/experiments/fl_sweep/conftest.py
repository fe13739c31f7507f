"""Fixtures of the training sweep's tests."""

import pytest

from tests.support import TEST_CONFIG, cli_env, run_cli


@pytest.fixture(scope="session")
def cli_run(tmp_path_factory):
  """The test config (fp32, on-demand) through the command line, as a user
  starts it: (workdir, its console with stderr merged into stdout). One run
  for the console test (test_main.py) and the CLI-equals-in-process test
  (test_train.py); tests/conftest.py runs both modules on one worker."""
  workdir = tmp_path_factory.mktemp("cli") / "run"
  out = run_cli(
    [
      TEST_CONFIG,
      f"--workdir={workdir}",
      "--config.sweep.schemes=('fp32','ondemand')",
      "--config.compilation_cache=False",
    ],
    env=cli_env(),
    merge_stderr=True,
  )
  assert out.returncode == 0, out.stdout[-3000:]
  return workdir, out.stdout
