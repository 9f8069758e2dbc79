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

r"""Train-step and sampling throughput of ours against the PyTorch reference, in one run.

For each image size (128 and 64) and in the same process, same threads and same batch:
  * the train step diffseg_jax.train builds (augmentation, loss, AdamW + clip, EMA, NaN guard;
    the default U-Net, fp32, batch 8) against benchmarks/torch_reference.py's step (same network,
    loss, AdamW + clip, EMA; fp32), in images/s;
  * the 10-step DDPM sampler drawing 4 masks for each of 8 images (one network call of 32 per
    step; diffseg_jax.sampling.Sampler) against the reference's sampler, in masks/s.
The two sides are timed in turns (median of --runs rounds), and every ratio in the JSON
(`*_vs_torch`) divides two numbers of this run. torch.set_num_threads is set to the CPUs JAX's
CPU client uses. The train step's achieved GFLOP/s (XLA cost analysis) is reported against a
float32 matmul peak measured in the same run.

  python benchmarks/step_throughput.py            # 5 rounds
  python benchmarks/step_throughput.py --quick    # 2 rounds, a smoke check
  python benchmarks/step_throughput.py --sizes=128 --conv_impl=xla

Writes benchmarks/results/step_throughput.json (or --out); keys such as train_img_per_s_128 and
torch_train_img_per_s_128, sample_masks_per_s_128 and torch_sample_masks_per_s_128.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp

from diffseg_jax import huge_pages

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import side_by_side  # pylint: disable=g-import-not-at-top,wrong-import-position

_QUICK = flags.DEFINE_bool(
  'quick', False, 'Fewer rounds (2) for a smoke check.'
)
_RUNS = flags.DEFINE_integer('runs', 5, 'Timed rounds per comparison (median).')
_CONV_IMPL = flags.DEFINE_enum(
  'conv_impl', 'auto', ['auto', 'xla', 'cpu_fast'], 'UNetConfig.conv_impl.'
)
_NETWORK_CHUNK_SIZE = flags.DEFINE_integer(
  'network_chunk_size',
  -1,
  'config.network_chunk_size (-1: automatic for the back end; 0: one network call per batch).',
)
_SIZES = flags.DEFINE_list('sizes', ['128', '64'], 'Image sizes to time.')
_BATCH = flags.DEFINE_integer(
  'batch', 8, 'Train batch and images per sampler call.'
)
_NUM_SAMPLES = flags.DEFINE_integer(
  'num_samples', 4, 'Masks per image when sampling.'
)
_STEPS = flags.DEFINE_integer('steps', 10, 'DDPM sampler steps.')
_SMOKE_NET = flags.DEFINE_bool(
  'smoke_net',
  False,
  "configs/default.py:smoke's tiny network (checks the script only).",
)
_OUT = flags.DEFINE_string(
  'out',
  os.path.join(os.path.dirname(__file__), 'results', 'step_throughput.json'),
  'Output JSON file.',
)


def matmul_peak_gflops(*, n: int = 2048, runs: int = 5) -> float:
  """float32 GFLOP/s of a jitted n x n matmul on the default device."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
  f = jax.jit(jnp.dot)
  timing = side_by_side.time_round_robin(
    {'dot': lambda: jax.block_until_ready(f(a, b))}, runs=runs
  )
  return 2 * n**3 / timing['dot']['seconds'] / 1e9


