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

"""The synthetic set's yardsticks: the true oracle, the mode oracle, image-blind.

Scores, on the test split of synthetic_lesions/<size> (the builder's config, 500
images; generated with the builder's own generator, identical to a build), the
three yardsticks that `diffseg_jax.evaluation.evaluate` reports beside a model:

  oracle       fresh annotations drawn from the true distribution (a mode drawn
               with mode_probs, traced with the annotators' boundary jitter);
  ideal        the same with the probabilities of an ideal observer who knows
               the geometry and estimates the lobe contrast from the image
               (syn.ideal_observer_mode_probs): no model of the image alone
               can be expected to do better;
  mode_oracle  the jitter-free modes drawn with mode_probs;
  blind        the modes drawn with the training split's average mode_probs.

The "model" is a second set of fresh draws from the true distribution (its row
should match the oracle's within sampling error). Prints a table of GED, HM-IoU,
CI and mode TV at N=16 and writes benchmarks/results/oracle_yardsticks.json.

  python benchmarks/oracle_yardsticks.py [--size 32] [--num_images 500]
"""

import json
import os
import platform
import time

from absl import app
from absl import flags
import jax
import numpy as np

from diffseg_jax import evaluation
from tfds_lidc import synthetic_lesions as syn

KEYS = ('ged_16', 'hm_iou_16', 'ci_16', 'mode_tv_16')
ROWS = (
  ('', 'fresh draws (as a model)'),
  ('oracle_', 'oracle (true)'),
  ('ideal_', 'ideal observer of the image'),
  ('mode_oracle_', 'mode oracle'),
  ('blind_', 'image-blind'),
)

SIZES = (32, 64, 128)
_SIZE = flags.DEFINE_integer(
  'size', 32, f'Image side of synthetic_lesions/<size>, one of {SIZES}.'
)
flags.register_validator(
  'size', lambda size: size in SIZES, f'--size must be one of {SIZES}.'
)
_NUM_IMAGES = flags.DEFINE_integer(
  'num_images', None, 'test images (default: the whole test split)'
)
_BATCH = flags.DEFINE_integer('batch', 50, 'Test images per evaluation batch.')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the draws.')
_OUT = flags.DEFINE_string(
  'out',
  os.path.join(
    os.path.dirname(os.path.abspath(__file__)),
    'results',
    'oracle_yardsticks.json',
  ),
  'Output JSON file.',
)


def _cpu_model() -> str:
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or 'unknown'


def _split(config, split, num):
  """The first `num` examples of `split`, as the builder generates them."""
  chunks = [
    syn.generate_chunk(
      seed=config.seed,
      split=split,
      chunk=c,
      n=min(syn.CHUNK, num - c * syn.CHUNK),
      size=config.size,
    )
    for c in range(-(-num // syn.CHUNK))
  ]
  return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments {argv[1:]}.')
  config = next(
    c for c in syn.SyntheticLesions.BUILDER_CONFIGS if c.size == _SIZE.value
  )
  start = time.perf_counter()
  train_probs = _split(config, 'train', config.num_train)['mode_probs']
  blind = evaluation.average_mode_probs(
    [{'mode_probs': p} for p in train_probs]
  )
  num = config.num_test if _NUM_IMAGES.value is None else _NUM_IMAGES.value
  test = _split(config, 'test', num)
  test['id'] = np.array(
    [f'synth{_SIZE.value}-test-{i:06d}' for i in range(num)]
  )
  batches = [
    {k: v[i : i + _BATCH.value] for k, v in test.items()}
    for i in range(0, num, _BATCH.value)
  ]
  by_image = {
    x['image'][b].tobytes(): (x['geometry'][b], x['mode_probs'][b])
    for x in batches
    for b in range(len(x['image']))
  }

  def fresh_draws(image, keys, num_samples):
    seeds = np.asarray(jax.random.key_data(keys)).reshape(len(image), -1)
    draws = []
    for x, seed in zip(np.asarray(image), seeds):
      geometry, probs = by_image[x.tobytes()]
      draws.append(
        syn.draw_annotations(
          geometry=geometry,
          mode_probs=probs,
          num=num_samples,
          size=_SIZE.value,
          seed=seed.tolist(),
        )
      )
    return np.stack(draws)

  summary = evaluation.evaluate(
    fresh_draws,
    batches,
    num_samples_list=(16,),
    out_dir=None,
    rng=jax.random.PRNGKey(_SEED.value),
    split_name='test',
    blind_mode_probs=blind,
    log=lambda *_: None,
  )
  seconds = time.perf_counter() - start

  header = '| yardstick | ' + ' | '.join(KEYS) + ' |'
  lines = [header, '|---' * (len(KEYS) + 1) + '|']
  for prefix, title in ROWS:
    cells = [
      f'{summary[prefix + k]["mean"]:.4f} ± {summary[prefix + k]["sem"]:.4f}'
      for k in KEYS
    ]
    lines.append(f'| {title} | ' + ' | '.join(cells) + ' |')
  ratio = (
    summary['mode_oracle_ged_16']['mean'] / summary['oracle_ged_16']['mean']
  )
  print(
    f'synthetic_lesions/{_SIZE.value} test, {num} images, N=16 '
    f'(mean ± s.e. over images; {seconds:.0f} s on {_cpu_model()}):\n'
  )
  print('\n'.join(lines))
  print(f'\nmode oracle GED_16 / true oracle GED_16 = {ratio:.3f}')
  ideal = {
    k: summary[f'ideal_{k}']['mean'] / summary[f'oracle_{k}']['mean']
    for k in ('ged_16', 'mode_tv_16')
  }
  print(
    'ideal observer / true oracle: '
    + ', '.join(f'{k} {v:.3f}' for k, v in ideal.items())
  )

  result = {
    'dataset': f'synthetic_lesions/{_SIZE.value}',
    'split': 'test',
    'num_images': num,
    'num_samples': 16,
    'seed': _SEED.value,
    'blind_mode_probs': blind.tolist(),
    'cpu_model': _cpu_model(),
    'cpu_count': os.cpu_count(),
    'seconds': seconds,
    'command': 'python benchmarks/oracle_yardsticks.py'
    + (f' --size {_SIZE.value}' if _SIZE.value != 32 else ''),
    'ideal_over_oracle': ideal,
    'metrics': {
      prefix + k: summary[prefix + k] for prefix, _ in ROWS for k in KEYS
    },
  }
  os.makedirs(os.path.dirname(_OUT.value), exist_ok=True)
  with open(_OUT.value, 'w') as f:
    json.dump(result, f, indent=1, sort_keys=True)


if __name__ == '__main__':
  app.run(main)
