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

"""Tests for diffseg_jax.models.layers and diffseg_jax.models.unet."""

import dataclasses
import math

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default as default_config
from diffseg_jax import settings as settings_lib
from diffseg_jax.models import layers
from diffseg_jax.models import unet

TINY = dict(
  base_channels=8,
  channel_mult=(1, 2),
  num_res_blocks=(1, 1),
  num_middle_blocks=2,
  attention_levels=(-1,),
  num_heads=2,
)


def _np_conv(x, w, *, stride, pad):
  """float64 NHWC/HWIO cross-correlation with symmetric zero padding."""
  x = np.pad(x.astype(np.float64), ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  k = w.shape[0]
  out_h = (x.shape[1] - k) // stride + 1
  out_w = (x.shape[2] - k) // stride + 1
  out = np.zeros((x.shape[0], out_h, out_w, w.shape[-1]))
  for i in range(k):
    for j in range(k):
      window = x[
        :, i : i + stride * out_h : stride, j : j + stride * out_w : stride
      ]
      out += np.einsum('bhwc,co->bhwo', window, w[i, j].astype(np.float64))
  return out


def _np_group_norm(x, scale, bias, groups, eps=1e-5):
  x = x.astype(np.float64)
  b, h, w, c = x.shape
  g = x.reshape(b, h, w, groups, c // groups)
  mean = g.mean(axis=(1, 2, 4), keepdims=True)
  var = g.var(axis=(1, 2, 4), keepdims=True)
  return ((g - mean) / np.sqrt(var + eps)).reshape(b, h, w, c) * scale + bias


def test_default_config_has_paper_param_count():
  n = unet.count_params(unet.UNetConfig())
  assert abs(n - 6.9e6) <= 0.1 * 6.9e6, n


@pytest.mark.parametrize('impl', ['xla', 'cpu_fast'])
@pytest.mark.parametrize('size,stride', [(3, 1), (3, 2), (1, 1)])
def test_conv2d_matches_float64_reference(impl, size, stride):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 8, 6, 3)).astype(np.float32)
  w = rng.normal(size=(size, size, 3, 5)).astype(np.float32)
  got = layers.conv2d(jnp.asarray(x), jnp.asarray(w), stride=stride, impl=impl)
  want = _np_conv(x, w, stride=stride, pad=size // 2)
  assert got.shape == want.shape
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-5, rtol=1e-5)


def test_stride2_conv_pads_symmetrically_not_same():
  # With 'SAME' XLA pads (0, 1); PyTorch pads (1, 1): the first output row
  # then sees a zero row above the image.
  x = jnp.ones((1, 4, 4, 1))
  w = jnp.zeros((3, 3, 1, 1)).at[0, 1, 0, 0].set(1.0)  # Reads the row above.
  got = layers.conv2d(x, w, stride=2, impl='xla')
  np.testing.assert_array_equal(np.asarray(got)[0, :, :, 0], [[0, 0], [1, 1]])


def test_custom_conv_gradients_match_xla():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(2, 7, 5, 4)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(3, 3, 4, 6)), jnp.float32)
  cot = jnp.asarray(rng.normal(size=(2, 7, 5, 6)), jnp.float32)

  def loss(impl):
    return lambda x, w: jnp.sum(layers.conv2d(x, w, impl=impl) * cot)

  got = jax.grad(loss('cpu_fast'), argnums=(0, 1))(x, w)
  want = jax.grad(loss('xla'), argnums=(0, 1))(x, w)
  for g, r in zip(got, want):
    np.testing.assert_allclose(
      np.asarray(g), np.asarray(r), atol=1e-4, rtol=1e-5
    )


