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
