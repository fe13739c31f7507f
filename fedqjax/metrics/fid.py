"""FID and KID from Inception pool3 features, computed as pytorch-fid / torch-fidelity do.

FID: Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule Converge
to a Local Nash Equilibrium", https://arxiv.org/abs/1706.08500, with the
pytorch-fid matrix square root (scipy ``sqrtm``, eps-offset fallback).
KID: Binkowski et al. 2018, "Demystifying MMD GANs",
https://arxiv.org/abs/1801.01401: unbiased MMD^2 with the cubic polynomial
kernel k(x, y) = (x.y / d + 1)^3 averaged over random subsets (mean and std as
torch-fidelity; clean-fid reports the mean).

All statistics are float64 on the host. Streaming statistics accumulate the sum
and the sum of outer products of features shifted by the first batch's mean
(the shifted-data algorithm), so the covariance does not suffer from the
cancellation of the naive ``E[xx^T] - mu mu^T``.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable, Iterable

import numpy as np
import scipy.linalg

from fedqjax.metrics import inception
from fedqjax.typing import ArrayLike


@dataclasses.dataclass(frozen=True)
class Stats:
  """Gaussian summary of features: mu [d] and sigma [d, d] (float64, ddof=1), n samples."""

  mu: np.ndarray
  sigma: np.ndarray
  n: int

  def save(self, path: str | os.PathLike) -> None:
    np.savez(path, mu=self.mu, sigma=self.sigma, n=np.int64(self.n))

  @classmethod
  def load(cls, path: str | os.PathLike) -> "Stats":
    with np.load(path) as z:
      return cls(mu=z["mu"], sigma=z["sigma"], n=int(z["n"]))


class StatsAccumulator:
  """Streaming mean/covariance over feature batches (float64, shifted sums)."""

  def __init__(self):
    self.n = 0
    self.shift = None  # [d]: first batch mean
    self.s1 = None  # [d]: sum of (x - shift)
    self.s2 = None  # [d, d]: sum of (x - shift)(x - shift)^T

  def update(self, feats: ArrayLike) -> "StatsAccumulator":
    x = np.asarray(feats, np.float64)  # [b, d]
    if not len(x):
      return self
    if self.shift is None:
      self.shift = x.mean(axis=0)
      self.s1 = np.zeros_like(self.shift)
      self.s2 = np.zeros((len(self.shift),) * 2)
    x = x - self.shift
    self.n += len(x)
    self.s1 += x.sum(axis=0)
    self.s2 += x.T @ x
    return self

  def result(self) -> Stats:
    if self.n < 2:
      raise ValueError(
        f"need at least 2 samples for a covariance, got {self.n}"
      )
    mean_shifted = self.s1 / self.n
    sigma = (self.s2 - self.n * np.outer(mean_shifted, mean_shifted)) / (
      self.n - 1
    )
    return Stats(
      mu=self.shift + mean_shifted, sigma=(sigma + sigma.T) / 2, n=self.n
    )


def stats_from_features(feats: ArrayLike) -> Stats:
  """Stats of features [n, d] (same as ``np.mean``/``np.cov(rowvar=False)``)."""
  return StatsAccumulator().update(feats).result()


def compute_stats(
  images: ArrayLike | Iterable[ArrayLike],
  *,
  batch_size: int = 100,
  feature_fn: Callable | None = None,
) -> Stats:
  """Streams images through Inception into Stats without keeping all features."""
  if hasattr(images, "shape"):
    batch_size = max(1, min(batch_size, images.shape[0]))
  feature_fn = feature_fn or inception.make_feature_fn()
  acc = StatsAccumulator()
  for batch, valid in inception.fixed_batches(images, batch_size):
    acc.update(np.asarray(feature_fn(batch))[:valid])
  return acc.result()


def _psd_sqrt_eigenvalues(w: np.ndarray) -> np.ndarray:
  # Eigenvalues below the round-off level are zero; sqrt would inflate them
  # (sqrt(1e-16) = 1e-8 each, times thousands of null directions when n < d).
  tol = max(float(w.max()), 0.0) * len(w) * np.finfo(np.float64).eps
  return np.sqrt(np.where(w > tol, w, 0.0))


def _trace_sqrt_product_eigh(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
  # tr sqrt(S1 S2) = tr sqrt(S1^1/2 S2 S1^1/2); the inner matrix is symmetric PSD.
  w, v = np.linalg.eigh(sigma1)
  root1 = (v * _psd_sqrt_eigenvalues(w)) @ v.T
  inner = root1 @ sigma2 @ root1
  return float(
    _psd_sqrt_eigenvalues(np.linalg.eigvalsh((inner + inner.T) / 2)).sum()
  )


def frechet_distance(
  mu1: ArrayLike,
  sigma1: ArrayLike,
  mu2: ArrayLike,
  sigma2: ArrayLike,
  *,
  eps: float = 1e-6,
  method: str = "sqrtm",
) -> float:
  """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^1/2) in float64.

  Args:
    mu1, mu2: means [d].
    sigma1, sigma2: covariances [d, d].
    eps: diagonal offset added to both covariances when ``sqrtm`` is not finite
      (pytorch-fid's fallback for near-singular products).
    method: ``"sqrtm"`` (pytorch-fid: scipy.linalg.sqrtm of S1 S2, real part,
      imaginary diagonal must be < 1e-3) or ``"eigh"`` (symmetric route via
      S1^1/2 S2 S1^1/2; robust for rank-deficient covariances, n < d).

  Raises:
    ValueError: sqrtm's result has a large imaginary component, or bad method.
  """
  mu1, mu2 = (
    np.atleast_1d(np.asarray(mu1, np.float64)),
    np.atleast_1d(np.asarray(mu2, np.float64)),
  )
  s1, s2 = (
    np.atleast_2d(np.asarray(sigma1, np.float64)),
    np.atleast_2d(np.asarray(sigma2, np.float64)),
  )
  if mu1.shape != mu2.shape or s1.shape != s2.shape:
    raise ValueError(
      f"shape mismatch: {mu1.shape} {mu2.shape} {s1.shape} {s2.shape}"
    )
  diff = mu1 - mu2
  if method == "eigh":
    tr_covmean = _trace_sqrt_product_eigh(s1, s2)
  elif method == "sqrtm":
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
      offset = np.eye(s1.shape[0]) * eps
      covmean = scipy.linalg.sqrtm((s1 + offset) @ (s2 + offset))
    if np.iscomplexobj(covmean):
      if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
        raise ValueError(
          f"imaginary component {np.max(np.abs(covmean.imag))} in sqrtm; "
          "try method='eigh'"
        )
      covmean = covmean.real
    tr_covmean = float(np.trace(covmean))
  else:
    raise ValueError(f"unknown method {method!r}")
  return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)


def fid_from_stats(a: Stats, b: Stats, **kwargs) -> float:
  return frechet_distance(a.mu, a.sigma, b.mu, b.sigma, **kwargs)


def fid_from_features(feat1: ArrayLike, feat2: ArrayLike, **kwargs) -> float:
  """FID between two feature sets [n1, d] and [n2, d]; kwargs go to ``frechet_distance``.

  When n1 + n2 <= d (small evaluations) both sets are first rotated into the
  orthonormal basis of span{x_i - mu1, y_j - mu2, mu1 - mu2}, which holds both
  covariances' ranges and the mean difference; FID is invariant under this
  isometry, so the result is exact while the matrix functions shrink from d to
  at most n1 + n2 dimensions.
  """
  f1, f2 = (
    np.asarray(feat1, np.float64),
    np.asarray(feat2, np.float64),
  )  # [n1, d], [n2, d]
  if len(f1) + len(f2) <= f1.shape[1]:
    mu1, mu2 = f1.mean(0), f2.mean(0)
    basis, _ = np.linalg.qr(
      np.concatenate([f1 - mu1, f2 - mu2, (mu1 - mu2)[None]]).T
    )  # [d, k]
    f1, f2 = f1 @ basis, f2 @ basis  # [n1, k], [n2, k]
  return fid_from_stats(
    stats_from_features(f1), stats_from_features(f2), **kwargs
  )


def kid(
  feat1: ArrayLike,
  feat2: ArrayLike,
  *,
  num_subsets: int = 100,
  subset_size: int = 1000,
  seed: int = 0,
) -> tuple[float, float]:
  """Kernel Inception Distance: (mean, std) of unbiased MMD^2 over random subsets.

  Each subset draws m = min(subset_size, n1, n2) rows of each set without
  replacement; MMD^2_u = (sum_{i!=j} k(x_i,x_j) + sum_{i!=j} k(y_i,y_j)) / (m(m-1))
  - 2 sum_{i,j} k(x_i,y_j) / m^2, k(x, y) = (x.y / d + 1)^3. std is over subsets
  (ddof=0), as torch-fidelity reports it.
  """
  f1, f2 = (
    np.asarray(feat1, np.float64),
    np.asarray(feat2, np.float64),
  )  # [n1, d], [n2, d]
  d = f1.shape[1]
  m = min(subset_size, len(f1), len(f2))
  if m < 2:
    raise ValueError("KID needs at least 2 samples per set")
  rng = np.random.default_rng(seed)
  mmds = np.empty(num_subsets)
  for s in range(num_subsets):
    x = f1[rng.choice(len(f1), m, replace=False)]  # [m, d]
    y = f2[rng.choice(len(f2), m, replace=False)]  # [m, d]
    kxx, kyy = (x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3  # [m, m]
    kxy = (x @ y.T / d + 1) ** 3
    off = kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)
    mmds[s] = off / (m * (m - 1)) - 2.0 * kxy.sum() / (m * m)
  return float(mmds.mean()), float(mmds.std())
