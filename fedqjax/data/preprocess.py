"""Image preprocessing so every dataset feeds the same UNet."""

from __future__ import annotations

import numpy as np


def to_float(
  images: np.ndarray,
  *,
  resolution: int | None = None,
  channels: int | None = None,
) -> np.ndarray:
  """uint8 [n, H, W, C] -> float32 in [-1, 1], padded to ``resolution``.

  Args:
    images: uint8 images [n, H, W, C].
    resolution: target side; smaller images are zero-padded symmetrically
      (value -1, the background of Fashion-MNIST), e.g. 28 -> 32, which keeps
      pixels exact (no interpolation). Larger images are rejected.
    channels: target channels: 1 -> 3 tiles grayscale; 3 -> 1 averages.

  Returns:
    float32 [n, R, R, C'] in [-1, 1].
  """
  images = np.asarray(images)
  if images.ndim != 4 or images.dtype != np.uint8:
    raise ValueError(
      f"images must be uint8 [n, H, W, C], got {images.dtype} {images.shape}"
    )
  x = images.astype(np.float32) / 127.5 - 1.0
  c = x.shape[-1]
  if channels is not None and channels != c:
    if c == 1:
      x = np.repeat(x, channels, axis=-1)
    elif channels == 1:
      x = x.mean(-1, keepdims=True)
    else:
      raise ValueError(f"cannot map {c} channels to {channels}")
  if resolution is not None:
    h, w = x.shape[1:3]
    if h > resolution or w > resolution:
      raise ValueError(
        f"data.resolution={resolution} is smaller than the "
        f"images ({h}x{w}); valid: >= {max(h, w)}"
      )
    ph, pw = resolution - h, resolution - w
    x = np.pad(
      x,
      ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)),
      constant_values=-1.0,
    )
  return x


def to_uint8(x) -> np.ndarray:
  """float in [-1, 1] -> uint8 [0, 255] (rounded, clipped)."""
  x = np.asarray(x, np.float32)
  return np.clip(np.round((x + 1.0) * 127.5), 0, 255).astype(np.uint8)
