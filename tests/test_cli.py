"""The console of the main job (fedqjax.console) and its command line
(experiments/cifar_sweep.py): progress arithmetic with a fake clock, the
quiet C++ logging, one-line errors with exit status 2, and one end-to-end
run on the test config."""
import logging
import os
import re
import subprocess
import sys

import pytest

from experiments.common import cli as cli_errors
from experiments.fl_sweep import progress as console

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
ENV.pop(console.VERBOSE_ENV, None)


class _Clock:
  def __init__(self):
    self.t = 1000.0

  def __call__(self):
    return self.t


class Lines(logging.Handler):
  """Collects the messages of a logger (also used by test_crash_resume)."""
  def __init__(self):
    super().__init__()
    self.lines = []

  def emit(self, record):
    self.lines.append(record.getMessage())


def _progress(runs=("a", "b", "c"), rounds=10, interval=0.0):
  clock, lines = _Clock(), Lines()
  log = logging.getLogger(f"test_cli.{id(lines)}")
  log.setLevel(logging.INFO)
  log.propagate = False
  log.addHandler(lines)
  p = console.SweepProgress(list(runs), rounds, logger=log,
                            min_interval_s=interval, clock=clock)
  return p, clock, lines.lines


_ROW = dict(loss=0.5, cum_energy_j=12.5, cum_uploaded_mb=3.25)


def _rounds(p, clock, name, rnds, times):
  for rnd, t in zip(rnds, times):
    clock.t = t
    p.round_done(name, rnd, _ROW)


def test_rate_excludes_first_round_and_eta_arithmetic():
  p, clock, lines = _progress()
  p.run_started("a", 0)
  # Round 1 ends after a 300 s compile, then 2 s per round.
  _rounds(p, clock, "a", [1, 2, 3], [1300.0, 1302.0, 1304.0])
  assert p.eta_run_s(3) == pytest.approx(7 * 2.0)
  # This run's 7 rounds + runs b and c: 2 x 10 rounds, all at 2 s.
  assert p.eta_sweep_s("a", 3) == pytest.approx(14.0 + 40.0)
  assert lines[-1] == ("a [1/3]: round 3/10  2.00s/round  ETA 14s (sweep "
                       ">=54s)  energy 12.5 J  upload 3.2 MB  loss 0.5")
  assert "round 1/10  ?s/round  ETA ?" in lines[-3]  # no rate yet


def test_eta_uses_last_rate_and_timed_evaluations():
  p, clock, lines = _progress()
  p.run_started("a", 0)
  _rounds(p, clock, "a", range(1, 11), [1300.0 + 3 * i for i in range(10)])
  clock.t = 1400.0
  p.eval_started("a", "samples")
  clock.t = 1430.0
  p.eval_done("a", {"fid": 404.25, "eval_wall_s": 30.0, "grid": [1]})
  assert lines[-1] == "a [1/3]: fid 404.2 (30s)"
  p.run_finished("a")
  p.run_started("b", 0)
  clock.t = 1500.0
  p.round_done("b", 1, _ROW)
  # No rate in run b yet: the last one (3 s); evals: 30 s for b and c.
  assert p.eta_sweep_s("b", 1) == pytest.approx(9 * 3 + 10 * 3 + 2 * 30)
  assert "(sweep 1m57s)" in lines[-1]  # timed evals: no ">=" any more


def test_interval_throttling_and_last_round():
  p, clock, lines = _progress(rounds=20, interval=10.0)
  p.run_started("a", 0)
  times = [1000.0 + 3 * i for i in range(20)]  # a round every 3 s
  _rounds(p, clock, "a", range(1, 21), times)
  shown = [int(re.search(r"round (\d+)/20", ln).group(1)) for ln in lines
           if "round " in ln and "/20 " in ln]
  # First report, then >= 10 s apart (every 4th round), and the last one.
  assert shown == [1, 5, 9, 13, 17, 20]


def test_resume_message_and_rate_from_resumed_rounds():
  p, clock, lines = _progress()
  p.run_finished("a", skipped=True)
  p.run_started("b", 4)
  assert lines[-2:] == ["a [1/3]: already finished; skipped",
                        "b [2/3]: resuming at round 4/10 (from its checkpoint)"]
  _rounds(p, clock, "b", [5, 6, 7], [1100.0, 1105.0, 1110.0])
  assert p.eta_run_s(7) == pytest.approx(3 * 5.0)
  assert p.eta_sweep_s("b", 7) == pytest.approx(15.0 + 10 * 5.0)


