"""The shipped config files, reachable by name from an installed package.

`--config` takes a path (`experiments/configs/cifar_sweep.py:paper`, as
from the repository root) or a name: a file of this directory
(`cifar_sweep:paper`, `test`, `energy_sweep.py:small`) or a preset of the
program's default config file (`paper` = `<default file>:paper`).
"""

from __future__ import annotations

import os
from typing import Sequence

DIR = os.path.dirname(os.path.abspath(__file__))


def path(name: str) -> str:
  """The packaged config file `name` (with or without ".py")."""
  base = name[:-3] if name.endswith(".py") else name
  return os.path.join(DIR, base + ".py")


def names() -> Sequence[str]:
  """The shipped config files' names."""
  return sorted(
    f[:-3] for f in os.listdir(DIR) if f.endswith(".py") and f[0] != "_"
  )


def resolve(value: str, default_config: str, presets: Sequence[str]) -> str:
  """The `--config` value with a bare name replaced by its packaged file.

  An existing file, or anything with a directory part, is left as typed
  (its errors are the config loader's).

  Args:
    value: `FILE[:preset]` as typed.
    default_config: the program's default config file.
    presets: the presets of `default_config` (a bare `paper` means
      `default_config:paper`).
  """
  file, sep, preset = value.partition(":")
  if not file or os.path.exists(file) or os.path.dirname(file):
    return value
  base = file[:-3] if file.endswith(".py") else file
  if os.path.isfile(path(base)):
    return path(base) + sep + preset
  if not sep and base in presets:
    return f"{default_config}:{base}"
  return value
