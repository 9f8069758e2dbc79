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

"""Tests for diffseg_jax.convert: parity with the authors' network and the CLI."""

from absl.testing import flagsaver
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffseg_jax import convert
from diffseg_jax import errors
from diffseg_jax.models import unet
from tests.conftest import needs_reference  # pylint: disable=unused-import
from tests.conftest import SMALL  # pylint: disable=unused-import


def _state_dict(reference):
  return {
    k[len('weights/') :]: v
    for k, v in reference.items()
    if k.startswith('weights/')
  }


def _nhwc(a):
  return jnp.asarray(np.asarray(a).transpose(0, 2, 3, 1))


@needs_reference
@pytest.mark.parametrize('prediction', ['x', 'v', 'eps'])
def test_parity_with_authors_network(reference, prediction):
  config = unet.UNetConfig(
    **SMALL, output_activation='tanh' if prediction == 'x' else 'identity'
  )
  params = convert.convert_state_dict(_state_dict(reference), config)
  model = nnx.eval_shape(lambda: unet.UNet(config, rngs=nnx.Rngs(0)))
  nnx.update(model, params)
  out = nnx.jit(lambda m, z, t, i: m(z, t, i))(
    model,
    _nhwc(reference['loss/x/uniform/plain/x_t']),
    jnp.asarray(reference['inputs/t']),
    _nhwc(reference['inputs/image']),
  )
  want = reference[f'net/{prediction}/output'].transpose(0, 2, 3, 1)
  assert out.shape == want.shape
  assert np.max(np.abs(np.asarray(out) - want)) <= 1e-6
  assert np.max(np.abs(want)) > 0.1  # The comparison is not between zeros.


@needs_reference
def test_every_reference_weight_is_used_and_transposed(reference):
  state_dict = _state_dict(reference)
  params = nnx.to_pure_dict(
    convert.convert_state_dict(state_dict, unet.UNetConfig(**SMALL))
  )
  n_params = sum(np.size(x) for x in jax.tree.leaves(params))
  assert n_params == sum(np.size(v) for v in state_dict.values())
  torch_conv = state_dict['input_blocks.3.0.in_layers.2.weight']  # [o,i,h,w]
  ours = params['input_blocks'][3][0]['in_conv']['kernel']  # [h,w,i,o]
  assert ours[2, 0, 5, 7] == torch_conv[7, 5, 2, 0]
  torch_qkv = state_dict['input_blocks.6.1.qkv.weight']  # [o, i, 1]
  assert (
    params['input_blocks'][6][1]['qkv']['kernel'][0, 0, 3, 100]
    == (torch_qkv[100, 3, 0])
  )
  torch_linear = state_dict['time_embed.2.weight']  # [o, i]
  assert params['time_embed']['linear_2']['kernel'][1, 9] == torch_linear[9, 1]
  np.testing.assert_array_equal(
    params['out_norm']['scale'], state_dict['out.1.weight']
  )


def test_torch_name_to_path():
  assert convert.torch_name_to_path('input_blocks.6.1.qkv.weight') == (
    'input_blocks',
    6,
    1,
    'qkv',
    'kernel',
  )
  assert convert.torch_name_to_path('input_blocks.0.0.bias') == (
    'input_blocks',
    0,
    0,
    'bias',
  )
  assert convert.torch_name_to_path('middle_block.0.in_layers.0.weight') == (
    'middle_block',
    0,
    'in_norm',
    'scale',
  )
  assert convert.torch_name_to_path('output_blocks.4.1.conv.weight') == (
    'output_blocks',
    4,
    1,
    'conv',
    'kernel',
  )
  assert convert.torch_name_to_path('out.1.weight') == ('out_norm', 'scale')
  assert convert.torch_name_to_path('out.3.weight') == ('out_conv', 'kernel')
  assert convert.torch_name_to_path('time_embed.0.weight') == (
    'time_embed',
    'linear_0',
    'kernel',
  )
  assert convert.torch_name_to_path('label_emb.weight') is None
  assert (
    convert.torch_name_to_path('input_blocks.1.0.in_layers.1.weight') is None
  )


@needs_reference
def test_bad_state_dicts_name_the_keys(reference):
  state_dict = _state_dict(reference)
  config = unet.UNetConfig(**SMALL)
  broken = dict(state_dict)
  del broken['middle_block.1.qkv.bias']
  broken['label_emb.weight'] = np.zeros((3, 3), np.float32)
  with pytest.raises(ValueError) as e:
    convert.convert_state_dict(broken, config)
  assert 'middle_block/1/qkv/bias' in str(e.value)
  assert 'label_emb.weight' in str(e.value)
  grey = unet.UNetConfig(**dict(SMALL, image_channels=1))
  with pytest.raises(
    ValueError, match=r'(?s)input_blocks\.0\.0\.weight.*image_channels=3'
  ):
    convert.convert_state_dict(state_dict, grey)


