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

r"""Loader throughput: built synthetic set -> sharded train batches -> jitted augmentation.

  python benchmarks/loader_throughput.py [--size=128] [--num_build=10000] [--batch_sizes=8,32]
      [--repeats=3] [--baseline=GIT_REV]

(after `pip install -e .`, or with PYTHONPATH=. from the repository root).

Builds `synthetic_lesions/<size>` with `num_build` examples (train/validation/test in
the proportions 90/5/5) into a temporary data dir and times the build
(`build_s_synthetic_10k` when num_build=10000), then reads its train split through
`input_pipeline.train_batches` and applies the jitted `augment.augment` (all
augmentations on, p as in SPEC §2) plus `choose_annotation`, blocking on the result.
Each rate is the median of `repeats` passes; 'loader only' rates time the batches
without augmentation. `--baseline=REV` also times `train_batches` of
diffseg_jax/input_pipeline.py at git revision REV (read with `git show`) in every
repeat, alternating which goes first, so both see the same load of a shared machine.
Writes benchmarks/results/loader_throughput.json and prints a table.
"""

import json
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
import types

from absl import app
from absl import flags
import jax

from diffseg_jax import augment
from diffseg_jax import input_pipeline
from diffseg_jax import parallel

RESULTS = os.path.join(
  os.path.dirname(os.path.abspath(__file__)),
  'results',
  'loader_throughput.json',
)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_SIZE = flags.DEFINE_integer(
  'size', 128, 'Image side of synthetic_lesions/<size>.'
)
_NUM_BUILD = flags.DEFINE_integer(
  'num_build', 10000, 'Examples built (all splits together).'
)
_BATCH_SIZES = flags.DEFINE_string(
  'batch_sizes', '8,32', 'Comma-separated batch sizes to time.'
)
_STEPS = flags.DEFINE_integer('steps', 60, 'Batches timed per pass.')
_OUT = flags.DEFINE_string('out', RESULTS, 'Output JSON file.')
_REPEATS = flags.DEFINE_integer(
  'repeats', 1, 'Passes per batch size (the median counts).'
)
_BASELINE = flags.DEFINE_string(
  'baseline',
  None,
  'git revision whose input_pipeline.py is timed alongside (A/B)',
)


