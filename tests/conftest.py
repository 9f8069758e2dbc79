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

"""Shared fixtures: a tiny synthetic data set and tiny training configs.

A persistent XLA compilation cache (in .pytest_cache/) is shared by the test processes and the
subprocesses they start, so the same tiny network is compiled once per machine. CI starts with an
empty cache, where compiling is most of the suite's time: the quick tests (`-m "not slow"`) compile
with LLVM's optimisation off (`XLA_FLAGS`, unless set; `pytest_configure`), which changes how fast
the code runs, not what it computes (the SMALL U-Net's output and gradient were bit-identical with
and without it, jax 0.10.2), and the tiny training configs have no attention block
(`AttentionBlock` has its own tests), which took 40 % of a tiny train step's compile time.
"""

import collections
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(REPO, '..', 'shared')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault(
  'JAX_COMPILATION_CACHE_DIR', os.path.join(REPO, '.pytest_cache', 'jax_cache')
)
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.5')

import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position

# The authors' recorded network/loss numbers (SPEC §2a) and the small network they were recorded on.
REFERENCE = os.path.join(SHARED, 'data', 'reference', 'official_reference.npz')
SMALL = dict(
  base_channels=32,
  channel_mult=(1, 2, 2),
  num_res_blocks=(1, 2, 1),
  num_middle_blocks=2,
  attention_levels=(-1,),
  num_heads=4,
  image_channels=3,
)
needs_reference = pytest.mark.skipif(
  not os.path.exists(REFERENCE),
  reason=f'{REFERENCE} missing (CI keeps shared/ beside the checkout).',
)


def pytest_configure(config):
  # The quick tests (`-m "not slow"`, as .ci/run) mostly compile; the slow ones mostly run, and
  # unoptimised code trains the quickstart at half its speed, so they keep XLA's default.
  if 'not slow' in (config.getoption('markexpr', '') or ''):
    os.environ.setdefault('XLA_FLAGS', '--xla_backend_optimization_level=0')


@pytest.fixture(scope='module')
def reference():
  with np.load(REFERENCE) as data:
    return {k: data[k] for k in data.files}


TinyData = collections.namedtuple('TinyData', ['data_dir', 'name'])


@pytest.fixture(scope='session')
def tiny_synthetic(tmp_path_factory) -> TinyData:
  """synthetic_lesions/32 with 64 train, 8 validation and 8 test examples, built once per session."""
  from tfds_lidc import build  # pylint: disable=g-import-not-at-top

  data_dir = str(tmp_path_factory.mktemp('tfds'))
  report = build.build(
    'synthetic_lesions/32',
    data_dir,
    overrides={'num_train': 64, 'num_validation': 8, 'num_test': 8},
    log=lambda *a: None,
  )
  return TinyData(data_dir, report['dataset'])


def tiny_config(data: TinyData, **overrides):
  """The quickstart's ':smoke' config on the tiny data set, with `overrides` ('a.b': value)."""
  from configs import quickstart  # pylint: disable=g-import-not-at-top

  config = quickstart.get_config('smoke')
  config.dataset.name = data.name
  config.dataset.data_dir = data.data_dir
  config.batch_size = 4
  config.validation.every_steps = 0
  config.evaluate_after_training = False
  config.async_checkpointing = False
  config.model.attention_levels = ()
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split('.')
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def config_flags(data: TinyData, **overrides) -> list[str]:
  """Command-line flags giving the same config as `tiny_config(data, **overrides)`."""
  values = {
    'dataset.name': data.name,
    'dataset.data_dir': data.data_dir,
    'batch_size': 4,
    'validation.every_steps': 0,
    'evaluate_after_training': False,
    'async_checkpointing': False,
    'model.attention_levels': (),
  }
  values.update(overrides)
  return [
    '--config=' + os.path.join(REPO, 'configs', 'quickstart.py') + ':smoke'
  ] + [f'--config.{k}={v}' for k, v in values.items()]


def with_xla_flags(*flags: str) -> str:
  """XLA_FLAGS for a child process: this process's (see above) plus `flags`."""
  return ' '.join([os.environ.get('XLA_FLAGS', ''), *flags]).strip()