def test_pickled_objects_need_allow_pickle(tmp_path):
  torch = pytest.importorskip('torch')
  import argparse  # pylint: disable=g-import-not-at-top

  weights = {'input_blocks.0.0.bias': torch.arange(3.0)}
  plain = str(tmp_path / 'plain.pt')
  torch.save({'model': weights}, plain)
  loaded = convert.load_torch_state_dict(plain)
  np.testing.assert_array_equal(
    loaded['input_blocks.0.0.bias'], [0.0, 1.0, 2.0]
  )

  pickled = str(tmp_path / 'pickled.pt')
  torch.save({'model': weights, 'args': argparse.Namespace(lr=1e-4)}, pickled)
  with pytest.raises(ValueError, match='--allow_pickle'):
    convert.load_torch_state_dict(pickled)
  loaded = convert.load_torch_state_dict(pickled, allow_pickle=True)
  np.testing.assert_array_equal(
    loaded['input_blocks.0.0.bias'], [0.0, 1.0, 2.0]
  )


def test_missing_torch_says_how_to_install(tmp_path):
  try:
    import torch  # noqa: F401  # pylint: disable=g-import-not-at-top,unused-import

    pytest.skip('torch is installed')
  except ImportError:
    pass
  # A missing file is reported as missing first.
  (tmp_path / 'model.pt').write_bytes(b'')
  with pytest.raises(ImportError, match='pip install torch'):
    convert.load_torch_state_dict(str(tmp_path / 'model.pt'))


CONFIG_FILE = """
from configs import default
def get_config():
  config = default.get_config()
  config.model.base_channels = 32
  config.model.channel_mult = (1, 2, 2)
  config.model.num_res_blocks = (1, 2, 1)
  config.model.num_middle_blocks = 2
  config.model.attention_levels = (-1,)
  config.model.num_heads = 4
  config.diffusion.prediction = 'v'
  config.dataset.image_preprocessing = '%s'
  return config
"""


@needs_reference
def test_cli_converts_npz_and_saves_params(reference, tmp_path, monkeypatch):
  state_dict = _state_dict(reference)
  npz = tmp_path / 'sd.npz'
  np.savez(npz, **state_dict)
  config_path = tmp_path / 'config.py'
  config_path.write_text(CONFIG_FILE % 'imagenet_rgb')
  saved = {}

  def fake_save_params(directory, params, *, step=0, meta=None):
    saved.update(directory=directory, params=params, step=step, meta=meta)
    return directory

  from diffseg_jax import checkpoint  # pylint: disable=g-import-not-at-top

  monkeypatch.setattr(checkpoint, 'save_params', fake_save_params)
  argv = [
    'convert',
    f'--npz={npz}',
    f'--config={config_path}',
    f'--out={tmp_path / "out"}',
  ]
  with flagsaver.flagsaver():
    convert.flags.FLAGS.unparse_flags()
    convert.flags.FLAGS(argv)
    convert.main(argv[:1])
  assert (
    saved['directory'] == str(tmp_path / 'out' / 'checkpoints')
    and saved['step'] == 0
  )
  params = saved['params']
  np.testing.assert_array_equal(
    params['input_blocks'][0][0]['kernel'],
    state_dict['input_blocks.0.0.weight'].transpose(2, 3, 1, 0),
  )
  assert 'image_channels=3' in saved['meta']['unet_config']
  assert "output_activation='identity'" in saved['meta']['unet_config']


@needs_reference
def test_cli_refuses_grey_config_for_rgb_checkpoint(
  reference, tmp_path, capsys
):
  npz = tmp_path / 'sd.npz'
  np.savez(npz, **_state_dict(reference))
  config_path = tmp_path / 'config.py'
  config_path.write_text(CONFIG_FILE % 'grey')
  argv = [
    'convert',
    f'--npz={npz}',
    f'--config={config_path}',
    f'--out={tmp_path / "out"}',
  ]
  with flagsaver.flagsaver():
    convert.flags.FLAGS.unparse_flags()
    convert.flags.FLAGS(argv)
    with pytest.raises(SystemExit) as e:  # One line, no traceback.
      convert.main(argv[:1])
  assert e.value.code == 2
  assert 'image_preprocessing=imagenet_rgb' in capsys.readouterr().err


@needs_reference
def test_cli_output_restores_with_checkpoint_module(reference, tmp_path):
  from diffseg_jax import checkpoint  # pylint: disable=g-import-not-at-top

  state_dict = _state_dict(reference)
  config = unet.UNetConfig(**SMALL)
  params = nnx.to_pure_dict(convert.convert_state_dict(state_dict, config))
  checkpoint.save_params(str(tmp_path / 'ckpt'), params, step=0)
  abstract = nnx.to_pure_dict(unet.abstract_model(config)[1])
  restored, step = checkpoint.restore_params(str(tmp_path / 'ckpt'), abstract)
  assert step == 0
  jax.tree.map(np.testing.assert_array_equal, restored, params)


@needs_reference
def test_self_conditioning_config_is_refused_by_name(reference):
  config = unet.UNetConfig(**SMALL, extra_input_channels=1)
  with pytest.raises(errors.ConfigError, match='self_condition=False'):
    convert.check_image_channels(_state_dict(reference), config)
