"""Command-line errors of the main job: ONE line naming the flag or config
key and its valid values (exit status 2), and the workdir check; nothing is
created before these checks pass."""

from __future__ import annotations

import dataclasses
import importlib
import os
import re
import sys
from typing import Any, Mapping, Optional, Sequence, Tuple

from experiments import configs
from experiments.common import keys as keys_lib
from experiments.common import logs
from experiments.common import settings as settings_lib


@dataclasses.dataclass(frozen=True)
class Program:
  """What a main job's command line accepts, for its one-line errors.

  Attributes:
    flags: the program's own flags ("--workdir", "--config", ...).
    settings: the settings tree class that `--config` parses into.
    removed: removed key path -> what replaces it.
    config_examples: config files to name when `--config` cannot load.
  """

  flags: Tuple[str, ...]
  settings: Any = None
  removed: Mapping[str, str] = dataclasses.field(default_factory=dict)
  config_examples: str = "a config file of experiments/configs/"


_OVERRIDE = re.compile(r"^--?(?:no)?config\.([\w.]+)(?:=(.*))?$", re.S)


def check_workdir(path: str) -> None:
  """Raises ValueError unless `path` is (or can be made) a writable directory.

  Creates nothing: the check runs before anything is written.
  """
  full = os.path.abspath(path) if path else ""
  parent = full
  while parent and not os.path.exists(parent):
    parent = os.path.dirname(parent)
  at = "" if parent == full else f"cannot be created: {parent} "
  if not path:
    problem = "is empty"
  elif not os.path.isdir(parent):
    problem = at + "is a file"
  elif not os.access(parent, os.W_OK | os.X_OK):
    problem = at + "is not writable"
  else:
    return
  raise ValueError(
    f"--workdir={path} {problem}; valid: a writable directory "
    "(created if missing)"
  )


def _valid_value(key: str, settings_cls) -> str:
  if settings_cls is None or key not in settings_lib.leaves(settings_cls):
    return "see the config file"
  return settings_lib.describe(settings_cls, key)


def _unknown_config_key(
  argv: Sequence[str], settings_cls, removed: Mapping[str, str]
) -> Optional[str]:
  """The message for the first `--config.KEY=...` naming no config key."""
  if settings_cls is None:
    return None
  for m in filter(None, map(_OVERRIDE.match, argv[1:])):
    message = settings_lib.unknown_key(m.group(1), settings_cls, removed)
    if message:  # as typed on the command line
      return "--" + message.replace(
        "did you mean config.", "did you mean --config."
      )
  return None


def _config_arg(argv: Sequence[str]) -> str:
  for a in reversed(argv[1:]):  # absl keeps the last one
    m = re.match(r"^--?config=(.*)$", a, re.S)
    if m:
      return m.group(1)
  return "<default>"


def _config_flag_error(
  text: str, argv: Sequence[str], settings_cls
) -> Optional[str]:
  """The line for a bad `--config=...` / `--config.KEY=...`, else None."""
  if text.startswith("flag --config="):
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    last = re.sub(r"^\w*(Error|Exception): ", "", lines[-1])
    path = _config_arg(argv)
    if "positional argument" in last:
      base = path.split(":", 1)[0]
      return (
        f"--config={path}: this config file takes no :preset; valid: "
        f"--config={base}"
      )
    return f"--config={path}: {last}"
  m = re.match(r"^flag --config\.([\w.]+)=(.*?): (.*)$", text, re.S)
  if m:
    reason = " ".join(m.group(3).split())
    return (
      f"--config.{m.group(1)}={m.group(2)}: {reason}; valid: "
      f"{_valid_value(m.group(1), settings_cls)}"
    )
  m = re.match(r"^Missing value for flag --config\.([\w.]+)", text)
  if m:
    return (
      f"--config.{m.group(1)} needs a value (--config.{m.group(1)}="
      f"VALUE); valid: {_valid_value(m.group(1), settings_cls)}"
    )
  if any(re.match(r"^--?config\.(=|$)", a) for a in argv[1:]):
    top = (
      ", ".join(
        sorted({k.split(".")[0] for k in settings_lib.leaves(settings_cls)})
      )
      if settings_cls
      else "see the config file"
    )
    return (
      f"--config. needs a key (--config.KEY=VALUE); valid keys of config: {top}"
    )
  return None


