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

r"""Which library runs the convolutions on XLA:CPU, and how many network calls a step makes.

In one process and timed in turns (median of --runs rounds), for each routing and each
`config.network_chunk_size` given: the train step of diffseg_jax.train and the 10-step DDPM sampler
(sampling.Sampler), both for the network of configs/<config>.py at fp32.
Routings: 'eigen' is what `UNetConfig.compiler_options` sets for the 'cpu_fast' convolution
(XLA's own convolution kernels; dots and reductions in YNNPACK); 'ynnpack' is XLA's default
(convolutions in YNNPACK too; the benchmark empties `layers._CPU_FAST_COMPILER_OPTIONS` for it).
`--option=KEY=VALUE` adds a routing 'eigen + KEY=VALUE': eigen's options plus that XLA option (one
such routing per flag), to try a compiler option against what the code uses, timed in turns.

  python benchmarks/cpu_routing.py                                   # default U-Net, 128^2
  python benchmarks/cpu_routing.py --config=quickstart --size=32 --batch=32 --images=50 \
      --samples=16 --chunks=0
  python benchmarks/cpu_routing.py --routings=eigen --chunks=-1 \
      --option=xla_backend_optimization_level=2 --runs=10

Writes OUT.json and OUT.md (default benchmarks/results/cpu_routing_<config>).
"""

from __future__ import annotations

import contextlib
import os
import sys

from absl import app
from absl import flags

from diffseg_jax import huge_pages

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peak_memory  # pylint: disable=g-import-not-at-top,wrong-import-position
import report_files  # pylint: disable=g-import-not-at-top,wrong-import-position
import side_by_side  # pylint: disable=g-import-not-at-top,wrong-import-position

_CONFIG = flags.DEFINE_string('config', 'default', 'configs/<name>.py.')
_SIZE = flags.DEFINE_integer('size', 128, 'Image side.')
_BATCH = flags.DEFINE_integer('batch', 8, 'Train batch.')
_IMAGES = flags.DEFINE_integer('images', 8, 'Images per sampler call.')
_SAMPLES = flags.DEFINE_integer('samples', 4, 'Masks per image.')
_CHUNKS = flags.DEFINE_list(
  'chunks', ['-1', '0'], 'config.network_chunk_size values to time.'
)
_ROUTINGS = flags.DEFINE_list(
  'routings',
  ['ynnpack', 'eigen'],
  "Of 'ynnpack', 'eigen': the routings to time.",
)
_OPTIONS = flags.DEFINE_multi_string(
  'option',
  [],
  "KEY=VALUE: an XLA compiler option timed as the routing 'eigen + KEY=VALUE'.",
)
_RUNS = flags.DEFINE_integer('runs', 4, 'Timed rounds (median).')
_OUT = flags.DEFINE_string('out', None, 'Output path without extension.')


def _option_value(text: str):
  """An XLA option's value: int, float or bool where `text` reads as one, else the string."""
  for parse in (int, float):
    with contextlib.suppress(ValueError):
      return parse(text)
  return {'true': True, 'false': False}.get(text.lower(), text)


def main(argv):
  del argv
  import jax  # pylint: disable=g-import-not-at-top

  from diffseg_jax import settings as settings_lib  # pylint: disable=g-import-not-at-top
  from diffseg_jax.models import layers  # pylint: disable=g-import-not-at-top

  routed = layers._CPU_FAST_COMPILER_OPTIONS  # pylint: disable=protected-access
  routings = {'ynnpack': (), 'eigen': routed}
  unknown = set(_ROUTINGS.value) - set(routings)
  if unknown:
    raise app.UsageError(
      f'--routings: unknown {sorted(unknown)}; use ynnpack, eigen.'
    )
  routings = {name: routings[name] for name in _ROUTINGS.value}
  for option in _OPTIONS.value:
    key, sep, value = option.partition('=')
    if not sep or not key:
      raise app.UsageError(f'--option={option!r}: expected KEY=VALUE.')
    options = routed + ((key, _option_value(value)),)
    # layers.compiler_options falls back to XLA's defaults for options it rejects; here that
    # would time the wrong routing under this one's name.
    if not layers._compiler_accepts(options):  # pylint: disable=protected-access
      raise app.UsageError(
        f'--option={option!r}: this XLA ({jax.__version__}) rejects it; check the name and value.'
      )
    routings[f'eigen + {option}'] = options
  cases, chunking = {}, {}
  for routing, options in routings.items():
    layers._CPU_FAST_COMPILER_OPTIONS = options  # pylint: disable=protected-access
    for chunk in (int(c) for c in _CHUNKS.value):
      cfg = peak_memory.build_config(_CONFIG.value, batch_size=_BATCH.value)
      cfg.unlock()
      cfg.network_chunk_size = chunk
      cfg.lock()
      name = f'{routing}, chunk {chunk}'
      chunking[name] = {
        'train': settings_lib.network_chunk_size(cfg, training=True),
        'sample': settings_lib.network_chunk_size(cfg),
      }
      cases[f'{name}: train step'] = side_by_side.ours_train(
        cfg, size=_SIZE.value
      )[0]
      cases[f'{name}: sampler'] = side_by_side.ours_sample(
        cfg,
        images=_IMAGES.value,
        samples=_SAMPLES.value,
        size=_SIZE.value,
        steps=10,
      )
  layers._CPU_FAST_COMPILER_OPTIONS = routed  # pylint: disable=protected-access
  timed = side_by_side.time_round_robin(cases, runs=_RUNS.value)

  rows = [
    f'{_CONFIG.value} network, {_SIZE.value}^2, train batch {_BATCH.value}, sampler '
    f'{_SAMPLES.value} masks x {_IMAGES.value} images x 10 steps; '
    f'{side_by_side.cpu_model()}, {side_by_side.cpu_threads()} threads; median of {_RUNS.value}',
    '',
    '| routing, config.network_chunk_size (train / sampler chunk) | train step s | sampler call s |',
    '|---|---|---|',
  ]
  for name, chunks in chunking.items():
    rows.append(
      f'| {name} ({chunks["train"]} / {chunks["sample"]}) '
      f'| {timed[name + ": train step"]["seconds"]:.2f} '
      f'| {timed[name + ": sampler"]["seconds"]:.2f} |'
    )
  table = '\n'.join(rows)
  print(table)
  out = _OUT.value or os.path.join(
    os.path.dirname(os.path.abspath(__file__)),
    'results',
    f'cpu_routing_{_CONFIG.value}',
  )
  report_files.write(
    out,
    result={
      'cpu_model': side_by_side.cpu_model(),
      'host_malloc': huge_pages.describe(),
      'threads': side_by_side.cpu_threads(),
      'jax_version': jax.__version__,
      'config': _CONFIG.value,
      'size': _SIZE.value,
      'batch': _BATCH.value,
      'images': _IMAGES.value,
      'samples': _SAMPLES.value,
      'runs': _RUNS.value,
      'compiler_options': {name: dict(o) for name, o in routings.items()},
      'chunking': chunking,
      'timed': timed,
    },
    table=table,
  )
  print(f'wrote {out}.json and {out}.md')


if __name__ == '__main__':
  huge_pages.reexec_with_huge_pages()  # as diffseg_jax.main does
  app.run(main)
