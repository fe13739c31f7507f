"""Final evaluation: EMA samples (DDIM/DDPM), an image grid, FID and KID
against the test split (Inception-v3 pool3, fedqjax.metrics), the DDPM
variational bound in bits/dim on test images and, with eval.sampler_curve,
FID/KID of every sampler the sampling energy report prices."""

from __future__ import annotations

import logging
import os
from typing import Any, Dict

import jax
import numpy as np

from fedqjax import data as data_lib
from fedqjax import diffusion

log = logging.getLogger("fedqjax")


def image_grid(images: np.ndarray, cols: int | None = None) -> np.ndarray:
  """uint8 [n, H, W, C] -> one uint8 grid image [rows*H, cols*W, C]."""
  n, h, w, c = images.shape
  cols = cols or int(np.ceil(np.sqrt(n)))
  rows = int(np.ceil(n / cols))
  grid = np.zeros((rows * h, cols * w, c), np.uint8)
  for i in range(n):
    r, q = divmod(i, cols)
    grid[r * h : (r + 1) * h, q * w : (q + 1) * w] = images[i]
  return grid


class Evaluator:
  """Samples from EMA params and scores them; compiled once per sweep."""

  def __init__(self, setup, workdir: str):
    self.setup = setup
    self.config = setup.config.eval
    self.model = setup.unet.make()
    self.eps_fn = diffusion.eps_fn_from_module(self.model)  # one object: the
    # sampler jit keys on it, so reusing it avoids recompiles.
    self.schedule = setup.schedule
    self.cache_dir = os.path.join(workdir, ".fid_cache")
    self._ref_feats = None
    self._feature_fn = None
    # Compiled once per sweep (every run's bound reuses it).
    self._vlb = jax.jit(
      diffusion.vlb_bits_per_dim,
      static_argnames=("apply_fn", "t_stride", "batch_size"),
    )

  def sample(
    self, params, key, n: int, sampler: str = "", steps: int = 0
  ) -> np.ndarray:
    """n samples, uint8 [n, H, W, C], in fixed-size batches (one compile);
    `sampler` / `steps` default to eval.sampler / eval.ddim_steps."""
    sampler = sampler or self.config.sampler
    steps = steps or self.config.ddim_steps
    bs = min(self.config.batch_size, n)
    shape = (bs,) + tuple(self.setup.image_shape)
    out = []
    for i in range(-(-n // bs)):
      k = jax.random.fold_in(key, i)
      if sampler == "ddim":
        x = diffusion.ddim_sample(
          self.eps_fn,
          params,
          self.schedule,
          k,
          shape,
          num_steps=steps,
          eta=self.config.eta,
        )
      else:
        x = diffusion.ddpm_sample(self.eps_fn, params, self.schedule, k, shape)
      out.append(data_lib.to_uint8(np.asarray(x)))
    return np.concatenate(out)[:n]

  def _features(self, images: np.ndarray) -> np.ndarray:
    from fedqjax import metrics  # pylint: disable=g-import-not-at-top

    if self._feature_fn is None:
      self._feature_fn = metrics.make_feature_fn(cache_dir=self.cache_dir)
    return metrics.compute_activations(
      images, batch_size=50, feature_fn=self._feature_fn
    )

  def reference_features(self) -> np.ndarray:
    if self._ref_feats is None:
      path = os.path.join(
        self.cache_dir,
        f"ref_{self.setup.dataset}_"
        f"{'x'.join(map(str, self.setup.image_shape))}_"
        f"n{len(self.setup.test_images)}.npy",
      )
      if os.path.exists(path):
        self._ref_feats = np.load(path)
      else:
        self._ref_feats = self._features(self.setup.test_images)
        os.makedirs(self.cache_dir, exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp.npy"  # one per process
        np.save(tmp, self._ref_feats)
        os.replace(tmp, path)
    return self._ref_feats

  def bits_per_dim(self, params) -> float:
    """DDPM bound (bits/dim) on the first `vlb_size` test images: every t <
    vlb_t_stride exactly, one t per block above (`vlb_bits_per_dim`); fixed
    noise, so schemes and seeds see the same draws."""
    n, (h, _, c) = self.config.vlb_size, self.setup.image_shape
    x0 = data_lib.to_float(self.setup.test_images[:n], resolution=h, channels=c)
    key = jax.random.key(self.setup.config.seed + 54321)
    return float(
      self._vlb(
        params,
        self.model.apply,
        x0,
        self.schedule,
        key,
        t_stride=self.config.vlb_t_stride,
        batch_size=min(self.config.batch_size, n),
      )
    )

  def quality(self, samples: np.ndarray) -> Dict[str, float]:
    """FID and KID (mean, std over 100 subsets) vs the test split."""
    from fedqjax import metrics  # pylint: disable=g-import-not-at-top

    ref = self.reference_features()
    feats = self._features(samples)
    m = min(self.config.kid_subset_size, len(feats), len(ref))
    k_mean, k_std = metrics.kid(feats, ref, num_subsets=100, subset_size=m)
    return dict(
      fid=float(metrics.fid_from_features(feats, ref)),
      kid=float(k_mean),
      kid_std=float(k_std),
    )

  def sampler_curve(self, params, key, main: Dict[str, float]):
    """{label: {sampler, steps, fid, kid, kid_std}} for every sampler the
    sampling energy report prices (`sampling_report.samplers`), each on
    eval.num_samples samples of the same noise key; the main sampler's
    scores (`main`, when computed) are reused."""
    from experiments.fl_sweep import sampling_report  # pylint: disable=g-import-not-at-top

    out = {}
    for name, steps in sampling_report.samplers(self.setup.config):
      label = sampling_report.label(name, steps)
      if main and sampling_report.is_main(self.setup.config, name, steps):
        scores = dict(main)
      else:
        scores = self.quality(
          self.sample(params, key, self.config.num_samples, name, steps)
        )
      out[label] = dict(sampler=name, steps=steps, **scores)
    return out

  def __call__(self, params, scheme: str) -> Dict[str, Any]:
    key = jax.random.key(self.setup.config.seed + 12345)  # same noise for all
    samples = self.sample(params, key, self.config.num_samples)
    out: Dict[str, Any] = {"grid": image_grid(samples[: self.config.grid])}
    if self.config.fid:
      out.update(self.quality(samples))
    if self.config.sampler_curve:
      main = {k: out[k] for k in ("fid", "kid", "kid_std") if k in out}
      out["sampler_curve"] = self.sampler_curve(params, key, main)
    if self.config.vlb_size:
      out["vlb_bits_per_dim"] = self.bits_per_dim(params)
    return out
