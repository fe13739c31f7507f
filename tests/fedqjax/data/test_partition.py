"""Tests for fedqjax.data.partition: partitioners and the padded client stack."""

import numpy as np
import pytest

from fedqjax import data
from tests.support.data import HAVE_FMNIST


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
    np.testing.assert_array_equal(
      cd.labels[k, : cd.counts[k]], labels[p1[k]][: cd.counts[k]]
    )
    assert (cd.labels[k, cd.counts[k] :] == -1).all()


def _label_entropy(parts, labels):
  ent = []
  for p in parts:
    q = np.bincount(labels[p], minlength=10) / len(p)
    q = q[q > 0]
    ent.append(-(q * np.log(q)).sum())
  return float(np.mean(ent))


def test_dirichlet_skew_grows_as_alpha_falls():
  labels = np.repeat(np.arange(10), 300)
  ents = [
    _label_entropy(
      data.split_indices(labels, 20, "dirichlet", seed=0, alpha=a), labels
    )
    for a in (100.0, 1.0, 0.05)
  ]
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
  print(
    f"partitioned 60000 images over 1000 clients in "
    f"{time.perf_counter() - t0:.2f}s"
  )
  assert cd.counts.sum() == 60000
