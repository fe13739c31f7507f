"""Tests for fedqjax.diffusion.flops: lowered-HLO FLOPs per image."""

from fedqjax import diffusion as dm
from tests.support.diffusion import RES, SMALL


def test_flops_small_model():
  """Lowered-HLO FLOPs (no compile); fwd+bwd is 2-4x a forward pass, and
  the count scales with the number of pixels."""
  train = dm.train_flops_per_image(SMALL, (RES, RES, 1), compiled=False)
  sample = dm.sample_flops_per_image(SMALL, (RES, RES, 1), compiled=False)
  print(
    f"SMALL model FLOPs/image: train {train:.3e}, sampling step {sample:.3e}"
  )
  assert 1e7 < sample < train and 2.0 < train / sample < 4.0
  # Convolutions dominate: twice the side, ~4x the FLOPs (3.997 measured);
  # a count that ignored the image (parameters only, a constant) fails.
  big = (2 * RES, 2 * RES, 1)
  assert (
    3.9 < dm.train_flops_per_image(SMALL, big, compiled=False) / train < 4.1
  )
  assert (
    3.9 < dm.sample_flops_per_image(SMALL, big, compiled=False) / sample < 4.1
  )
