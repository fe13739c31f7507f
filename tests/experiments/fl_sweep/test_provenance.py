"""Runs a researcher can trust: a rerun with a changed setting never reuses
old results (exit 2 naming the key, nothing written), `--overwrite` moves
them aside and recomputes; results carry the settings hash, versions and
machine; the program runs from any directory."""

import json
import shutil
import subprocess
import sys
import types

import pytest

from experiments.configs import test as test_config
from experiments.fl_sweep import provenance, settings
from tests.support import ROOT, cli_env, run_cli, snapshot

ARGS = (
  f"--config={ROOT / 'experiments/configs/test.py'}",  # from any directory
  "--config.sweep.schemes=fp32",
  "--config.eval.num_samples=4",
  "--config.eval.vlb_size=0",
  "--config.figures=False",  # not in a run's hash (test above)
)


def _run(name, seed=0, bits="fp32", eps=1.0):
  return types.SimpleNamespace(name=name, bits=bits, seed=seed, eps_scale=eps)


def _settings(**fed):
  c = test_config.get_config()
  for k, v in fed.items():
    c.fed[k] = v
  return settings.parse(c)


def test_run_hash_follows_what_decides_the_numbers():
  base = provenance.run_record(_settings(), _run("fp32"))
  assert base == provenance.run_record(_settings(), _run("fp32"))
  c = test_config.get_config()
  c.sweep.seeds, c.ckpt_every, c.sweep.target_margin = (0, 5, 7), 9, 0.5
  c.figures = False
  assert (
    provenance.run_record(settings.parse(c), _run("fp32"))["hash"]
    == base["hash"]
  )  # more seeds, other checkpoint cadence, no figures: same runs
  for other in (
    provenance.run_record(_settings(rounds=5), _run("fp32")),
    provenance.run_record(_settings(), _run("fp32", seed=1)),
  ):
    assert other["hash"] != base["hash"]


def test_stale_runs_named_with_their_keys(tmp_path):
  old = provenance.run_record(_settings(), _run("fp32"))
  provenance.write_record(str(tmp_path / "fp32"), old)
  (tmp_path / "fixed").mkdir()
  (tmp_path / "fixed" / "history.json").write_text("[]")  # no record
  new = provenance.run_record(_settings(rounds=5), _run("fp32"))
  fixed = provenance.run_record(_settings(), _run("fixed", bits="fixed"))
  fresh = provenance.run_record(_settings(), _run("ondemand"))
  stale = provenance.stale_runs(str(tmp_path), [new, fixed, fresh])
  assert stale == {
    "fp32": "config.fed.rounds 3 -> 5",
    "fixed": "no settings recorded (an older fedqjax)",
  }
  assert provenance.stale_runs(str(tmp_path), [old, fresh]) == {}
  line = provenance.stale_message(str(tmp_path), stale)
  assert "fp32: config.fed.rounds 3 -> 5 and 1 more run(s)" in line
  assert "a new --workdir, or --overwrite" in line


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
  """The test config (fp32 only) into a fresh workdir, through the CLI
  started outside the checkout."""
  elsewhere = tmp_path_factory.mktemp("elsewhere")
  workdir = tmp_path_factory.mktemp("prov") / "w"
  out = run_cli(
    [*ARGS, f"--workdir={workdir}"], cwd=elsewhere, merge_stderr=True
  )
  assert out.returncode == 0, out.stdout[-3000:]
  return workdir


def _energy(workdir):
  results = json.loads((workdir / "results.json").read_text())
  return {
    r["allocation"]: r["total_energy_j"] for r in results["rows"]
  }, results


def test_changed_setting_exits_2_and_overwrite_recomputes(first_run):
  """A researcher's rerun: p_max_w and rounds changed in an old workdir."""
  before_energy, _ = _energy(first_run)
  before = snapshot(first_run)
  changed = ("--config.energy.p_max_w=0.05", "--config.fed.rounds=5")
  out = run_cli([*ARGS, *changed, f"--workdir={first_run}"])
  lines = out.stderr.splitlines()
  assert out.returncode == 2, out.stderr[-3000:]
  assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
  assert "config.energy.p_max_w 0.2 -> 0.05" in lines[0], lines[0]
  assert "config.fed.rounds 3 -> 5" in lines[0] and "--overwrite" in lines[0]
  assert snapshot(first_run) == before  # nothing written, nothing moved

  out = run_cli(
    [*ARGS, *changed, "--overwrite", f"--workdir={first_run}"],
    merge_stderr=True,
  )
  assert out.returncode == 0, out.stdout[-3000:]
  after_energy, results = _energy(first_run)
  assert results["meta"]["settings_hash"] != ""
  assert results["settings"]["energy.p_max_w"] == 0.05
  assert all(r["rounds"] == 5 for r in results["runs"])
  assert after_energy["kkt"] != pytest.approx(before_energy["kkt"], rel=1e-3)
  stale = list((first_run / "stale").iterdir())
  assert len(stale) == 1 and (stale[0] / "fp32" / "summary.json").is_file()
  assert (
    json.loads((stale[0] / "results.json").read_text())["rows"][0][
      "total_energy_j"
    ]
    == before_energy[results["rows"][0]["allocation"]]
  )