def _np_conv_grads(x, w, cot, *, stride, pad):
  """float64 gradients of sum(_np_conv(x, w) * cot) by the adjoint, window by window."""
  xp = np.pad(x.astype(np.float64), ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  dxp = np.zeros_like(xp)
  dw = np.zeros(w.shape)
  _, out_h, out_w, _ = cot.shape
  for i in range(w.shape[0]):
    for j in range(w.shape[1]):
      rows = slice(i, i + stride * out_h, stride)
      cols = slice(j, j + stride * out_w, stride)
      dxp[:, rows, cols] += np.einsum('bhwo,co->bhwc', cot, w[i, j])
      dw[i, j] = np.einsum('bhwc,bhwo->co', xp[:, rows, cols], cot)
  return dxp[:, pad : pad + x.shape[1], pad : pad + x.shape[2]], dw


@pytest.mark.parametrize('impl', ['xla', 'cpu_fast'])
@pytest.mark.parametrize('height,width,stride', [(7, 5, 1), (8, 6, 2)])
def test_conv_gradients_match_float64_adjoint(impl, height, width, stride):
  rng = np.random.default_rng(2)
  x = rng.normal(size=(2, height, width, 3)).astype(np.float32)
  w = rng.normal(size=(3, 3, 3, 5)).astype(np.float32)
  cot = rng.normal(size=(2, -(-height // stride), -(-width // stride), 5))
  got = jax.grad(
    lambda x, w: jnp.sum(layers.conv2d(x, w, stride=stride, impl=impl) * cot),
    argnums=(0, 1),
  )(jnp.asarray(x), jnp.asarray(w))
  want = _np_conv_grads(x, w, cot, stride=stride, pad=1)
  for g, r in zip(got, want, strict=True):
    np.testing.assert_allclose(np.asarray(g), r, atol=1e-4, rtol=1e-5)


def test_resolve_conv_impl():
  backend = jax.default_backend()
  assert layers.resolve_conv_impl('auto') == (
    'cpu_fast' if backend == 'cpu' else 'xla'
  )
  assert layers.resolve_conv_impl('xla') == 'xla'
  with pytest.raises(ValueError, match='conv_impl'):
    layers.resolve_conv_impl('cudnn')


@pytest.mark.parametrize('channels,groups', [(64, 32), (24, 24)])
def test_group_norm_matches_float64_reference(channels, groups):
  assert layers.num_groups(channels) == groups
  rng = np.random.default_rng(2)
  x = (3.0 + 2.0 * rng.normal(size=(2, 5, 4, channels))).astype(np.float32)
  scale = rng.normal(size=channels).astype(np.float32)
  bias = rng.normal(size=channels).astype(np.float32)
  got = layers.group_norm(
    jnp.asarray(x, jnp.bfloat16).astype(jnp.float32),
    scale=jnp.asarray(scale),
    bias=jnp.asarray(bias),
    groups=groups,
  )
  want = _np_group_norm(
    np.asarray(jnp.asarray(x, jnp.bfloat16), np.float64), scale, bias, groups
  )
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(got), want, atol=2e-5, rtol=1e-5)


def test_group_norm_gradient_matches_reshape_formulation():
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.normal(size=(2, 4, 4, 64)), jnp.float32)
  scale = jnp.asarray(rng.normal(size=64), jnp.float32)
  cot = jnp.asarray(rng.normal(size=x.shape), jnp.float32)

  def reshape_gn(x, scale):
    g = x.reshape(2, 4, 4, 32, 2)
    mean = g.mean(axis=(1, 2, 4), keepdims=True)
    var = g.var(axis=(1, 2, 4), keepdims=True)
    return ((g - mean) * jax.lax.rsqrt(var + 1e-5)).reshape(x.shape) * scale

  def loss(fn):
    return lambda x, s: jnp.sum(fn(x, s) * cot)

  got = jax.grad(
    loss(
      lambda x, s: layers.group_norm(x, scale=s, bias=jnp.zeros(64), groups=32)
    ),
    argnums=(0, 1),
  )(x, scale)
  want = jax.grad(loss(reshape_gn), argnums=(0, 1))(x, scale)
  for g, r in zip(got, want):
    np.testing.assert_allclose(np.asarray(g), np.asarray(r), atol=1e-4)


def test_timestep_embedding_matches_numpy():
  t = np.array([0.0, 0.25, 1.0], np.float32)
  got = layers.timestep_embedding(jnp.asarray(t), dim=8, max_period=10.0)
  f = np.exp(-math.log(10.0) * np.arange(4) / 4)
  arg = t[:, None].astype(np.float64) * f
  want = np.concatenate([np.cos(arg), np.sin(arg)], axis=1)
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-6)


@pytest.mark.parametrize('impl', ['xla', 'cpu_fast'])
def test_attention_uses_legacy_head_layout(impl):
  channels, heads, hw = 32, 4, 3
  block = layers.AttentionBlock(
    channels, num_heads=heads, dtype=jnp.float32, impl=impl, rngs=nnx.Rngs(0)
  )
  rng = np.random.default_rng(4)
  block.proj_out.kernel.value = jnp.asarray(
    rng.normal(size=(1, 1, channels, channels)) * 0.2, jnp.float32
  )
  block.qkv.bias.value = jnp.asarray(rng.normal(size=3 * channels), jnp.float32)
  x = rng.normal(size=(2, hw, hw, channels)).astype(np.float32)
  got = block(jnp.asarray(x))

  # PyTorch QKVAttentionLegacy in float64 on [B, C, T].
  h = _np_group_norm(x, 1.0, 0.0, 32).reshape(2, hw * hw, channels)
  wq = np.asarray(block.qkv.kernel.value, np.float64)[0, 0]
  qkv = (h @ wq + np.asarray(block.qkv.bias.value)).transpose(0, 2, 1)
  ch = channels // heads
  qkv = qkv.reshape(2 * heads, 3 * ch, hw * hw)
  q, k, v = qkv[:, :ch], qkv[:, ch : 2 * ch], qkv[:, 2 * ch :]
  s = ch**-0.25
  logits = np.einsum('bct,bcs->bts', q * s, k * s)
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  a = np.einsum('bts,bcs->bct', weights, v).reshape(2, channels, hw * hw)
  proj = (
    a.transpose(0, 2, 1)
    @ np.asarray(block.proj_out.kernel.value, np.float64)[0, 0]
  )
  want = x + proj.reshape(2, hw, hw, channels)
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-5)


