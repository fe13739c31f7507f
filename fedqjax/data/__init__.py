"""Data layer: loaders, preprocessing and federated partitioners."""

from fedqjax.data.loaders import (
  DATASETS,
  DEFAULT_FASHION_MNIST_DIR,
  DataError,
  cifar10_available,
  load,
  load_cifar10_tarball,
  load_fashion_mnist,
  make_synthetic,
  read_idx,
)
from fedqjax.data.partition import (
  PARTITIONS,
  ClientData,
  partition,
  split_indices,
  stack_clients,
)
from fedqjax.data.preprocess import to_float, to_uint8
