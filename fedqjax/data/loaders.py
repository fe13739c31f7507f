"""Dataset loaders returning uint8 images [n, H, W, C] and int32 labels [n].

Sources:
  * ``fashion_mnist``: the idx ``.gz`` files (Debian package
    ``dataset-fashion-mnist``, default ``/usr/share/datasets/fashion-mnist``).
  * ``cifar10``: ``tensorflow_datasets`` (``tfds.load("cifar10", ...)``), or
    the official python-pickle tarball ``cifar-10-python.tar.gz`` given by path.
    The tarball holds Python pickles: load only files you trust.
  * ``synthetic``: deterministic tiny images (for tests and smoke runs).

TensorFlow is imported lazily and only by the ``cifar10`` tfds path, so the
core imports without it.
"""

from __future__ import annotations

import gzip
import io
import os
import pathlib
import pickle
import struct
import tarfile
import zlib
from typing import Optional

import numpy as np

DEFAULT_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
DATASETS = ("fashion_mnist", "cifar10", "synthetic")
SPLITS = ("train", "test")

_FMNIST_FILES = {
  "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
  "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
# idx type codes -> numpy dtype (big endian), http://yann.lecun.com/exdb/mnist/
_IDX_DTYPES = {
  0x08: np.uint8,
  0x09: np.int8,
  0x0B: ">i2",
  0x0C: ">i4",
  0x0D: ">f4",
  0x0E: ">f8",
}


class DataError(ValueError):
  """A dataset file or directory is missing, truncated or corrupted."""


def read_idx(path: str) -> np.ndarray:
  """Reads one idx file (optionally gzipped) into a numpy array.

  Raises:
    DataError: missing, truncated or corrupted file (names the path).
  """
  if not os.path.isfile(path):
    raise DataError(f"idx file not found: {path}")
  try:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
      raw = f.read()
  except (OSError, EOFError, gzip.BadGzipFile) as e:
    raise DataError(
      f"cannot read idx file {path} (corrupted or truncated gzip stream): {e}"
    ) from e
  if len(raw) < 4:
    raise DataError(
      f"idx file {path} is truncated: {len(raw)} bytes, header needs at least 4"
    )
  zero, dtype_code, ndim = raw[0] << 8 | raw[1], raw[2], raw[3]
  if zero != 0 or dtype_code not in _IDX_DTYPES or not 1 <= ndim <= 4:
    raise DataError(
      f"{path} is not an idx file (magic bytes "
      f"{raw[:4].hex()}; expected 0000 + type code in "
      f"{sorted(hex(c) for c in _IDX_DTYPES)} + ndim 1..4)"
    )
  header = 4 + 4 * ndim
  if len(raw) < header:
    raise DataError(f"idx file {path} is truncated inside its header")
  shape = struct.unpack(f">{ndim}I", raw[4:header])
  dtype = np.dtype(_IDX_DTYPES[dtype_code])
  expected = int(np.prod(shape)) * dtype.itemsize
  body = len(raw) - header
  if body != expected:
    raise DataError(
      f"idx file {path} is truncated or corrupted: header "
      f"announces shape {shape} ({expected} bytes), file has "
      f"{body} data bytes"
    )
  return (
    np.frombuffer(raw, dtype, offset=header)
    .reshape(shape)
    .astype(dtype.newbyteorder("="))
  )


def load_fashion_mnist(split: str, data_dir: Optional[str] = None):
  """Fashion-MNIST from idx files: uint8 [n, 28, 28, 1], int32 [n]."""
  data_dir = data_dir or DEFAULT_FASHION_MNIST_DIR
  if not os.path.isdir(data_dir):
    raise DataError(
      f"Fashion-MNIST directory {data_dir!r} does not exist. Install it with "
      "`apt-get install dataset-fashion-mnist` (Debian/Ubuntu) or put the "
      "four idx .gz files in a directory and pass data_dir=DIR."
    )
  img_file, lbl_file = _FMNIST_FILES[split]
  images = read_idx(os.path.join(data_dir, img_file))
  labels = read_idx(os.path.join(data_dir, lbl_file))
  if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
    raise DataError(
      f"Fashion-MNIST {split} files in {data_dir} disagree: "
      f"images {images.shape}, labels {labels.shape}"
    )
  if labels.size and (labels.min() < 0 or labels.max() > 9):
    raise DataError(
      f"Fashion-MNIST {split} labels out of range 0..9 in {data_dir}"
    )
  return images[..., None].astype(np.uint8), labels.astype(np.int32)


def load_cifar10_tarball(split: str, path: str):
  """CIFAR-10 from the official ``cifar-10-python.tar.gz`` (trusted input!).

  The archive contains Python pickles; unpickling untrusted data can execute
  code, so only pass the official file or one you made yourself.
  """
  if not os.path.isfile(path):
    raise DataError(f"CIFAR-10 tarball not found: {path}")
  names = (
    [f"data_batch_{i}" for i in range(1, 6)]
    if split == "train"
    else ["test_batch"]
  )
  images, labels = [], []
  try:
    archive = io.BytesIO(gzip.decompress(pathlib.Path(path).read_bytes()))
    with tarfile.TarFile(fileobj=archive) as tar:
      members = {os.path.basename(m.name): m for m in tar.getmembers()}
      for name in names:
        if name not in members:
          raise DataError(f"CIFAR-10 tarball {path} lacks member {name!r}")
        d = pickle.load(
          io.BytesIO(tar.extractfile(members[name]).read()), encoding="bytes"
        )
        data = np.asarray(d[b"data"], np.uint8)
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(np.asarray(d[b"labels"], np.int32))
  except (
    tarfile.TarError,
    EOFError,
    OSError,
    zlib.error,
    pickle.UnpicklingError,
    KeyError,
    ValueError,
  ) as e:
    if isinstance(e, DataError):
      raise
    raise DataError(
      f"CIFAR-10 tarball {path} is truncated or corrupted: "
      f"{type(e).__name__}: {e}"
    ) from e
  return np.concatenate(images), np.concatenate(labels)


def load_cifar10_tfds(
  split: str, data_dir: Optional[str] = None, download: bool = True
):
  """CIFAR-10 through tensorflow_datasets (the path users with internet take)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  # Iterate in batches rather than batch_size=-1: the latter aborted inside
  # TF 2.21's generator dataset on tfds' mock data (std::length_error).
  ds = tfds.load(
    "cifar10",
    split=split,
    data_dir=data_dir,
    download=download,
    as_supervised=True,
  ).batch(4096)
  images, labels = [], []
  for x, y in tfds.as_numpy(ds):
    images.append(np.asarray(x, np.uint8))
    labels.append(np.asarray(y, np.int32))
  if not images:
    raise DataError(f"tfds cifar10 split {split!r} is empty")
  return np.concatenate(images), np.concatenate(labels)


def cifar10_available(data_dir: Optional[str] = None) -> bool:
  """True when tfds has CIFAR-10 prepared locally (no download attempted)."""
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    builder = tfds.builder("cifar10", data_dir=data_dir)
    return builder.is_prepared()
  except Exception:  # pylint: disable=broad-except
    return False


def make_synthetic(
  split: str,
  num: int = 256,
  size: int = 32,
  channels: int = 3,
  num_classes: int = 10,
  seed: int = 0,
):
  """Deterministic images: class-dependent blobs/stripes plus noise."""
  rng = np.random.default_rng(seed + (0 if split == "train" else 1))
  labels = rng.integers(0, num_classes, num).astype(np.int32)
  yy, xx = np.mgrid[0:size, 0:size] / size
  base = np.stack(
    [
      np.sin(2 * np.pi * (c + 1) * (xx * np.cos(c) + yy * np.sin(c)))
      for c in range(num_classes)
    ]
  )  # [classes, H, W]
  imgs = base[labels][..., None] * np.linspace(0.6, 1.0, channels)
  imgs = imgs + 0.15 * rng.standard_normal(imgs.shape)
  imgs = np.clip((imgs + 1) * 127.5, 0, 255).astype(np.uint8)
  return imgs, labels


def load(name: str, split: str = "train", **options):
  """Loads a dataset as uint8 images [n, H, W, C] and int32 labels [n].

  Args:
    name: one of ``DATASETS``.
    split: "train" or "test".
    **options: per dataset. fashion_mnist: ``data_dir``. cifar10:
      ``tarball`` (path to cifar-10-python.tar.gz) or ``data_dir`` and
      ``download`` for tfds. synthetic: ``num``, ``size``, ``channels``,
      ``seed``.

  Raises:
    ValueError: unknown dataset/split/option; DataError for file problems.
  """
  if name not in DATASETS:
    raise ValueError(f"data.name={name!r} is not a dataset; valid: {DATASETS}")
  if split not in SPLITS:
    raise ValueError(f"data split={split!r} is invalid; valid: {SPLITS}")
  allowed = {
    "fashion_mnist": {"data_dir"},
    "cifar10": {"tarball", "data_dir", "download"},
    "synthetic": {"num", "size", "channels", "seed", "num_classes"},
  }
  unknown = set(options) - allowed[name]
  if unknown:
    raise ValueError(
      f"unknown option(s) {sorted(unknown)} for dataset "
      f"{name!r}; valid: {sorted(allowed[name])}"
    )
  if name == "fashion_mnist":
    return load_fashion_mnist(split, options.get("data_dir"))
  if name == "cifar10":
    if options.get("tarball"):
      return load_cifar10_tarball(split, options["tarball"])
    return load_cifar10_tfds(
      split, options.get("data_dir"), options.get("download", True)
    )
  return make_synthetic(split, **options)