def _np_attention(q, k, v):
  logits = np.einsum('ntc,nsc->nts', q, k)
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  return np.einsum('nts,nsc->ntc', weights, v)


def test_softmax_attention_and_its_gradients_match_float64():
  rng = np.random.default_rng(7)
  q, k, v, d_out = (rng.normal(size=(3, 5, 4)) for _ in range(4))
  f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
  out, vjp = jax.vjp(layers.softmax_attention, f32(q), f32(k), f32(v))
  np.testing.assert_allclose(np.asarray(out), _np_attention(q, k, v), atol=1e-5)
  grads = vjp(f32(d_out))
  eps = 1e-6
  for which, got in enumerate(grads):
    args = [q, k, v]
    want = np.zeros_like(args[which])
    for index in np.ndindex(*want.shape):
      plus = [a.copy() for a in args]
      minus = [a.copy() for a in args]
      plus[which][index] += eps
      minus[which][index] -= eps
      want[index] = np.sum(
        (_np_attention(*plus) - _np_attention(*minus)) * d_out
      ) / (2 * eps)
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-4)


def test_compiler_options_route_cpu_fast_convolutions_and_keep_numbers():
  assert layers.compiler_options('xla') == {}
  options = layers.compiler_options('auto')
  if jax.default_backend() != 'cpu':
    assert options == {}
    return
  assert options == dict(layers._CPU_FAST_COMPILER_OPTIONS)
  assert unet.UNetConfig(**TINY).compiler_options() == options
  # An XLA that does not know the options (another JAX) gets none, not a failed compile.
  assert not layers._compiler_accepts((('xla_cpu_no_such_option', '1'),))
  rng = np.random.default_rng(0)
  # Large enough for XLA to hand the convolutions to YNNPACK without the options.
  x = jnp.asarray(rng.normal(size=(2, 32, 32, 32)), jnp.float32)
  w = jnp.asarray(0.1 * rng.normal(size=(3, 3, 32, 32)), jnp.float32)

  def loss(x, w):
    return jnp.sum(jnp.square(layers.conv2d(x, w, impl='cpu_fast')))

  grad = jax.grad(loss, argnums=(0, 1))
  plain = jax.jit(grad).lower(x, w).compile()
  routed = jax.jit(grad, compiler_options=options).lower(x, w).compile()
  library_calls = '"__ynn_fusion"'
  assert routed.as_text().count(library_calls) < plain.as_text().count(
    library_calls
  )
  for a, b in zip(routed(x, w), plain(x, w)):
    b = np.asarray(b)  # The same sums in another float32 order.
    np.testing.assert_allclose(
      np.asarray(a), b, rtol=1e-4, atol=1e-5 * np.abs(b).max()
    )


def test_network_chunk_size_resolves_per_use():
  config = default_config.get_config()
  resolved = settings_lib.resolve(config)
  sampling = settings_lib.CPU_NETWORK_CHUNK_SIZE
  if jax.default_backend() != 'cpu':
    sampling = 0
  assert (resolved.network_chunk_size, resolved.train_network_chunk_size) == (
    sampling,
    0,
  )
  kwargs = resolved.sampler_kwargs()
  assert kwargs['chunk_size'] == sampling
  assert kwargs['compiler_options'] == resolved.unet.compiler_options()
  config.network_chunk_size = 2
  resolved = settings_lib.resolve(config)
  assert (resolved.network_chunk_size, resolved.train_network_chunk_size) == (
    2,
    2,
  )


