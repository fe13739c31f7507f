"""End-to-end tests of the main job (train_and_evaluate, CLI, resume)."""

import glob
import json
import os

import numpy as np
import pytest

from experiments.configs import test as test_config
from experiments.fl_sweep import train
from tests.experiments.fl_sweep.conftest import result_rows
from tests.support import TEST_CONFIG, run_cli, tiny_config
from tests.support.tensorboard import event_tags

SCHEMES = ("fp32", "ondemand")
NUMBERS = (
  "total_energy_j",
  "comp_energy_j",
  "comm_energy_j",
  "uploaded_mb",
  "mean_bits",
  "final_loss",
  "heldout_loss",
  "rounds",
  "skipped_client_rounds",
)


def _config(**overrides):
  return tiny_config(**{"sweep.schemes": SCHEMES, **overrides})


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("full"))
  return workdir, train.train_and_evaluate(_config(), workdir)


def test_end_to_end_writes_everything(full_run):
  workdir, results = full_run
  assert [s["run"] for s in results["runs"]] == list(SCHEMES)
  allocs = tuple(test_config.get_config().sweep.allocations)
  assert sorted(result_rows(results)) == sorted(
    (s, a) for s in SCHEMES for a in allocs
  )
  assert results["meta"]["dataset"] == "synthetic"
  for name in SCHEMES:
    sdir = os.path.join(workdir, name)
    events = glob.glob(os.path.join(sdir, "events.out.tfevents.*"))
    assert events, f"no TensorBoard events for {name}"
    tags = event_tags(sdir)
    for tag in (
      "loss",
      "cum_j/kkt",
      "cum_j/max",
      "mean_bits",
      "round_uploaded_mb",
      "latency_s/kkt",
      "skipped_client_rounds",
      "bits",
      "samples",
      "heldout_ema",
      "heldout_raw",
      "vlb_bits_per_dim",
    ):
      assert tag in tags, (name, tag, sorted(tags))
    assert os.listdir(os.path.join(sdir, "checkpoints"))
    assert json.load(open(os.path.join(sdir, "summary.json")))["complete"]
  with open(os.path.join(workdir, "results.json")) as f:
    on_disk = json.load(f)
  assert on_disk["runs"][0]["run"] == "fp32"
  header = open(os.path.join(workdir, "results.csv")).read().splitlines()
  cols = header[1].split(",")
  for c in (
    "bits_scheme",
    "allocation",
    "total_energy_j",
    "comp_energy_j",
    "comm_energy_j",
    "uploaded_mb",
    "mean_bits",
    "skipped_client_rounds",
    "deadline_s",
    "deadline_policy",
    "heldout_loss",
    "energy_to_target_j",
    "mb_to_target",
    "total_energy_j_mean",
    "total_energy_j_ci95",
    "vlb_bits_per_dim",
    "kid_mean",
  ):
    assert c in cols, c
  for s in SCHEMES:  # the bound is the run's: one value for all its rows
    v = {r["vlb_bits_per_dim"] for r in results["rows"] if r["run"] == s}
    assert len(v) == 1 and 0 < v.pop() < 64, (s, v)
  for fig in (
    "energy_vs_rounds",
    "schemes",
    "bits_histogram",
    "samples",
    "quality_vs_energy",
  ):
    path = os.path.join(workdir, "figures", fig + ".png")
    with open(path, "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n", path


def test_paper_direction_on_tiny_run(full_run):
  """On-demand uploads fewer bits and spends less energy than fp32."""
  _, results = full_run
  by = result_rows(results)
  for a in ("kkt", "deadline", "max"):
    on, fp = by[("ondemand", a)], by[("fp32", a)]
    assert on["uploaded_mb"] < fp["uploaded_mb"]
    assert on["comm_energy_j"] < fp["comm_energy_j"]
    assert on["mean_bits"] < 32 == fp["mean_bits"]
    assert on["skipped_client_rounds"] == fp["skipped_client_rounds"] == 0
  for s in SCHEMES:  # the policies price the same uploads
    e = [by[(s, a)]["total_energy_j"] for a in ("kkt", "deadline", "max")]
    assert e[0] <= e[1] <= e[2], (s, e)
    assert by[(s, "kkt")]["uploaded_mb"] == by[(s, "max")]["uploaded_mb"]


def test_heldout_curve_identical_at_round_0_and_improves(full_run):
  """Round 0 is the same initial model for every run; training lowers the
  EMA's held-out loss on the tiny run (3 rounds, 16 held-out images)."""
  workdir, _ = full_run
  h = {
    s: json.load(open(os.path.join(workdir, s, "history.json")))
    for s in SCHEMES
  }
  r0 = {
    s: (h[s][0]["round"], h[s][0]["heldout_ema"], h[s][0]["heldout_raw"])
    for s in SCHEMES
  }
  assert r0["fp32"] == r0["ondemand"] and r0["fp32"][0] == 0
  assert r0["fp32"][1] == r0["fp32"][2]  # EMA == raw at initialization
  for s in SCHEMES:
    curve = [x["round"] for x in h[s] if "heldout_ema" in x]
    assert curve == [0, 2, 3], curve  # eval.every = 2 and the last round
    assert h[s][-1]["heldout_raw"] < h[s][0]["heldout_raw"]


def test_resume_equals_uninterrupted(full_run, tmp_path):
  workdir, results = full_run
  part = str(tmp_path / "part")
  r1 = train.train_and_evaluate(_config(max_rounds_this_run=2), part)
  assert all(not s["complete"] for s in r1["runs"])
  assert all(s["rounds"] == 2 for s in r1["runs"])
  r2 = train.train_and_evaluate(_config(), part)
  want = result_rows(results)
  for key, a in result_rows(r2).items():
    for k in NUMBERS:
      assert a[k] == want[key][k], (key, k, a[k], want[key][k])  # bitwise
  # A third run skips both finished runs.
  r3 = train.train_and_evaluate(_config(), part)
  assert [s["train_wall_s"] for s in r3["runs"]] == [
    s["train_wall_s"] for s in r2["runs"]
  ]


def test_divergence_guard_keeps_going(tmp_path, monkeypatch):
  """A NaN at round 2 stops that scheme; the next scheme still runs."""
  from fedqjax import federated

  real = federated.jit_round_step

  def poisoned(spec):
    step = real(spec)

    def wrapped(state, data, devices, scheme):
      new, m = step(state, data, devices, scheme)
      if int(new.round) == 2 and float(scheme.bits_mode) == 0:  # fp32 only
        m = dict(m, loss=m["loss"] * np.nan)
      return new, m

    wrapped.lower = step.lower  # train_loop compiles ahead of the loop
    return wrapped

  monkeypatch.setattr(federated, "jit_round_step", poisoned)
  res = train.train_and_evaluate(
    _config(log_every=1, ckpt_every=1), str(tmp_path)
  )
  by = {s["run"]: s for s in res["runs"]}
  assert by["fp32"]["diverged"] and not by["fp32"]["complete"]
  assert by["ondemand"]["complete"] and not by["ondemand"]["diverged"]
  steps = os.listdir(tmp_path / "fp32" / "checkpoints")
  assert "1" in steps and "2" not in steps  # last good checkpoint kept


def test_invalid_config_rejected_before_compiling(tmp_path):
  with pytest.raises(ValueError, match=r"fed\.num_clients=0"):
    train.train_and_evaluate(_config(**{"fed.num_clients": 0}), str(tmp_path))
  assert not os.path.exists(tmp_path / "fp32")  # nothing ran


def _cli(args, workdir):
  return run_cli(
    [
      TEST_CONFIG,
      f"--workdir={workdir}",
      "--config.sweep.schemes=('fp32','ondemand')",
      "--config.compilation_cache=False",
      *args,
    ]
  )


def test_cli_runs_and_matches_in_process(full_run, cli_run):
  """Another process, same config and seed: identical numbers."""
  _, results = full_run
  workdir, console = cli_run
  table = [ln for ln in console.splitlines() if ln.startswith("|")]
  assert table[0].startswith("| bits | alloc | energy J |"), table
  assert any(
    ln.startswith("| ondemand | kkt | ") and ln.endswith("x |") for ln in table
  ), table  # with its paired saving vs fp32/kkt
  assert max(map(len, table)) <= 100, table  # one compact console table
  with open(workdir / "results.json") as f:
    cli = json.load(f)
  want = result_rows(results)
  for key, a in result_rows(cli).items():
    for k in NUMBERS:
      assert a[k] == want[key][k], (key, k)


def test_cli_invalid_override_names_key(tmp_path):
  out = _cli(["--config.fed.clients_per_round=0"], tmp_path / "bad")
  assert out.returncode != 0
  assert "fed.clients_per_round" in out.stderr
  out = _cli(["--config.fed.num_clientz=3"], tmp_path / "bad2")
  assert out.returncode != 0
  assert "num_clientz" in out.stderr
