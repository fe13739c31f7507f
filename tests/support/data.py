"""Shared setup for the data tests: the installed Fashion-MNIST, if any."""

import os

from fedqjax import data

FMNIST = data.DEFAULT_FASHION_MNIST_DIR
HAVE_FMNIST = os.path.isfile(os.path.join(FMNIST, "train-images-idx3-ubyte.gz"))
