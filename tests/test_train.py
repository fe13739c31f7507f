"""End-to-end tests of the main job (train_and_evaluate, CLI, resume)."""
import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from experiments.configs import test as test_config
from fedqjax import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCHEMES = ("fp32", "ondemand")
NUMBERS = ("total_energy_j", "comp_energy_j", "comm_energy_j", "uploaded_mb",
           "mean_bits", "final_loss", "rounds")


def _config(**overrides):
  c = test_config.get_config()
  c.sweep.schemes = SCHEMES
  c.compilation_cache = False  # the test session's cache (conftest) is used
  for k, v in overrides.items():
    node = c
    *path, last = k.split(".")
    for p in path:
      node = node[p]
    node[last] = v
  return c


def _event_tags(path):
  from tensorboard.backend.event_processing import event_accumulator
  ea = event_accumulator.EventAccumulator(
      path, size_guidance={event_accumulator.SCALARS: 0,
                           event_accumulator.TENSORS: 0,
                           event_accumulator.IMAGES: 0})
  ea.Reload()
  tags = ea.Tags()
  return set(tags.get("scalars", [])) | set(tags.get("tensors", [])) | set(
      tags.get("images", []))


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("full"))
  return workdir, train.train_and_evaluate(_config(), workdir)


def test_end_to_end_writes_everything(full_run):
  workdir, results = full_run
  assert [s["scheme"] for s in results["schemes"]] == list(SCHEMES)
  assert results["meta"]["dataset"] == "synthetic"
  for name in SCHEMES:
    sdir = os.path.join(workdir, name)
    events = glob.glob(os.path.join(sdir, "events.out.tfevents.*"))
    assert events, f"no TensorBoard events for {name}"
    tags = _event_tags(sdir)
    for tag in ("loss", "cum_energy_j", "bits_mean", "round_uploaded_mb",
                "latency_s", "infeasible", "bits", "samples"):
      assert tag in tags, (name, tag, sorted(tags))
    assert os.listdir(os.path.join(sdir, "checkpoints"))
    assert json.load(open(os.path.join(sdir, "summary.json")))["complete"]
  with open(os.path.join(workdir, "results.json")) as f:
    on_disk = json.load(f)
  assert on_disk["schemes"][0]["scheme"] == "fp32"
  header = open(os.path.join(workdir, "results.csv")).read().splitlines()
  assert header[1].startswith("scheme,total_energy_j")
  for fig in ("energy_vs_rounds", "schemes", "bits_histogram", "samples"):
    path = os.path.join(workdir, "figures", fig + ".png")
    with open(path, "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n", path


def test_paper_direction_on_tiny_run(full_run):
  """On-demand uploads fewer bits and spends less energy than fp32."""
  _, results = full_run
  by = {s["scheme"]: s for s in results["schemes"]}
  assert by["ondemand"]["uploaded_mb"] < by["fp32"]["uploaded_mb"]
  assert by["ondemand"]["comm_energy_j"] < by["fp32"]["comm_energy_j"]
  assert by["ondemand"]["mean_bits"] < 32 == by["fp32"]["mean_bits"]


def test_resume_equals_uninterrupted(full_run, tmp_path):
  workdir, results = full_run
  part = str(tmp_path / "part")
  r1 = train.train_and_evaluate(_config(max_rounds_this_run=2), part)
  assert all(not s["complete"] for s in r1["schemes"])
  assert all(s["rounds"] == 2 for s in r1["schemes"])
  r2 = train.train_and_evaluate(_config(), part)
  for a, b in zip(r2["schemes"], results["schemes"]):
    for k in NUMBERS:
      assert a[k] == b[k], (a["scheme"], k, a[k], b[k])  # bitwise on CPU
  # A third run skips both finished schemes.
  r3 = train.train_and_evaluate(_config(), part)
  assert [s["train_wall_s"] for s in r3["schemes"]] == [
      s["train_wall_s"] for s in r2["schemes"]]


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
    return wrapped

  monkeypatch.setattr(federated, "jit_round_step", poisoned)
  res = train.train_and_evaluate(_config(log_every=1, ckpt_every=1),
                                 str(tmp_path))
  by = {s["scheme"]: s for s in res["schemes"]}
  assert by["fp32"]["diverged"] and not by["fp32"]["complete"]
  assert by["ondemand"]["complete"] and not by["ondemand"]["diverged"]
  steps = os.listdir(tmp_path / "fp32" / "checkpoints")
  assert "1" in steps and "2" not in steps  # last good checkpoint kept


def test_invalid_config_rejected_before_compiling(tmp_path):
  with pytest.raises(ValueError, match=r"fed\.num_clients=0"):
    train.train_and_evaluate(_config(**{"fed.num_clients": 0}),
                             str(tmp_path))
  assert not os.path.exists(tmp_path / "fp32")  # nothing ran


def _cli(args, workdir):
  env = dict(os.environ, PYTHONPATH=ROOT)
  return subprocess.run(
      [sys.executable, "-m", "experiments.cifar_sweep",
       "--config=experiments/configs/test.py", f"--workdir={workdir}",
       "--config.sweep.schemes=('fp32','ondemand')",
       "--config.compilation_cache=False", *args],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


def test_cli_runs_and_matches_in_process(full_run, tmp_path):
  """Another process, same config and seed: identical numbers."""
  _, results = full_run
  out = _cli([], tmp_path / "cli")
  assert out.returncode == 0, out.stderr[-3000:]
  assert "| ondemand |" in out.stdout
  with open(tmp_path / "cli" / "results.json") as f:
    cli = json.load(f)
  for a, b in zip(cli["schemes"], results["schemes"]):
    for k in NUMBERS:
      assert a[k] == b[k], (a["scheme"], k)


def test_cli_invalid_override_names_key(tmp_path):
  out = _cli(["--config.fed.clients_per_round=0"], tmp_path / "bad")
  assert out.returncode != 0
  assert "fed.clients_per_round" in out.stderr
  out = _cli(["--config.fed.num_clientz=3"], tmp_path / "bad2")
  assert out.returncode != 0
  assert "num_clientz" in out.stderr
