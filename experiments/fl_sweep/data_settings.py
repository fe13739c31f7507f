"""The training sweep's data, model and diffusion keys (sections `data`,
`model`, `diffusion` of `experiments.fl_sweep.settings.Settings`)."""

from __future__ import annotations

import dataclasses
from typing import Tuple

from experiments.common.settings import Invalid, between, key, one_of
from fedqjax.diffusion import UNetConfig


@dataclasses.dataclass(frozen=True)
class Data:
  name: str = key(
    "auto",
    one_of("auto", "cifar10", "fashion_mnist", "synthetic"),
    "auto: CIFAR-10 if tfds has it prepared, else Fashion-MNIST",
  )
  data_dir: str = key(
    "",
    doc="directory of the Fashion-MNIST idx files, or tfds's data_dir for "
    "CIFAR-10 ('': the default places)",
  )
  tarball: str = key(
    "",
    doc="path to cifar-10-python.tar.gz, read instead of tfds (Python pickles:"
    " a"
    " file you trust)",
  )
  download: bool = key(
    False, doc="let tfds download CIFAR-10 (needs a network)"
  )
  resolution: int = key(
    0,
    one_of(0, 8, 16, 28, 32),
    "pixels per side: smaller images are padded to it (28 -> 32, no "
    "interpolation), larger ones refused; 0 = native size (28 Fashion-MNIST,"
    " 32 CIFAR-10; synthetic: 32)",
  )
  partition: str = key(
    "iid",
    one_of("iid", "dirichlet", "shards"),
    "split of the training images over the N clients (per seed): iid | "
    "dirichlet (label skew, dirichlet_alpha) | shards (labels_per_client)",
  )
  dirichlet_alpha: float = key(
    0.5,
    between(0, lo_open=True),
    "partition dirichlet: each class's images go to the clients in "
    "proportions ~ Dir(alpha); small = few classes per client, large = "
    "near iid",
  )
  labels_per_client: int = key(
    2,
    between(1, 10),
    "partition shards: label-sorted shards per client (McMahan et al. "
    "2017), so about this many classes per client",
  )
  max_train: int = key(6000, between(0), "training images used (0 = all)")
  num_test: int = key(
    1000,
    between(2),
    "test images kept: the reference images for FID/KID, and the held-out "
    "and bits/dim sets come from them",
  )


@dataclasses.dataclass(frozen=True)
class Model:
  """The U-Net; `UNetConfig` checks these keys (its fields)."""

  ch: int = key(
    32,
    doc="base channel count (every level's is a multiple); Ho et al. 2020's"
    " CIFAR-10 U-Net: 128 (preset paper)",
  )
  ch_mult: Tuple[int, ...] = key(
    (1, 2, 2),
    doc="channel multiplier per resolution level, a 2x downsampling between "
    "levels; Ho et al. 2020: 1,2,2,2",
  )
  num_res_blocks: int = key(
    1, doc="residual blocks per level (>= 1); Ho et al. 2020: 2"
  )
  attn_resolutions: Tuple[int, ...] = key(
    (16,),
    doc="feature-map sizes (pixels per side) with self-attention; Ho et al. "
    "2020: 16",
  )
  dropout: float = key(
    0.1,
    doc="dropout rate in the residual blocks, in [0, 1); Ho et al. 2020 "
    "(CIFAR-10): 0.1",
  )
  num_groups: int = key(
    8, doc="GroupNorm groups, a divisor of ch; Ho et al. 2020: 32"
  )
  dtype: str = key(
    "float32",
    doc="compute dtype: float32 | bfloat16 | float16 (parameters stay float32)",
  )

  def unet(self, resolution=None) -> UNetConfig:
    return UNetConfig(**dataclasses.asdict(self), resolution=resolution)

  def validate(self) -> None:
    self.unet()


@dataclasses.dataclass(frozen=True)
class Diffusion:
  T: int = key(
    1000, between(2), "diffusion steps T of the DDPM; 1000: Ho et al. 2020"
  )
  beta_start: float = key(
    1e-4,
    between(0, 1, lo_open=True, hi_open=True),
    "beta_1 of the linear noise schedule; 1e-4: Ho et al. 2020",
  )
  beta_end: float = key(
    0.02,
    between(0, 1, lo_open=True, hi_open=True),
    "beta_T of the linear noise schedule; 0.02: Ho et al. 2020",
  )

  def validate(self) -> None:
    if not self.beta_start < self.beta_end:
      raise Invalid(
        "beta_start", self.beta_start, f"(0, beta_end={self.beta_end})"
      )
