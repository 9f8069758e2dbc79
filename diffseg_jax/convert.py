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

r"""Converts the authors' PyTorch U-Net weights into our parameters (SPEC §2a).

Library: `convert_state_dict(state_dict, config)` maps a state dict (names as in
the authors' guided-diffusion network, values numpy arrays) onto the parameters
of `UNet(config)` and returns them as an `nnx.State`.

Command line (reading a .pt file needs torch: `pip install torch` or the
extra `pip install -e ".[torch]"`):

  python -m diffseg_jax.convert --torch_checkpoint=model.pt --config=configs/x_pred.py \
      --config.dataset.image_preprocessing=imagenet_rgb --out=/tmp/converted
  python -m diffseg_jax.main --config=configs/x_pred.py \
      --config.dataset.image_preprocessing=imagenet_rgb --workdir=/tmp/converted --mode=evaluate

The network is the config's (`settings.unet_config`: tanh output for x-prediction). The authors
feed a 3-channel ImageNet-normalised image, so their checkpoints need
`dataset.image_preprocessing=imagenet_rgb` (3 image channels); a mismatch is an error that says so.
The parameters go to OUT/checkpoints, so OUT is a workdir for --mode=evaluate and --mode=predict.
"""

from __future__ import annotations

import os
import pickle
import re
import sys
from typing import Any, Mapping

from absl import app
from absl import flags
from absl import logging
from flax import nnx
from ml_collections import config_flags
import numpy as np

from diffseg_jax import errors
from diffseg_jax import settings
from diffseg_jax.models import unet

_RES_BLOCK_PARTS = {
  'in_layers.0': 'in_norm',
  'in_layers.2': 'in_conv',
  'emb_layers.1': 'emb_linear',
  'out_layers.0': 'out_norm',
  'out_layers.3': 'out_conv',
  'skip_connection': 'skip',
  'norm': 'norm',
  'qkv': 'qkv',
  'proj_out': 'proj_out',
  'op': 'op',
  'conv': 'conv',
}
_TOP_LEVEL = {
  'time_embed.0': ('time_embed', 'linear_0'),
  'time_embed.2': ('time_embed', 'linear_2'),
  'out.1': ('out_norm',),
  'out.3': ('out_conv',),
}
_BLOCK_RE = re.compile(
  r'^(input_blocks|output_blocks)\.(\d+)\.(\d+)(?:\.(.+))?$'
)
_MIDDLE_RE = re.compile(r'^middle_block\.(\d+)(?:\.(.+))?$')


def torch_name_to_path(name: str) -> tuple[Any, ...] | None:
  """Our parameter path for a PyTorch state-dict name, None if it has none.

  E.g. 'input_blocks.6.1.qkv.weight' -> ('input_blocks', 6, 1, 'qkv', 'kernel')
  and 'out.1.weight' -> ('out_norm', 'scale'). Norm weights become 'scale',
  other weights 'kernel'.
  """
  module, _, leaf = name.rpartition('.')
  if leaf not in ('weight', 'bias'):
    return None
  if module in _TOP_LEVEL:
    path = _TOP_LEVEL[module]
  elif match := _BLOCK_RE.match(module):
    group, i, j, part = match.groups()
    if part is not None and part not in _RES_BLOCK_PARTS:
      return None
    path = (group, int(i), int(j)) + ((_RES_BLOCK_PARTS[part],) if part else ())
  elif match := _MIDDLE_RE.match(module):
    j, part = match.groups()
    if part not in _RES_BLOCK_PARTS:
      return None
    path = ('middle_block', int(j), _RES_BLOCK_PARTS[part])
  else:
    return None
  if leaf == 'bias':
    return path + ('bias',)
  is_norm = path[-1] in ('in_norm', 'out_norm', 'norm')
  return path + ('scale' if is_norm else 'kernel',)


def torch_to_flax_layout(value: np.ndarray) -> np.ndarray:
  """conv [out,in,kh,kw] -> [kh,kw,in,out]; 1-D conv [out,in,1] -> [1,1,in,out];
  linear [out,in] -> [in,out]; vectors unchanged."""
  value = np.asarray(value, dtype=np.float32)
  if value.ndim == 4:
    return value.transpose(2, 3, 1, 0)
  if value.ndim == 3:
    return value.transpose(2, 1, 0)[None]
  if value.ndim == 2:
    return value.T
  return value


def _path_str(path) -> str:
  return '/'.join(str(p) for p in path)


