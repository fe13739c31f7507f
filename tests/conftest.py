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
