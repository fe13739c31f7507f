"""DDPM U-Net of Ho et al. 2020 (https://arxiv.org/abs/2006.11239) in Flax linen.

A port of the CIFAR-10 model in the authors' `diffusion_tf/models/unet.py`:
GroupNorm + swish, sinusoidal timestep embedding followed by a two-layer MLP
(width 4*ch), residual blocks with a timestep projection and dropout, one-head
self-attention at the resolutions in `attn_resolutions` and in the middle,
strided 3x3 convolutions to downsample, nearest-neighbour + 3x3 convolution to
upsample. `UNet` takes one `UNetConfig` (every setting, validated there);
the defaults are the paper's CIFAR-10 model (35.7M parameters at 32x32x3).
Input channels and resolution are read from the input.

Resolution constraint: each of the `len(ch_mult) - 1` downsamplings halves the
resolution and the skip connections need it back exactly, so H and W must be
divisible by 2**(len(ch_mult) - 1). 28x28 (Fashion-MNIST) works with three
levels (28 -> 14 -> 7) but not with the paper's four (7 -> 4 breaks); pad
28x28 images to 32x32 in the data layer or use three levels. A wrong
resolution raises ValueError at init.

`dtype` is the compute dtype (activations); parameters are always float32
(`param_dtype`). GroupNorm statistics and the attention softmax are computed in
float32, and the output is cast to float32, so bfloat16 compute changes only
the convolutions and matmuls.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from fedqjax.diffusion.conv import CONV_IMPLS
from fedqjax.errors import InvalidSetting
from fedqjax.typing import Array

Dtype = Any
_DTYPES = ("float32", "bfloat16", "float16")


def _init(scale: float = 1.0) -> nn.initializers.Initializer:
  # diffusion_tf: variance_scaling(scale, 'fan_avg', 'uniform'); "init_scale=0"
  # there means 1e-10, which makes every residual branch start near identity.
  return nn.initializers.variance_scaling(
    max(scale, 1e-10), "fan_avg", "uniform"
  )


def _conv(
  features: int,
  dtype: Dtype,
  conv_impl: str,
  name: str,
  scale: float = 1.0,
  strides: Tuple[int, int] = (1, 1),
) -> nn.Conv:
  """3x3 'SAME' convolution (for stride 2 TF-style padding (0, 1)), float32 params."""
  return nn.Conv(
    features,
    (3, 3),
    strides=strides,
    padding="SAME",
    dtype=dtype,
    param_dtype=jnp.float32,
    kernel_init=_init(scale),
    name=name,
    conv_general_dilated=CONV_IMPLS[conv_impl],
  )


def _dense(
  features: int, dtype: Dtype, name: str, scale: float = 1.0
) -> nn.Dense:
  return nn.Dense(
    features,
    dtype=dtype,
    param_dtype=jnp.float32,
    kernel_init=_init(scale),
    name=name,
  )


def _norm(num_groups: int, dtype: Dtype, name: str) -> nn.GroupNorm:
  return nn.GroupNorm(
    num_groups=num_groups,
    epsilon=1e-6,
    dtype=dtype,
    param_dtype=jnp.float32,
    name=name,
  )


def _is_pos_int(v: Any) -> bool:
  return isinstance(v, int) and not isinstance(v, bool) and v >= 1


@dataclasses.dataclass(frozen=True)
class UNetConfig:
  """Frozen, hashable U-Net settings: the one description of a model.

  The defaults are Ho et al.'s CIFAR-10 model (35.7M parameters at 32x32x3);
  `UNetConfig.tiny()` is a small one for tests and CPU runs. `UNet(config)`
  (or `config.make()`) is the Flax module. Validated at construction; errors
  name the field: "UNetConfig.ch=0 is invalid; valid: ...".

  Attributes:
    ch: base channel count.
    ch_mult: channel multiplier per level (one downsampling between levels).
    num_res_blocks: residual blocks per level.
    attn_resolutions: feature-map sizes that get self-attention.
    dropout: dropout rate in the residual blocks, in [0, 1).
    resamp_with_conv: 3x3 convolutions in the down/upsampling.
    out_ch: output channels (None: the input's).
    num_groups: GroupNorm groups (a divisor of ch).
    dtype: compute dtype, 'float32', 'bfloat16' or 'float16' (parameters
      are float32).
    resolution: when set, checked against the number of levels.
    conv_impl: 'xla' or 'im2col' (fedqjax.diffusion.conv); set by the
      execution resolver, not a user setting.
  """

  ch: int = 128
  ch_mult: Tuple[int, ...] = (1, 2, 2, 2)
  num_res_blocks: int = 2
  attn_resolutions: Tuple[int, ...] = (16,)
  dropout: float = 0.1
  resamp_with_conv: bool = True
  out_ch: Optional[int] = None
  num_groups: int = 32
  dtype: str = "float32"
  resolution: Optional[int] = None
  conv_impl: str = "xla"

  def __post_init__(self):
    # Lists become tuples: the config stays hashable (jit/lru_cache keys).
    for name in ("ch_mult", "attn_resolutions"):
      v = getattr(self, name)
      object.__setattr__(
        self, name, tuple(v) if isinstance(v, (list, tuple)) else v
      )
    if not isinstance(self.dtype, str):
      try:
        object.__setattr__(self, "dtype", jnp.dtype(self.dtype).name)
      except TypeError:
        pass  # reported by _validate
    self._validate()

  def _bad(self, name: str, valid: str):
    raise InvalidSetting("UNetConfig", name, getattr(self, name), valid)

  def _validate(self) -> None:
    if not _is_pos_int(self.ch):
      self._bad("ch", "a positive int")
    if not _is_pos_int(self.num_groups) or self.ch % self.num_groups:
      self._bad(
        "num_groups",
        f"a positive divisor of ch={self.ch} "
        "(every channel count is a multiple of ch)",
      )
    if (
      not isinstance(self.ch_mult, tuple)
      or not self.ch_mult
      or not all(_is_pos_int(m) for m in self.ch_mult)
    ):
      self._bad("ch_mult", "a non-empty tuple of positive ints")
    if not _is_pos_int(self.num_res_blocks):
      self._bad("num_res_blocks", "an int >= 1")
    if (
      not isinstance(self.dropout, (int, float))
      or not 0.0 <= self.dropout < 1.0
    ):
      self._bad("dropout", "[0, 1)")
    if not isinstance(self.attn_resolutions, tuple) or not all(
      _is_pos_int(r) for r in self.attn_resolutions
    ):
      self._bad("attn_resolutions", "a tuple of positive ints")
    if self.out_ch is not None and not _is_pos_int(self.out_ch):
      self._bad("out_ch", "None or a positive int")
    if not isinstance(self.resamp_with_conv, bool):
      self._bad("resamp_with_conv", "True or False")
    if self.dtype not in _DTYPES:
      self._bad("dtype", ", ".join(_DTYPES))
    if self.conv_impl not in CONV_IMPLS:
      self._bad("conv_impl", ", ".join(CONV_IMPLS))
    if self.resolution is not None and not self._fits(self.resolution):
      self._bad("resolution", self._resolution_rule())

  def _fits(self, res: Any) -> bool:
    factor = 2 ** (len(self.ch_mult) - 1)
    return _is_pos_int(res) and res % factor == 0

  def _resolution_rule(self) -> str:
    n = len(self.ch_mult)
    return (
      f"a positive multiple of 2**(len(ch_mult)-1)={2 ** (n - 1)} for "
      f"ch_mult={self.ch_mult} ({n} levels); e.g. pad 28x28 images to 32x32 "
      "or use 3 levels"
    )

  def check_image_shape(self, image_shape: Tuple[int, ...]) -> None:
    """Raises ValueError if [H, W, C] images do not fit the level count."""
    if len(image_shape) != 3:
      raise ValueError(
        f"image_shape={tuple(image_shape)!r} is invalid; valid: (H, W, C)"
      )
    for res in image_shape[:2]:
      if not self._fits(int(res)):
        raise ValueError(
          f"image resolution={int(res)} (image_shape="
          f"{tuple(int(d) for d in image_shape)}) does not fit this "
          f"UNetConfig; valid: {self._resolution_rule()}"
        )

  @classmethod
  def tiny(cls, **overrides) -> "UNetConfig":
    """Small model for tests and CPU runs (compiles in seconds).

    Three levels, so 28x28 (28 -> 14 -> 7) and 32x32 (32 -> 16 -> 8) both
    work; attention at 16 is active at 32x32 only.
    """
    base = dict(
      ch=32,
      ch_mult=(1, 2, 2),
      num_res_blocks=1,
      attn_resolutions=(16,),
      dropout=0.1,
      resamp_with_conv=True,
      out_ch=None,
      num_groups=8,
    )
    return cls(**{**base, **overrides})

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "UNetConfig":
    """Builds a config from a mapping of its field names.

    Raises:
      ValueError: on unknown keys or invalid values.
    """
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
      raise ValueError(
        f"unknown UNetConfig field(s) {unknown}; valid: {sorted(names)}"
      )
    return cls(**dict(d))

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  def make(self) -> "UNet":
    """The Flax module of these settings."""
    return UNet(self)


def timestep_embedding(t: Array, dim: int) -> Array:
  """Sinusoidal embedding of integer timesteps, as in diffusion_tf.

  Args:
    t: [B] integer timesteps.
    dim: embedding width.

  Returns:
    [B, dim] float32 embedding (sin half, then cos half).
  """
  half = dim // 2
  freqs = jnp.exp(
    -math.log(10000.0) / (half - 1) * jnp.arange(half, dtype=jnp.float32)
  )
  args = t.astype(jnp.float32)[:, None] * freqs[None, :]  # [B, half]
  emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
  if dim % 2:
    emb = jnp.pad(emb, ((0, 0), (0, 1)))
  return emb


class ResnetBlock(nn.Module):
  """Pre-activation residual block with timestep projection and dropout."""

  out_ch: int
  dropout: float
  num_groups: int
  dtype: Dtype = jnp.float32
  conv_impl: str = "xla"

  @nn.compact
  def __call__(self, x: Array, temb: Array, *, train: bool) -> Array:
    # x: [B, H, W, C_in], temb: [B, 4*ch]
    dt, out = self.dtype, self.out_ch
    h = _conv(out, dt, self.conv_impl, "conv1")(
      nn.swish(_norm(self.num_groups, dt, "norm1")(x))
    )
    h = h + _dense(out, dt, "temb_proj")(nn.swish(temb))[:, None, None, :]
    h = nn.swish(_norm(self.num_groups, dt, "norm2")(h))
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    h = _conv(out, dt, self.conv_impl, "conv2", 0.0)(h)
    if x.shape[-1] != out:
      # 1x1 "network-in-network" shortcut, as in the paper model.
      x = _dense(out, dt, "nin_shortcut")(x)
    return x + h  # [B, H, W, out_ch]


class AttnBlock(nn.Module):
  """Single-head self-attention over all H*W positions (Ho et al.)."""

  num_groups: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    b, hh, ww, c = x.shape
    dense = lambda name, scale=1.0: _dense(c, self.dtype, name, scale)
    h = _norm(self.num_groups, self.dtype, "norm")(x)
    h = h.reshape(b, hh * ww, c)  # [B, N, C]
    q, k, v = dense("q")(h), dense("k")(h), dense("v")(h)
    w = (
      jnp.einsum("bnc,bmc->bnm", q, k, preferred_element_type=jnp.float32)
      * c**-0.5
    )
    w = jax.nn.softmax(w, axis=-1).astype(
      self.dtype
    )  # [B, N, N], softmax in float32
    h = jnp.einsum("bnm,bmc->bnc", w, v)
    h = dense("proj_out", 0.0)(h)
    return x + h.reshape(b, hh, ww, c)


class Downsample(nn.Module):
  with_conv: bool
  dtype: Dtype = jnp.float32
  conv_impl: str = "xla"

  @nn.compact
  def __call__(self, x: Array) -> Array:
    if self.with_conv:
      return _conv(
        x.shape[-1], self.dtype, self.conv_impl, "conv", strides=(2, 2)
      )(x)
    return nn.avg_pool(x, (2, 2), strides=(2, 2))


class Upsample(nn.Module):
  with_conv: bool
  dtype: Dtype = jnp.float32
  conv_impl: str = "xla"

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x = jnp.repeat(
      jnp.repeat(x, 2, axis=1), 2, axis=2
    )  # nearest neighbour, [B, 2H, 2W, C]
    if self.with_conv:
      x = _conv(x.shape[-1], self.dtype, self.conv_impl, "conv")(x)
    return x


class UNet(nn.Module):
  """Noise-prediction U-Net eps_theta(x_t, t) of Ho et al. 2020.

  Attributes:
    config: every setting (see UNetConfig); the default is the paper's
      CIFAR-10 model.
  """

  config: UNetConfig = UNetConfig()

  @nn.compact
  def __call__(self, x: Array, t: Array, *, train: bool) -> Array:
    """Predicts the noise in x.

    Args:
      x: [B, H, W, C] noisy images.
      t: [B] integer timesteps in [0, T).
      train: enables dropout (needs the 'dropout' rng).

    Returns:
      [B, H, W, out_ch or C] float32 noise prediction.

    Raises:
      TypeError: if `config` is not a UNetConfig.
      ValueError: if H, W are not divisible by 2**(len(ch_mult) - 1).
    """
    cfg = self.config
    if not isinstance(cfg, UNetConfig):
      raise TypeError(
        f"UNet.config must be a UNetConfig, got {type(cfg).__name__}"
      )
    cfg.check_image_shape(x.shape[1:])
    dt, ci, n_levels = jnp.dtype(cfg.dtype), cfg.conv_impl, len(cfg.ch_mult)
    res_block = lambda out, name: ResnetBlock(
      out, cfg.dropout, cfg.num_groups, dt, conv_impl=ci, name=name
    )
    attn = lambda name: AttnBlock(cfg.num_groups, dt, name=name)

    temb = _dense(4 * cfg.ch, dt, "temb_dense0")(
      timestep_embedding(t, cfg.ch)
    )  # [B, 4*ch]
    temb = _dense(4 * cfg.ch, dt, "temb_dense1")(nn.swish(temb))

    hs = [_conv(cfg.ch, dt, ci, "conv_in")(x.astype(dt))]
    for i in range(n_levels):
      for j in range(cfg.num_res_blocks):
        h = res_block(cfg.ch * cfg.ch_mult[i], f"down_{i}_block_{j}")(
          hs[-1], temb, train=train
        )
        if h.shape[1] in cfg.attn_resolutions:
          h = attn(f"down_{i}_attn_{j}")(h)
        hs.append(h)
      if i != n_levels - 1:
        hs.append(
          Downsample(
            cfg.resamp_with_conv, dt, conv_impl=ci, name=f"down_{i}_downsample"
          )(hs[-1])
        )

    h = hs[-1]
    mid_ch = h.shape[-1]
    h = res_block(mid_ch, "mid_block_1")(h, temb, train=train)
    h = attn("mid_attn_1")(h)
    h = res_block(mid_ch, "mid_block_2")(h, temb, train=train)

    for i in reversed(range(n_levels)):
      for j in range(cfg.num_res_blocks + 1):
        h = jnp.concatenate([h, hs.pop()], axis=-1)
        h = res_block(cfg.ch * cfg.ch_mult[i], f"up_{i}_block_{j}")(
          h, temb, train=train
        )
        if h.shape[1] in cfg.attn_resolutions:
          h = attn(f"up_{i}_attn_{j}")(h)
      if i != 0:
        h = Upsample(
          cfg.resamp_with_conv, dt, conv_impl=ci, name=f"up_{i}_upsample"
        )(h)
    assert not hs

    h = nn.swish(_norm(cfg.num_groups, dt, "norm_out")(h))
    h = _conv(cfg.out_ch or x.shape[-1], dt, ci, "conv_out", 0.0)(h)
    return h.astype(jnp.float32)  # [B, H, W, out_ch]