def convert_state_dict(
  state_dict: Mapping[str, np.ndarray], config: unet.UNetConfig
) -> nnx.State:
  """Maps the authors' PyTorch state dict onto the parameters of UNet(config).

  Args:
    state_dict: PyTorch parameter names -> arrays in PyTorch layout.
    config: the network config; the authors' checkpoints need image_channels=3
      and output_activation='tanh' for x-prediction.

  Returns:
    nnx.State with the parameters (float32), ready for `nnx.update(model, s)`.

  Raises:
    errors.DataError (a ValueError) naming every missing, unexpected and
    shape-mismatched key.
  """
  _, target = unet.abstract_model(config)
  expected = {
    tuple(path): leaf.shape for path, leaf in nnx.to_flat_state(target)
  }
  converted = {}
  unexpected, mismatched, mismatched_paths = [], [], set()
  for name, value in state_dict.items():
    path = torch_name_to_path(name)
    if path is None or path not in expected:
      unexpected.append(name)
      continue
    array = torch_to_flax_layout(value)
    if array.shape != tuple(expected[path]):
      mismatched.append(
        f'{name}: checkpoint {tuple(np.shape(value))} -> {array.shape}, '
        f'network {_path_str(path)} needs {tuple(expected[path])}'
      )
      mismatched_paths.add(path)
      continue
    converted[path] = array
  missing = [
    _path_str(p)
    for p in expected
    if p not in converted and p not in mismatched_paths
  ]
  if unexpected or mismatched or missing:
    lines = ['The state dict does not fit UNet(config):']
    if mismatched:
      lines.append('shape mismatches: ' + '; '.join(mismatched))
    if unexpected:
      lines.append('unexpected keys: ' + ', '.join(sorted(unexpected)))
    if missing:
      lines.append('missing parameters: ' + ', '.join(missing))
    lines.append(
      f"Check the config ({config}); the authors' checkpoints use "
      'image_channels=3 and their channel_mult / num_res_blocks / '
      'num_middle_blocks / attention_levels / num_heads.'
    )
    raise errors.DataError('\n'.join(lines))
  pure: dict[Any, Any] = {}
  for path, array in converted.items():
    node = pure
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = array
  nnx.replace_by_pure_dict(target, pure)
  return target


def load_npz_state_dict(
  path: str, *, prefix: str = ''
) -> dict[str, np.ndarray]:
  """Reads a state dict saved with np.savez (keys = PyTorch names, optionally
  under `prefix`, e.g. 'weights/')."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'--npz {path} does not exist (or is not a file).')
  try:
    with np.load(path) as data:
      out = {
        k[len(prefix) :]: data[k] for k in data.files if k.startswith(prefix)
      }
  except (OSError, ValueError, AttributeError) as e:
    raise errors.DataError(
      f'Cannot read {path} as an .npz archive (np.savez): {e}'
    ) from e
  if not out:
    raise errors.DataError(
      f'{path} holds no arrays with prefix {prefix!r}: set --npz_prefix to '
      'the prefix of its keys, or save the state dict with np.savez.'
    )
  return out


def load_torch_state_dict(
  path: str, *, allow_pickle: bool = False
) -> dict[str, np.ndarray]:
  """Reads the authors' .pt file: a dict whose 'model' entry is the state dict
  (a bare state dict is accepted too).

  Loads with `torch.load(weights_only=True)`, which runs no code from the file. A file that
  needs unpickling arbitrary objects is refused unless `allow_pickle` (run only trusted files).

  Raises:
    FileNotFoundError: no such file.
    errors.DataError: the file needs pickle and allow_pickle is False, is not a
      PyTorch checkpoint, or holds no state dict.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(
      f'--torch_checkpoint {path} does not exist (or is not a file).'
    )
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
      f'Reading {path} needs PyTorch: `pip install torch` (or '
      '`pip install -e ".[torch]"`), or pass a state dict saved as '
      '--npz instead.'
    ) from e
  if allow_pickle:
    logging.warning(
      'Loading %s with weights_only=False: this runs any code pickled in it.',
      path,
    )
    checkpoint = torch.load(path, map_location='cpu', weights_only=False)
  else:
    try:
      checkpoint = torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as e:
      raise errors.DataError(
        f'{path} holds objects other than tensors, and loading them would run code from the '
        f'file ({str(e).splitlines()[0]}). If you trust the file, pass --allow_pickle; or save '
        'its state dict with np.savez and pass --npz.'
      ) from e
    except Exception as e:  # pylint: disable=broad-except
      raise errors.DataError(
        f'Cannot read {path} as a PyTorch checkpoint: {e}'
      ) from e
  if isinstance(checkpoint, Mapping) and 'model' in checkpoint:
    checkpoint = checkpoint['model']
  if not isinstance(checkpoint, Mapping) or not all(
    hasattr(v, 'detach') for v in checkpoint.values()
  ):
    raise errors.DataError(
      f'{path} is neither a dict with a "model" state dict nor '
      'a state dict of tensors.'
    )
  return {k: v.detach().cpu().float().numpy() for k, v in checkpoint.items()}


