"""Test session setup: a persistent XLA compilation cache shared by all test
processes (xdist workers, subprocess tests), so identical programs compile
once per machine; UNet compiles dominate this suite's time on 2 CPU cores.
And the order in which two xdist workers take the modules (below)."""

import os

import pytest

from tests import support
from tests.support import FAST_XLA

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CACHE = os.path.join(_ROOT, ".pytest_cache", "jax_compilation_cache")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _CACHE)
# Fast compiles for every XLA:CPU program of the suite (tests/support
# FAST_XLA), except in the processes that run the `xla_default` tests (below).
if not support.AT_DEFAULT_LEVEL:
  _flags = os.environ.get("XLA_FLAGS", "").split()
  os.environ["XLA_FLAGS"] = " ".join(
    _flags + [f for f in FAST_XLA if f not in _flags]
  )


def pytest_configure(config):
  # In the test processes, programs that compile in 2 s or more: the many
  # tiny ones compile faster than the cache stores them. The programs the
  # tests start keep their own setting (the sweeps: every program).
  import jax  # pylint: disable=g-import-not-at-top

  jax.config.update("jax_persistent_cache_min_compile_time_secs", 2.0)
  config.addinivalue_line(
    "markers",
    "xla_default: the exact bits of XLA's default compile; run in a "
    "process of its own without the suite's -O0",
  )


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
  """An `xla_default` test, in a -O0 process: run in a new one."""
  if support.AT_DEFAULT_LEVEL or not pyfuncitem.get_closest_marker(
    "xla_default"
  ):
    return None
  support.run_at_default_level(pyfuncitem.nodeid)
  return True


# Scheduling for `make test` (`-n 2 --dist loadfile --no-loadscope-reorder`).
# The modules that run many JAX processes (two-process jobs, chains of
# killed runs) are ONE work unit: one worker runs them one after the other
# (side by side they oversubscribe 2 cores), queued after the other tests of
# their directory, whose command-line runs fill the compile cache they read,
# and before the library's tests, which the other worker takes meanwhile.
# In this order: the two-process jobs start the reference sweep that both
# modules compare with, while one of their processes is held back.
# Whole suite on this 2-core machine, 2026-12-03 (one run each), warm
# compile cache (a developer's rerun): 728 s this way, 850 s in xdist's
# default order (most tests first: both at the end of one worker), 773 s as
# one unit queued first; cold cache (CI): 918 s and 1028 s (a fresh clone),
# 899 s, 946 s, and 1071 s side by side.
_MULTIPROCESS = (
  "tests/experiments/fl_sweep/test_distributed.py",
  "tests/experiments/fl_sweep/test_crash_resume.py",
)


# Modules that share a session fixture run on one worker: the command-line
# run of the test config (tests/experiments/fl_sweep/conftest.py `cli_run`)
# would run once per worker otherwise (about 25 s).
_SHARED_FIXTURE = (
  "tests/experiments/fl_sweep/test_main.py",
  "tests/experiments/fl_sweep/test_multidevice.py",
  "tests/experiments/fl_sweep/test_train.py",
)


def _module(nodeid: str) -> str:
  return nodeid.split("::", 1)[0]


def _unit(nodeid: str) -> str:
  """The scheduling unit of a test: its module, or a group of modules."""
  module = _module(nodeid)
  if module in _MULTIPROCESS:
    return "multiprocess"
  return "cli_run" if module in _SHARED_FIXTURE else module


def pytest_xdist_make_scheduler(config, log):
  """loadfile, except for the units of `_unit`."""
  if config.getoption("dist") != "loadfile":
    return None
  from xdist.scheduler import LoadFileScheduling  # pylint: disable=g-import-not-at-top

  class _Scheduler(LoadFileScheduling):
    def _split_scope(self, nodeid):
      return _unit(nodeid)

  return _Scheduler(config, log)


def pytest_collection_modifyitems(config, items):
  """The multi-process modules after the rest of their directory, in the
  order of _MULTIPROCESS."""
  del config
  missing = [
    m
    for m in _MULTIPROCESS + _SHARED_FIXTURE
    if not os.path.exists(os.path.join(_ROOT, m))
  ]
  assert not missing, f"tests/conftest.py names missing modules {missing}"
  multi = sorted(
    (i for i in items if _module(i.nodeid) in _MULTIPROCESS),
    key=lambda i: _MULTIPROCESS.index(_module(i.nodeid)),
  )
  rest = [i for i in items if _module(i.nodeid) not in _MULTIPROCESS]
  home = {os.path.dirname(m) for m in _MULTIPROCESS}
  cut = max(
    (
      n + 1
      for n, item in enumerate(rest)
      if os.path.dirname(_module(item.nodeid)) in home
    ),
    default=0,
  )
  items[:] = rest[:cut] + multi + rest[cut:]
