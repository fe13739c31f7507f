"""The config key listing (`--list_keys`, experiments/common/keys.py) and
`--config` by shipped name (experiments/configs/__init__.py)."""

import os

from experiments import configs
from experiments.common import keys
from experiments.energy_sweep import settings as energy_settings
from experiments.fl_sweep import settings as fl_settings
from tests.support import ENERGY_SWEEP, SWEEP, run_cli

# A sample of keys with their docs, as declared in the settings trees.
SAMPLE = {
  "fed.local_steps": "I local optimizer steps per round",
  "eval.every": "held-out loss every n rounds (0: end)",
  "eval.num_samples": "samples at the end",
}


def test_key_table_rows():
  rows = {r.key: r for r in keys.key_table(fl_settings.Settings)}
  tree = fl_settings.Settings()
  assert rows["fed.local_steps"].default == str(tree.fed.local_steps)
  assert rows["eval.every"].valid == "an int >= 0"
  assert rows["sweep.seeds"].default == ",".join(map(str, tree.sweep.seeds))
  for key, doc in SAMPLE.items():
    assert doc in rows[key].doc, (key, rows[key])
  assert [r.key for r in keys.key_table(fl_settings.Settings, "eval.fid")] == [
    "eval.fid"
  ]
  fed = keys.key_table(fl_settings.Settings, "config.fed")
  assert fed and all(r.key.startswith("fed.") for r in fed)
  md = keys.to_markdown(keys.key_table(energy_settings.Settings, "axes"))
  assert md.startswith("| key | default | valid | meaning |\n|---|")
  assert md.count("\n") == 2 + len(energy_settings.Settings().axes.__dict__)


def test_list_keys_lists_every_key_with_its_doc():
  """`--list_keys` (repository form): one block per key of the tree, with
  its default, range and doc."""
  out = run_cli(["--list_keys"])
  assert out.returncode == 0, out.stderr
  rows = keys.key_table(fl_settings.Settings)
  heads = [ln for ln in out.stdout.splitlines() if ln.startswith("--config.")]
  assert len(heads) == len(rows) > 80
  for r in rows:
    assert f"--config.{r.key}  (default: {r.default})" in out.stdout
    assert f"    valid: {r.valid}\n" in out.stdout
    assert not r.doc or f"    {r.doc}\n" in out.stdout
  for key, doc in SAMPLE.items():
    assert doc in out.stdout.split(f"--config.{key} ")[1].split("--config.")[0]
  energy = run_cli(["--list_keys=axes"], ENERGY_SWEEP)
  assert energy.returncode == 0, energy.stderr
  assert "--config.axes.deadline_factor  (default: " in energy.stdout
  assert "--config.num_seeds" not in energy.stdout


def test_documented_repository_forms_still_load():
  """`--config=experiments/configs/FILE.py[:preset]` from the repository
  root, as the README shows; a bad prefix is one line, exit 2."""
  out = run_cli(
    [
      "--config=experiments/configs/cifar_sweep.py:paper",
      "--list_keys=model.ch",
    ]
  )
  assert out.returncode == 0, out.stderr
  assert "(default: 32; this config: 128)" in out.stdout
  out = run_cli(["--config=experiments/configs/test.py", "--list_keys=nope"])
  assert out.returncode == 2
  assert out.stderr.startswith("error: --list_keys=nope names no config key")
  assert len(out.stderr.splitlines()) == 1


def test_help_lists_the_flags():
  out = run_cli(["--help"], SWEEP)
  for flag in ("--workdir:", "--config:", "--list_keys:", "--[no]overwrite:"):
    assert f"\n  {flag}" in out.stdout, (flag, out.stdout)


def test_resolve_shipped_names(tmp_path):
  default = configs.path("cifar_sweep")
  presets = fl_settings.PRESETS
  resolve = lambda v: configs.resolve(v, default, presets)
  assert resolve("cifar_sweep:paper") == default + ":paper"
  assert resolve("cifar_sweep.py:paper") == default + ":paper"
  assert resolve("paper") == default + ":paper"
  assert resolve("test") == configs.path("test")
  assert (
    resolve("energy_sweep:small") == configs.path("energy_sweep") + ":small"
  )
  # As typed: paths, files of the working directory, unknown names.
  for v in ("experiments/configs/test.py", "/x/cifar_sweep.py:paper", "nope"):
    assert resolve(v) == v
  cwd = os.getcwd()
  try:
    os.chdir(tmp_path)
    (tmp_path / "test.py").write_text("")
    assert resolve("test.py") == "test.py"  # the user's own file wins
  finally:
    os.chdir(cwd)
  assert os.path.isfile(configs.path("test"))
  assert set(configs.names()) >= {"cifar_sweep", "energy_sweep", "test"}
