"""`UNetConfig`: the settings of the DDPM U-Net (`fedqjax.diffusion.unet`).

Validated at construction; `UNetConfig.make()` builds the Flax module. Also
importable from `fedqjax.diffusion.unet` and `fedqjax.diffusion`.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Mapping, Optional, Tuple

import jax.numpy as jnp

from fedqjax.diffusion.conv import CONV_IMPLS
from fedqjax.errors import InvalidSetting

if TYPE_CHECKING:
  from fedqjax.diffusion.unet import UNet

_DTYPES = ("float32", "bfloat16", "float16")


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
    from fedqjax.diffusion.unet import UNet  # unet imports this module

    return UNet(self)
