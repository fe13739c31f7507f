"""Tests for fedqjax.data.loaders: idx parser, tfds and tarball loaders."""

import gzip
import io
import os
import pickle
import struct
import tarfile

import numpy as np
import pytest

from fedqjax import data
from tests.support.data import HAVE_FMNIST


def _write_idx(path, array, gz=True):
  codes = {np.uint8: 0x08, np.int32: 0x0C}
  arr = np.asarray(array)
  header = bytes([0, 0, codes[arr.dtype.type], arr.ndim]) + struct.pack(
    f">{arr.ndim}I", *arr.shape
  )
  body = arr.astype(arr.dtype.newbyteorder(">")).tobytes()
  opener = gzip.open if gz else open
  with opener(path, "wb") as f:
    f.write(header + body)


@pytest.fixture
def fake_fmnist(tmp_path):
  rng = np.random.default_rng(0)
  for split, n in (("train", 50), ("test", 20)):
    img_f, lbl_f = data.loaders._FMNIST_FILES[split]
    _write_idx(tmp_path / img_f, rng.integers(0, 256, (n, 28, 28), np.uint8))
    _write_idx(tmp_path / lbl_f, (np.arange(n) % 10).astype(np.uint8))
  return tmp_path


def test_idx_generated_roundtrip(fake_fmnist):
  x, y = data.load("fashion_mnist", "train", data_dir=str(fake_fmnist))
  assert x.shape == (50, 28, 28, 1) and x.dtype == np.uint8
  assert y.shape == (50,) and y.dtype == np.int32
  np.testing.assert_array_equal(y, np.arange(50) % 10)
  x2, _ = data.load("fashion_mnist", "test", data_dir=str(fake_fmnist))
  assert x2.shape == (20, 28, 28, 1)


def test_idx_int32_and_uncompressed(tmp_path):
  arr = np.arange(24, dtype=np.int32).reshape(2, 3, 4) - 5
  _write_idx(tmp_path / "a.idx", arr, gz=False)
  np.testing.assert_array_equal(data.read_idx(str(tmp_path / "a.idx")), arr)


@pytest.mark.skipif(
  not HAVE_FMNIST,
  reason="dataset-fashion-mnist not installed (make setup installs it)",
)
def test_real_fashion_mnist():
  import time

  t0 = time.perf_counter()
  x, y = data.load("fashion_mnist", "train")
  xt, yt = data.load("fashion_mnist", "test")
  elapsed = time.perf_counter() - t0
  assert x.shape == (60000, 28, 28, 1) and xt.shape == (10000, 28, 28, 1)
  np.testing.assert_array_equal(np.bincount(y), np.full(10, 6000))
  np.testing.assert_array_equal(np.bincount(yt), np.full(10, 1000))
  print(f"loaded Fashion-MNIST train+test in {elapsed:.2f}s")


def test_missing_directory_error(tmp_path):
  with pytest.raises(data.DataError, match="does not exist.*dataset-fashion"):
    data.load("fashion_mnist", "train", data_dir=str(tmp_path / "nope"))


def test_missing_file_error(fake_fmnist):
  os.remove(fake_fmnist / "t10k-labels-idx1-ubyte.gz")
  with pytest.raises(data.DataError, match="not found"):
    data.load("fashion_mnist", "test", data_dir=str(fake_fmnist))


def test_truncated_file_error(fake_fmnist):
  p = fake_fmnist / "train-images-idx3-ubyte.gz"
  raw = gzip.decompress(p.read_bytes())
  p.write_bytes(gzip.compress(raw[:-100]))
  with pytest.raises(data.DataError, match="truncated"):
    data.load("fashion_mnist", "train", data_dir=str(fake_fmnist))


def test_truncated_gzip_stream_error(fake_fmnist):
  p = fake_fmnist / "train-images-idx3-ubyte.gz"
  p.write_bytes(p.read_bytes()[:200])
  with pytest.raises(data.DataError, match="corrupted or truncated"):
    data.load("fashion_mnist", "train", data_dir=str(fake_fmnist))


def test_corrupted_magic_error(fake_fmnist):
  p = fake_fmnist / "train-labels-idx1-ubyte.gz"
  raw = bytearray(gzip.decompress(p.read_bytes()))
  raw[2] = 0x42
  p.write_bytes(gzip.compress(bytes(raw)))
  with pytest.raises(data.DataError, match="not an idx file"):
    data.load("fashion_mnist", "train", data_dir=str(fake_fmnist))


def _make_cifar_tarball(path, n_per_batch=4):
  rng = np.random.default_rng(1)
  expected = {}
  with tarfile.open(path, "w:gz") as tar:
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
      d = {
        b"data": rng.integers(0, 256, (n_per_batch, 3072), np.uint8),
        b"labels": list(rng.integers(0, 10, n_per_batch)),
      }
      expected[name] = d
      blob = pickle.dumps(d)
      info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
      info.size = len(blob)
      tar.addfile(info, io.BytesIO(blob))
  return expected


def test_cifar_tarball(tmp_path):
  path = str(tmp_path / "cifar-10-python.tar.gz")
  expected = _make_cifar_tarball(path)
  x, y = data.load("cifar10", "train", tarball=path)
  assert x.shape == (20, 32, 32, 3) and y.shape == (20,)
  first = expected["data_batch_1"][b"data"][0].reshape(3, 32, 32)
  np.testing.assert_array_equal(x[0], first.transpose(1, 2, 0))
  xt, yt = data.load("cifar10", "test", tarball=path)
  np.testing.assert_array_equal(yt, expected["test_batch"][b"labels"])


def test_cifar_tarball_corrupted(tmp_path):
  path = tmp_path / "c.tar.gz"
  _make_cifar_tarball(str(path))
  path.write_bytes(path.read_bytes()[:500])
  with pytest.raises(data.DataError, match="truncated or corrupted"):
    data.load("cifar10", "train", tarball=str(path))


def test_cifar_tfds_mock():
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=12):
    x, y = data.load("cifar10", "train")
  assert x.shape == (12, 32, 32, 3) and x.dtype == np.uint8
  assert y.shape == (12,) and y.min() >= 0 and y.max() <= 9


def test_bad_names():
  with pytest.raises(ValueError, match="data.name='mnist'"):
    data.load("mnist")
  with pytest.raises(ValueError, match="split"):
    data.load("synthetic", "val")
  with pytest.raises(ValueError, match="unknown option"):
    data.load("synthetic", "train", dir="x")


def test_synthetic_deterministic():
  a, la = data.load("synthetic", "train", num=16, size=8)
  b, lb = data.load("synthetic", "train", num=16, size=8)
  np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(la, lb)
  assert a.shape == (16, 8, 8, 3)