def test_compile_lines_and_bad_names():
  p, _, lines = _progress()
  p.compiling("the round", 400.0)
  p.compiling("the round", None, cached_hint=False)
  p.compiled(380.0)
  p.compiled(0.5)  # later runs: cache hits, not shown
  assert lines[0].startswith("compiling the round once for all runs (about "
                             "6m40s); later runs of this command load it")
  assert lines[1] == ("compiling the round once for all runs (time not "
                      "measured for this setup)")
  assert lines[2:] == ["compiled in 6m20s"]
  with pytest.raises(ValueError, match=r"'zz' .*valid: a, b, c"):
    p.run_started("zz", 0)
  with pytest.raises(ValueError, match=r"rounds=0 .*valid"):
    console.SweepProgress(["a"], 0)
  with pytest.raises(ValueError, match=r"runs=.*distinct"):
    console.SweepProgress(["a", "a"], 3)


def test_estimate_compile_s_rule():
  est = console.estimate_compile_s
  assert est("cpu", "unrolled", 10, 1_060_000) == 400.0  # measured ~6 min
  assert est("cpu", "unrolled", 8, 1_060_000) == 320.0  # measured 330-347 s
  assert est("cpu", "map", 32, 1_060_000) == 65.0  # measured 63-68 s
  assert est("gpu", "vmap", 32, 1_060_000) is None  # not measured
  assert est("cpu", "unrolled", 10, 35_700_000) is None  # paper model
  assert est("cpu", "unrolled", 3, 20_000) is None  # tiny test model


def test_fmt_duration_and_outputs():
  assert [console.fmt_duration(s) for s in (None, 0.4, 59, 61, 3599, 7260)
         ] == ["?", "0s", "59s", "1m01s", "59m59s", "2h01m"]
  p, clock, lines = _progress()
  clock.t = 1000.0 + 1591.0
  p.sweep_finished("/tmp/my work/")
  assert lines[0] == "sweep finished in 26m31s"
  assert lines[-1] == "TensorBoard: tensorboard --logdir '/tmp/my work'"
  assert any("results.csv" in ln for ln in lines)


def test_check_workdir(tmp_path):
  cli_errors.check_workdir(str(tmp_path))  # existing
  cli_errors.check_workdir(str(tmp_path / "new" / "deeper"))  # creatable
  assert os.listdir(tmp_path) == []  # nothing created
  (tmp_path / "f").write_text("x")
  with pytest.raises(ValueError, match=r"--workdir=.*f/sub cannot be "
                     r"created: .*f is a file; valid: a writable directory"):
    cli_errors.check_workdir(str(tmp_path / "f" / "sub"))
  with pytest.raises(ValueError, match=r"--workdir=.*f is a file; valid"):
    cli_errors.check_workdir(str(tmp_path / "f"))
  os.chmod(tmp_path, 0o500)
  try:  # (root may write anyway: then there is nothing to check)
    if not os.access(tmp_path, os.W_OK):
      with pytest.raises(ValueError, match=r"cannot be created: .* is not "
                         "writable"):
        cli_errors.check_workdir(str(tmp_path / "new"))
  finally:
    os.chmod(tmp_path, 0o700)
  with pytest.raises(ValueError, match="--workdir= is empty"):
    cli_errors.check_workdir("")


_CPP_PROBE = """
import sys
from experiments.fl_sweep import progress as console
if sys.argv[1] == "before": console.setup(int(sys.argv[2]))
import jax
if sys.argv[1] == "after": console.setup(int(sys.argv[2]))
jax.jit(lambda x: x * 3 + 1)(1.0).block_until_ready()
"""


@pytest.mark.parametrize("when", ["before", "after"])
def test_setup_quiets_cpp_logging_and_verbosity_restores_it(when):
  """XLA's compiler INFO lines (forced on with TF_CPP_VMODULE) stand in for
  its ERROR-level slow-compile alarm: both go through jaxlib's absl logging,
  and the quiet level (3 = FATAL only) drops both; verbosity 2 shows them."""
  env = dict(ENV, TF_CPP_VMODULE="cpu_compiler=1", TF_CPP_MIN_LOG_LEVEL="0")
  outs = [subprocess.run([sys.executable, "-c", _CPP_PROBE, when, str(v)],
                         cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120) for v in (0, 2)]
  assert all(o.returncode == 0 for o in outs), outs[0].stderr[-2000:]
  assert "cpu_compiler" not in outs[0].stderr, outs[0].stderr[-2000:]
  assert "cpu_compiler" in outs[1].stderr


_NOISY_MODULE = r"""
import os, sys
os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called"
            b" are written to STDERR\n")
os.write(2, b"I0000 00:00:1795903370.701416   16357 port.cc:153] oneDNN on\n")
os.write(2, b"E1128 21:42:22.051592    5339 some.cc:73] a real error\n")
print("a Python warning", file=sys.stderr)
"""