def _flag_value_error(text: str) -> Optional[str]:
  """The line for a bad value of one of absl's / the program's flags."""
  m = re.match(r"^flag --(\w+)=(.*?): (.*)$", text, re.S)
  if not m or m.group(1) == "config":
    return None
  from absl import flags  # pylint: disable=g-import-not-at-top

  flag = m.group(1)
  valid = (
    flags.FLAGS[flag].parser.syntactic_help
    if flag in flags.FLAGS
    else "see --helpfull"
  )
  return (
    f"--{flag}={m.group(2)}: {' '.join(m.group(3).split())}; valid: {valid}"
  )


def command_line_error(
  exc: BaseException, argv: Sequence[str], program: Program
) -> str:
  """One line (no traceback) naming the flag or config key and its valid
  values, for an error raised while defining, parsing or checking flags.

  Args:
    exc: the exception (absl flags.Error, ml_collections' KeyError /
      AttributeError for unknown keys, OSError for a missing config file,
      ValueError from config validation or `check_workdir`).
    argv: the command line, argv[0] the program.
    program: the program's flags and settings, for the messages.
  """
  unknown = _unknown_config_key(argv, program.settings, program.removed)
  if unknown:
    return unknown
  text = str(exc)
  name = type(exc).__name__
  if name == "UnrecognizedFlagError":
    flag = getattr(exc, "flagname", "") or text
    sugg = re.search(r"Did you mean: ([\w.-]+)", text)  # absl's own hint
    hint = f"; did you mean --{sugg.group(1)}?" if sugg else ""
    valid = ", ".join(program.flags) or "see --helpfull"
    return f"unknown flag --{flag}{hint} (valid: {valid}; --helpfull lists all)"
  line = _config_flag_error(text, argv, program.settings) or _flag_value_error(
    text
  )
  if line:
    return line
  if isinstance(exc, OSError):
    reason = text.splitlines()[-1].strip() if text else name
    return (
      f"--config={_config_arg(argv)} cannot be loaded ({reason}); "
      f"valid: a Python file defining get_config(), e.g. "
      f"{program.config_examples}"
    )
  if name == "FlagOrderError":
    return (
      " ".join(text.split()) + "; valid: --config=FILE first, then "
      "--config.KEY=VALUE overrides"
    )
  one = " ".join(text.split()) or name
  if one.startswith("config."):  # the settings parser's messages
    return "--" + one
  return one if isinstance(exc, ValueError) else f"{one} (see --helpfull)"


def use_doc(doc: str) -> None:
  """`doc` as the usage text of --help where the main module has none (a
  console script such as `fedqjax-sweep`)."""
  main = sys.modules.get("__main__")
  if main is not None and not main.__doc__:
    main.__doc__ = doc


def exit_with_error(message: str, status: int = 2) -> None:
  """Writes `error: message` as ONE line on stderr and exits with `status`."""
  sys.stdout.flush()
  sys.stderr.write(f"error: {' '.join(message.split())}\n")
  sys.stderr.flush()
  sys.exit(status)


