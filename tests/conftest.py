"""Test session setup: a persistent XLA compilation cache shared by all test
processes (xdist workers, subprocess tests), so identical programs compile
once per machine; UNet compiles dominate this suite's time on 2 CPU cores."""

import os

_CACHE = os.path.join(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
  ".pytest_cache",
  "jax_compilation_cache",
)
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _CACHE)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "2")

# Scheduling for `make test` (`-n 2 --dist loadfile --no-loadscope-reorder`).
# The modules that run many JAX processes (two-process jobs, chains of
# killed runs) go first, as ONE work unit: one worker runs them one after
# the other while the other runs everything else. Run side by side (each on
# a worker) they oversubscribe 2 cores. Measured on this 2-core machine,
# 2026-12-03, the whole suite: 773 s this way and 850 s in xdist's default
# order (most tests first: both at the end of one worker), warm compile
# cache; side by side, cold cache, 1071 s (default order, cold: 899 s).
_MULTIPROCESS = (
  "tests/experiments/fl_sweep/test_distributed.py",
  "tests/experiments/fl_sweep/test_crash_resume.py",
)


def _module(nodeid: str) -> str:
  return nodeid.split("::", 1)[0]


def pytest_xdist_make_scheduler(config, log):
  """loadfile, except that the multi-process modules are one unit."""
  if config.getoption("dist") != "loadfile":
    return None
  from xdist.scheduler import LoadFileScheduling  # pylint: disable=g-import-not-at-top

  class _Scheduler(LoadFileScheduling):
    def _split_scope(self, nodeid):
      module = _module(nodeid)
      return "multiprocess" if module in _MULTIPROCESS else module

  return _Scheduler(config, log)


def pytest_collection_modifyitems(config, items):
  """The multi-process modules first (their order kept), then the rest."""
  del config
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  missing = [
    m for m in _MULTIPROCESS if not os.path.exists(os.path.join(root, m))
  ]
  assert not missing, f"tests/conftest.py _MULTIPROCESS names {missing}"
  items.sort(key=lambda item: _module(item.nodeid) not in _MULTIPROCESS)