def test_import_quietly_drops_only_cpp_info_lines(tmp_path, monkeypatch,
                                                   capfd):
  (tmp_path / "noisy_mod_for_test.py").write_text(_NOISY_MODULE)
  monkeypatch.syspath_prepend(str(tmp_path))
  console.import_quietly("noisy_mod_for_test")
  err = capfd.readouterr().err  # (pytest's sys.stderr is not fd 2: no order)
  assert sorted(err.splitlines()) == [
      "E1128 21:42:22.051592    5339 some.cc:73] a real error",
      "a Python warning"]
  sys.modules.pop("noisy_mod_for_test")


def test_verbosity_env(monkeypatch):
  monkeypatch.setenv(console.VERBOSE_ENV, "2")
  assert console.resolve_verbosity(0) == 2
  monkeypatch.setenv(console.VERBOSE_ENV, "loud")
  with pytest.raises(ValueError, match="FEDQJAX_VERBOSE='loud'.*valid"):
    console.resolve_verbosity(0)


# Bad command lines: (extra args, words the one line must contain).
_BAD = [
    (["--config=experiments/configs/cifar_sweep.py:nosuch"],
     ["--config=", "nosuch", "valid: cpu, quality, paper"]),
    (["--config=/no/such/file.py"],
     ["--config=/no/such/file.py", "valid: a Python file"]),
    (["--config.fed.rounds=abc"],
     ["--config.fed.rounds=abc", "valid: int [1, "]),
    (["--config.fed.rounds=-3"], ["--config.fed.rounds=-3", "valid: [1, "]),
    (["--config.fed.num_clientz=3"],
     ["--config.fed.num_clientz", "did you mean --config.fed.num_clients?",
      "valid keys of config.fed:", "rounds"]),
    (["--workdirr=x"], ["--workdirr", "did you mean --workdir?",
                        "valid: --workdir, --config"]),
    (["--config=experiments/configs/test.py:foo"],
     ["takes no :preset", "valid: --config=experiments/configs/test.py"]),
    (["stray"], ["unexpected argument", "stray", "valid: flags only"]),
]


def test_bad_command_lines_exit_2_with_one_line(tmp_path):
  workdir = tmp_path / "existing"
  workdir.mkdir()
  (workdir / "keep.txt").write_text("mine")
  (tmp_path / "file").write_text("x")
  cases = _BAD + [([f"--workdir={tmp_path / 'file' / 'sub'}"],
                   ["--workdir=", "is a file", "valid: a writable directory"])]
  procs = []
  for args, _ in cases:  # concurrently: most of each is import time
    if not any(a.startswith("--workdir=") for a in args):
      args = [f"--workdir={workdir}", *args]
    procs.append(subprocess.Popen(
        [sys.executable, "-m", "experiments.cifar_sweep", *args], cwd=ROOT,
        env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
  for p, (args, words) in zip(procs, cases):
    out, err = p.communicate(timeout=300)
    lines = err.splitlines()
    assert p.returncode == 2, (args, err[-2000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), (args, err)
    assert out == ""
    for w in words:
      assert w in lines[0], (args, w, lines[0])
  assert sorted(os.listdir(workdir)) == ["keep.txt"]  # nothing written
  assert (workdir / "keep.txt").read_text() == "mine"
  assert not os.path.exists(tmp_path / "file" / "sub")


def test_console_of_a_real_run(tmp_path):
  """Issue 22 item 6: compile line, progress with ETA, table, tensorboard."""
  workdir = tmp_path / "run"
  out = subprocess.run(
      [sys.executable, "-m", "experiments.cifar_sweep",
       "--config=experiments/configs/test.py", f"--workdir={workdir}",
       "--config.sweep.schemes=('fp32','ondemand')",
       "--config.compilation_cache=False"],
      cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
      text=True, timeout=900)
  lines = out.stdout.splitlines()
  assert out.returncode == 0, out.stdout[-3000:]

  def first(pattern):
    return next(i for i, ln in enumerate(lines) if re.search(pattern, ln))

  compile_at = first(r"compiling the federated round .* once for all runs")
  round_at = first(r"fp32 \[1/2\]: round 1/3 ")
  assert compile_at < round_at
  eta = [ln for ln in lines if re.search(r"round \d/3 .* ETA \d+s \(sweep", ln)]
  assert eta, out.stdout[-3000:]
  table_at = first(r"^\| .*ondemand")
  assert table_at > max(i for i, ln in enumerate(lines) if "/3 " in ln)
  assert lines[-1].endswith(f"tensorboard --logdir {workdir}")
  cpp = [ln for ln in lines if re.match(r"^[IWEF]\d{4} ", ln) or
         "slow_operation_alarm" in ln or "absl::InitializeLog" in ln]
  assert not cpp, cpp  # no C++ log lines at all (errors included)