def _inputs(batch=2, size=8, image_channels=1, seed=0):
  rng = np.random.default_rng(seed)
  return (
    jnp.asarray(rng.normal(size=(batch, size, size, 1)), jnp.float32),
    jnp.asarray(rng.uniform(size=batch), jnp.float32),
    jnp.asarray(
      rng.normal(size=(batch, size, size, image_channels)), jnp.float32
    ),
  )


@nnx.jit
def _apply(model, z, t, image):
  return model(z, t, image)


@nnx.jit
def _grad(model, z, t, image):
  return nnx.grad(lambda m: jnp.mean(m(z, t, image) ** 2))(model)


def _make(config, seed=0):
  """UNet(config) with all weights drawn from numpy (the zero-initialised
  layers too, so that the whole network matters); no jax compute."""
  abstract = nnx.eval_shape(lambda: unet.UNet(config, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(abstract)
  rng = np.random.default_rng(seed)
  state = jax.tree.map(
    lambda p: jnp.asarray(0.3 * rng.normal(size=p.shape), p.dtype), state
  )
  return nnx.merge(graphdef, state)


def test_tiny_unet_shapes_jit_and_impls_agree():
  model = _make(unet.UNetConfig(**TINY, conv_impl='xla'))
  fast = _make(unet.UNetConfig(**TINY, conv_impl='cpu_fast'))
  z, t, image = _inputs()
  out = model(z, t, image)  # Eager.
  assert out.shape == (2, 8, 8, 1) and out.dtype == jnp.float32
  assert float(jnp.max(jnp.abs(out))) <= 1.0  # tanh output.
  jitted = _apply(model, z, t, image)
  np.testing.assert_allclose(np.asarray(jitted), np.asarray(out), atol=1e-5)
  np.testing.assert_allclose(
    np.asarray(_apply(fast, z, t, image)), np.asarray(out), atol=1e-5
  )
  g_xla = jax.tree.leaves(_grad(model, z, t, image))
  g_fast = jax.tree.leaves(_grad(fast, z, t, image))
  for a, b in zip(g_xla, g_fast):
    np.testing.assert_allclose(
      np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-4
    )


def test_output_depends_on_time_and_image_and_identity_head():
  config = unet.UNetConfig(
    **TINY, output_activation='identity', image_channels=3
  )
  model = _make(config, seed=1)
  z, t, image = _inputs(image_channels=3)
  out = _apply(model, z, t, image)
  with_tanh = _make(
    dataclasses.replace(config, output_activation='tanh'), seed=1
  )
  np.testing.assert_allclose(
    np.asarray(_apply(with_tanh, z, t, image)),
    np.tanh(np.asarray(out)),
    atol=1e-5,
  )
  assert float(jnp.max(jnp.abs(out))) > 0.1
  assert not np.allclose(out, _apply(model, z, t + 0.5, image))
  assert not np.allclose(out, _apply(model, z, t, image + 1.0))


def test_bfloat16_compute_keeps_float32_params():
  config = unet.UNetConfig(**TINY, dtype='bfloat16')
  model = _make(config)
  for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)):
    assert leaf.dtype == jnp.float32
  ref = _make(unet.UNetConfig(**TINY))
  z, t, image = _inputs()
  out = _apply(model, z, t, image)
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(
    np.asarray(out), np.asarray(_apply(ref, z, t, image)), atol=0.1
  )


def test_dropout_only_with_rngs():
  model = _make(unet.UNetConfig(**TINY, dropout=0.5))
  z, t, image = _inputs()
  a, b = _apply(model, z, t, image), _apply(model, z, t, image)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  c = nnx.jit(lambda m, r: m(z, t, image, rngs=r))(model, nnx.Rngs(dropout=3))
  assert not np.allclose(a, c)


def test_bad_inputs_and_configs_raise_clear_errors():
  model = nnx.eval_shape(
    lambda: unet.UNet(unet.UNetConfig(**TINY), rngs=nnx.Rngs(0))
  )
  z, t, image = _inputs()
  with pytest.raises(ValueError, match='image_channels'):
    model(z, t, jnp.concatenate([image, image], -1))
  with pytest.raises(ValueError, match='divide by 2'):
    model(z[:, :7, :7], t, image[:, :7, :7])
  with pytest.raises(ValueError, match='num_res_blocks'):
    unet.UNetConfig(channel_mult=(1, 2), num_res_blocks=(1, 2, 3))
  with pytest.raises(ValueError, match='attention level'):
    unet.UNetConfig(
      channel_mult=(1, 2), num_res_blocks=(1, 1), attention_levels=(2,)
    )
  with pytest.raises(ValueError, match='dtype'):
    unet.UNetConfig(dtype='float16')
