"""Fixtures of the training sweep's tests."""

import pytest

from tests.experiments.fl_sweep import crash_probe as cp
from tests.support import (
  TEST_CONFIG,
  cli_env,
  run_cli,
  start_cli,
  wait_or_kill,
)


@pytest.fixture(scope="session")
def cli_run(tmp_path_factory):
  """The test config (fp32, on-demand) through the command line, as a user
  starts it: (workdir, its console with stderr merged into stdout). One run
  for the console test (test_main.py), the CLI-equals-in-process test
  (test_train.py) and the one-device reference of the 8-device job
  (test_multidevice.py); tests/conftest.py runs them on one worker."""
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


def result_rows(results):
  """The rows of a sweep's results, by (run, allocation)."""
  return {(r["run"], r["allocation"]): r for r in results["rows"]}


# The reference sweep's settings; the chain of killed processes and the
# two-process jobs run the same (the jobs with fewer evaluation samples:
# training numbers do not depend on them).
REFERENCE_ARGS = (
  TEST_CONFIG,
  f"--config.fed.rounds={cp.ROUNDS}",
  f"--config.ckpt_every={cp.CKPT_EVERY}",
  "--config.eval.fid=False",
  "--config.figures=False",  # not compared; drawn in test_train
)


class Background:
  """A command-line run started once, in the background, by whichever test
  needs it first; each test then waits for the same run."""

  def __init__(self, args, workdir, log):
    self.args, self.workdir, self.log = list(args), workdir, log
    self.proc = None

  def start(self) -> None:
    if self.proc is None:
      with open(self.log, "w") as f:
        self.proc = start_cli(
          [*self.args, f"--workdir={self.workdir}"], stdout=f
        )

  def wait(self, timeout: float = 900):
    """The workdir, once the run has ended with status 0."""
    self.start()
    assert wait_or_kill(self.proc, timeout) == 0, self.log.read_text()[-3000:]
    return self.workdir


@pytest.fixture(scope="session")
def reference_sweep(tmp_path_factory):
  """The uninterrupted single-process sweep (fp32 and on-demand, the schemes
  as a tuple) that the chain of killed processes (test_crash_resume.py)
  and the two-process jobs (test_distributed.py) are compared with. The
  jobs start it beside their first job, while one of its processes waits
  (tests/conftest.py queues test_distributed.py first)."""
  base = tmp_path_factory.mktemp("reference")
  return Background(
    [*REFERENCE_ARGS, "--config.sweep.schemes=('fp32','ondemand')"],
    base / "run",
    base / "run.log",
  )
