"""DDPM for fedqjax: U-Net, schedule, loss, samplers, FLOPs, centralized training.

Ho et al. 2020 (https://arxiv.org/abs/2006.11239); DDIM: Song et al. 2021
(https://arxiv.org/abs/2010.02502).
"""
from fedqjax.diffusion.conv import CONV_IMPLS, fwd_form_conv, im2col_conv
from fedqjax.diffusion.flops import sample_flops_per_image, train_flops_per_image
from fedqjax.diffusion.losses import ddpm_loss, ema_update, loss_and_grad
from fedqjax.diffusion.sampling import (ddim_sample, ddim_timesteps, ddpm_sample,
                                        eps_fn_from_module)
from fedqjax.diffusion.schedule import (NoiseSchedule, linear_schedule, predict_x0_from_eps,
                                        q_sample, schedule_from_betas)
from fedqjax.diffusion.train import init_unet, make_train_step, train_centralized
from fedqjax.diffusion.unet import UNet, UNetConfig, tiny_unet_kwargs, validate_unet

__all__ = [
    "CONV_IMPLS", "NoiseSchedule", "UNet", "UNetConfig", "ddim_sample", "ddim_timesteps", "ddpm_loss",
    "ddpm_sample", "ema_update", "eps_fn_from_module", "fwd_form_conv", "im2col_conv", "init_unet", "linear_schedule",
    "loss_and_grad", "make_train_step", "predict_x0_from_eps", "q_sample",
    "sample_flops_per_image", "schedule_from_betas", "tiny_unet_kwargs", "train_centralized",
    "train_flops_per_image", "validate_unet",
]
