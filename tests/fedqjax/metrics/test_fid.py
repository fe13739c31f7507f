"""Tests for fedqjax.metrics.fid: FID / KID math and streaming statistics."""

import gzip
import os

import numpy as np

from fedqjax import metrics
from fedqjax.metrics import fid as fid_lib
from tests.support.metrics import BATCH, needs_wheel

FMNIST_TEST = "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz"


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
      clean = np.frombuffer(f.read(), np.uint8, offset=16).reshape(
        -1, 28, 28, 1
      )[:n]
  else:  # smooth synthetic images
    yy, xx = np.mgrid[:28, :28] / 28.0
    phase = np.arange(n)[:, None, None]
    clean = (127.5 * (1 + np.sin(6 * xx + 3 * yy + phase)))[..., None].astype(
      np.uint8
    )
  sigmas = (6.0, 24.0, 96.0)
  rng = np.random.default_rng(0)
  noisy = [
    np.clip(clean + rng.normal(0, s, clean.shape), 0, 255) for s in sigmas
  ]
  images = np.concatenate(
    [clean.astype(np.float64)] + noisy
  )  # [4 n, 28, 28, 1]
  feats = metrics.compute_activations(
    images, batch_size=BATCH, feature_fn=feature_fn
  )
  sets = np.split(feats, len(sigmas) + 1)
  fids = [
    metrics.fid_from_features(sets[0], f, method="eigh") for f in sets[1:]
  ]
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
    got = metrics.frechet_distance(
      mu1, np.diag(a), mu2, np.diag(b), method=method
    )
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
  np.testing.assert_allclose(
    metrics.fid_from_features(x, y), expected, rtol=2e-2
  )


def test_small_sample_reduction_is_exact():
  """n1 + n2 <= d: the projected FID equals the full-dimensional one."""
  rng = np.random.default_rng(7)
  x, y = rng.random((5, 40)) ** 2, rng.random((6, 40))
  full = fid_lib.fid_from_stats(
    metrics.stats_from_features(x),
    metrics.stats_from_features(y),
    method="eigh",
  )
  np.testing.assert_allclose(
    metrics.fid_from_features(x, y, method="eigh"), full, rtol=1e-9
  )


def test_fid_symmetric_and_methods_agree():
  rng = np.random.default_rng(3)
  x, y = (
    rng.normal(size=(300, 16)),
    rng.normal(size=(300, 16)) @ rng.normal(size=(16, 16)),
  )
  s1, s2 = metrics.stats_from_features(x), metrics.stats_from_features(y)
  ab, ba = metrics.fid_from_stats(s1, s2), metrics.fid_from_stats(s2, s1)
  np.testing.assert_allclose(ab, ba, rtol=1e-9)
  np.testing.assert_allclose(
    metrics.fid_from_stats(s1, s2, method="eigh"), ab, rtol=1e-8
  )


def test_streaming_stats_match_numpy():
  rng = np.random.default_rng(4)
  f = 100.0 + rng.normal(
    size=(103, 8)
  )  # large offset: checks the shifted accumulation
  acc = metrics.StatsAccumulator()
  for chunk in np.array_split(f, [1, 40, 41, 90]):
    acc.update(chunk)
  s = acc.result()
  assert s.n == 103
  np.testing.assert_allclose(s.mu, f.mean(0), rtol=1e-12)
  np.testing.assert_allclose(
    s.sigma, np.cov(f, rowvar=False), rtol=1e-10, atol=1e-12
  )


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
  mean, std = metrics.kid(
    x, y, num_subsets=3, subset_size=12
  )  # m = n: same subset each time
  np.testing.assert_allclose(mean, _kid_reference(x, y), rtol=1e-10)
  assert std < 1e-12


def test_kid_unbiased_on_equal_distributions():
  """Mean of 400 independent MMD^2_u draws (equal laws) within 4.5 standard errors of 0.

  Under the CLT the failure probability is ~7e-6 (two-sided); the seed is fixed.
  A shifted distribution must give a clearly positive KID.
  """
  rng = np.random.default_rng(6)
  draws = [
    metrics.kid(
      rng.normal(size=(40, 8)), rng.normal(size=(40, 8)), num_subsets=1
    )[0]
    for _ in range(400)
  ]
  se = np.std(draws) / np.sqrt(len(draws))
  assert abs(np.mean(draws)) < 4.5 * se, (np.mean(draws), se)
  shifted, _ = metrics.kid(
    rng.normal(size=(200, 8)), rng.normal(0.5, 1, size=(200, 8))
  )
  assert shifted > 20 * se
