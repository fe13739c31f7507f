"""The main job's flags parser run in this process, and workdir snapshots.

`parse` runs `experiments.cifar_sweep._parse` (what `app.run` calls before
`main`) on a command line and returns what a user would see, leaving the
process's absl flags, argv, environment and log levels as they were.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import sys
from pathlib import Path
from typing import Dict, Sequence, Tuple
from unittest import mock


def parse(args: Sequence[str]) -> Tuple[int, str, str, object]:
  """(exit status, stdout, stderr, config) of `_parse(["cifar_sweep",
  *args])`; the process's flags, argv, environment and log levels are left
  as they were (console.setup, which only configures logging, is stubbed).
  """
  from absl import flags  # pylint: disable=g-import-not-at-top
  from experiments import cifar_sweep  # pylint: disable=g-import-not-at-top
  from experiments.fl_sweep import progress as console  # pylint: disable=g-import-not-at-top
  fv, argv = flags.FLAGS, ["cifar_sweep", *args]
  before, out, err = set(fv), io.StringIO(), io.StringIO()
  code, config = 0, None
  saved_argv, sys.argv = sys.argv, list(argv)  # config_flags reads sys.argv
  levels = {n: logging.getLogger(n).level for n in ("", "absl")}
  try:
    with mock.patch.dict(os.environ), mock.patch.object(
        console, "setup", lambda v: v), contextlib.redirect_stdout(
            out), contextlib.redirect_stderr(err):
      try:
        cifar_sweep._parse(argv)  # pylint: disable=protected-access
        config = fv.config
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


def snapshot(root: Path) -> Dict[str, tuple]:
  """Every entry under `root`: kind, size, mtime and content hash."""
  out = {}
  for p in sorted(root.rglob("*")):
    st_ = p.lstat()
    digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else ""
    out[str(p.relative_to(root))] = (p.is_dir(), st_.st_size,
                                     st_.st_mtime_ns, digest)
  return out
