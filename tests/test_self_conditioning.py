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

"""Self-conditioning on the previous x0 estimate (Analog Bits), end to end.

The network only gains an input channel; the diffusion feeds it the first
pass's estimate (training) or the previous step's (sampling); the paper's
configs keep it off.
"""

import importlib
import json

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffseg_jax import denoiser
from diffseg_jax import diffusion as dfn
from diffseg_jax import errors
from diffseg_jax import evaluation
from diffseg_jax import settings
from diffseg_jax import train
from diffseg_jax.models import unet
from tests.conftest import tiny_config
from tests.test_diffusion import _ref_logsnr_and_derivative
from tests.test_diffusion import _sigmoid

TINY = dict(
  base_channels=8,
  channel_mult=(1, 2),
  num_res_blocks=(1, 1),
  num_middle_blocks=1,
  attention_levels=(),
  num_heads=1,
)


def _random_model(config, seed=0):
  """UNet(config) with every weight random (the zero-initialised ones too)."""
  abstract = nnx.eval_shape(lambda: unet.UNet(config, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(abstract)
  rng = np.random.default_rng(seed)
  state = jax.tree.map(
    lambda p: jnp.asarray(0.3 * rng.normal(size=p.shape), p.dtype), state
  )
  return nnx.merge(graphdef, state)


# --------------------------------------------------------------------------
# The network: one more input channel, after the image.
# --------------------------------------------------------------------------


def test_extra_input_channel_is_appended_after_the_image():
  plain = _random_model(unet.UNetConfig(**TINY))
  extra = _random_model(unet.UNetConfig(**TINY, extra_input_channels=1), 5)
  assert extra.input_blocks[0][0].kernel.value.shape[2] == 3  # z, image, extra
  # Give it the plain network's weights, plus a slice for the extra channel.
  state = nnx.state(extra, nnx.Param)

  def copy(ours, theirs):
    if ours.shape != theirs.shape:  # the first conv's kernel only
      return ours.at[:, :, :2].set(theirs)
    return theirs

  nnx.replace_by_pure_dict(
    state,
    jax.tree.map(
      copy,
      state.to_pure_dict(),
      nnx.state(plain, nnx.Param).to_pure_dict(),
    ),
  )
  nnx.update(extra, state)
  rs = np.random.default_rng(1)
  z = jnp.asarray(rs.normal(size=(2, 8, 8, 1)), jnp.float32)
  t = jnp.asarray([0.2, 0.9], jnp.float32)
  image = jnp.asarray(rs.uniform(size=(2, 8, 8, 1)), jnp.float32)
  self_cond = jnp.asarray(rs.uniform(-1, 1, size=(2, 8, 8, 1)), jnp.float32)
  base = plain(z, t, image)
  # A zero extra input leaves the plain network's function unchanged ...
  np.testing.assert_allclose(
    np.asarray(extra(z, t, image, extra=jnp.zeros_like(z))),
    np.asarray(base),
    atol=1e-6,
  )
  # ... and a non-zero one changes it.
  assert not np.allclose(
    np.asarray(extra(z, t, image, extra=self_cond)), np.asarray(base)
  )


def test_extra_input_errors():
  plain = _random_model(unet.UNetConfig(**TINY))
  extra = _random_model(unet.UNetConfig(**TINY, extra_input_channels=1))
  z = jnp.zeros((1, 8, 8, 1))
  t = jnp.zeros((1,))
  with pytest.raises(ValueError, match='extra_input_channels'):
    plain(z, t, z, extra=z)
  with pytest.raises(ValueError, match='extra must be'):
    extra(z, t, z)
  with pytest.raises(ValueError, match='extra must be'):
    extra(z, t, z, extra=jnp.zeros((1, 8, 8, 2)))
  with pytest.raises(ValueError, match='extra_input_channels'):
    unet.UNetConfig(extra_input_channels=-1)


# --------------------------------------------------------------------------
# Training: two passes, the first one's estimate with its gradient stopped.
# --------------------------------------------------------------------------


def _x0(batch=6, seed=0):
  rs = np.random.RandomState(seed)
  return np.where(rs.rand(batch, 4, 4, 1) > 0.5, 1.0, -1.0).astype(np.float32)


def test_loss_feeds_zeros_then_the_clipped_first_estimate():
  calls = []

  def fn(z, t, image, self_cond):
    calls.append(self_cond)
    # eps-prediction so that the x0 estimate leaves [-1, 1] (then clipped).
    return 3.0 * z + self_cond

  x0 = _x0()
  cfg = dfn.DiffusionConfig(
    prediction='eps', self_condition=True, self_condition_prob=1.0
  )
  _, aux = dfn.loss(
    fn, x0=x0, image=np.zeros_like(x0), rng=jax.random.key(0), config=cfg
  )
  assert len(calls) == 2
  np.testing.assert_array_equal(np.asarray(calls[0]), 0.0)
  z = np.asarray(aux['z'], np.float64)
  a = np.sqrt(_sigmoid(np.asarray(aux['logsnr'], np.float64)))
  s = np.sqrt(_sigmoid(-np.asarray(aux['logsnr'], np.float64)))
  first_x0 = (z - s[:, None, None, None] * 3.0 * z) / a[:, None, None, None]
  assert np.abs(first_x0).max() > 1.5  # the clip matters here
  np.testing.assert_allclose(
    np.asarray(calls[1]), np.clip(first_x0, -1, 1), atol=1e-4
  )
  np.testing.assert_array_equal(
    np.asarray(aux['self_cond']), np.asarray(calls[1])
  )


def test_self_condition_probability_is_per_example():
  def fn(z, t, image, self_cond):
    del t, image, self_cond
    return jnp.tanh(z)

  x0 = _x0(batch=256)
  image = np.zeros_like(x0)
  used = []
  for prob in (0.0, 0.5, 1.0):
    cfg = dfn.DiffusionConfig(self_condition=True, self_condition_prob=prob)
    _, aux = dfn.loss(fn, x0=x0, image=image, rng=jax.random.key(1), config=cfg)
    used.append(np.any(np.asarray(aux['self_cond']) != 0, axis=(1, 2, 3)))
  assert used[0].sum() == 0 and used[2].all()
  assert 96 < used[1].sum() < 160  # Binomial(256, 0.5): mean 128, sd 8.


def test_first_pass_gets_no_gradient():
  x0 = _x0()
  image = np.zeros_like(x0)
  cfg = dfn.DiffusionConfig(self_condition=True, self_condition_prob=1.0)
  rng = jax.random.key(2)

  def make_fn(a):
    return lambda z, t, im, sc: jnp.tanh(a * z + sc)

  def total(a):
    return jnp.sum(
      dfn.loss(make_fn(a), x0=x0, image=image, rng=rng, config=cfg)[0]
    )

  a0 = 0.8
  _, aux = dfn.loss(make_fn(a0), x0=x0, image=image, rng=rng, config=cfg)
  estimate = aux['self_cond']  # the first pass's estimate, as a constant

  def second_pass_only(a):
    cfg_plain = dfn.DiffusionConfig()
    return jnp.sum(
      dfn.loss(
        lambda z, t, im: jnp.tanh(a * z + estimate),
        x0=x0,
        image=image,
        rng=rng,
        config=cfg_plain,
      )[0]
    )

  got = float(jax.grad(total)(a0))
  want = float(jax.grad(second_pass_only)(a0))
  np.testing.assert_allclose(got, want, rtol=1e-5)
  # Without the stop-gradient the first pass would contribute too.
  leaky = float(
    jax.grad(
      lambda a: jnp.sum(
        dfn.loss(
          lambda z, t, im: jnp.tanh(a * z + jnp.tanh(a * z)),
          x0=x0,
          image=image,
          rng=rng,
          config=dfn.DiffusionConfig(),
        )[0]
      )
    )(a0)
  )
  assert abs(leaky - want) > 1e-3 * abs(want)


def test_off_by_default_calls_the_network_once_with_three_arguments():
  calls = []

  def fn(z, t, image):
    calls.append(z.shape)
    return jnp.tanh(z)

  x0 = _x0()
  cfg = dfn.DiffusionConfig()
  assert not cfg.self_condition and cfg.loss == 'mse'
  _, aux = dfn.loss(
    fn, x0=x0, image=np.zeros_like(x0), rng=jax.random.key(0), config=cfg
  )
  assert len(calls) == 1 and aux['self_cond'] is None


# --------------------------------------------------------------------------
# Sampling: the previous step's x0 estimate.
# --------------------------------------------------------------------------


def _ref_ddim_self_cond(z, num_steps, x0_fn):
  """float64 DDIM loop feeding each step the previous x0_hat (0 at first)."""
  prev = np.zeros_like(z)
  x0 = prev
  for i in range(num_steps):
    t = (num_steps - i) / num_steps
    s = (num_steps - i - 1) / num_steps
    lt, _ = _ref_logsnr_and_derivative(np.float64(t), 'cosine', 0.1)
    ls, _ = _ref_logsnr_and_derivative(np.float64(s), 'cosine', 0.1)
    x0 = np.clip(x0_fn(z, prev), -1, 1)
    eps = (z - np.sqrt(_sigmoid(lt)) * x0) / np.sqrt(_sigmoid(-lt))
    z = np.sqrt(_sigmoid(ls)) * x0 + np.sqrt(_sigmoid(-ls)) * eps
    prev = x0
  return x0


def test_sampler_feeds_the_previous_estimate():
  x0_fn = lambda z, prev: np.tanh(0.5 * z + 2.0 * prev - 0.3)
  z = np.random.RandomState(3).normal(size=(4, 4, 4, 1))
  num_steps = 5
  got = dfn.sample_loop(
    lambda zz, t, im, sc: jnp.tanh(0.5 * zz + 2.0 * sc - 0.3),
    image=jnp.zeros((4, 4, 4, 1)),
    z_init=jnp.asarray(z, jnp.float32),
    rng=jax.random.key(0),
    diffusion=dfn.DiffusionConfig(self_condition=True),
    sampler=dfn.SamplerConfig(name='ddim', num_steps=num_steps),
  )
  want = _ref_ddim_self_cond(z, num_steps, x0_fn)
  np.testing.assert_allclose(np.asarray(got), want, atol=2e-5)
  # Feeding zeros instead (no self-conditioning) is a different sample.
  without = _ref_ddim_self_cond(
    z, num_steps, lambda zz, prev: x0_fn(zz, 0 * prev)
  )
  assert np.abs(without - want).max() > 1e-2


# --------------------------------------------------------------------------
# Config glue and the configs.
# --------------------------------------------------------------------------

PAPER_CONFIGS = ('default', 'x_pred', 'v_pred', 'eps_pred', 'crop64')


@pytest.mark.parametrize(
  'name', PAPER_CONFIGS + ('synthetic_paper', 'quickstart', 'best')
)
def test_paper_configs_keep_the_paper_network_and_loss(name):
  config = importlib.import_module(f'configs.{name}').get_config()
  s = settings.resolve(config)
  assert s.diffusion.loss == 'mse' and not s.diffusion.self_condition
  assert s.unet.extra_input_channels == 0


def test_settings_glue_and_errors(tiny_synthetic):
  config = tiny_config(
    tiny_synthetic,
    **{
      'diffusion.self_condition': True,
      'diffusion.prediction': 'logit',
      'diffusion.loss': 'bce',
    },
  )
  s = settings.resolve(config)
  assert s.unet.extra_input_channels == 1
  assert s.unet.output_activation == 'identity'
  assert s.diffusion.self_condition and s.diffusion.loss == 'bce'
  config.diffusion.prediction = 'x'
  with pytest.raises(errors.ConfigError, match="config.diffusion.*'logit'"):
    settings.resolve(config)


def test_denoise_fn_routes_self_cond_to_the_extra_channel():
  model = _random_model(unet.UNetConfig(**TINY, extra_input_channels=1))
  fn = denoiser.make_denoise_fn(model)
  z = jnp.ones((1, 8, 8, 1))
  t = jnp.ones((1,))
  sc = jnp.full((1, 8, 8, 1), 0.5)
  np.testing.assert_array_equal(
    np.asarray(fn(z, t, z, sc)), np.asarray(model(z, t, z, extra=sc))
  )


@pytest.mark.parametrize('name', ['best', 'synthetic_long'])
def test_new_configs_load_and_resolve(name):
  module = importlib.import_module(f'configs.{name}')
  for arg in (None, 'smoke'):
    config = module.get_config(arg)
    assert config.dataset.name == 'synthetic_lesions/32'
    settings.resolve(config)
  smoke = module.get_config('smoke')
  assert smoke.num_train_steps <= 10 and smoke.eval.num_examples <= 8
  # best.py moved to uniform weighting; the long recipe stays as it was measured.
  expected = {'best': 'uniform', 'synthetic_long': 'snr_plus1'}[name]
  assert module.get_config().diffusion.weighting == expected


@pytest.mark.parametrize('name', ['best', 'synthetic_long'])
def test_new_configs_smoke_train_and_evaluate(name, tiny_synthetic, tmp_path):
  config = importlib.import_module(f'configs.{name}').get_config('smoke')
  config.dataset.data_dir = tiny_synthetic.data_dir
  config.dataset.name = tiny_synthetic.name
  config.batch_size = 4
  config.num_train_steps = 2
  config.validation.every_steps = 2
  config.async_checkpointing = False
  config.evaluate_after_training = False
  state = train.train_and_evaluate(config, str(tmp_path))
  assert int(state['step']) == 2
  evaluation.evaluate_checkpoint(config, str(tmp_path))
  with open(tmp_path / 'eval' / 'test' / 'metrics.json') as f:
    metrics = json.load(f)
  assert metrics['num_images'] == 4
  assert np.isfinite(metrics['metrics']['ged_4']['mean'])


def test_both_switches_train_and_evaluate_end_to_end(tiny_synthetic, tmp_path):
  config = tiny_config(
    tiny_synthetic,
    **{
      'num_train_steps': 2,
      'diffusion.self_condition': True,
      'diffusion.prediction': 'logit',
      'diffusion.loss': 'bce',
      'eval.num_examples': 4,
    },
  )
  state = train.train_and_evaluate(config, str(tmp_path))
  assert int(state['step']) == 2
  assert (
    state['params']['input_blocks'][0][0]['kernel'].shape[2] == 3
  )  # z, image, self-conditioning
  evaluation.evaluate_checkpoint(config, str(tmp_path))
  with open(tmp_path / 'eval' / 'test' / 'metrics.json') as f:
    metrics = json.load(f)
  assert np.isfinite(metrics['metrics']['ged_4']['mean'])
