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

"""Guided-diffusion style U-Net in Flax NNX (NHWC), exactly the authors' network.

The module computes the network of SPEC §2a: sinusoidal embedding of the raw
time t, an encoder of residual blocks (plus self-attention on attention levels)
with stride-2 downsampling convolutions, a middle stack, a decoder that
concatenates encoder skips, and a GN-SiLU-Conv output head (tanh for
x-prediction). The parameter tree mirrors the PyTorch module tree so that
`diffseg_jax.convert` is a rename plus transposes. It knows nothing of
diffusion: it maps (z, t, image) to a raw output.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from flax import nnx
import jax
import jax.numpy as jnp

from diffseg_jax.models import layers

_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
_OUTPUT_ACTIVATIONS = ('tanh', 'identity')


@dataclasses.dataclass(frozen=True)
class UNetConfig:
  """Network hyper-parameters; the defaults are the paper's 6.9 M network.

  `extra_input_channels` > 0 adds per-pixel inputs (`__call__`'s `extra`)
  concatenated after the image; the network does not know what they mean (the
  diffusion's self-conditioning feeds its previous x0 estimate there). 0 is the
  paper's network.
  """

  base_channels: int = 32
  channel_mult: Sequence[int] = (1, 1, 2, 4)
  num_res_blocks: Sequence[int] = (1, 2, 3, 4)
  num_middle_blocks: int = 4
  attention_levels: Sequence[int] = (-1,)
  num_heads: int = 4
  dropout: float = 0.0
  image_channels: int = 1
  extra_input_channels: int = 0
  out_channels: int = 1
  output_activation: str = 'tanh'
  time_max_period: float = 10.0
  dtype: str = 'float32'
  conv_impl: str = 'auto'

  def __post_init__(self):
    levels = len(self.channel_mult)
    if isinstance(self.num_res_blocks, int):
      object.__setattr__(
        self, 'num_res_blocks', (self.num_res_blocks,) * levels
      )
    for name in ('channel_mult', 'num_res_blocks', 'attention_levels'):
      object.__setattr__(self, name, tuple(getattr(self, name)))
    if len(self.num_res_blocks) != levels:
      raise ValueError(
        f'num_res_blocks={self.num_res_blocks} needs one entry per level of '
        f'channel_mult={self.channel_mult}.'
      )
    for level in self.attention_levels:
      if not -levels <= level < levels:
        raise ValueError(
          f'attention level {level} is outside the {levels} '
          'levels of channel_mult.'
        )
    if self.num_middle_blocks < 1:
      raise ValueError('num_middle_blocks must be >= 1.')
    if self.extra_input_channels < 0:
      raise ValueError(
        f'extra_input_channels must be >= 0, got {self.extra_input_channels}.'
      )
    if self.dtype not in _DTYPES:
      raise ValueError(f'dtype={self.dtype!r} is not one of {tuple(_DTYPES)}.')
    if self.output_activation not in _OUTPUT_ACTIVATIONS:
      raise ValueError(
        f'output_activation={self.output_activation!r} is not '
        f'one of {_OUTPUT_ACTIVATIONS}.'
      )
    if self.conv_impl not in layers.CONV_IMPLS:
      raise ValueError(
        f'conv_impl={self.conv_impl!r} is not one of {layers.CONV_IMPLS}.'
      )

  def compiler_options(self) -> dict[str, str]:
    """XLA options for every `jax.jit` of a program that runs this network."""
    return layers.compiler_options(self.conv_impl)

  @property
  def attention_level_set(self) -> frozenset[int]:
    """Attention levels as non-negative indices."""
    levels = len(self.channel_mult)
    return frozenset(level % levels for level in self.attention_levels)


class UNet(nnx.Module):
  """The U-Net; `__call__(z, t, image)` -> raw output [B, H, W, out_channels]."""

  def __init__(self, config: UNetConfig, *, rngs: nnx.Rngs):
    self.config = config
    dtype = _DTYPES[config.dtype]
    impl = config.conv_impl
    base = config.base_channels
    emb_channels = 4 * base
    attention = config.attention_level_set

    def res_block(cin, cout):
      return layers.ResBlock(
        cin,
        cout,
        emb_channels=emb_channels,
        dropout=config.dropout,
        dtype=dtype,
        impl=impl,
        rngs=rngs,
      )

    def attn_block(channels):
      return layers.AttentionBlock(
        channels, num_heads=config.num_heads, dtype=dtype, impl=impl, rngs=rngs
      )

    self.time_embed = layers.TimeEmbed(
      base, max_period=config.time_max_period, dtype=dtype, rngs=rngs
    )

    in_channels = 1 + config.image_channels + config.extra_input_channels
    input_blocks = [
      nnx.List(
        [layers.Conv(in_channels, base, dtype=dtype, impl=impl, rngs=rngs)]
      )
    ]
    skip_channels = [base]
    ch = base
    num_levels = len(config.channel_mult)
    for level, (mult, num_res) in enumerate(
      zip(config.channel_mult, config.num_res_blocks)
    ):
      for _ in range(num_res):
        block = [res_block(ch, mult * base)]
        ch = mult * base
        if level in attention:
          block.append(attn_block(ch))
        input_blocks.append(nnx.List(block))
        skip_channels.append(ch)
      if level != num_levels - 1:
        input_blocks.append(
          nnx.List([layers.Downsample(ch, dtype=dtype, impl=impl, rngs=rngs)])
        )
        skip_channels.append(ch)
    self.input_blocks = nnx.List(input_blocks)

    middle = []
    lowest_has_attention = (num_levels - 1) in attention
    for _ in range(config.num_middle_blocks - 1):
      middle.append(res_block(ch, ch))
      if lowest_has_attention:
        middle.append(attn_block(ch))
    middle.append(res_block(ch, ch))
    self.middle_block = nnx.List(middle)

    output_blocks = []
    for level in reversed(range(num_levels)):
      mult = config.channel_mult[level]
      num_blocks = config.num_res_blocks[level] + 1
      for i in range(num_blocks):
        block = [res_block(ch + skip_channels.pop(), mult * base)]
        ch = mult * base
        if level in attention:
          block.append(attn_block(ch))
        if level != 0 and i == num_blocks - 1:
          block.append(layers.Upsample(ch, dtype=dtype, impl=impl, rngs=rngs))
        output_blocks.append(nnx.List(block))
    self.output_blocks = nnx.List(output_blocks)

    self.out_norm = layers.GroupNorm(ch, dtype=dtype)
    self.out_conv = layers.Conv(
      ch, config.out_channels, zero_init=True, dtype=dtype, impl=impl, rngs=rngs
    )

  def _apply(self, block, h, emb, rngs):
    for layer in block:
      if isinstance(layer, layers.ResBlock):
        h = layer(h, emb, rngs=rngs)
      else:
        h = layer(h)
    return h

  def __call__(
    self,
    z: jax.Array,
    t: jax.Array,
    image: jax.Array,
    *,
    extra: jax.Array | None = None,
    rngs: nnx.Rngs | None = None,
  ) -> jax.Array:
    """Raw network output.

    Args:
      z: noisy mask [B, H, W, 1].
      t: time [B] float in [0, 1], embedded as is.
      image: [B, H, W, image_channels].
      extra: [B, H, W, extra_input_channels], concatenated after the image;
        required exactly when extra_input_channels > 0.
      rngs: dropout randomness; dropout is active only when given.

    Returns:
      [B, H, W, out_channels] float32 (tanh applied if output_activation='tanh').
    """
    config = self.config
    factor = 2 ** (len(config.channel_mult) - 1)
    if z.ndim != 4 or z.shape[-1] != 1:
      raise ValueError(f'z must be [B, H, W, 1], got {z.shape}.')
    if (
      image.shape[:3] != z.shape[:3] or image.shape[-1] != config.image_channels
    ):
      raise ValueError(
        f'image must be [B, H, W, {config.image_channels}] matching z '
        f'{z.shape}, got {image.shape} (set UNetConfig.image_channels).'
      )
    n_extra = config.extra_input_channels
    if n_extra == 0 and extra is not None:
      raise ValueError(
        'extra input given to a network without extra input channels '
        '(set UNetConfig.extra_input_channels).'
      )
    if n_extra and (
      extra is None
      or extra.shape[:3] != z.shape[:3]
      or extra.shape[-1] != n_extra
    ):
      got = None if extra is None else extra.shape
      raise ValueError(
        f'extra must be [B, H, W, {n_extra}] matching z {z.shape}, got {got} '
        '(UNetConfig.extra_input_channels).'
      )
    if z.shape[1] % factor or z.shape[2] % factor:
      raise ValueError(f'H and W must divide by {factor}, got {z.shape[1:3]}.')
    if t.shape != z.shape[:1]:
      raise ValueError(f't must be [B]={z.shape[:1]}, got {t.shape}.')

    dtype = _DTYPES[config.dtype]
    emb = self.time_embed(t)
    inputs = [z, image] if extra is None else [z, image, extra]
    h = jnp.concatenate(inputs, axis=-1).astype(dtype)
    skips = []
    for block in self.input_blocks:
      h = self._apply(block, h, emb, rngs)
      skips.append(h)
    h = self._apply(self.middle_block, h, emb, rngs)
    for block in self.output_blocks:
      h = jnp.concatenate([h, skips.pop()], axis=-1)
      h = self._apply(block, h, emb, rngs)
    h = self.out_conv(nnx.silu(self.out_norm(h))).astype(jnp.float32)
    if config.output_activation == 'tanh':
      h = jnp.tanh(h)
    return h


def abstract_model(config: UNetConfig) -> tuple[nnx.GraphDef, nnx.State]:
  """(graphdef, parameter State of shapes only) of `UNet(config)`, allocating nothing."""
  model = nnx.eval_shape(lambda: UNet(config, rngs=nnx.Rngs(0)))
  return nnx.split(model, nnx.Param)


def init_params(config: UNetConfig, rng: jax.Array) -> dict:
  """Freshly initialised parameters of `UNet(config)` as a pure dict."""
  _, params = nnx.split(UNet(config, rngs=nnx.Rngs(params=rng)), nnx.Param)
  return params.to_pure_dict()


def count_params(config: UNetConfig) -> int:
  """Number of parameters of `UNet(config)`, from shapes only (no compute)."""
  _, params = abstract_model(config)
  return sum(int(jnp.size(leaf)) for leaf in jax.tree.leaves(params))
