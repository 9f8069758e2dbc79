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

"""The jitted train step on 4 fake CPU devices equals the step on 1 device (replicated and FSDP).

XLA fixes the number of host devices when JAX starts, so the runs happen in a child process started
with `--xla_force_host_platform_device_count=4`; it writes the parameters and sharding facts to an
.npz/.json pair that the test compares.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO
from tests.conftest import tiny_config
from tests.conftest import TinyData
from tests.conftest import with_xla_flags

NUM_DEVICES = 4
NUM_STEPS = 3
# A one-level U-Net with attention (its weights are the largest to shard): the test time is mostly
# compilation, four times over.
MODEL = {
  'model.attention_levels': (-1,),
  'model.channel_mult': (1,),
  'model.num_res_blocks': (1,),
  'model.num_middle_blocks': 1,
}
# Lower than parallel.FSDP_MIN_SIZE so that the kernels of this U-Net get sharded.
FSDP_MIN_SIZE = 1024
VARIANTS = {
  'one_device': {'mesh.data': 1, 'network_chunk_size': 0, **MODEL},
  # The batch of 4 as four independent network calls (denoiser.make_denoise_fn).
  'one_device_chunked': {'mesh.data': 1, 'network_chunk_size': 1, **MODEL},
  'four_devices': {'mesh.data': NUM_DEVICES, **MODEL},
  'four_devices_fsdp': {
    'mesh.data': NUM_DEVICES,
    'mesh.param_sharding': 'fsdp',
    **MODEL,
  },
}


def _flatten(tree) -> dict:
  import jax  # pylint: disable=g-import-not-at-top

  return {
    jax.tree_util.keystr(path): np.asarray(leaf)
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
  }


def run_variants(data_dir: str, name: str, out_dir: str) -> None:
  """Child process: NUM_STEPS train steps per variant on the same global batches; writes results."""
  import jax  # pylint: disable=g-import-not-at-top

  from diffseg_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  from diffseg_jax import parallel  # pylint: disable=g-import-not-at-top
  from diffseg_jax import train  # pylint: disable=g-import-not-at-top

  if jax.device_count() != NUM_DEVICES:
    raise RuntimeError(
      f'expected {NUM_DEVICES} fake CPU devices, got {jax.devices()}'
    )
  parallel.FSDP_MIN_SIZE = FSDP_MIN_SIZE
  info = {}
  for label, overrides in VARIANTS.items():
    config = tiny_config(TinyData(data_dir, name), **overrides)
    parts = train.build(config)
    mesh, state, step_fn = parts.mesh, parts.state, parts.train_step
    source = input_pipeline.load_source(
      name=name, split='train', data_dir=data_dir
    )
    batches = input_pipeline.train_batches(
      source,
      global_batch_size=config.batch_size,
      seed=config.seed,
      mesh=mesh,
      prefetch=0,
    )
    initial = _flatten(state['params'])
    losses, images = [], []
    for i in range(NUM_STEPS):
      batch = next(batches)
      if i == 0:
        batch_shards = [
          (shard.device.id, list(shard.data.shape))
          for shard in batch['image'].addressable_shards
        ]
      images.append(np.asarray(batch['image']))
      state, metrics = step_fn(state, batch)
      losses.append(float(metrics['loss']))
    params = state['params']
    param_shards = {
      key: sorted({tuple(s.data.shape) for s in leaf.addressable_shards})
      + [list(leaf.shape)]
      for key, leaf in zip(_flatten(params), jax.tree.leaves(params))
    }
    info[label] = {
      'losses': losses,
      'batch_shards': batch_shards,
      'step': int(state['step']),
      'param_shards': param_shards,
    }
    np.savez(
      os.path.join(out_dir, f'{label}.npz'),
      images=np.stack(images),
      **{'initial' + k: v for k, v in initial.items()},
      **{'params' + k: v for k, v in _flatten(params).items()},
      **{'ema' + k: v for k, v in _flatten(state['ema_params']).items()},
    )
  with open(os.path.join(out_dir, 'info.json'), 'w', encoding='utf-8') as f:
    json.dump(info, f)


# One pytest-xdist worker runs the module (`--dist loadgroup`), so the child process runs once.
pytestmark = pytest.mark.xdist_group('sharded_step')


@pytest.fixture(scope='module')
def results(tiny_synthetic, tmp_path_factory):
  out_dir = str(tmp_path_factory.mktemp('sharded_step'))
  env = dict(
    os.environ,
    PYTHONPATH=REPO,
    JAX_PLATFORMS='cpu',
    XLA_FLAGS=with_xla_flags(
      f'--xla_force_host_platform_device_count={NUM_DEVICES}'
    ),
  )
  code = (
    'import sys; from tests import test_sharded_step as t; '
    't.run_variants(*sys.argv[1:])'
  )
  proc = subprocess.run(
    [
      sys.executable,
      '-c',
      code,
      tiny_synthetic.data_dir,
      tiny_synthetic.name,
      out_dir,
    ],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-4000:]
  with open(os.path.join(out_dir, 'info.json'), encoding='utf-8') as f:
    info = json.load(f)
  arrays = {
    label: dict(np.load(os.path.join(out_dir, f'{label}.npz')))
    for label in VARIANTS
  }
  return info, arrays


def test_batch_is_split_over_the_four_devices(results):
  info, arrays = results
  batch_size = tiny_config(TinyData('', '')).batch_size
  four = info['four_devices']['batch_shards']
  assert sorted(device for device, _ in four) == list(range(NUM_DEVICES))
  assert all(shape[0] == batch_size // NUM_DEVICES for _, shape in four)
  assert [shape[0] for _, shape in info['one_device']['batch_shards']] == [
    batch_size
  ]
  for label in VARIANTS:
    np.testing.assert_array_equal(
      arrays[label]['images'], arrays['one_device']['images']
    )


@pytest.mark.parametrize(
  'label', ['four_devices', 'four_devices_fsdp', 'one_device_chunked']
)
def test_four_devices_match_one_device(results, label):
  info, arrays = results
  assert info[label]['step'] == info['one_device']['step'] == NUM_STEPS
  np.testing.assert_allclose(
    info[label]['losses'], info['one_device']['losses'], rtol=1e-5
  )
  reference = arrays['one_device']
  keys = [k for k in reference if k != 'images']
  assert set(keys) == set(arrays[label]) - {'images'}
  for key in keys:
    np.testing.assert_allclose(
      arrays[label][key], reference[key], rtol=0, atol=1e-5, err_msg=key
    )
  # The steps moved the parameters by far more than the tolerance.
  moved = max(
    np.abs(reference['params' + k[len('initial') :]] - reference[k]).max()
    for k in keys
    if k.startswith('initial')
  )
  assert moved > 1e-4


def test_fsdp_shards_large_params_and_replicates_small_ones(results):
  info, _ = results
  sharded, replicated = 0, 0
  for key, (*shard_shapes, shape) in info['four_devices_fsdp'][
    'param_shards'
  ].items():
    assert len(shard_shapes) == 1, key
    shard = shard_shapes[0]
    if np.prod(shape) >= FSDP_MIN_SIZE:
      assert np.prod(shard) * NUM_DEVICES == np.prod(shape), (key, shard, shape)
      sharded += 1
    else:
      assert shard == shape, (key, shard, shape)
      replicated += 1
  assert sharded >= 10 and replicated >= 10
  for key, (*shard_shapes, shape) in info['four_devices'][
    'param_shards'
  ].items():
    assert shard_shapes == [shape], key
