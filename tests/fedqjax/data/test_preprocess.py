"""Tests for fedqjax.data.preprocess: uint8 images to float and back."""

import numpy as np
import pytest

from fedqjax import data


def test_to_float_pad_and_channels():
  x = np.full((2, 28, 28, 1), 255, np.uint8)
  f = data.to_float(x, resolution=32, channels=3)
  assert f.shape == (2, 32, 32, 3) and f.dtype == np.float32
  assert f[0, 0, 0, 0] == -1.0 and f[0, 2, 2, 0] == 1.0
  np.testing.assert_array_equal(data.to_uint8(f[:, 2:30, 2:30, :1]), x)
  with pytest.raises(ValueError, match="resolution"):
    data.to_float(x, resolution=16)
