"""Throughput of diffseg_jax.metrics.all_metrics (every metric in one pass).

Scores 256 images of 128 x 128 with 4 annotations and N in {4, 16, 100}
lesion-like samples (random discs), in chunks of --chunk images, and writes
benchmarks/results/metrics_throughput.json with ms_per_image_n{4,16,100}.
Compilation is excluded (one warm-up call per shape); the time includes the
host-to-device copy, the device pass and the host Hungarian matching. Wall
time is the headline (best of --repeats); process CPU time (all threads) is
recorded too, as it is less disturbed by other jobs on a shared machine.

  python benchmarks/metrics_throughput.py [--chunk 32] [--repeats 3]
"""

import argparse
import json
import os
import time

import jax
import numpy as np

from diffseg_jax import metrics

# The authors' numpy metric code on this machine type (issue 3), ms per image.
AUTHORS_MS_PER_IMAGE = {4: 48.0, 16: 218.0}


def disc_masks(rng, shape, size):
  """bool [*shape, size, size] discs of random centre and radius (some empty)."""
  count = int(np.prod(shape))
  yy, xx = np.mgrid[:size, :size]
  centre = rng.normal(size / 2, size / 16, (count, 2))
  radius = rng.uniform(0, size / 8, count)
  masks = ((yy - centre[:, :1, None])**2 + (xx - centre[:, 1:, None])**2
           < radius[:, None, None]**2)
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
      out = metrics.all_metrics(samples[i:i + chunk], annotations[i:i + chunk])
    jax.block_until_ready(out)
    best_wall = min(best_wall, time.perf_counter() - start)
    best_cpu = min(best_cpu, time.process_time() - start_cpu)
  return 1000 * best_wall / images, 1000 * best_cpu / images


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--images', type=int, default=256)
  parser.add_argument('--size', type=int, default=128)
  parser.add_argument('--chunk', type=int, default=32)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--out', default=os.path.join(
      os.path.dirname(__file__), 'results', 'metrics_throughput.json'))
  args = parser.parse_args()

  load = os.getloadavg()[0] if hasattr(os, 'getloadavg') else None
  result = {'load_average_1min_at_start': load, 'images': args.images, 'size': args.size, 'chunk': args.chunk,
            'backend': jax.default_backend(),
            'device': str(jax.devices()[0].device_kind),
            'cpu_count': os.cpu_count()}
  print('| N | ms / image (wall) | CPU ms / image | authors ms / image | '
        'speed-up (wall) |')
  print('|---|---|---|---|---|')
  for n in (4, 16, 100):
    ms, cpu_ms = time_n(num_samples=n, images=args.images, size=args.size,
                chunk=args.chunk, repeats=args.repeats)
    result[f'ms_per_image_n{n}'] = ms
    result[f'cpu_ms_per_image_n{n}'] = cpu_ms
    ref = AUTHORS_MS_PER_IMAGE.get(n)
    if ref:
      result[f'speedup_vs_authors_n{n}'] = ref / ms
    print(f'| {n} | {ms:.3f} | {cpu_ms:.3f} | {ref or "-"} | '
          f'{f"{ref / ms:.0f}x" if ref else "-"} |')
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, 'w') as f:
    json.dump(result, f, indent=1, sort_keys=True)
  print(f'wrote {args.out}')


if __name__ == '__main__':
  main()
