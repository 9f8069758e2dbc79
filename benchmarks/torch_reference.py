# Copyright 2026 The diffseg_jax Authors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.

"""The authors' network, x-space loss and DDPM sampler in PyTorch, from SPEC.

A yardstick for speed comparisons run in the same process as ours: the
guided-diffusion style U-Net of SPEC §2a (NCHW, the authors' state-dict names,
so `official_reference.npz` loads into it), the weighted x-space loss of SPEC §2
(cosine schedule with input scale b mapped to logSNR +-20, stratified t) and
the ancestral DDPM sampler (large variance, x0_hat clipped to [-1, 1], the last
step returns x0_hat, masks = x0_hat > 0). Written from SPEC, not from the
authors' code; tests/test_torch_reference.py proves the network and the loss
equal the recorded reference. Needs `pip install torch` (the `bench` extra).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

LOGSNR_MIN = -20.0
LOGSNR_MAX = 20.0


@dataclasses.dataclass(frozen=True)
class NetConfig:
  """The network's hyper-parameters (defaults: the paper's 6.9 M network)."""

  base_channels: int = 32
  channel_mult: Sequence[int] = (1, 1, 2, 4)
  num_res_blocks: Sequence[int] = (1, 2, 3, 4)
  num_middle_blocks: int = 4
  attention_levels: Sequence[int] = (-1,)
  num_heads: int = 4
  image_channels: int = 1
  output_activation: str = 'tanh'  # 'tanh' (x-prediction) or 'identity'.
  time_max_period: float = 10.0


class GroupNorm32(nn.GroupNorm):
  """GroupNorm computed in float32 whatever the input dtype."""

  def forward(self, x):
    return super().forward(x.float()).type(x.dtype)


def group_norm(channels: int) -> nn.GroupNorm:
  groups = 32 if channels % 32 == 0 else channels
  return GroupNorm32(groups, channels, eps=1e-5)


def timestep_embedding(t, *, channels: int, max_period: float):
  """[cos(t f), sin(t f)], f_k = exp(-ln(max_period) k / half): [B, channels]."""
  half = channels // 2
  freqs = torch.exp(
    -math.log(max_period)
    * torch.arange(half, dtype=torch.float32, device=t.device)
    / half
  )
  args = t.float()[:, None] * freqs[None]
  return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class ResBlock(nn.Module):
  """GN-SiLU-Conv, + Linear(SiLU(emb)), GN-SiLU-(Dropout)-Conv, + skip."""

  def __init__(self, cin: int, cout: int, emb_channels: int):
    super().__init__()
    self.in_layers = nn.Sequential(
      group_norm(cin), nn.SiLU(), nn.Conv2d(cin, cout, 3, padding=1)
    )
    self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, cout))
    self.out_layers = nn.Sequential(
      group_norm(cout),
      nn.SiLU(),
      nn.Dropout(0.0),
      nn.Conv2d(cout, cout, 3, padding=1),
    )
    self.skip_connection = (
      nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1)
    )

  def forward(self, x, emb):
    h = self.in_layers(x)
    h = h + self.emb_layers(emb).type(h.dtype)[:, :, None, None]
    return self.skip_connection(x) + self.out_layers(h)


class AttentionBlock(nn.Module):
  """Self-attention over positions with the legacy [heads, (q, k, v)] layout."""

  def __init__(self, channels: int, num_heads: int):
    super().__init__()
    self.num_heads = num_heads
    self.norm = group_norm(channels)
    self.qkv = nn.Conv1d(channels, 3 * channels, 1)
    self.proj_out = nn.Conv1d(channels, channels, 1)

  def forward(self, x):
    b, c, hgt, wid = x.shape
    flat = x.reshape(b, c, hgt * wid)
    qkv = self.qkv(self.norm(flat))
    head = c // self.num_heads
    q, k, v = qkv.reshape(b * self.num_heads, 3 * head, -1).split(head, dim=1)
    scale = head**-0.25
    weight = torch.einsum('bct,bcs->bts', q * scale, k * scale)
    weight = torch.softmax(weight.float(), dim=-1).type(weight.dtype)
    out = torch.einsum('bts,bcs->bct', weight, v).reshape(b, c, -1)
    return (flat + self.proj_out(out)).reshape(b, c, hgt, wid)


class Downsample(nn.Module):
  def __init__(self, channels: int):
    super().__init__()
    self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

  def forward(self, x):
    return self.op(x)


class Upsample(nn.Module):
  def __init__(self, channels: int):
    super().__init__()
    self.conv = nn.Conv2d(channels, channels, 3, padding=1)

  def forward(self, x):
    return self.conv(F.interpolate(x, scale_factor=2, mode='nearest'))


def _apply(block, h, emb):
  for layer in block:
    h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
  return h


class UNet(nn.Module):
  """`forward(z [B,1,H,W], t [B], image [B,C,H,W])` -> raw output [B,1,H,W]."""

  def __init__(self, config: NetConfig = NetConfig()):
    super().__init__()
    self.config = config
    base = config.base_channels
    emb_channels = 4 * base
    levels = len(config.channel_mult)
    attention = {level % levels for level in config.attention_levels}
    self.time_embed = nn.Sequential(
      nn.Linear(base, emb_channels),
      nn.SiLU(),
      nn.Linear(emb_channels, emb_channels),
    )

    blocks = [
      nn.ModuleList([nn.Conv2d(1 + config.image_channels, base, 3, padding=1)])
    ]
    skips = [base]
    ch = base
    for level, (mult, num_res) in enumerate(
      zip(config.channel_mult, config.num_res_blocks)
    ):
      for _ in range(num_res):
        block = [ResBlock(ch, mult * base, emb_channels)]
        ch = mult * base
        if level in attention:
          block.append(AttentionBlock(ch, config.num_heads))
        blocks.append(nn.ModuleList(block))
        skips.append(ch)
      if level != levels - 1:
        blocks.append(nn.ModuleList([Downsample(ch)]))
        skips.append(ch)
    self.input_blocks = nn.ModuleList(blocks)

    middle = []
    for _ in range(config.num_middle_blocks - 1):
      middle.append(ResBlock(ch, ch, emb_channels))
      if levels - 1 in attention:
        middle.append(AttentionBlock(ch, config.num_heads))
    middle.append(ResBlock(ch, ch, emb_channels))
    self.middle_block = nn.ModuleList(middle)

    blocks = []
    for level in reversed(range(levels)):
      mult = config.channel_mult[level]
      count = config.num_res_blocks[level] + 1
      for i in range(count):
        block = [ResBlock(ch + skips.pop(), mult * base, emb_channels)]
        ch = mult * base
        if level in attention:
          block.append(AttentionBlock(ch, config.num_heads))
        if level != 0 and i == count - 1:
          block.append(Upsample(ch))
        blocks.append(nn.ModuleList(block))
    self.output_blocks = nn.ModuleList(blocks)
    self.out = nn.Sequential(
      nn.Identity(), group_norm(ch), nn.SiLU(), nn.Conv2d(ch, 1, 3, padding=1)
    )

  def forward(self, z, t, image):
    config = self.config
    emb = self.time_embed(
      timestep_embedding(
        t, channels=config.base_channels, max_period=config.time_max_period
      )
    )
    h = torch.cat([z, image], dim=1)
    hs = []
    for block in self.input_blocks:
      h = _apply(block, h, emb)
      hs.append(h)
    h = _apply(self.middle_block, h, emb)
    for block in self.output_blocks:
      h = _apply(block, torch.cat([h, hs.pop()], dim=1), emb)
    h = self.out(h).float()
    return torch.tanh(h) if config.output_activation == 'tanh' else h


# --------------------------------------------------------------------------
# Diffusion (SPEC §2): schedule, loss, sampler.
# --------------------------------------------------------------------------


def logsnr_cosine(t, *, input_scale: float):
  """logSNR(t) of the input-scaled, endpoint-mapped cosine schedule.

  Computed in float64 (on t's device) and returned in float64:
  gamma' = s(-20) + (s(20) - s(-20)) (gamma_b(t) - gamma_b(1)) /
  (gamma_b(0) - gamma_b(1)), logSNR = log(gamma' / (1 - gamma')).
  """
  t = t.double()

  def gamma_b(tt):
    g = torch.cos(0.5 * math.pi * tt) ** 2
    b2 = input_scale**2
    return b2 * g / ((b2 - 1) * g + 1)

  one = torch.ones((), dtype=torch.float64, device=t.device)
  g0, g1 = gamma_b(0 * one), gamma_b(one)
  lo, hi = torch.sigmoid(LOGSNR_MIN * one), torch.sigmoid(LOGSNR_MAX * one)
  gamma = lo + (hi - lo) * (gamma_b(t) - g1) / (g0 - g1)
  return torch.log(gamma) - torch.log1p(-gamma)


def weight_fn(logsnr, weighting: str):
  """x-space loss weight of SPEC §2 from logSNR (name case-insensitive)."""
  weighting = weighting.lower()
  if weighting == 'uniform':
    return torch.ones_like(logsnr)
  if weighting == 'snr':
    return torch.exp(logsnr)
  if weighting == 'snr_plus1':
    return 1 + torch.exp(logsnr)
  if weighting == 'snr_trunc':
    return torch.clamp(torch.exp(logsnr), min=1.0)
  if weighting.startswith('sigmoid_'):
    return torch.sigmoid(logsnr - float(weighting[len('sigmoid_') :]))
  raise ValueError(f'unknown weighting {weighting!r}')


def _expand(a, like):
  return a.reshape((-1,) + (1,) * (like.ndim - 1))


def predict_x0(*, z, output, logsnr, prediction: str):
  alpha = _expand(torch.sigmoid(logsnr).sqrt(), z)
  sigma = _expand(torch.sigmoid(-logsnr).sqrt(), z)
  if prediction == 'x':
    return output
  if prediction == 'eps':
    return (z - sigma * output) / alpha
  if prediction == 'v':
    return alpha * z - sigma * output
  raise ValueError(f'unknown prediction {prediction!r}')


def diffusion_loss(
  net,
  *,
  x0,
  image,
  t=None,
  eps=None,
  input_scale=0.1,
  prediction='x',
  weighting='snr_plus1',
  decoupled=False,
):
  """Per-example w(t) * mean((x0_hat - x0)^2) [B]; t stratified when None.

  Returns:
    (losses [B] float32, dict(z, x0_hat, t, logsnr)).
  """
  batch = x0.shape[0]
  if t is None:
    u = torch.rand((), device=x0.device)
    t = (u + torch.arange(batch, device=x0.device)) / batch
  if eps is None:
    eps = torch.randn_like(x0)
  t64 = t.detach().double().requires_grad_(decoupled)
  logsnr64 = logsnr_cosine(t64, input_scale=input_scale)
  w = weight_fn(logsnr64, weighting)
  if decoupled:
    (dlogsnr,) = torch.autograd.grad(logsnr64.sum(), t64)
    w = w * -torch.clamp(dlogsnr, max=0.0)
  logsnr = logsnr64.detach().float()
  alpha = _expand(torch.sigmoid(logsnr).sqrt(), x0)
  sigma = _expand(torch.sigmoid(-logsnr).sqrt(), x0)
  z = alpha * x0 + sigma * eps
  output = net(z, t.float(), image).float()
  x0_hat = predict_x0(z=z, output=output, logsnr=logsnr, prediction=prediction)
  mse = torch.mean((x0_hat - x0) ** 2, dim=tuple(range(1, x0.ndim)))
  losses = w.detach().float() * mse
  return losses, dict(z=z, x0_hat=x0_hat, t=t, logsnr=logsnr)


def ddpm_step(*, z_t, x0_hat, logsnr_t, logsnr_s, noise):
  """z_s ~ q(z_s | z_t, x = x0_hat), variance (1 - SNR_t/SNR_s) sigmoid(-logSNR_t)."""
  alpha_t = _expand(torch.sigmoid(logsnr_t).sqrt(), z_t)
  alpha_s = _expand(torch.sigmoid(logsnr_s).sqrt(), z_t)
  ratio = _expand(torch.exp(logsnr_t - logsnr_s), z_t)  # SNR_t / SNR_s.
  one_minus = _expand(-torch.expm1(logsnr_t - logsnr_s), z_t)
  mean = ratio * (alpha_s / alpha_t) * z_t + one_minus * alpha_s * x0_hat
  var = one_minus * _expand(torch.sigmoid(-logsnr_t), z_t)
  return mean + var.sqrt() * noise


@torch.no_grad()
def ddpm_sample(
  net,
  *,
  image,
  num_samples: int,
  num_steps: int = 10,
  input_scale: float = 0.1,
  prediction: str = 'x',
  generator: torch.Generator | None = None,
):
  """Ancestral DDPM (large variance) from t = 1 to 0 on the grid i / N.

  Args:
    net: the UNet (called under whatever autocast the caller set).
    image: [B, C, H, W].
    num_samples: N masks per image, drawn in one batched network call a step.

  Returns:
    bool masks [B, N, H, W] (final x0_hat > 0).
  """
  b, _, hgt, wid = image.shape
  images = image.repeat_interleave(num_samples, dim=0)
  m = b * num_samples
  z = torch.randn((m, 1, hgt, wid), generator=generator, device=image.device)
  x0_hat = z
  for i in range(num_steps):
    t = torch.full((m,), (num_steps - i) / num_steps, device=image.device)
    s = torch.full((m,), (num_steps - i - 1) / num_steps, device=image.device)
    logsnr_t = logsnr_cosine(t, input_scale=input_scale).float()
    logsnr_s = logsnr_cosine(s, input_scale=input_scale).float()
    output = net(z, t, images).float()
    x0_hat = predict_x0(
      z=z, output=output, logsnr=logsnr_t, prediction=prediction
    ).clamp(-1.0, 1.0)
    if i == num_steps - 1:
      break
    noise = torch.randn(z.shape, generator=generator, device=z.device)
    z = ddpm_step(
      z_t=z, x0_hat=x0_hat, logsnr_t=logsnr_t, logsnr_s=logsnr_s, noise=noise
    )
  return (x0_hat > 0).reshape(b, num_samples, hgt, wid)


def make_train_step(
  net,
  *,
  lr=1e-4,
  weight_decay=0.01,
  grad_clip=1.0,
  ema_decay=0.9999,
  amp_dtype=None,
  **loss_kwargs,
):
  """The authors' kind of step: AdamW, grad-norm clip, EMA, optional autocast.

  amp_dtype=torch.float16 trains under autocast with a GradScaler (as the
  authors train on GPUs); None trains in float32.

  Returns:
    step(image [B,C,H,W], x0 [B,1,H,W]) -> loss (a 0-d tensor).
  """
  optimizer = torch.optim.AdamW(
    net.parameters(), lr=lr, betas=(0.9, 0.999), weight_decay=weight_decay
  )
  device = next(net.parameters()).device
  scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
  ema = [p.detach().clone() for p in net.parameters()]

  def step(image, x0):
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(
      device.type,
      dtype=amp_dtype or torch.float32,
      enabled=amp_dtype is not None,
    ):
      losses, _ = diffusion_loss(net, x0=x0, image=image, **loss_kwargs)
      loss = losses.mean()
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(net.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    with torch.no_grad():
      torch._foreach_lerp_(
        ema, [p.detach() for p in net.parameters()], 1.0 - ema_decay
      )
    return loss.detach()

  return step


def load_state_dict(net: UNet, arrays) -> None:
  """Loads {name: numpy array} (the authors' names) into `net`, strictly."""
  state = {k: torch.as_tensor(v) for k, v in arrays.items()}
  missing, unexpected = net.load_state_dict(state, strict=False)
  if missing or unexpected:
    raise ValueError(
      f'state dict does not fit the network: missing '
      f'{sorted(missing)}, unexpected {sorted(unexpected)}.'
    )
