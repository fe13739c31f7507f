"""Every config key of a settings tree with its default, valid range and doc,
as rows (for `--list_keys` and docs/configuration.md) and as text/markdown.

Generated from the tree's declarations (`settings.key(default, check,
doc)`), so the listing cannot drift from what the parser accepts.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, List, Sequence

from experiments.common import settings as settings_lib


@dataclasses.dataclass(frozen=True)
class KeyRow:
  """One config key.

  Attributes:
    key: the key path ("fed.local_steps"; on the command line
      `--config.fed.local_steps=...`).
    default: the tree's default, as the command line writes it.
    valid: the type and valid range ("an int [1, 10000]").
    doc: what the key means ("" when the tree declares none).
  """

  key: str
  default: str
  valid: str
  doc: str


def _show(value: Any) -> str:
  """A default as typed on the command line ("1,2,4" for a tuple)."""
  if isinstance(value, tuple):
    return ",".join(map(str, value)) if value else "()"
  return repr(value) if isinstance(value, str) else str(value)


def _rows(root_cls, tree, prefix: str) -> List[KeyRow]:
  out: List[KeyRow] = []
  hints = typing.get_type_hints(type(tree))
  for f in dataclasses.fields(tree):
    value = getattr(tree, f.name)
    if dataclasses.is_dataclass(hints[f.name]):
      out += _rows(root_cls, value, f"{prefix}{f.name}.")
      continue
    path = prefix + f.name
    out.append(
      KeyRow(
        key=path,
        default=_show(value),
        valid=settings_lib.describe(root_cls, path),
        doc=" ".join(f.metadata.get("doc", "").split()),
      )
    )
  return out


def key_table(settings_root, prefix: str = "") -> List[KeyRow]:
  """Every key of a settings tree, in declaration order.

  Args:
    settings_root: the tree's root class (e.g. `fl_sweep.settings.Settings`)
      or an instance (its values are then the defaults shown).
    prefix: keep only keys equal to it or below it ("fed", "eval.fid");
      "" keeps all.

  Returns:
    One `KeyRow` per leaf.
  """
  is_cls = isinstance(settings_root, type)
  tree = settings_root() if is_cls else settings_root
  rows = _rows(type(tree), tree, "")
  p = prefix.strip(".")
  if p.startswith(settings_lib.PREFIX + "."):
    p = p[len(settings_lib.PREFIX) + 1 :]
  return [r for r in rows if not p or r.key == p or r.key.startswith(p + ".")]


def _cell(text: str) -> str:
  return text.replace("|", "\\|") or " "


def to_markdown(rows: Sequence[KeyRow]) -> str:
  """A markdown table: key | default | valid | meaning."""
  lines = ["| key | default | valid | meaning |", "|---|---|---|---|"]
  lines += [
    f"| `{r.key}` | `{_cell(r.default)}` | {_cell(r.valid)} | {_cell(r.doc)} |"
    for r in rows
  ]
  return "\n".join(lines) + "\n"


def to_text(rows: Sequence[KeyRow], values: Sequence[KeyRow] = ()) -> str:
  """The console listing: one block per key (flag form, default, range,
  doc); `values`: the same keys in a config, shown where they differ."""
  here = {r.key: r.default for r in values}
  blocks = []
  for r in rows:
    value = here.get(r.key, r.default)
    set_to = f"; this config: {value}" if value != r.default else ""
    head = f"--config.{r.key}  (default: {r.default}{set_to})"
    body = [f"    valid: {r.valid}"] + ([f"    {r.doc}"] if r.doc else [])
    blocks.append("\n".join([head] + body))
  return "\n".join(blocks) + "\n"


# ------------------------------------------------- docs/configuration.md

PAGE = "docs/configuration.md"
COMMAND = f"python -m experiments.common.keys --write {PAGE}"


@dataclasses.dataclass(frozen=True)
class ProgramDoc:
  """A program whose keys the configuration page lists.

  Attributes:
    title: the section's title ("Training sweep").
    commands: how it is run, as the page shows it.
    settings: module path of its settings tree (`Settings`, `PRESETS`).
    config: its default config file, a name of experiments/configs/.
  """

  title: str
  commands: Sequence[str]
  settings: str
  config: str


PROGRAMS = (
  ProgramDoc(
    "Training sweep",
    ("python -m experiments.cifar_sweep", "fedqjax-sweep"),
    "experiments.fl_sweep.settings",
    "cifar_sweep",
  ),
  ProgramDoc(
    "Energy sweep",
    ("python -m experiments.energy_sweep", "fedqjax-energy"),
    "experiments.energy_sweep.settings",
    "energy_sweep",
  ),
)

_INTRO = """\
# Configuration keys