def check_image_channels(
  state_dict: Mapping[str, np.ndarray], config: unet.UNetConfig
) -> None:
  """Fails, saying what to set, when the checkpoint's input width differs from the config's."""
  first = state_dict.get('input_blocks.0.0.weight')
  if first is None:
    raise errors.DataError(
      'The state dict has no input_blocks.0.0.weight (the first convolution): it is not the '
      "authors' U-Net, or its keys carry a prefix (pass --npz_prefix=PREFIX/)."
    )
  if config.extra_input_channels:
    raise errors.ConfigError(
      f'The config adds {config.extra_input_channels} input channel(s) for self-conditioning, '
      "which the authors' networks do not have: convert with "
      '--config.diffusion.self_condition=False.'
    )
  expected = int(np.shape(first)[1]) - 1
  if expected != config.image_channels:
    raise errors.ConfigError(
      f'The checkpoint takes {expected} image channel(s) but the config gives '
      f"{config.image_channels}. The authors' checkpoints take their 3-channel ImageNet-normalised "
      'input: pass --config.dataset.image_preprocessing=imagenet_rgb.'
    )


_TORCH_CHECKPOINT = flags.DEFINE_string(
  'torch_checkpoint', None, "The authors' .pt file (needs torch)."
)
_NPZ = flags.DEFINE_string(
  'npz', None, 'Alternatively, a state dict saved with np.savez.'
)
_NPZ_PREFIX = flags.DEFINE_string(
  'npz_prefix', '', 'Key prefix of the state dict inside --npz, e.g. weights/.'
)
_ALLOW_PICKLE = flags.DEFINE_bool(
  'allow_pickle',
  False,
  'Load --torch_checkpoint with weights_only=False, which runs code pickled '
  'in the file: only for files you trust.',
)
_OUT = flags.DEFINE_string('out', None, 'Output checkpoint directory.')
_CONFIG = config_flags.DEFINE_config_file(
  'config',
  None,
  'The config to evaluate with (configs/*.py); its model and '
  'dataset.image_preprocessing must match the checkpoint.',
)


def main(argv):
  """Converts; an error the user can fix ends with `ERROR: ...` and exit status 2."""
  try:
    _convert(argv)
  except Exception as e:  # pylint: disable=broad-except
    message = errors.io_fault_message(e, path=str(_OUT.value), flag='--out')
    if isinstance(
      e, (FileNotFoundError, ImportError, errors.ConfigError, errors.DataError)
    ):
      message = str(e)
    if message is None or os.environ.get(
      'DIFFSEG_TRACEBACK', ''
    ).strip().lower() in ('1', 'true', 'yes'):
      raise
    print(f'ERROR: {message}', file=sys.stderr)
    sys.exit(2)


def _convert(argv):
  del argv
  from diffseg_jax import checkpoint  # pylint: disable=g-import-not-at-top

  if (_TORCH_CHECKPOINT.value is None) == (_NPZ.value is None):
    raise app.UsageError('Pass exactly one of --torch_checkpoint or --npz.')
  if _OUT.value is None or _CONFIG.value is None:
    raise app.UsageError('--out and --config are required.')
  if _NPZ.value is not None:
    state_dict = load_npz_state_dict(_NPZ.value, prefix=_NPZ_PREFIX.value)
  else:
    state_dict = load_torch_state_dict(
      _TORCH_CHECKPOINT.value, allow_pickle=_ALLOW_PICKLE.value
    )
  config = settings.unet_config(_CONFIG.value)
  check_image_channels(state_dict, config)
  params = convert_state_dict(state_dict, config)
  out = checkpoint.save_params(
    os.path.join(_OUT.value, 'checkpoints'),
    nnx.to_pure_dict(params),
    step=0,
    meta={'kind': 'converted_torch', 'unet_config': repr(config)},
  )
  logging.info('Wrote %d tensors to %s', len(state_dict), out)
  print(
    f'Converted {len(state_dict)} tensors for {config} -> {out}\n'
    f'Evaluate: python -m diffseg_jax.main --config=CONFIG --workdir={_OUT.value} '
    '--mode=evaluate (the same config and overrides)'
  )


if __name__ == '__main__':
  app.run(main)
