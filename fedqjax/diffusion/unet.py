"""DDPM U-Net of Ho et al. 2020 (https://arxiv.org/abs/2006.11239) in Flax linen.

A port of the CIFAR-10 model in the authors' `diffusion_tf/models/unet.py`:
GroupNorm + swish, sinusoidal timestep embedding followed by a two-layer MLP
(width 4*ch), residual blocks with a timestep projection and dropout, one-head
self-attention at the resolutions in `attn_resolutions` and in the middle,
strided 3x3 convolutions to downsample, nearest-neighbour + 3x3 convolution to
upsample. `UNet` takes one `UNetConfig` (every setting, validated there;
defined in `unet_config`, re-exported here); the defaults are the paper's
CIFAR-10 model (35.7M parameters at 32x32x3).
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

import math
from typing import Any, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from fedqjax.diffusion.conv import CONV_IMPLS
from fedqjax.diffusion.unet_config import UNetConfig
from fedqjax.typing import Array

Dtype = Any


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


def _res_block(cfg: UNetConfig, dt: Dtype, out: int, name: str) -> ResnetBlock:
  return ResnetBlock(
    out, cfg.dropout, cfg.num_groups, dt, conv_impl=cfg.conv_impl, name=name
  )


def _attn(cfg: UNetConfig, dt: Dtype, name: str) -> AttnBlock:
  return AttnBlock(cfg.num_groups, dt, name=name)


def _time_embedding(cfg: UNetConfig, dt: Dtype, t: Array) -> Array:
  """Sinusoidal embedding + two-layer MLP: [B] -> [B, 4*ch]."""
  temb = _dense(4 * cfg.ch, dt, "temb_dense0")(
    timestep_embedding(t, cfg.ch)
  )  # [B, 4*ch]
  return _dense(4 * cfg.ch, dt, "temb_dense1")(nn.swish(temb))


def _down_path(
  cfg: UNetConfig, dt: Dtype, x: Array, temb: Array, train: bool
) -> list:
  """conv_in and the downsampling levels; every output, for the skips."""
  ci, n_levels = cfg.conv_impl, len(cfg.ch_mult)
  hs = [_conv(cfg.ch, dt, ci, "conv_in")(x.astype(dt))]
  for i in range(n_levels):
    for j in range(cfg.num_res_blocks):
      h = _res_block(cfg, dt, cfg.ch * cfg.ch_mult[i], f"down_{i}_block_{j}")(
        hs[-1], temb, train=train
      )
      if h.shape[1] in cfg.attn_resolutions:
        h = _attn(cfg, dt, f"down_{i}_attn_{j}")(h)
      hs.append(h)
    if i != n_levels - 1:
      hs.append(
        Downsample(
          cfg.resamp_with_conv, dt, conv_impl=ci, name=f"down_{i}_downsample"
        )(hs[-1])
      )
  return hs


def _middle(
  cfg: UNetConfig, dt: Dtype, h: Array, temb: Array, train: bool
) -> Array:
  """Residual block, self-attention, residual block at the lowest resolution."""
  mid_ch = h.shape[-1]
  h = _res_block(cfg, dt, mid_ch, "mid_block_1")(h, temb, train=train)
  h = _attn(cfg, dt, "mid_attn_1")(h)
  return _res_block(cfg, dt, mid_ch, "mid_block_2")(h, temb, train=train)


def _up_path(
  cfg: UNetConfig, dt: Dtype, h: Array, hs: list, temb: Array, train: bool
) -> Array:
  """The upsampling levels; pops every skip of `hs` (last first)."""
  for i in reversed(range(len(cfg.ch_mult))):
    for j in range(cfg.num_res_blocks + 1):
      h = jnp.concatenate([h, hs.pop()], axis=-1)
      h = _res_block(cfg, dt, cfg.ch * cfg.ch_mult[i], f"up_{i}_block_{j}")(
        h, temb, train=train
      )
      if h.shape[1] in cfg.attn_resolutions:
        h = _attn(cfg, dt, f"up_{i}_attn_{j}")(h)
    if i != 0:
      h = Upsample(
        cfg.resamp_with_conv,
        dt,
        conv_impl=cfg.conv_impl,
        name=f"up_{i}_upsample",
      )(h)
  return h


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
    dt = jnp.dtype(cfg.dtype)
    # Submodules built by the helpers are children of this module (flax
    # takes the parent from the module being called).
    temb = _time_embedding(cfg, dt, t)
    hs = _down_path(cfg, dt, x, temb, train)
    h = _middle(cfg, dt, hs[-1], temb, train)
    h = _up_path(cfg, dt, h, hs, temb, train)
    assert not hs

    h = nn.swish(_norm(cfg.num_groups, dt, "norm_out")(h))
    h = _conv(cfg.out_ch or x.shape[-1], dt, cfg.conv_impl, "conv_out", 0.0)(h)
    return h.astype(jnp.float32)  # [B, H, W, out_ch]
