"""docs/configuration.md is generated from the settings trees
(`python -m experiments.common.keys --write docs/configuration.md`) and
every config key has a doc string. No JAX compile: the trees and the page
are host-side."""

import os

from experiments import configs
from experiments.common import keys
from experiments.energy_sweep import settings as energy_settings
from experiments.fl_sweep import settings as fl_settings

ROOT = os.path.dirname(
  os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
)
TREES = (fl_settings.Settings, energy_settings.Settings)


def _first_difference(current: str, expected: str) -> str:
  a, b = current.splitlines(), expected.splitlines()
  for i, (x, y) in enumerate(zip(a, b)):
    if x != y:
      return f"line {i + 1}:\n  page:      {x}\n  generated: {y}"
  return f"the page has {len(a)} lines, the generated text {len(b)}"


def test_every_key_has_a_doc():
  for root in TREES:
    rows = keys.key_table(root)
    missing = [r.key for r in rows if not r.doc.strip()]
    assert rows, root
    assert not missing, f"{root.__module__}: keys without a doc: {missing}"


def test_configuration_page_is_current():
  """The committed page equals the generated one (a doc, default, range,
  key or preset changed without regenerating it fails here)."""
  with open(os.path.join(ROOT, keys.PAGE), encoding="utf-8") as f:
    current = f.read()
  expected = keys.configuration_page()
  assert current == expected, (
    f"{keys.PAGE} is stale; regenerate it from the repository root: "
    f"{keys.COMMAND}\n{_first_difference(current, expected)}"
  )


def test_page_lists_every_key_and_config_file():
  page = keys.configuration_page()
  for root in TREES:
    for r in keys.key_table(root):
      assert f"| `{r.key}` | `{keys._cell(r.default)}` |" in page, r.key
  for name in configs.names():  # every shipped config file, by a preset
    assert f"`experiments/configs/{name}.py" in page, name
  for preset in fl_settings.PRESETS + energy_settings.PRESETS:
    assert f"| `{preset}`" in page, preset
  assert page.count("\n## ") == len(keys.PROGRAMS)
  assert keys.COMMAND in page


def test_check_and_write(tmp_path, capsys):
  """`--check` exits 1 naming the command when the file is stale or
  missing, 0 after `--write`."""
  path = str(tmp_path / "configuration.md")
  assert keys.main(["--check", path]) == 1
  assert keys.COMMAND in capsys.readouterr().err
  assert keys.main(["--write", path]) == 0
  assert keys.main(["--check", path]) == 0
  with open(path, "a", encoding="utf-8") as f:
    f.write("edited by hand\n")
  assert keys.main(["--check", path]) == 1
