"""fedqjax as a user gets it from `pip install` (no extras), outside the
checkout: the energy sweep runs, the training sweep names the extra it
needs in one line, every shipped preset is reachable by name, `--help` and
`--list_keys` work without TensorFlow."""

import csv
import re
import subprocess

import pytest

from tests.support import wheel as wheel_lib


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
  """bin/ of an environment holding the wheel alone (TensorFlow, clu, tfds,
  TensorBoard and torch unimportable)."""
  wheel = wheel_lib.build_wheel(tmp_path_factory)
  return wheel_lib.install(wheel, tmp_path_factory.mktemp("env") / "venv")


def _run(bin_dir, program, args, cwd, timeout=600):
  return subprocess.run(
    [str(bin_dir / program), *args],
    cwd=cwd,
    env=wheel_lib.user_env(),
    text=True,
    capture_output=True,
    timeout=timeout,
  )


def test_wheel_ships_the_configs_and_license(tmp_path_factory):
  import zipfile  # pylint: disable=g-import-not-at-top

  names = zipfile.ZipFile(wheel_lib.build_wheel(tmp_path_factory)).namelist()
  for f in ("cifar_sweep.py", "energy_sweep.py", "test.py"):
    assert f"experiments/configs/{f}" in names
  assert any(n.endswith("licenses/LICENSE") for n in names), names


def test_environment_is_a_plain_install(installed, tmp_path):
  """The code comes from the wheel, and the extras' packages are absent."""
  out = _run(
    installed,
    "python",
    [
      "-c",
      "import fedqjax, experiments; print(fedqjax.__file__); "
      "print(experiments.__file__)\n"
      "try:\n  import tensorflow\nexcept ImportError:\n  print('no tf')",
    ],
    tmp_path,
  )
  assert out.returncode == 0, out.stderr
  lines = out.stdout.splitlines()
  env_dir = str(installed.parent)
  assert lines[0].startswith(env_dir) and lines[1].startswith(env_dir), lines
  assert lines[2] == "no tf"


def test_installed_energy_sweep_runs(installed, tmp_path):
  """The small preset by name, from a temporary directory: results."""
  work = tmp_path / "es"
  out = _run(
    installed,
    "fedqjax-energy",
    ["--config=small", f"--workdir={work}", "--config.figures=False"],
    tmp_path,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  with open(work / "results.csv") as f:
    rows = list(csv.DictReader(f))
  assert rows and "energy_j" in " ".join(rows[0]), rows[:1]
  assert f"results: {work}/results.csv" in out.stdout


def test_installed_training_sweep_names_the_extra(installed, tmp_path):
  """No TensorFlow: exit 2, ONE line naming the extra, nothing written."""
  work = tmp_path / "run"
  out = _run(
    installed, "fedqjax-sweep", ["--config=test", f"--workdir={work}"], tmp_path
  )
  assert out.returncode == 2, out.stderr[-3000:]
  lines = out.stderr.splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
  assert "pip install 'fedqjax[tensorflow]'" in lines[0], lines[0]
  assert out.stdout == ""
  assert not work.exists()


@pytest.mark.parametrize(
  "program,config,key,value",
  [
    ("fedqjax-sweep", "cifar_sweep:paper", "model.ch", "128"),
    ("fedqjax-sweep", "paper", "model.ch", "128"),
    ("fedqjax-sweep", "cifar_sweep.py:quality", "fed.rounds", "80"),
    ("fedqjax-sweep", "test", "fed.rounds", "3"),
    ("fedqjax-energy", "small", "num_seeds", "2"),
    ("fedqjax-energy", "energy_sweep:yang2021", "regime", "'yang2021'"),
  ],
)
def test_installed_presets_by_name(
  installed, tmp_path, program, config, key, value
):
  """Each shipped preset loads by name from any directory (its value of a
  key it changes is listed)."""
  out = _run(
    installed, program, [f"--config={config}", f"--list_keys={key}"], tmp_path
  )
  assert out.returncode == 0, out.stderr[-3000:]
  assert f"--config.{key}  (default: " in out.stdout, out.stdout
  assert f"this config: {value})" in out.stdout, out.stdout


@pytest.mark.parametrize(
  "program,flags",
  [
    (
      "fedqjax-sweep",
      ("--workdir", "--config", "--list_keys", "--overwrite", "--process_id"),
    ),
    ("fedqjax-energy", ("--workdir", "--config", "--list_keys")),
  ],
)
def test_installed_help_lists_the_flags(installed, tmp_path, program, flags):
  out = _run(installed, program, ["--help"], tmp_path)
  assert "Traceback" not in out.stderr, out.stderr
  for flag in flags + ("verbosity",):
    name = flag.lstrip("-")
    assert re.search(rf"^\s+(-v,)?--(\[no\])?{name}:", out.stdout, re.M), (
      flag,
      out.stdout,
    )
  assert "--list_keys=PREFIX" in out.stdout
