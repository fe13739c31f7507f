"""Quiet logs (experiments/common/logs.py): C++ log levels before and
after jaxlib loads, quiet imports, the verbosity variable."""

import sys

import pytest

from experiments.common import logs as console
from tests.support import cli_env, run_cli

_CPP_PROBE = """
import sys
from experiments.common import logs as console
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
  env = cli_env(TF_CPP_VMODULE="cpu_compiler=1", TF_CPP_MIN_LOG_LEVEL="0")
  outs = [
    run_cli(["-c", _CPP_PROBE, when, str(v)], program=(), env=env, timeout=120)
    for v in (0, 2)
  ]
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


def test_import_quietly_drops_only_cpp_info_lines(tmp_path, monkeypatch, capfd):
  (tmp_path / "noisy_mod_for_test.py").write_text(_NOISY_MODULE)
  monkeypatch.syspath_prepend(str(tmp_path))
  console.import_quietly("noisy_mod_for_test")
  err = capfd.readouterr().err  # (pytest's sys.stderr is not fd 2: no order)
  assert sorted(err.splitlines()) == [
    "E1128 21:42:22.051592    5339 some.cc:73] a real error",
    "a Python warning",
  ]
  sys.modules.pop("noisy_mod_for_test")


def test_verbosity_env(monkeypatch):
  monkeypatch.setenv(console.VERBOSE_ENV, "2")
  assert console.resolve_verbosity(0) == 2
  monkeypatch.setenv(console.VERBOSE_ENV, "loud")
  with pytest.raises(ValueError, match="FEDQJAX_VERBOSE='loud'.*valid"):
    console.resolve_verbosity(0)


# Bad command lines: (extra args, words the one line must contain).
