"""The command line (python -m experiments.energy_sweep): one-line errors
with exit status 2 that compute and write nothing, and one real run of the
small preset that matches the library's own sweep."""

import os

from tests import support

SMALL = "--config=experiments/configs/energy_sweep.py:small"

_BAD = [
  (
    ["--config.axes.num_devicez=3"],
    [
      "--config.axes.num_devicez is not a config key",
      "did you mean --config.axes.num_devices?",
      "valid keys of config.axes:",
      "total_bandwidth_hz",
    ],
  ),
  (["--config.num_seeds=0"], ["--config.num_seeds=0", "valid: [1, 1000]"]),
  (
    ["--config.base.deadline_factor=-1"],
    ["--config.base.deadline_factor=-1", "valid: (0, "],
  ),
  (
    ["--config.num_seeds=abc"],
    ["--config.num_seeds=abc", "valid: an int [1, 1000]"],
  ),
  (
    [
      SMALL,
      "--config.bits_source=/no/such/sweep",
      "--config.axes.eps_scale=()",
      "--config.heatmap=()",
    ],
    [
      "config.bits_source='/no/such/sweep' is invalid",
      "valid: gaussian | measured | a sweep workdir",
    ],
  ),
  (["--workdirr=x"], ["unknown flag --workdirr", "did you mean --workdir?"]),
]


def test_bad_command_lines_exit_2_with_one_line(tmp_path, energy_cli):
  workdir = tmp_path / "existing"
  workdir.mkdir()
  (workdir / "keep.txt").write_text("mine")
  fresh = tmp_path / "fresh"
  procs = []
  for i, (args, _) in enumerate(_BAD):  # concurrently: mostly import time
    where = workdir if i % 2 else fresh
    procs.append(energy_cli([f"--workdir={where}", *args]))
  support.assert_one_line_errors(procs, _BAD, workdir, "keep.txt")
  assert (workdir / "keep.txt").read_text() == "mine"
  assert not fresh.exists()


def test_small_run_matches_the_library(tmp_path, energy_cli, small):
  """The program's results.csv is the library path's (same settings)."""
  workdir = tmp_path / "run"
  p = energy_cli([SMALL, f"--workdir={workdir}", "--config.figures=False"])
  out, err = p.communicate(timeout=600)
  assert p.returncode == 0, err[-3000:]
  assert "| ondemand | kkt |" in out
  assert (
    out.rstrip()
    .splitlines()[-1]
    .startswith(
      f"results: {workdir}/results.csv, sampling energy: {workdir}/"
      f"sampling.csv, summary: {workdir}/summary.md ("
    )
  )
  progress = err.splitlines()
  assert any("energy_sweep: call 0 done: " in ln for ln in progress), err
  cpp = [ln for ln in progress if ln[:1] in "IWEF" and ln[1:5].isdigit()]
  assert not cpp, cpp  # no C++ log lines
  assert sorted(os.listdir(workdir)) == [
    "results.csv",
    "sampling.csv",
    "summary.md",
  ]
  with (
    open(workdir / "results.csv") as f,
    open(os.path.join(small[3], "results.csv")) as g,
  ):
    assert f.read() == g.read()
