"""Typed settings trees <-> ml_collections ConfigDicts, validated in one place.

An experiment declares its settings ONCE, as nested frozen dataclasses whose
field names ARE the config keys (`fed.local_steps` is `Settings.fed` field
`local_steps`). Each leaf is declared with `key(default, check)`: its type
(the annotation), its default and its valid range, nothing else anywhere.
The experiment's config file starts from `to_config_dict(Settings())` and
overrides what a preset changes; `parse` turns the (possibly overridden)
ConfigDict back into the typed tree, before anything compiles:

- unknown keys (with one "did you mean"), removed keys (naming their
  replacement);
- types from the annotations (an int is accepted for a float; a
  comma-separated string for a tuple);
- ranges from each key's `check`;
- cross-field checks: a section may define `validate(self)` raising
  `Invalid(field, value, valid)` in its own field names (or a ValueError),
  or building the library's settings class whose fields are its keys (its
  `fedqjax.errors.InvalidSetting` carries the field); the parser adds the
  key path ("config.fed.clients_per_round=12 is
  invalid; valid: 1..num_clients=10").

The settings of the library (`fedqjax`) are built from the tree by the
experiment's build step; the library never sees a ConfigDict or a key path.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import typing
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

PREFIX = "config"


class Invalid(ValueError):
  """A settings value outside its range, named by its field."""

  def __init__(self, field: str, value: Any, valid: str):
    super().__init__(f"{field}={value!r} is invalid; valid: {valid}")
    self.field, self.value, self.valid = field, value, valid


@dataclasses.dataclass(frozen=True)
class Check:
  """A range check: `ok(value)` and what is valid, in words."""

  ok: Callable[[Any], bool]
  valid: str

  def __call__(self, value) -> bool:
    try:
      return bool(self.ok(value))
    except (TypeError, ValueError, OverflowError):
      return False


def finite(v) -> bool:
  """float(v) is a finite number (NaN, inf, huge ints, non-numbers: no)."""
  try:
    return not isinstance(v, bool) and math.isfinite(float(v))
  except (OverflowError, TypeError, ValueError):
    return False


def between(lo=None, hi=None, *, lo_open=False, hi_open=False) -> Check:
  """lo <= v <= hi (open ends with lo_open / hi_open); None = unbounded."""

  def ok(v):
    if not finite(v):
      return False
    if lo is not None and (v <= lo if lo_open else v < lo):
      return False
    return hi is None or (v < hi if hi_open else v <= hi)

  if hi is None:
    valid = f"{'>' if lo_open else '>='} {lo}" if lo is not None else "finite"
  elif lo is None:
    valid = f"{'<' if hi_open else '<='} {hi}"
  else:
    valid = f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
  return Check(ok, valid)


def one_of(*options) -> Check:
  return Check(lambda v: v in options, f"one of {options}")


def each(elem: Check, min_len: int = 1, distinct: bool = False) -> Check:
  """A tuple of >= min_len values, each passing `elem`."""

  def ok(v):
    return (
      len(v) >= min_len
      and all(elem(x) for x in v)
      and (not distinct or len(set(v)) == len(v))
    )

  return Check(
    ok,
    f"a tuple of >= {min_len}{' distinct' if distinct else ''}"
    f" values, each {elem.valid}",
  )


ANY = Check(lambda v: True, "any value")


def key(default, check: Check = ANY, doc: str = "") -> Any:
  """A settings leaf: default, valid range and meaning, declared once."""
  return dataclasses.field(default=default, metadata=dict(check=check, doc=doc))


def section(cls) -> Any:
  """A nested settings section (its defaults are its own)."""
  return dataclasses.field(default_factory=cls)


# ---------------------------------------------------------------- the tree


def _hints(cls) -> Dict[str, Any]:
  return typing.get_type_hints(cls)


def _is_section(tp) -> bool:
  return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def leaves(cls, prefix: str = "") -> Dict[str, Tuple[Any, Check]]:
  """{"fed.local_steps": (type, check)} over every leaf of a settings class."""
  out: Dict[str, Tuple[Any, Check]] = {}
  hints = _hints(cls)
  for f in dataclasses.fields(cls):
    tp = hints[f.name]
    if _is_section(tp):
      out.update(leaves(tp, f"{prefix}{f.name}."))
    else:
      out[prefix + f.name] = (tp, f.metadata.get("check", ANY))
  return out


def flatten(tree, prefix: str = "") -> Dict[str, Any]:
  """A settings tree, ConfigDict or nested mapping -> {"a.b": value}."""
  if dataclasses.is_dataclass(tree):
    items = ((f.name, getattr(tree, f.name)) for f in dataclasses.fields(tree))
  else:
    items = tree.items() if hasattr(tree, "items") else ()
  out: Dict[str, Any] = {}
  for k, v in items:
    if dataclasses.is_dataclass(v) or hasattr(v, "items"):
      out.update(flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def to_config_dict(tree):
  """The tree as a ConfigDict (the experiment's config file starts here)."""
  import ml_collections  # pylint: disable=g-import-not-at-top

  return ml_collections.ConfigDict(dataclasses.asdict(tree))


def type_name(tp) -> str:
  if typing.get_origin(tp) is tuple:
    return f"a tuple of {typing.get_args(tp)[0].__name__}"
  return {float: "a number", int: "an int"}.get(tp, f"a {tp.__name__}")


def describe(cls, path: str) -> str:
  """What a key accepts, for messages ("an int >= 1", "a number [0, 1)")."""
  tp, check = leaves(cls)[path]
  return type_name(tp) + (
    ""
    if check is ANY
    else f" {check.valid}"
    if check.valid[0] in "[(<>"
    else f", {check.valid}"
  )


def did_you_mean(name: str, candidates) -> str:
  """ "; did you mean X?" for the closest candidate, or ""."""
  close = difflib.get_close_matches(name, sorted(candidates), n=1)
  return f"; did you mean {close[0]}?" if close else ""


def unknown_key(
  path: str, cls, removed: Mapping[str, str] = (), known=None
) -> Optional[str]:
  """The message for a key path that the tree does not have, else None
  (`known`: `leaves(cls)`, when the caller has it already)."""
  known = leaves(cls) if known is None else known
  if path in known or any(k.startswith(path + ".") for k in known):
    return None
  if path in removed:
    return f"{PREFIX}.{path} was removed; {removed[path]}"
  group = path.rpartition(".")[0]
  while group and not any(k.startswith(group + ".") for k in known):
    group = group.rpartition(".")[0]  # the deepest section that exists
  names = (
    sorted(k[len(group) + 1 :] for k in known if k.startswith(group + "."))
    if group
    else sorted({k.split(".")[0] for k in known})
  )
  hint = did_you_mean(path, known)
  hint = hint.replace("mean ", f"mean {PREFIX}.") if hint else ""
  where = f"{PREFIX}.{group}" if group else PREFIX
  return (
    f"{PREFIX}.{path} is not a config key{hint} (valid keys of "
    f"{where}: {', '.join(names)})"
  )


# ------------------------------------------------------------------ parsing


def _convert(value, tp, path: str):
  """value as type `tp`, or Invalid naming the key path."""
  bad = lambda: Invalid(f"{PREFIX}.{path}", value, type_name(tp))
  if typing.get_origin(tp) is tuple:
    elem = typing.get_args(tp)[0]
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (tuple, list)):
      raise bad()
    if elem is str:  # "a,b" and ("a,b",) (what config_flags makes of it)
      if not all(isinstance(x, str) for x in items):
        raise bad()
      return tuple(x.strip() for i in items for x in i.split(",") if x.strip())
    if any(isinstance(x, str) for x in items):
      raise bad()
    return tuple(_convert(x, elem, path) for x in items)
  if tp is float and isinstance(value, int) and not isinstance(value, bool):
    if not finite(value):  # an int too large for a float
      raise Invalid(f"{PREFIX}.{path}", value, "a finite number")
    return float(value)
  if not isinstance(value, tp) or (isinstance(value, bool) and tp is not bool):
    raise bad()
  if tp in (int, float) and not finite(value):
    raise Invalid(f"{PREFIX}.{path}", value, "a finite number")
  return value


