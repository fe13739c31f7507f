"""The fedqjax DDPM U-Net (fedqjax/diffusion/unet.py) mirrored in PyTorch.

Same architecture, layer by layer, so the parameter count matches exactly:
GroupNorm(eps=1e-6) + swish, sinusoidal timestep embedding (width ch) and a
two-layer MLP (width 4*ch), residual blocks with a timestep projection and
dropout, single-head self-attention at `attn_resolutions` and in the middle,
strided 3x3 convolution down (TF 'SAME' padding = pad (0, 1)), nearest
neighbour + 3x3 convolution up, 1x1 "nin" shortcut when channels change.
Initialization mirrors `_init` (variance_scaling fan_avg uniform, zero bias;
scale 0 -> 1e-10 for conv2 / proj_out / conv_out).

Layout is NCHW (torch's native); callers convert from fedqjax's NHWC.
Also here: the DDPM loss (eps-prediction MSE, t ~ U{0..T-1}, linear schedule
computed in float64 as fedqjax does) and the client optimizer (Adam, global
norm clipping 1.0).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def tiny_unet_kwargs() -> dict:
  """Same values as fedqjax.diffusion.unet.tiny_unet_kwargs (no jax import)."""
  return dict(
    ch=32,
    ch_mult=(1, 2, 2),
    num_res_blocks=1,
    attn_resolutions=(16,),
    dropout=0.1,
    resamp_with_conv=True,
    out_ch=None,
    num_groups=8,
  )


def paper_unet_kwargs() -> dict:
  """The UNet class defaults (Ho et al. CIFAR-10 model, 35.7M at 32x32x3)."""
  return dict(
    ch=128,
    ch_mult=(1, 2, 2, 2),
    num_res_blocks=2,
    attn_resolutions=(16,),
    dropout=0.1,
    resamp_with_conv=True,
    out_ch=None,
    num_groups=32,
  )


def _vs_init_(w: torch.Tensor, scale: float, fan_in: int, fan_out: int) -> None:
  scale = max(scale, 1e-10)
  limit = math.sqrt(3.0 * scale / ((fan_in + fan_out) / 2.0))
  with torch.no_grad():
    w.uniform_(-limit, limit)


def conv3(
  cin: int, cout: int, scale: float = 1.0, stride: int = 1
) -> nn.Conv2d:
  c = nn.Conv2d(cin, cout, 3, stride=stride, padding=1 if stride == 1 else 0)
  _vs_init_(c.weight, scale, cin * 9, cout * 9)
  nn.init.zeros_(c.bias)
  return c


def dense(cin: int, cout: int, scale: float = 1.0) -> nn.Linear:
  d = nn.Linear(cin, cout)
  _vs_init_(d.weight, scale, cin, cout)
  nn.init.zeros_(d.bias)
  return d


def norm(groups: int, c: int) -> nn.GroupNorm:
  return nn.GroupNorm(groups, c, eps=1e-6)


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
  half = dim // 2
  freqs = torch.exp(
    -math.log(10000.0)
    / (half - 1)
    * torch.arange(half, dtype=torch.float32, device=t.device)
  )
  args = t.float()[:, None] * freqs[None, :]
  emb = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)
  if dim % 2:
    emb = F.pad(emb, (0, 1))
  return emb


class ResnetBlock(nn.Module):
  def __init__(
    self, cin: int, cout: int, temb_ch: int, dropout: float, groups: int
  ):
    super().__init__()
    self.norm1 = norm(groups, cin)
    self.conv1 = conv3(cin, cout)
    self.temb_proj = dense(temb_ch, cout)
    self.norm2 = norm(groups, cout)
    self.dropout = nn.Dropout(dropout)
    self.conv2 = conv3(cout, cout, 0.0)
    self.nin_shortcut = None
    if cin != cout:  # flax nn.Dense on NHWC == 1x1 conv
      self.nin_shortcut = nn.Conv2d(cin, cout, 1)
      _vs_init_(self.nin_shortcut.weight, 1.0, cin, cout)
      nn.init.zeros_(self.nin_shortcut.bias)

  def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
    h = self.conv1(F.silu(self.norm1(x)))
    h = h + self.temb_proj(F.silu(temb))[:, :, None, None]
    h = self.conv2(self.dropout(F.silu(self.norm2(h))))
    if self.nin_shortcut is not None:
      x = self.nin_shortcut(x)
    return x + h


class AttnBlock(nn.Module):
  def __init__(self, c: int, groups: int):
    super().__init__()
    self.norm = norm(groups, c)
    self.q, self.k, self.v = dense(c, c), dense(c, c), dense(c, c)
    self.proj_out = dense(c, c, 0.0)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    b, c, hh, ww = x.shape
    h = self.norm(x).reshape(b, c, hh * ww).transpose(1, 2)  # [B, N, C]
    q, k, v = self.q(h), self.k(h), self.v(h)
    w = torch.softmax(torch.bmm(q, k.transpose(1, 2)) * c**-0.5, dim=-1)
    h = self.proj_out(torch.bmm(w, v))
    return x + h.transpose(1, 2).reshape(b, c, hh, ww)


class Downsample(nn.Module):
  def __init__(self, c: int, with_conv: bool):
    super().__init__()
    self.conv = conv3(c, c, stride=2) if with_conv else None

  def forward(self, x):
    if self.conv is not None:
      return self.conv(F.pad(x, (0, 1, 0, 1)))  # TF/flax 'SAME' for stride 2
    return F.avg_pool2d(x, 2, 2)


class Upsample(nn.Module):
  def __init__(self, c: int, with_conv: bool):
    super().__init__()
    self.conv = conv3(c, c) if with_conv else None

  def forward(self, x):
    x = F.interpolate(x, scale_factor=2, mode="nearest")
    return self.conv(x) if self.conv is not None else x


def _down_path(
  rb, res, *, ch, ch_mult, nrb, attn_resolutions, with_conv, groups
):
  """The down levels from resolution `res`; returns (levels, skip channels,
  channels, resolution) at the bottom."""
  levels = nn.ModuleList()
  skips = [ch]
  cur = ch
  for i in range(len(ch_mult)):
    level = nn.Module()
    level.blocks, level.attns = nn.ModuleList(), nn.ModuleList()
    for _ in range(nrb):
      out = ch * ch_mult[i]
      level.blocks.append(rb(cur, out))
      level.attns.append(
        AttnBlock(out, groups) if res in attn_resolutions else nn.Identity()
      )
      cur = out
      skips.append(cur)
    level.downsample = None
    if i != len(ch_mult) - 1:
      level.downsample = Downsample(cur, with_conv)
      res //= 2
      skips.append(cur)
    levels.append(level)
  return levels, skips, cur, res


def _up_path(
  rb, res, cur, skips, *, ch, ch_mult, nrb, attn_resolutions, with_conv, groups
):
  """The up levels from `cur` channels at resolution `res`, consuming `skips`;
  returns (levels, channels)."""
  levels = nn.ModuleList()
  for i in reversed(range(len(ch_mult))):
    level = nn.Module()
    level.blocks, level.attns = nn.ModuleList(), nn.ModuleList()
    for _ in range(nrb + 1):
      out = ch * ch_mult[i]
      level.blocks.append(rb(cur + skips.pop(), out))
      level.attns.append(
        AttnBlock(out, groups) if res in attn_resolutions else nn.Identity()
      )
      cur = out
    level.upsample = None
    if i != 0:
      level.upsample = Upsample(cur, with_conv)
      res *= 2
    levels.append(level)
  return levels, cur


class TorchUNet(nn.Module):
  """eps_theta(x_t, t); x is [B, C, H, W], t is [B] int."""

  def __init__(
    self,
    in_ch: int,
    resolution: int,
    ch: int = 128,
    ch_mult: Sequence[int] = (1, 2, 2, 2),
    num_res_blocks: int = 2,
    attn_resolutions: Sequence[int] = (16,),
    dropout: float = 0.1,
    resamp_with_conv: bool = True,
    out_ch: Optional[int] = None,
    num_groups: int = 32,
  ):
    super().__init__()
    self.ch, self.n_levels, self.nrb = ch, len(ch_mult), num_res_blocks
    temb_ch = 4 * ch
    self.temb_dense0 = dense(ch, temb_ch)
    self.temb_dense1 = dense(temb_ch, temb_ch)
    self.conv_in = conv3(in_ch, ch)
    rb = lambda ci, co: ResnetBlock(ci, co, temb_ch, dropout, num_groups)
    arch = dict(
      ch=ch,
      ch_mult=ch_mult,
      nrb=num_res_blocks,
      attn_resolutions=attn_resolutions,
      with_conv=resamp_with_conv,
      groups=num_groups,
    )
    # Down path, tracking channel counts and resolutions of the skips.
    self.down, skips, cur, res = _down_path(rb, resolution, **arch)
    self.mid_block_1 = rb(cur, cur)
    self.mid_attn_1 = AttnBlock(cur, num_groups)
    self.mid_block_2 = rb(cur, cur)
    self.up, cur = _up_path(rb, res, cur, skips, **arch)
    assert not skips
    self.norm_out = norm(num_groups, cur)
    self.conv_out = conv3(cur, out_ch or in_ch, 0.0)

  def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    temb = self.temb_dense1(
      F.silu(self.temb_dense0(timestep_embedding(t, self.ch)))
    )
    hs = [self.conv_in(x)]
    for level in self.down:
      for blk, attn in zip(level.blocks, level.attns):
        hs.append(attn(blk(hs[-1], temb)))
      if level.downsample is not None:
        hs.append(level.downsample(hs[-1]))
    h = hs[-1]
    h = self.mid_block_2(self.mid_attn_1(self.mid_block_1(h, temb)), temb)
    for level in self.up:
      for blk, attn in zip(level.blocks, level.attns):
        h = attn(blk(torch.cat([h, hs.pop()], dim=1), temb))
      if level.upsample is not None:
        h = level.upsample(h)
    assert not hs
    return self.conv_out(F.silu(self.norm_out(h)))


def num_params(model: nn.Module) -> int:
  return sum(p.numel() for p in model.parameters())


class LinearSchedule:
  """sqrt(alpha_bar_t), sqrt(1 - alpha_bar_t) of the linear DDPM schedule."""

  def __init__(
    self, T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02
  ):
    betas = np.linspace(beta_start, beta_end, T, dtype=np.float64)
    ab = np.cumprod(1.0 - betas)
    self.T = T
    self.sqrt_ab = torch.tensor(np.sqrt(ab), dtype=torch.float32)
    self.sqrt_1m_ab = torch.tensor(np.sqrt(1.0 - ab), dtype=torch.float32)


def ddpm_loss(
  model: nn.Module,
  x0: torch.Tensor,
  sched: LinearSchedule,
  gen: Optional[torch.Generator] = None,
) -> torch.Tensor:
  """L_simple: eps-prediction MSE averaged over pixels, t ~ U{0..T-1}."""
  b = x0.shape[0]
  dev = x0.device
  t = torch.randint(0, sched.T, (b,), generator=gen, device=dev)
  noise = torch.randn(x0.shape, generator=gen, device=dev)
  x_t = (
    sched.sqrt_ab.to(dev)[t][:, None, None, None] * x0
    + sched.sqrt_1m_ab.to(dev)[t][:, None, None, None] * noise
  )
  return torch.mean(torch.square(model(x_t, t) - noise))


def local_train(
  model: nn.Module,
  images: torch.Tensor,
  count: int,
  steps: int,
  batch: int,
  lr: float,
  sched: LinearSchedule,
  grad_clip: float = 1.0,
  gen: Optional[torch.Generator] = None,
) -> float:
  """I Adam steps (fresh state) on minibatches drawn uniformly with replacement.

  images: [n_max, C, H, W]; only the first `count` are the client's data.
  Returns the mean loss.
  """
  model.train()
  opt = torch.optim.Adam(model.parameters(), lr=lr, eps=1e-8)
  total = 0.0
  for _ in range(steps):
    idx = torch.randint(
      0, max(count, 1), (batch,), generator=gen, device=images.device
    )
    loss = ddpm_loss(model, images[idx], sched, gen)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip > 0:
      torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    total += float(loss.detach())
  return total / steps


@torch.no_grad()
def stochastic_quantize_(
  tensors: Sequence[torch.Tensor],
  bits: int = 8,
  gen: Optional[torch.Generator] = None,
) -> None:
  """In place: per-tensor min-max stochastic rounding to 2**bits levels.

  Vectorized: all tensors are concatenated into one flat vector, per-tensor
  min/max come from segment reductions, one uniform draw covers everything.
  """
  flat = torch.cat([t.reshape(-1) for t in tensors])
  sizes = [t.numel() for t in tensors]
  dev = flat.device
  seg = torch.repeat_interleave(
    torch.arange(len(sizes), device=dev), torch.tensor(sizes, device=dev)
  )
  lo = torch.full((len(sizes),), float("inf"), device=dev).scatter_reduce(
    0, seg, flat, "amin"
  )
  hi = torch.full((len(sizes),), float("-inf"), device=dev).scatter_reduce(
    0, seg, flat, "amax"
  )
  levels = float(2**bits - 1)
  delta = ((hi - lo) / levels).clamp_min(1e-30)
  x = (flat - lo[seg]) / delta[seg]
  q = torch.floor(x + torch.rand(x.shape, generator=gen, device=dev)).clamp_(
    0, levels
  )
  deq = lo[seg] + q * delta[seg]
  off = 0
  for t, n in zip(tensors, sizes):
    t.copy_(deq[off : off + n].view_as(t))
    off += n