Every config key of the two programs: its default, its valid range and
what it means. Generated from the settings trees (each key is declared
once, with its default, range and meaning, in the program's `settings.py`)
by

    {command}

Do not edit this page by hand: the test suite fails when it is stale
(tests/experiments/common/test_configuration_page.py).

How keys are set, on either program's command line:

- `--config=<preset>`: a preset by name (listed under each program below),
  or a config file `FILE[:preset]` (a path, or a shipped name such as
  `cifar_sweep:paper`).
- `--config.section.key=value`: one key, after `--config` (e.g.
  `--config.fed.local_steps=4`); a tuple as `1,2,4`, an empty one as
  `'()'`.
- `--list_keys[=PREFIX]`: prints every key (or only those under PREFIX,
  e.g. `fed`) with its default, its value in the given `--config` where that
  differs, its valid range and meaning, and exits.

Every value is checked before anything compiles: an unknown key, a wrong
type or a value out of range stops the program with one line naming the
key and what is valid (exit status 2). The default column is the default
preset's value. Where the library checks a key (the `model` section, the
device constants), the valid column gives its type and the meaning its
range. Sources of the literature's constants: Ho et al. 2020 ("Denoising
Diffusion Probabilistic Models", NeurIPS 2020); Yang et al. TWC 2021
(Yang, Chen, Saad, Hong, Shikh-Bahaei, "Energy Efficient Federated
Learning Over Wireless Communication Networks", IEEE Trans. Wireless
Commun. 20(3), 2021; docs/model.md, "Constants and their sources");
"ours": chosen by this project.
"""


def _first_paragraph(cls) -> str:
  """A class's own docstring, its first paragraph on one line ("" when it
  has none: a dataclass's generated signature is not one)."""
  doc = cls.__doc__ or ""
  if doc.startswith(cls.__name__ + "("):
    return ""
  return " ".join(doc.strip().split("\n\n")[0].split())


def _presets(program: ProgramDoc, module) -> List[str]:
  """The preset table: each name, what `--config=<name>` loads."""
  import importlib  # pylint: disable=g-import-not-at-top
  import inspect  # pylint: disable=g-import-not-at-top

  from experiments import configs  # pylint: disable=g-import-not-at-top

  default_file = configs.path(program.config)
  get_config = importlib.import_module(
    f"experiments.configs.{program.config}"
  ).get_config
  default = inspect.signature(get_config).parameters["preset"].default
  lines = ["| `--config=` | loads |", "|---|---|"]
  for name in module.PRESETS:
    target = configs.resolve(name, default_file, module.PRESETS)
    shown = "experiments/configs/" + target.rpartition("/")[2]
    mark = " (the default)" if name == default else ""
    lines.append(f"| `{name}`{mark} | `{shown}` |")
  return lines


def _program_section(program: ProgramDoc) -> str:
  """One program: its commands, presets and one key table per section."""
  import importlib  # pylint: disable=g-import-not-at-top

  module = importlib.import_module(program.settings)
  root = module.Settings
  commands = " / ".join(f"`{c}`" for c in program.commands)
  path = program.settings.replace(".", "/") + ".py"
  out = [
    f"## {program.title}: {commands}",
    "",
    f"{_first_paragraph(root)} Declared in `{path}`.",
    "",
    "Presets:",
    "",
    *_presets(program, module),
  ]
  rows = key_table(root)  # once: each row's range reads the whole tree
  top = [r for r in rows if "." not in r.key]
  hints = typing.get_type_hints(root)
  groups = [("top level", "", top)] + [
    (
      f.name,
      _first_paragraph(hints[f.name]),
      [r for r in rows if r.key.startswith(f.name + ".")],
    )
    for f in dataclasses.fields(root)
    if dataclasses.is_dataclass(hints[f.name])
  ]
  for name, doc, group in groups:
    title = name if name == "top level" else f"`{name}`"
    out += ["", f"### {title}", ""] + ([doc, ""] if doc else [])
    out.append(to_markdown(group).rstrip("\n"))
  return "\n".join(out) + "\n"


def configuration_page() -> str:
  """docs/configuration.md's text, generated from the settings trees."""
  parts = [_INTRO.format(command=COMMAND)]
  parts += [_program_section(p) for p in PROGRAMS]
  return "\n".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
  """`python -m experiments.common.keys --write PATH` writes the page;
  `--check PATH` exits 1 (naming the command) when PATH is stale."""
  import argparse  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top

  parser = argparse.ArgumentParser(
    prog="python -m experiments.common.keys",
    description="Writes or checks the configuration page (every config key "
    "of both programs).",
  )
  mode = parser.add_mutually_exclusive_group(required=True)
  mode.add_argument("--write", metavar="PATH", help=f"e.g. {PAGE}")
  mode.add_argument("--check", metavar="PATH", help="exit 1 when stale")
  args = parser.parse_args(argv)
  text = configuration_page()
  if args.write:
    with open(args.write, "w", encoding="utf-8") as f:
      f.write(text)
    return 0
  try:
    with open(args.check, encoding="utf-8") as f:
      current = f.read()
  except OSError:
    current = None
  if current != text:
    sys.stderr.write(f"{args.check} is stale; regenerate it: {COMMAND}\n")
    return 1
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