@dataclasses.dataclass(frozen=True)
class Main:
  """A main job's command line: `--workdir`, `--config` (a config file with
  `--config.KEY=VALUE` overrides) and the program's own flags.

  Attributes:
    settings: module path of the program's settings tree (it defines
      `Settings`, `REMOVED` and `parse(config)`).
    default_config: the shipped config file (found from the package).
    workdir: the default `--workdir` and its help.
    flags: every flag, for messages ("--workdir", "--config", ...).
    config_examples: config files to name when `--config` cannot load.
    define_flags: defines the program's other flags.
  """

  settings: str
  default_config: str
  workdir: Tuple[str, str]
  flags: Tuple[str, ...]
  config_examples: str
  define_flags: Any = None

  def program(self) -> Program:
    logs.quiet_start()  # the settings import jax
    module = importlib.import_module(self.settings)
    return Program(
      flags=self.flags,
      settings=module.Settings,
      removed=module.REMOVED,
      config_examples=self.config_examples,
    )

  def _define(self) -> None:
    # Inside the parser: ml_collections reads --config.KEY overrides from
    # argv already while defining the flag, and a bad one must exit too.
    from absl import flags  # pylint: disable=g-import-not-at-top
    from ml_collections import config_flags  # pylint: disable=g-import-not-at-top

    before = set(flags.FLAGS)
    flags.DEFINE_string("workdir", *self.workdir)
    config_flags.DEFINE_config_file(
      "config",
      self.default_config,
      "Config file FILE[:preset], a path or a shipped name: "
      f"{', '.join(configs.names())} (e.g. cifar_sweep:paper), or a "
      "preset of the default file (e.g. paper, test).",
      lock_config=True,
    )
    flags.DEFINE_string(
      "list_keys",
      None,
      "Print every config key (its value in --config, valid range and "
      "meaning) and exit; --list_keys=PREFIX: only the keys under PREFIX "
      "(e.g. fed).",
    )
    if self.define_flags is not None:
      self.define_flags()
    # --help lists the key flags of the main module (sys.argv[0], as absl
    # names it, also for a console script): the program's flags.
    for name in sorted(set(flags.FLAGS) - before) + ["verbosity"]:
      flags.FLAGS.register_key_flag_for_module(sys.argv[0], flags.FLAGS[name])

  def _argv(self, argv: Sequence[str]) -> list:
    """argv with shipped config names resolved and a bare `--list_keys`
    given its empty value (all keys)."""
    presets = importlib.import_module(self.settings).PRESETS
    out = []
    for a in argv:
      m = re.match(r"^(--?config=)(.*)$", a, re.S)
      if m:
        a = m.group(1) + configs.resolve(
          m.group(2), self.default_config, presets
        )
      out.append("--list_keys=" if a in ("--list_keys", "-list_keys") else a)
    return out

  def _list_keys(self, prefix: str, tree) -> None:
    """Prints the key listing (defaults, and the values of --config where
    they differ) and exits 0."""
    rows = keys_lib.key_table(type(tree), prefix)
    if not rows:
      raise ValueError(
        f"--list_keys={prefix} names no config key; valid: a key or section "
        f"(e.g. {keys_lib.key_table(type(tree))[0].key}), or --list_keys "
        "alone for all"
      )
    print(
      "Config keys (default, valid range, meaning); set one with "
      "--config.KEY=VALUE:\n\n"
      + keys_lib.to_text(rows, keys_lib.key_table(tree, prefix)),
      end="",
      flush=True,
    )
    sys.exit(0)

  def parse(self, argv: Sequence[str]):
    """(remaining argv, settings tree): flags defined and parsed, the config
    parsed into the settings tree, the workdir checked, the logs quieted;
    any problem is one line on stderr and exit status 2."""
    from absl import flags  # pylint: disable=g-import-not-at-top

    try:
      logs.quiet_start()
      self._define()
      rest = flags.FLAGS(self._argv(argv))
      if len(rest) > 1:
        raise ValueError(
          f"unexpected argument(s) {rest[1:]}; valid: flags "
          f"only ({', '.join(self.flags)})"
        )
      if flags.FLAGS["verbosity"].using_default_value:
        flags.FLAGS.verbosity = -1  # else absl raises it to 0 (INFO)
      logs.setup(flags.FLAGS.verbosity)
      tree = importlib.import_module(self.settings).parse(flags.FLAGS.config)
      if flags.FLAGS.list_keys is not None:
        self._list_keys(flags.FLAGS.list_keys, tree)
      check_workdir(flags.FLAGS.workdir)
    except (flags.Error, ValueError, KeyError, AttributeError, OSError) as e:
      # KeyError / AttributeError: ml_collections on an unknown key;
      # OSError: a config file that cannot be read (read with the value).
      exit_with_error(command_line_error(e, argv, self.program()))
    return rest, tree

  def parser(self, into: list):
    """absl's flags_parser: `parse`, the settings tree stored in `into`."""

    def parse(argv):
      rest, tree = self.parse(argv)
      into[:] = [tree]
      return rest

    return parse
