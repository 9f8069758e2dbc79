r"""Loader throughput: built synthetic set -> sharded train batches -> jitted augmentation.

  python benchmarks/loader_throughput.py [--size=128] [--num_build=10000] [--batch_sizes=8,32]

(after `pip install -e .`, or with PYTHONPATH=. from the repository root).

Builds `synthetic_lesions/<size>` with `num_build` examples (train/validation/test in
the proportions 90/5/5) into a temporary data dir and times the build
(`build_s_synthetic_10k` when num_build=10000), then reads its train split through
`input_pipeline.train_batches` and applies the jitted `augment.augment` (all
augmentations on, p as in SPEC §2) plus `choose_annotation`, blocking on the result.
Writes benchmarks/results/loader_throughput.json and prints a table.
"""

import argparse
import json
import os
import platform
import shutil
import tempfile
import time

import jax

from diffseg_jax import augment
from diffseg_jax import input_pipeline

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results', 'loader_throughput.json')


def build_synthetic(*, size, num_examples, data_dir):
  """Builds the synthetic set; returns (dataset name, seconds) or (None, reason)."""
  try:
    from tfds_lidc import build  # pylint: disable=g-import-not-at-top
  except ImportError as err:
    return None, f'tfds_lidc.build unavailable: {err}'
  num_eval = max(1, num_examples // 20)
  overrides = dict(num_train=num_examples - 2 * num_eval, num_validation=num_eval, num_test=num_eval)
  start = time.perf_counter()
  report = build.build(f'synthetic_lesions/{size}', data_dir, overrides=overrides, log=lambda *a: None)
  return report['dataset'], time.perf_counter() - start


def time_pipeline(source, *, batch_size, steps, config, mesh):
  """Augmented examples per second over `steps` batches after 2 warm-up batches."""
  step_fn = jax.jit(lambda rng, image, masks: _augment_and_choose(rng, image, masks, config))
  batches = input_pipeline.train_batches(source, global_batch_size=batch_size, seed=0, mesh=mesh)
  rng = jax.random.key(0)
  for i in range(2):
    jax.block_until_ready(step_fn(jax.random.fold_in(rng, i), **next(batches)))
  start = time.perf_counter()
  for i in range(steps):
    out = step_fn(jax.random.fold_in(rng, i + 2), **next(batches))
  jax.block_until_ready(out)
  seconds = time.perf_counter() - start
  batches.close()
  return batch_size * steps / seconds


def _augment_and_choose(rng, image, masks, config):
  aug_rng, choice_rng = jax.random.split(rng)
  image, masks = augment.augment(aug_rng, image, masks, config)
  return image, augment.choose_annotation(choice_rng, masks)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--size', type=int, default=128)
  parser.add_argument('--num_build', type=int, default=10000)
  parser.add_argument('--batch_sizes', default='8,32')
  parser.add_argument('--steps', type=int, default=60)
  parser.add_argument('--out', default=RESULTS)
  args = parser.parse_args()

  data_dir = tempfile.mkdtemp(prefix='loader_throughput_')
  try:
    name, build_result = build_synthetic(size=args.size, num_examples=args.num_build, data_dir=data_dir)
    if name is None:
      raise SystemExit(f'cannot measure: {build_result}')
    source = input_pipeline.load_source(name=name, split='train', data_dir=data_dir)
    mesh = jax.make_mesh((1,), ('data',), devices=jax.devices()[:1])
    config = augment.AugmentConfig()
    rates = {bs: time_pipeline(source, batch_size=bs, steps=args.steps, config=config, mesh=mesh)
             for bs in (int(b) for b in args.batch_sizes.split(','))}
  finally:
    shutil.rmtree(data_dir, ignore_errors=True)

  result = dict(
      examples_per_s=round(max(rates.values()), 1),
      examples_per_s_by_batch={str(k): round(v, 1) for k, v in rates.items()},
      image_size=args.size,
      augment_config=str(config),
      num_build=args.num_build,
      build_seconds=round(build_result, 2),
      build_s_synthetic_10k=round(build_result, 2) if args.num_build == 10000 else None,
      device=str(jax.devices()[0]),
      cpu_count=os.cpu_count(),
      platform=platform.platform(),
      jax_version=jax.__version__,
      date=time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()),
  )
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, 'w') as f:
    json.dump(result, f, indent=2)
  print('| measure | value |\n|---|---|')
  for bs, rate in rates.items():
    print(f'| examples/s, batch {bs}, {args.size}x{args.size}, augmented | {rate:.1f} |')
  print(f'| build {args.num_build} synthetic_lesions/{args.size} examples (s) | {build_result:.1f} |')
  print(f'wrote {args.out}')


if __name__ == '__main__':
  main()
