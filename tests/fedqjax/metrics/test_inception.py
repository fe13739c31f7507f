"""Tests for fedqjax.metrics.inception: the network vs the TorchScript
reference, preprocessing, batching."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedqjax import metrics
from fedqjax.metrics import inception
from fedqjax.metrics import weights as weights_lib
from tests.support.metrics import BATCH, needs_wheel, random_images


def _nv_bilinear(torch, x, out=299):
  """fid-helper's 'nv_bilinear' (TF legacy) resize, copied from its _resample_func."""
  f = torch.nn.functional
  b, c, h, w = x.shape
  theta = torch.eye(2, 3)
  theta[0, 2] += theta[0, 0] / w - theta[0, 0] / out
  theta[1, 2] += theta[1, 1] / h - theta[1, 1] / out
  grid = f.affine_grid(
    theta[None].repeat(b, 1, 1), [b, c, out, out], align_corners=False
  )
  return f.grid_sample(
    x, grid, mode="bilinear", padding_mode="border", align_corners=False
  )


# ----------------------------------------------------------------------------- network


@needs_wheel
def test_matches_torchscript_reference(feature_fn):
  """JAX features == default_1.pt fed as fid-helper feeds it (nv_bilinear, [-1, 0.9921875])."""
  torch = pytest.importorskip(
    "torch", reason="torch (test extra) not installed"
  )
  rgb, gray = random_images(0, BATCH, 32, 3), random_images(1, BATCH, 28, 1)
  ours = np.concatenate([feature_fn(rgb), feature_fn(gray)[:2]])  # [6, 2048]
  chex.assert_shape(ours, (6, 2048))

  def torch_input(
    x,
  ):  # fid-helper: /255, resize on [0, 255], map [0, 1] -> INPUT_RANGE_TF
    t = torch.from_numpy(x).permute(0, 3, 1, 2).float().expand(-1, 3, -1, -1)
    return _nv_bilinear(torch, t) / 255.0 * (0.9921875 + 1.0) - 1.0

  net = torch.jit.load(
    str(weights_lib.locate_torchscript()), map_location="cpu"
  ).eval()
  with torch.no_grad():
    ref = net(torch.cat([torch_input(rgb), torch_input(gray[:2])])).numpy()
  rel = np.linalg.norm(ours - ref) / np.linalg.norm(ref)
  assert rel <= 1e-4, rel


@pytest.mark.parametrize("size", [28, 32, 400])
def test_preprocess_matches_torch_resizes(size):
  torch = pytest.importorskip(
    "torch", reason="torch (test extra) not installed"
  )
  x = random_images(2, 2, size, 3)
  t = torch.from_numpy(x).permute(0, 3, 1, 2).float()
  tf_ref = (_nv_bilinear(torch, t) / 128.0 - 1.0).permute(0, 2, 3, 1).numpy()
  pt = torch.nn.functional.interpolate(
    t, (299, 299), mode="bilinear", align_corners=False
  )
  pt_ref = (pt * 2 / 255 - 1).permute(0, 2, 3, 1).numpy()
  np.testing.assert_allclose(inception.preprocess(x, "tf"), tf_ref, atol=2e-4)
  np.testing.assert_allclose(
    inception.preprocess(x, "pytorch_fid"), pt_ref, atol=2e-4
  )


def test_preprocess_grayscale_tiles_and_identity_at_299():
  g = random_images(3, 1, 28, 1)
  np.testing.assert_array_equal(
    inception.preprocess(g), inception.preprocess(np.tile(g, 3))
  )
  x = random_images(4, 1, 299, 3)
  np.testing.assert_allclose(
    inception.preprocess(x), x / 128.0 - 1.0, atol=1e-6
  )
  with pytest.raises(ValueError, match="preset"):
    inception.resize_matrix(28, 299, "bicubic")


def test_to_uint8():
  x = jnp.array([-1.5, -1.0, 0.0, 0.999, 1.0, 2.0])
  np.testing.assert_array_equal(metrics.to_uint8(x), [0, 0, 128, 255, 255, 255])
  assert metrics.to_uint8(x).dtype == jnp.uint8


# ----------------------------------------------------------------------------- batching


def test_compute_activations_pads_last_batch_and_compiles_once():
  calls = []

  @jax.jit
  @chex.assert_max_traces(n=1)
  def fake(images):  # [b, H, W, C] -> [b, 2]
    return jnp.stack(
      [images.mean((1, 2, 3)), images.max((1, 2, 3))], -1
    ).astype(jnp.float32)

  def fn(batch):
    calls.append(batch.shape)
    return fake(batch)

  x = random_images(7, 11, 5, 1)
  x64 = x.astype(np.float64)
  expected = np.stack([x64.mean((1, 2, 3)), x64.max((1, 2, 3))], -1)  # [11, 2]
  chunks = [x[:3], x[3:4], x[4:]]  # an iterable of uneven chunks, too
  for images in (x, chunks):
    calls.clear()
    got = metrics.compute_activations(images, batch_size=4, feature_fn=fn)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert calls == [(4, 5, 5, 1)] * 3
  stats = metrics.compute_stats(chunks, batch_size=4, feature_fn=fn)
  np.testing.assert_allclose(
    stats.sigma, np.cov(expected, rowvar=False), rtol=1e-6
  )