def _qualify(valid: str, cls, prefix: str) -> str:
  """ "(0, f_max_hz=2e9)" -> "(0, config.energy.f_max_hz=2e9)": the other
  fields a range names, as keys."""
  fields = {f.name for f in dataclasses.fields(cls)}
  return re.sub(
    r"(?<!\w)(?<!\w\.)([A-Za-z_]\w*)=",
    lambda m: f"{PREFIX}.{prefix}{m[1]}=" if m[1] in fields else m[0],
    valid,
  )


def _build(cls, values: Mapping[str, Any], prefix: str):
  """Instantiates `cls` from flat `values`, sections first, then validates."""
  hints, kwargs = _hints(cls), {}
  for f in dataclasses.fields(cls):
    tp = hints[f.name]
    if _is_section(tp):
      kwargs[f.name] = _build(tp, values, f"{prefix}{f.name}.")
    elif prefix + f.name in values:
      kwargs[f.name] = values[prefix + f.name]
  tree = cls(**kwargs)
  validate = getattr(tree, "validate", None)
  if validate is not None:
    try:
      validate()
    except ValueError as e:
      if hasattr(e, "field"):  # Invalid, or the library's InvalidSetting of
        # a settings class whose field names are this section's keys
        raise Invalid(
          f"{PREFIX}.{prefix}{e.field}",
          e.value,
          _qualify(str(e.valid), cls, prefix),
        ) from None
      where = f"{PREFIX}.{prefix.rstrip('.')}" if prefix else PREFIX
      raise ValueError(f"{where}: {e}") from None
  return tree


def parse(cls, config, removed: Mapping[str, str] = ()):
  """A ConfigDict (or nested mapping) -> the validated settings tree.

  Keys absent from `config` take the tree's defaults.

  Raises:
    ValueError (`Invalid` for a value): an unknown or removed key, a wrong
      type, a value outside its range, a failed cross-field check; the
      message names the key path ("config.fed.local_steps=0 ...").
  """
  flat, known = flatten(config), leaves(cls)
  for path in flat:
    message = unknown_key(path, cls, removed, known)
    if message:
      raise ValueError(message)
  values = {}
  for path, value in flat.items():
    tp, check = known[path]
    values[path] = v = _convert(value, tp, path)
    if not check(v):
      raise Invalid(f"{PREFIX}.{path}", value, check.valid)
  return _build(cls, values, "")