def main(argv):
  del argv
  import torch  # pylint: disable=g-import-not-at-top

  from diffseg_jax import settings  # pylint: disable=g-import-not-at-top
  from diffseg_jax.models import layers  # pylint: disable=g-import-not-at-top
  from diffseg_jax.models import unet  # pylint: disable=g-import-not-at-top

  runs = 2 if _QUICK.value else _RUNS.value
  threads = side_by_side.cpu_threads()
  torch.set_num_threads(threads)
  batch, samples, steps = _BATCH.value, _NUM_SAMPLES.value, _STEPS.value
  cfg = side_by_side.config(
    batch=batch,
    conv_impl=_CONV_IMPL.value,
    smoke=_SMOKE_NET.value,
    network_chunk_size=_NETWORK_CHUNK_SIZE.value,
  )
  backend = jax.default_backend()
  device = side_by_side.torch_device(backend)
  peak = matmul_peak_gflops(runs=runs)
  results = {
    'cpu_model': side_by_side.cpu_model(),
    'cpu_count': os.cpu_count(),
    'threads': threads,
    'torch_threads': torch.get_num_threads(),
    'jax_version': jax.__version__,
    'torch_version': torch.__version__,
    'backend': backend,
    'device': str(jax.devices()[0].device_kind),
    'torch_device': device,
    'machine': platform.platform(),
    'host_malloc': huge_pages.describe(),
    'params': unet.count_params(settings.unet_config(cfg)),
    'smoke_net': _SMOKE_NET.value,
    'conv_impl': _CONV_IMPL.value,
    'resolved_conv_impl': layers.resolve_conv_impl(_CONV_IMPL.value),
    'network_chunk_size': settings.network_chunk_size(cfg),
    'train_network_chunk_size': settings.network_chunk_size(cfg, training=True),
    'compiler_options': layers.compiler_options(_CONV_IMPL.value),
    'runs': runs,
    'batch': batch,
    'num_samples': samples,
    'sampler_steps': steps,
    'timing': 'median over rounds; ours and torch timed in turns in each round',
    'matmul_peak_gflop_per_s': peak,
    'load_average_at_start': os.getloadavg(),
  }
  start = time.perf_counter()
  for size in [int(s) for s in _SIZES.value]:
    ours_step, compiled = side_by_side.ours_train(cfg, size=size)
    train = side_by_side.time_round_robin(
      {
        'ours': ours_step,
        'torch': side_by_side.torch_train(
          cfg, size=size, device=device, fp16=False
        ),
      },
      runs=runs,
    )
    del ours_step
    sample = side_by_side.time_round_robin(
      {
        'ours': side_by_side.ours_sample(
          cfg, images=batch, samples=samples, size=size, steps=steps
        ),
        'torch': side_by_side.torch_sample(
          cfg,
          images=batch,
          samples=samples,
          size=size,
          steps=steps,
          device=device,
          fp16=False,
        ),
      },
      runs=runs,
    )
    for side, prefix in (('ours', ''), ('torch', 'torch_')):
      t, s = train[side], sample[side]
      results[f'{prefix}train_img_per_s_{size}'] = batch / t['seconds']
      results[f'{prefix}train_img_per_cpu_s_{size}'] = batch / t['cpu_seconds']
      results[f'{prefix}sample_masks_per_s_{size}'] = (
        batch * samples / s['seconds']
      )
      results[f'{prefix}sample_masks_per_cpu_s_{size}'] = (
        batch * samples / s['cpu_seconds']
      )
    for key in (
      f'train_img_per_s_{size}',
      f'sample_masks_per_s_{size}',
      f'train_img_per_cpu_s_{size}',
      f'sample_masks_per_cpu_s_{size}',
    ):
      results[f'{key}_vs_torch'] = results[key] / results[f'torch_{key}']
    flops = side_by_side.flops(compiled)
    if flops:
      results[f'train_gflop_per_step_{size}'] = flops / 1e9
      results[f'train_gflop_per_s_{size}'] = (
        flops / train['ours']['seconds'] / 1e9
      )
      results[f'train_fraction_of_matmul_peak_{size}'] = (
        results[f'train_gflop_per_s_{size}'] / peak
      )
  results['seconds'] = time.perf_counter() - start
  results['load_average_at_end'] = os.getloadavg()
  os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
  with open(_OUT.value, 'w') as f:
    json.dump(results, f, indent=2)

  print(
    f'{results["cpu_model"]}; {threads} threads (JAX and torch); batch {batch}; '
    f'median of {runs} rounds; params {results["params"]:,}'
  )
  print(f'{"measure":28s} {"ours":>9s} {"torch":>9s} {"ours/torch":>10s}')
  for size in _SIZES.value:
    for key in (f'train_img_per_s_{size}', f'sample_masks_per_s_{size}'):
      print(
        f'{key:28s} {results[key]:9.2f} {results["torch_" + key]:9.2f} '
        f'{results[key + "_vs_torch"]:10.2f}'
      )
  print(
    f'load average {results["load_average_at_start"]} -> '
    f'{results["load_average_at_end"]}; wrote {_OUT.value}'
  )


if __name__ == '__main__':
  huge_pages.reexec_with_huge_pages()  # as diffseg_jax.main does
  app.run(main)