def test_results_name_their_settings_software_and_machine(first_run):
  _, results = _energy(first_run)
  meta = results["meta"]
  assert len(meta["settings_hash"]) == 64
  for name in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "fedqjax"):
    assert meta["versions"][name], name
  assert meta["device_kind"] and meta["backend"] == "cpu"
  header = (first_run / "results.csv").read_text().splitlines()[0]
  assert f"settings_hash={meta['settings_hash']}" in header
  assert f"jax={meta['versions']['jax']}" in header
  record = json.loads((first_run / "fp32" / "settings.json").read_text())
  assert record["settings"]["fed.rounds"] == results["settings"]["fed.rounds"]


def test_runs_from_another_directory(tmp_path, first_run):
  """No path relative to the checkout: the default config is found from the
  module (a bad override proves it was loaded), a given one as typed (the
  first run: started in a temporary directory)."""
  out = run_cli(
    [f"--workdir={tmp_path / 'w'}", "--config.fed.local_steps=0"],
    cwd=tmp_path,
    env=cli_env(),
  )
  assert out.returncode == 2, out.stderr
  assert "config.fed.local_steps=0 is invalid" in out.stderr
  assert (first_run / "results.csv").is_file()
  assert (first_run / "fp32" / "summary.json").is_file()


def _revision(pythonpath, cwd) -> str:
  """`provenance._git_revision()` in a fresh process importing fedqjax and
  experiments from `pythonpath`, started in `cwd`."""
  code = (
    "from experiments.fl_sweep import provenance as p; print(p._git_revision())"
  )
  env = dict(cli_env(), PYTHONPATH=str(pythonpath))
  out = subprocess.run(
    [sys.executable, "-c", code],
    cwd=cwd,
    env=env,
    text=True,
    capture_output=True,
    timeout=120,
  )
  assert out.returncode == 0, out.stderr
  return out.stdout.strip()


def test_git_revision_records_dirty_checkout(tmp_path):
  """A changed file of fedqjax/ or experiments/ marks the revision +dirty
  (from any working directory); a change elsewhere does not; a copy that is
  not a checkout's top level records no revision."""
  repo = tmp_path / "repo"
  for pkg in ("fedqjax", "experiments"):
    shutil.copytree(
      ROOT / pkg, repo / pkg, ignore=shutil.ignore_patterns("__pycache__")
    )
  (repo / "README.md").write_text("x\n")
  git = lambda *a: subprocess.run(
    ["git", "-c", "user.name=t", "-c", "user.email=t@t", *a],
    cwd=repo,
    check=True,
    capture_output=True,
  )
  git("init", "-q")
  git("add", ".")
  git("commit", "-q", "-m", "snapshot")
  head = subprocess.run(
    ["git", "rev-parse", "HEAD"], cwd=repo, text=True, capture_output=True
  ).stdout.strip()
  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  assert _revision(repo, elsewhere) == head
  (repo / "README.md").write_text("changed outside the packages\n")
  assert _revision(repo, elsewhere) == head
  with open(repo / "experiments" / "fl_sweep" / "build.py", "a") as f:
    f.write("\n# changed\n")
  assert _revision(repo, elsewhere) == head + "+dirty"
  assert _revision(repo, repo / "experiments" / "fl_sweep") == head + "+dirty"
  # Imported from a directory below the checkout (as a venv's
  # site-packages inside a repository): not this checkout's code.
  inner = repo / "venv" / "site-packages"
  shutil.copytree(repo / "experiments", inner / "experiments")
  shutil.copytree(repo / "fedqjax", inner / "fedqjax")
  assert _revision(inner, elsewhere) == "None"
