"""The main job's flags parser run in this process.

`parse` runs `experiments.fl_sweep.main._parse` (what `app.run` calls before
`main`) on a command line and returns what a user would see, leaving the
process's absl flags, argv, environment and log levels as they were.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
from typing import Sequence, Tuple
from unittest import mock


def parse(args: Sequence[str]) -> Tuple[int, str, str, object]:
  """(exit status, stdout, stderr, config) of `_parse(["cifar_sweep",
  *args])`; the process's flags, argv, environment and log levels are left
  as they were (logs.setup, which only configures logging, is stubbed).
  """
  from absl import flags  # pylint: disable=g-import-not-at-top

  from experiments.common import logs  # pylint: disable=g-import-not-at-top
  from experiments.fl_sweep import main  # pylint: disable=g-import-not-at-top

  fv, argv = flags.FLAGS, ["cifar_sweep", *args]
  before, out, err = set(fv), io.StringIO(), io.StringIO()
  code, config = 0, None
  saved_argv, sys.argv = sys.argv, list(argv)  # config_flags reads sys.argv
  levels = {n: logging.getLogger(n).level for n in ("", "absl")}
  try:
    with (
      mock.patch.dict(os.environ),
      mock.patch.object(logs, "setup", lambda v: v),
      contextlib.redirect_stdout(out),
      contextlib.redirect_stderr(err),
    ):
      try:
        main._parse(argv)  # pylint: disable=protected-access
        config = main._SETTINGS[0]  # pylint: disable=protected-access
      except SystemExit as e:
        code = e.code
  finally:
    sys.argv = saved_argv
    for name in set(fv) - before:
      delattr(fv, name)
    fv.unparse_flags()
    for n, level in levels.items():  # absl sets its level with --verbosity
      logging.getLogger(n).setLevel(level)
  return code, out.getvalue(), err.getvalue(), config
