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

"""Throughput of diffseg_jax.metrics.all_metrics against per-pair numpy loops, in one run.

Scores 256 images of 128 x 128 with 4 annotations and N in {4, 16, 100}
lesion-like samples (random discs), in chunks of --chunk images, and writes
benchmarks/results/metrics_throughput.json with ms_per_image_n{4,16,100}.
Compilation is excluded (one warm-up call per shape); the time includes the
host-to-device copy, the device pass and the host Hungarian matching. Wall
time is the headline (best of --repeats); process CPU time (all threads) is
recorded too, as it is less disturbed by other jobs on a shared machine.

In the same run, for N in --ref_n, benchmarks/numpy_reference_metrics.py (the
authors' kind of code: numpy calls per mask pair; GED, HM-IoU, CI and its
parts, iou, dice, ncc) scores the first --ref_images images of the same masks:
`numpy_ms_per_image_n{N}` and `speedup_vs_numpy_n{N}` (their ratio), and
`max_abs_diff_n{N}` of GED, HM-IoU and the authors' CI between the two.

  python benchmarks/metrics_throughput.py [--chunk 32] [--repeats 3]
"""

import json
import os
import sys
import time

from absl import app
from absl import flags
import jax
import numpy as np

from diffseg_jax import metrics

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import numpy_reference_metrics  # pylint: disable=g-import-not-at-top,wrong-import-position
import side_by_side  # pylint: disable=g-import-not-at-top,wrong-import-position

_IMAGES = flags.DEFINE_integer('images', 256, 'Images scored per N.')
_SIZE = flags.DEFINE_integer('size', 128, 'Image side in pixels.')
_CHUNK = flags.DEFINE_integer('chunk', 32, 'Images per all_metrics call.')
_REPEATS = flags.DEFINE_integer(
  'repeats', 3, 'Timed passes per N (the best counts).'
)
_REF_IMAGES = flags.DEFINE_integer(
  'ref_images', 32, 'Images the numpy reference scores (it is slow).'
)
_REF_N = flags.DEFINE_string(
  'ref_n', '4,16', 'Comma-separated N for which the numpy reference runs.'
)
_OUT = flags.DEFINE_string(
  'out',
  os.path.join(os.path.dirname(__file__), 'results', 'metrics_throughput.json'),
  'Output JSON file.',
)


def disc_masks(rng, shape, size):
  """bool [*shape, size, size] discs of random centre and radius (some empty)."""
  count = int(np.prod(shape))
  yy, xx = np.mgrid[:size, :size]
  centre = rng.normal(size / 2, size / 16, (count, 2))
  radius = rng.uniform(0, size / 8, count)
  masks = (yy - centre[:, :1, None]) ** 2 + (
    xx - centre[:, 1:, None]
  ) ** 2 < radius[:, None, None] ** 2
  return masks.reshape(tuple(shape) + (size, size))


def time_n(*, num_samples, images, size, chunk, repeats, seed=0):
  rng = np.random.default_rng(seed)
  samples = disc_masks(rng, (images, num_samples), size)
  annotations = disc_masks(rng, (images, 4), size)
  metrics.all_metrics(samples[:chunk], annotations[:chunk])  # compile
  best_wall = best_cpu = np.inf
  for _ in range(repeats):
    start, start_cpu = time.perf_counter(), time.process_time()
    for i in range(0, images, chunk):
      out = metrics.all_metrics(
        samples[i : i + chunk], annotations[i : i + chunk]
      )
    jax.block_until_ready(out)
    best_wall = min(best_wall, time.perf_counter() - start)
    best_cpu = min(best_cpu, time.process_time() - start_cpu)
  return 1000 * best_wall / images, 1000 * best_cpu / images


def time_numpy_reference(*, num_samples, images, ref_images, size, seed=0):
  """(ms / image wall, CPU ms / image, max |ours - numpy| of GED, HM-IoU, CI) on the same masks."""
  rng = np.random.default_rng(seed)
  samples = disc_masks(rng, (images, num_samples), size)[:ref_images]
  annotations = disc_masks(rng, (images, 4), size)[:ref_images]
  start, start_cpu = time.perf_counter(), time.process_time()
  rows = [
    numpy_reference_metrics.image_metrics(s, a)
    for s, a in zip(samples, annotations)
  ]
  wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
  ours = metrics.all_metrics(samples, annotations)
  diff = max(
    np.max(np.abs(ours[k] - np.array([r[ref] for r in rows])))
    for k, ref in (('ged', 'GED'), ('hm_iou', 'HM_IoU'), ('ci_compat', 'CI'))
  )
  return 1000 * wall / ref_images, 1000 * cpu / ref_images, float(diff)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments {argv[1:]}.')
  load = os.getloadavg()[0] if hasattr(os, 'getloadavg') else None
  ref_n = {int(n) for n in _REF_N.value.split(',') if n}
  result = {
    'load_average_1min_at_start': load,
    'images': _IMAGES.value,
    'size': _SIZE.value,
    'chunk': _CHUNK.value,
    'ref_images': min(_REF_IMAGES.value, _IMAGES.value),
    'cpu_model': side_by_side.cpu_model(),
    'backend': jax.default_backend(),
    'device': str(jax.devices()[0].device_kind),
    'cpu_count': os.cpu_count(),
  }
  print(f'{result["cpu_model"]}; {result["ref_images"]} images for numpy')
  print(
    '| N | ms / image (wall) | CPU ms / image | numpy ms / image (wall) | '
    'speed-up (wall) | max abs diff |'
  )
  print('|---|---|---|---|---|---|')
  for n in (4, 16, 100):
    ms, cpu_ms = time_n(
      num_samples=n,
      images=_IMAGES.value,
      size=_SIZE.value,
      chunk=_CHUNK.value,
      repeats=_REPEATS.value,
    )
    result[f'ms_per_image_n{n}'] = ms
    result[f'cpu_ms_per_image_n{n}'] = cpu_ms
    ref = diff = None
    if n in ref_n:
      ref, ref_cpu, diff = time_numpy_reference(
        num_samples=n,
        images=_IMAGES.value,
        size=_SIZE.value,
        ref_images=result['ref_images'],
      )
      result[f'numpy_ms_per_image_n{n}'] = ref
      result[f'numpy_cpu_ms_per_image_n{n}'] = ref_cpu
      result[f'speedup_vs_numpy_n{n}'] = ref / ms
      result[f'max_abs_diff_n{n}'] = diff
    print(
      f'| {n} | {ms:.3f} | {cpu_ms:.3f} | {f"{ref:.1f}" if ref else "-"} | '
      f'{f"{ref / ms:.0f}x" if ref else "-"} | '
      f'{f"{diff:.1e}" if diff is not None else "-"} |'
    )
  os.makedirs(os.path.dirname(_OUT.value), exist_ok=True)
  with open(_OUT.value, 'w') as f:
    json.dump(result, f, indent=1, sort_keys=True)
  print(f'wrote {_OUT.value}')


if __name__ == '__main__':
  app.run(main)
