"""DDPM for fedqjax: U-Net, schedule, loss, EMA, held-out loss and variational
bound, samplers, FLOPs, centralized training.

Ho et al. 2020 (https://arxiv.org/abs/2006.11239); DDIM: Song et al. 2021
(https://arxiv.org/abs/2010.02502).
"""

from fedqjax.diffusion.centralized import (
  init_unet,
  make_train_step,
  train_centralized,
)
from fedqjax.diffusion.conv import CONV_IMPLS, im2col_conv
from fedqjax.diffusion.flops import (
  sample_flops_per_image,
  train_flops_per_image,
)
from fedqjax.diffusion.heldout import (
  HeldoutSet,
  heldout_loss,
  heldout_set,
  stratified_timesteps,
)
from fedqjax.diffusion.losses import (
  ddpm_loss,
  ema_decay,
  ema_update,
  loss_and_grad,
)
from fedqjax.diffusion.sampling import (
  ddim_sample,
  ddim_timesteps,
  ddpm_sample,
  eps_fn_from_module,
)
from fedqjax.diffusion.schedule import (
  NoiseSchedule,
  linear_schedule,
  predict_x0_from_eps,
  q_sample,
  schedule_from_betas,
)
from fedqjax.diffusion.unet import UNet, UNetConfig
from fedqjax.diffusion.vlb import kl_timesteps, vlb_bits_per_dim

__all__ = [
  "CONV_IMPLS",
  "HeldoutSet",
  "NoiseSchedule",
  "UNet",
  "UNetConfig",
  "ddim_sample",
  "ddim_timesteps",
  "ddpm_loss",
  "ddpm_sample",
  "ema_decay",
  "ema_update",
  "eps_fn_from_module",
  "heldout_loss",
  "heldout_set",
  "im2col_conv",
  "init_unet",
  "kl_timesteps",
  "linear_schedule",
  "loss_and_grad",
  "make_train_step",
  "predict_x0_from_eps",
  "q_sample",
  "sample_flops_per_image",
  "schedule_from_betas",
  "stratified_timesteps",
  "train_centralized",
  "train_flops_per_image",
  "vlb_bits_per_dim",
]
