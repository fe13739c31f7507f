"""Quiet logs for the experiments: the "fedqjax" logger's console format,
the libraries' log levels (C++ and absl) and quiet imports.

Plain log lines on the "fedqjax" logger (stderr), readable in a terminal, a
CI log and a file alike. Standard library at module level; jax is imported
lazily, so `setup()` can set the C++ log level before jaxlib loads.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import sys
import tempfile

VERBOSE_ENV = "FEDQJAX_VERBOSE"
_CPP_ENV = "TF_CPP_MIN_LOG_LEVEL"  # read by jaxlib and TensorFlow at load
_CPP_ENV_AT_IMPORT = os.environ.get(_CPP_ENV)
# absl / TSL C++ levels: 0 INFO, 1 WARNING, 2 ERROR, 3 FATAL.
_CPP_QUIET, _CPP_DEFAULT, _CPP_ALL = "3", "1", "0"
LOGGER = _LOG = "fedqjax"
_VERBOSITY = [0]  # the last `setup`'s


def resolve_verbosity(verbosity: int = 0) -> int:
  """max(verbosity, $FEDQJAX_VERBOSE); raises ValueError on a bad env value."""
  raw = os.environ.get(VERBOSE_ENV, "").strip()
  try:
    env = int(raw) if raw else 0
  except ValueError:
    raise ValueError(
      f"{VERBOSE_ENV}={raw!r} is invalid; valid: an integer "
      "(0 quiet, 1 library warnings, 2 everything)"
    ) from None
  return max(int(verbosity), env)


def setup(verbosity: int = 0) -> int:
  """Sets up the fedqjax logger and the libraries' log levels; call it first.

  Verbosity, the larger of `verbosity` (`--verbosity`) and $FEDQJAX_VERBOSE:
  0 quiet: C++ logging of jaxlib and TensorFlow below FATAL off (XLA's
  ERROR-level "slow_operation_alarm.cc ... Very slow compile?" included),
  absl-py loggers (orbax, clu) at WARNING; Python exceptions and warnings and
  fedqjax's own lines are never hidden (a C++ failure that matters surfaces
  as a Python exception). 1: the libraries' defaults (C++ WARNING and up),
  absl INFO. 2: everything (C++ INFO, DEBUG). Measured with jaxlib 0.10.2:
  jaxlib reads TF_CPP_MIN_LOG_LEVEL once, at `import jax`, so once it is
  loaded the level is set through its `absl_set_min_log_level` (what
  `jax_logging_level` calls); TensorFlow reads the variable when it loads.

  Returns:
    The resolved verbosity.
  """
  v = resolve_verbosity(verbosity)
  _VERBOSITY[0] = v
  _set_cpp_log_level(
    _CPP_QUIET
    if v <= 0
    else _CPP_ALL
    if v >= 2
    else (_CPP_ENV_AT_IMPORT or _CPP_DEFAULT)
  )
  logging.getLogger("absl").setLevel(
    logging.WARNING if v <= 0 else logging.INFO if v == 1 else logging.DEBUG
  )
  log = logging.getLogger(_LOG)
  log.setLevel(logging.DEBUG if v >= 2 else logging.INFO)
  if not any(getattr(h, "_fedqjax_console", False) for h in log.handlers):
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    handler._fedqjax_console = True  # pylint: disable=protected-access
    log.addHandler(handler)
  log.propagate = False
  return v


def _set_cpp_log_level(level: str) -> None:
  """C++ (absl/TSL) minimum log level, for jaxlib now and TF when it loads."""
  os.environ[_CPP_ENV] = level
  if "jax._src.lib" in sys.modules:  # jaxlib loaded: env var already read
    try:
      from jax._src.lib import utils  # pylint: disable=g-import-not-at-top

      utils.absl_set_min_log_level(int(level))
    except (ImportError, AttributeError):  # a jaxlib without the hook
      pass


# C++ INFO lines ("I1128 21:40:14.35 5499 port.cc:153] ...") and absl's
# banner, which TensorFlow 2.21 prints while loading, before it applies
# TF_CPP_MIN_LOG_LEVEL ("oneDNN custom operations are on ...", twice).
_LOAD_NOISE = re.compile(
  r"^(WARNING: All log messages before absl::InitializeLog\(\) is called"
  r" are written to STDERR|I\d{4} [\d:. ]+\d+ [\w.]+:\d+\] .*)$"
)


def import_quietly(module: str) -> None:
  """Imports `module`, dropping C++ INFO lines it prints to stderr (fd 2)
  while loading; every other line (warnings, errors) is written back.
  Above verbosity 0 (the last `setup`'s) a plain import: the user asked
  for the libraries' lines."""
  if module in sys.modules:
    return
  if _VERBOSITY[0] > 0:
    importlib.import_module(module)
    return
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as tmp:
    os.dup2(tmp.fileno(), 2)
    try:
      importlib.import_module(module)
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      tmp.seek(0)
      text = tmp.read().decode("utf-8", "replace")
      sys.stderr.write(
        "".join(
          ln
          for ln in text.splitlines(keepends=True)
          if not _LOAD_NOISE.match(ln.rstrip("\n"))
        )
      )
      sys.stderr.flush()


class _Formatter(logging.Formatter):
  """`HH:MM:SS message`; WARNING and above say their level."""

  def __init__(self):
    super().__init__("%(asctime)s %(message)s", datefmt="%H:%M:%S")

  def format(self, record):
    line = super().format(record)
    if record.levelno >= logging.WARNING:
      stamp, _, rest = line.partition(" ")
      line = f"{stamp} {record.levelname}: {rest}"
    return line


def quiet_start() -> None:
  """Before jax loads (a settings import does): its C++ start-up lines off
  unless the user set the level; `setup` then applies the verbosity."""
  if "jax" not in sys.modules:
    os.environ.setdefault(_CPP_ENV, _CPP_QUIET)
