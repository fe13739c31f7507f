"""Tests for fedqjax.data: idx parser, tfds and tarball loaders, partitioners."""
import gzip
import io
import os
import pickle
import struct
import tarfile

import numpy as np
import pytest

from fedqjax import data

FMNIST = data.DEFAULT_FASHION_MNIST_DIR
HAVE_FMNIST = os.path.isfile(os.path.join(FMNIST, "train-images-idx3-ubyte.gz"))


def _write_idx(path, array, gz=True):
  codes = {np.uint8: 0x08, np.int32: 0x0C}
  arr = np.asarray(array)
  header = bytes([0, 0, codes[arr.dtype.type], arr.ndim]) + struct.pack(
      f">{arr.ndim}I", *arr.shape)
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


@pytest.mark.skipif(not HAVE_FMNIST, reason="dataset-fashion-mnist not "
                    "installed (make setup installs it)")
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
      d = {b"data": rng.integers(0, 256, (n_per_batch, 3072), np.uint8),
           b"labels": list(rng.integers(0, 10, n_per_batch))}
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


def test_to_float_pad_and_channels():
  x = np.full((2, 28, 28, 1), 255, np.uint8)
  f = data.to_float(x, resolution=32, channels=3)
  assert f.shape == (2, 32, 32, 3) and f.dtype == np.float32
  assert f[0, 0, 0, 0] == -1.0 and f[0, 2, 2, 0] == 1.0
  np.testing.assert_array_equal(data.to_uint8(f[:, 2:30, 2:30, :1]), x)
  with pytest.raises(ValueError, match="resolution"):
    data.to_float(x, resolution=16)


@pytest.mark.parametrize("method", data.PARTITIONS)
def test_partition_sizes_and_determinism(method):
  labels = np.repeat(np.arange(10), 50)
  images = np.arange(500)[:, None, None, None].astype(np.uint8)
  p1 = data.split_indices(labels, 20, method, seed=3, alpha=0.3)
  p2 = data.split_indices(labels, 20, method, seed=3, alpha=0.3)
  assert sum(len(p) for p in p1) == 500
  np.testing.assert_array_equal(np.sort(np.concatenate(p1)), np.arange(500))
  for a, b in zip(p1, p2):
    np.testing.assert_array_equal(a, b)
  p3 = data.split_indices(labels, 20, method, seed=4, alpha=0.3)
  assert any(not np.array_equal(a, b) for a, b in zip(p1, p3))
  cd = data.partition(images, labels, 20, method, seed=3, alpha=0.3)
  assert cd.images.shape[:2] == (20, cd.counts.max())
  assert cd.counts.sum() == 500 and cd.counts.min() >= 1
  for k in range(20):  # real rows are that client's samples
    np.testing.assert_array_equal(cd.labels[k, :cd.counts[k]],
                                  labels[p1[k]][:cd.counts[k]])
    assert (cd.labels[k, cd.counts[k]:] == -1).all()


def _label_entropy(parts, labels):
  ent = []
  for p in parts:
    q = np.bincount(labels[p], minlength=10) / len(p)
    q = q[q > 0]
    ent.append(-(q * np.log(q)).sum())
  return float(np.mean(ent))


def test_dirichlet_skew_grows_as_alpha_falls():
  labels = np.repeat(np.arange(10), 300)
  ents = [_label_entropy(data.split_indices(labels, 20, "dirichlet", seed=0,
                                            alpha=a), labels)
          for a in (100.0, 1.0, 0.05)]
  assert ents[0] > ents[1] > ents[2], ents
  assert ents[0] > 0.95 * np.log(10)  # near-iid


def test_shards_label_count():
  labels = np.repeat(np.arange(10), 100)
  parts = data.split_indices(labels, 10, "shards", seed=0, labels_per_client=2)
  assert all(len(np.unique(labels[p])) <= 2 for p in parts)


def test_partition_bad_input():
  labels = np.arange(10) % 3
  with pytest.raises(ValueError, match="dirichlet_alpha"):
    data.split_indices(labels, 2, "dirichlet", alpha=0.0)
  with pytest.raises(ValueError, match="dirichlet_alpha"):
    data.split_indices(labels, 2, "dirichlet", alpha=float("nan"))
  with pytest.raises(ValueError, match="num_clients=11"):
    data.split_indices(labels, 11, "iid")
  with pytest.raises(ValueError, match="data.partition"):
    data.split_indices(labels, 2, "random")


@pytest.mark.skipif(not HAVE_FMNIST, reason="dataset-fashion-mnist missing")
def test_partition_1000_clients_real():
  import time
  x, y = data.load("fashion_mnist", "train")
  t0 = time.perf_counter()
  cd = data.partition(x, y, 1000, "dirichlet", alpha=0.5, seed=0)
  print(f"partitioned 60000 images over 1000 clients in "
        f"{time.perf_counter() - t0:.2f}s")
  assert cd.counts.sum() == 60000