def build_synthetic(*, size, num_examples, data_dir):
  """Builds the synthetic set; returns (dataset name, seconds) or (None, reason)."""
  try:
    from tfds_lidc import build  # pylint: disable=g-import-not-at-top
  except ImportError as err:
    return None, f'tfds_lidc.build unavailable: {err}'
  num_eval = max(1, num_examples // 20)
  overrides = dict(
    num_train=num_examples - 2 * num_eval,
    num_validation=num_eval,
    num_test=num_eval,
  )
  start = time.perf_counter()
  report = build.build(
    f'synthetic_lesions/{size}',
    data_dir,
    overrides=overrides,
    log=lambda *a: None,
  )
  return report['dataset'], time.perf_counter() - start


def load_baseline(rev):
  """diffseg_jax/input_pipeline.py of git revision `rev`, imported as a module."""
  path = 'diffseg_jax/input_pipeline.py'
  text = subprocess.run(
    ['git', 'show', f'{rev}:{path}'],
    cwd=REPO,
    capture_output=True,
    text=True,
    check=True,
  ).stdout
  module = types.ModuleType(f'input_pipeline_at_{rev}')
  exec(compile(text, f'{rev}:{path}', 'exec'), module.__dict__)  # pylint: disable=exec-used
  return module


def time_pipeline(pipeline, source, *, batch_size, steps, step_fn, mesh):
  """Examples per second over `steps` batches after 2 warm-up batches.

  With `step_fn` None, the loader alone (global batches on the device, not augmented).
  """
  batches = pipeline.train_batches(
    source, global_batch_size=batch_size, seed=0, mesh=mesh
  )
  rng = jax.random.key(0)
  step_fn = step_fn or (lambda rng, **batch: batch)
  for i in range(2):
    jax.block_until_ready(step_fn(jax.random.fold_in(rng, i), **next(batches)))
  start = time.perf_counter()
  for i in range(steps):
    out = step_fn(jax.random.fold_in(rng, i + 2), **next(batches))
  jax.block_until_ready(out)
  seconds = time.perf_counter() - start
  batches.close()
  return batch_size * steps / seconds


def _cpu_model():
  try:
    with open('/proc/cpuinfo') as f:
      return next(
        (
          line.split(':', 1)[1].strip()
          for line in f
          if line.startswith('model name')
        ),
        None,
      )
  except OSError:
    return None


def _augment_and_choose(rng, image, masks, config):
  aug_rng, choice_rng = jax.random.split(rng)
  image, masks = augment.augment(aug_rng, image, masks, config)
  return image, augment.choose_annotation(choice_rng, masks)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments {argv[1:]}.')
  pipelines = {'current': input_pipeline}
  if _BASELINE.value:
    pipelines[_BASELINE.value] = load_baseline(_BASELINE.value)
  batch_sizes = [int(b) for b in _BATCH_SIZES.value.split(',')]
  load_start = os.getloadavg()[0]
  data_dir = tempfile.mkdtemp(prefix='loader_throughput_')
  try:
    name, build_result = build_synthetic(
      size=_SIZE.value, num_examples=_NUM_BUILD.value, data_dir=data_dir
    )
    if name is None:
      raise SystemExit(f'cannot measure: {build_result}')
    source = input_pipeline.load_source(
      name=name, split='train', data_dir=data_dir
    )
    mesh = parallel.make_mesh(1)  # Training's mesh (Auto axis type).
    config = augment.AugmentConfig()
    step_fn = jax.jit(
      lambda rng, image, masks: _augment_and_choose(rng, image, masks, config)
    )
    runs = {label: {bs: [] for bs in batch_sizes} for label in pipelines}
    raw_runs = {label: {bs: [] for bs in batch_sizes} for label in pipelines}
    for repeat in range(_REPEATS.value):
      # Alternate who goes first: the first pass of a repeat may read pages not yet cached.
      for label, pipeline in list(pipelines.items())[
        :: 1 if repeat % 2 == 0 else -1
      ]:
        for bs in batch_sizes:
          runs[label][bs].append(
            time_pipeline(
              pipeline,
              source,
              batch_size=bs,
              steps=_STEPS.value,
              step_fn=step_fn,
              mesh=mesh,
            )
          )
          raw_runs[label][bs].append(
            time_pipeline(
              pipeline,
              source,
              batch_size=bs,
              steps=_STEPS.value,
              step_fn=None,
              mesh=mesh,
            )
          )
  finally:
    shutil.rmtree(data_dir, ignore_errors=True)
  medians = {
    label: {bs: statistics.median(v) for bs, v in r.items()}
    for label, r in runs.items()
  }
  raw_medians = {
    label: {bs: statistics.median(v) for bs, v in r.items()}
    for label, r in raw_runs.items()
  }
  rates = medians['current']

  result = dict(
    examples_per_s=round(max(rates.values()), 1),
    examples_per_s_by_batch={str(k): round(v, 1) for k, v in rates.items()},
    repeats=_REPEATS.value,
    runs_by_batch={
      str(k): [round(x, 1) for x in v] for k, v in runs['current'].items()
    },
    loader_only_examples_per_s_by_batch={
      str(k): round(v, 1) for k, v in raw_medians['current'].items()
    },
    loader_only_runs_by_batch={
      str(k): [round(x, 1) for x in v] for k, v in raw_runs['current'].items()
    },
    baseline=None
    if not _BASELINE.value
    else dict(
      rev=_BASELINE.value,
      examples_per_s_by_batch={
        str(k): round(v, 1) for k, v in medians[_BASELINE.value].items()
      },
      runs_by_batch={
        str(k): [round(x, 1) for x in v]
        for k, v in runs[_BASELINE.value].items()
      },
      loader_only_examples_per_s_by_batch={
        str(k): round(v, 1) for k, v in raw_medians[_BASELINE.value].items()
      },
      loader_only_runs_by_batch={
        str(k): [round(x, 1) for x in v]
        for k, v in raw_runs[_BASELINE.value].items()
      },
    ),
    image_size=_SIZE.value,
    steps=_STEPS.value,
    augment_config=str(config),
    num_build=_NUM_BUILD.value,
    build_seconds=round(build_result, 2),
    build_s_synthetic_10k=round(build_result, 2)
    if _NUM_BUILD.value == 10000
    else None,
    device=str(jax.devices()[0]),
    cpu_model=_cpu_model(),
    cpu_count=os.cpu_count(),
    load_average_1min_at_start=round(load_start, 2),
    load_average_1min_at_end=round(os.getloadavg()[0], 2),
    platform=platform.platform(),
    jax_version=jax.__version__,
    date=time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()),
  )
  os.makedirs(os.path.dirname(_OUT.value), exist_ok=True)
  with open(_OUT.value, 'w') as f:
    json.dump(result, f, indent=2)
  print(
    '| measure | '
    + ' | '.join(pipelines)
    + ' |\n|---|'
    + '---|' * len(pipelines)
  )
  for bs in batch_sizes:
    cells = ' | '.join(f'{medians[label][bs]:.1f}' for label in pipelines)
    print(
      f'| examples/s, batch {bs}, {_SIZE.value}x{_SIZE.value}, augmented (median of {_REPEATS.value}) '
      f'| {cells} |'
    )
    cells = ' | '.join(f'{raw_medians[label][bs]:.1f}' for label in pipelines)
    print(
      f'| examples/s, batch {bs}, {_SIZE.value}x{_SIZE.value}, loader only (median of '
      f'{_REPEATS.value}) | {cells} |'
    )
  print(
    f'| build {_NUM_BUILD.value} synthetic_lesions/{_SIZE.value} examples (s) | {build_result:.1f} |'
  )
  print(f'wrote {_OUT.value}')


if __name__ == '__main__':
  app.run(main)
