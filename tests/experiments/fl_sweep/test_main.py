"""The training sweep's command line (python -m experiments.cifar_sweep):
one-line errors with exit status 2 that write nothing, and one end-to-end
run on the test config (compile notice, progress with ETA, results table,
where the outputs are, a quiet console)."""

import os
import re

from tests import support
from tests.support import cli_env, start_cli

ENV = cli_env()


_BAD = [
  (
    ["--config=experiments/configs/cifar_sweep.py:nosuch"],
    ["--config=", "nosuch", "valid: cpu, quality, paper"],
  ),
  (
    ["--config=/no/such/file.py"],
    ["--config=/no/such/file.py", "valid: a Python file"],
  ),
  (
    ["--config.fed.rounds=abc"],
    ["--config.fed.rounds=abc", "valid: an int [1, "],
  ),
  (["--config.fed.rounds=-3"], ["--config.fed.rounds=-3", "valid: [1, "]),
  (
    ["--config.fed.num_clientz=3"],
    [
      "--config.fed.num_clientz",
      "did you mean --config.fed.num_clients?",
      "valid keys of config.fed:",
      "rounds",
    ],
  ),
  (
    ["--workdirr=x"],
    ["--workdirr", "did you mean --workdir?", "valid: --workdir, --config"],
  ),
  (
    ["--config=experiments/configs/test.py:foo"],
    ["takes no :preset", "valid: --config=experiments/configs/test.py"],
  ),
  (["stray"], ["unexpected argument", "stray", "valid: flags only"]),
]


def test_bad_command_lines_exit_2_with_one_line(tmp_path):
  workdir = tmp_path / "existing"
  workdir.mkdir()
  (workdir / "keep.txt").write_text("mine")
  (tmp_path / "file").write_text("x")
  cases = _BAD + [
    (
      [f"--workdir={tmp_path / 'file' / 'sub'}"],
      ["--workdir=", "is a file", "valid: a writable directory"],
    )
  ]
  procs = []
  for args, _ in cases:  # concurrently: most of each is import time
    if not any(a.startswith("--workdir=") for a in args):
      args = [f"--workdir={workdir}", *args]
    procs.append(start_cli(args, env=ENV, merge_stderr=False))
  support.assert_one_line_errors(procs, cases, workdir, "keep.txt")
  assert (workdir / "keep.txt").read_text() == "mine"
  assert not os.path.exists(tmp_path / "file" / "sub")


def test_console_of_a_real_run(cli_run):
  """Compile line, progress with ETA, table, tensorboard."""
  workdir, console = cli_run
  lines = console.splitlines()

  def first(pattern):
    return next(i for i, ln in enumerate(lines) if re.search(pattern, ln))

  compile_at = first(r"compiling the federated round .* once for all runs")
  round_at = first(r"fp32 \[1/2\]: round 1/3 ")
  assert compile_at < round_at
  eta = [ln for ln in lines if re.search(r"round \d/3 .* ETA \d+s \(sweep", ln)]
  assert eta, console[-3000:]
  table_at = first(r"^\| .*ondemand")
  assert table_at > max(i for i, ln in enumerate(lines) if "/3 " in ln)
  assert lines[-1].endswith(f"tensorboard --logdir {workdir}")
  cpp = [
    ln
    for ln in lines
    if re.match(r"^[IWEF]\d{4} ", ln)
    or "slow_operation_alarm" in ln
    or "absl::InitializeLog" in ln
  ]
  assert not cpp, cpp  # no C++ log lines at all (errors included)
