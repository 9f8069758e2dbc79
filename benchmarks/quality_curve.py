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

r"""Compute/quality curve: GED and mode TV against the true oracle, by training minutes.

Train one run per seed with checkpoints kept (e.g. every 500 steps), then score chosen checkpoints:

  python -m diffseg_jax.main --config=configs/synthetic_long.py --workdir=RUNS/seed0 \
      --config.seed=0 --config.checkpoint_every_steps=500 --config.max_checkpoints_to_keep=100
  python benchmarks/quality_curve.py --config=configs/synthetic_long.py \
      --workdirs=RUNS/seed0,RUNS/seed1,RUNS/seed2 --minutes=5,10,20,40,60 \
      [--num_examples=200 --final_num_examples=500 --out=benchmarks/results/quality_curve]
      [--clock=RUNS/seed0]   # minutes of every seed read off seed 0's checkpoints

For each workdir and each target minute it evaluates the checkpoint whose training time (the
`train_seconds` each checkpoint records: wall seconds of the training loop, compilation and
in-training validation included, summed over resumes) is nearest, on the first --num_examples test
images, and the last checkpoint on --final_num_examples. Every evaluation uses the config's
`eval.seed`, so all checkpoints and seeds are scored on the same images against the same oracle
draws. Evaluations land in WORKDIR/eval/curve/step_<step>_n<images>/ and are reused when present.

Per point: GED_N / true-oracle GED_N and mode TV_N / oracle mode TV_N (ratios of means over the same
images; their image-level standard error by the delta method), HM-IoU_N minus the oracle's. Across
seeds: mean and standard error over seeds. Writes OUT.json, OUT.md and OUT.png (needs matplotlib:
`pip install -e ".[plots]"`).
"""

from __future__ import annotations

import json
import math
import os
import sys
from typing import Mapping, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, 'benchmarks', 'results', 'quality_curve')
# (key, label, the oracle's key, how it is compared with the oracle).
QUANTITIES = (
  ('ged', 'GED / true oracle', 'oracle_ged', 'ratio'),
  ('mode_tv', 'mode TV / oracle', 'oracle_mode_tv', 'ratio'),
  ('hm_iou', 'HM-IoU - oracle', 'oracle_hm_iou', 'difference'),
  # The model's mode choices traced like the annotators (evaluation.py, model_modes_): its excess
  # over 1 is the part of the GED gap the mode frequencies cause, the rest is the shapes'.
  (
    'model_modes_ged',
    "GED of the model's modes / true oracle",
    'oracle_ged',
    'ratio',
  ),
)
OPTIONAL = ('model_modes_ged',)


def checkpoint_seconds(workdir: str) -> dict[int, float]:
  """{step: training seconds} of the checkpoints in WORKDIR/checkpoints that record them."""
  from diffseg_jax import checkpoint  # pylint: disable=g-import-not-at-top

  directory = os.path.join(workdir, 'checkpoints')
  if not os.path.isdir(directory):
    raise FileNotFoundError(
      f'{directory} does not exist: train first (python -m diffseg_jax.main '
      f'--workdir={workdir} ...), keeping checkpoints with '
      '--config.max_checkpoints_to_keep.'
    )
  out = {}
  for name in os.listdir(directory):
    if name.isdigit():
      meta = checkpoint.read_meta(directory, int(name))
      if 'train_seconds' in meta:
        out[int(name)] = float(meta['train_seconds'])
  if not out:
    raise ValueError(
      f'No checkpoint in {directory} records train_seconds (written since this script '
      'exists): retrain with the current code.'
    )
  return dict(sorted(out.items()))


def pick_steps(
  seconds: Mapping[int, float], minutes: Sequence[float], *, slack: float = 0.1
) -> dict[float, int]:
  """{target minute: step of the checkpoint nearest to it in training time}.

  A target later than the last checkpoint by more than `slack` (relative) is left out: the run
  did not get there.
  """
  steps = sorted(seconds)
  last = seconds[steps[-1]] / 60
  picked = {}
  for target in minutes:
    if target > last * (1 + slack):
      continue
    picked[float(target)] = min(
      steps, key=lambda s: abs(seconds[s] / 60 - target)
    )
  return picked


def ratio_and_sem(
  values: Sequence[float], reference: Sequence[float]
) -> tuple[float, float]:
  """mean(values) / mean(reference) and its delta-method standard error over the paired images."""
  n = len(values)
  if n != len(reference) or n == 0:
    raise ValueError(f'{n} values vs {len(reference)} reference values.')
  mean_v = sum(values) / n
  mean_r = sum(reference) / n
  ratio = mean_v / mean_r
  if n < 2:
    return ratio, math.nan
  residual = [v - ratio * r for v, r in zip(values, reference)]
  var = sum(x * x for x in residual) / (n - 1)
  return ratio, math.sqrt(var / n) / abs(mean_r)


def mean_and_sem(values: Sequence[float]) -> tuple[float, float]:
  """Mean and standard error of the mean (nan with fewer than 2 values)."""
  n = len(values)
  mean = sum(values) / n
  if n < 2:
    return mean, math.nan
  var = sum((v - mean) ** 2 for v in values) / (n - 1)
  return mean, math.sqrt(var / n)


def difference_and_sem(
  values: Sequence[float], reference: Sequence[float]
) -> tuple[float, float]:
  """Mean paired difference and its standard error."""
  return mean_and_sem([v - r for v, r in zip(values, reference, strict=True)])


def score_point(per_image: Sequence[Mapping[str, float]], n: int) -> dict:
  """The curve's quantities at N = n from one evaluation's per-image records."""
  point = {'num_images': len(per_image)}
  for key, _, oracle, kind in QUANTITIES:
    if key in OPTIONAL and f'{key}_{n}' not in per_image[0]:
      continue  # An evaluation from before that row existed.
    values = [r[f'{key}_{n}'] for r in per_image]
    reference = [r[f'{oracle}_{n}'] for r in per_image]
    compare = ratio_and_sem if kind == 'ratio' else difference_and_sem
    point[key], point[f'{key}_sem_images'] = compare(values, reference)
    point[f'{key}_model'] = sum(values) / len(values)
    point[f'{key}_oracle'] = sum(reference) / len(reference)
  return point


def across_seeds(points: Sequence[Mapping[str, float]]) -> dict:
  """Mean over seeds of each quantity; standard error over seeds (NaN with one seed)."""
  out = {'num_seeds': len(points)}
  for key, *_ in QUANTITIES + (('minutes',),):
    if not all(key in p for p in points):
      continue
    values = [p[key] for p in points]
    mean = sum(values) / len(values)
    out[key] = mean
    if len(values) > 1:
      var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
      out[f'{key}_sem_seeds'] = math.sqrt(var / len(values))
    else:
      out[f'{key}_sem_seeds'] = math.nan
  return out


def evaluate_step(config, workdir: str, step: int, num_examples: int) -> str:
  """Scores checkpoint `step` on the first `num_examples` images (reused if present); its directory."""
  from diffseg_jax import evaluation  # pylint: disable=g-import-not-at-top

  after_training = os.path.join(
    workdir, 'eval', config.eval.output_name or config.eval.split
  )
  if os.path.exists(os.path.join(after_training, 'per_image.jsonl')):
    metrics, _ = read_evaluation(after_training)
    if (
      metrics.get('checkpoint_step') == step
      and metrics['num_images'] == num_examples
    ):
      return after_training
  name = f'curve/step_{step:07d}_n{num_examples}'
  out = os.path.join(workdir, 'eval', name)
  if not os.path.exists(os.path.join(out, 'per_image.jsonl')):
    config = config.copy_and_resolve_references()
    config.eval.checkpoint_step = step
    config.eval.num_examples = num_examples
    config.eval.output_name = name
    evaluation.evaluate_checkpoint(config, workdir)
  return out


def read_evaluation(out: str) -> tuple[dict, list[dict]]:
  with open(os.path.join(out, 'metrics.json')) as f:
    metrics = json.load(f)
  with open(os.path.join(out, 'per_image.jsonl')) as f:
    per_image = [json.loads(line) for line in f]
  return metrics, per_image


def curve(
  config,
  workdirs: Sequence[str],
  minutes: Sequence[float],
  *,
  num_examples: int,
  final_num_examples: int,
  num_samples: int,
  clock: str | None = None,
) -> dict:
  """Evaluates what is missing; {'runs': per seed, 'mean': per target minute, 'final': last checkpoints}.

  `clock`: a workdir whose checkpoints' training times stand for every run's (steps picked and
  minutes reported from it), for runs whose own clock is not the reference machine's (trained
  pinned to one core or beside other jobs). Each run's own minutes are kept as `own_minutes`.
  """
  reference_seconds = checkpoint_seconds(clock) if clock else None
  runs = []
  for workdir in workdirs:
    seconds = checkpoint_seconds(workdir)
    own_seconds = seconds
    if reference_seconds is not None:
      missing = sorted(set(seconds) - set(reference_seconds))
      if missing:
        raise ValueError(
          f'{workdir} has checkpoints at steps {missing} that the clock run {clock} lacks: '
          'train both with the same --config.checkpoint_every_steps.'
        )
      seconds = {step: reference_seconds[step] for step in seconds}
    last = max(seconds)
    picked = pick_steps(seconds, minutes)
    todo = sorted(picked.items())
    if last not in picked.values():
      todo.append(
        (None, last)
      )  # Scored on final_num_examples, off the targets.
    points = []
    for target, step in todo:
      count = final_num_examples if step == last else num_examples
      _, per_image = read_evaluation(
        evaluate_step(config, workdir, step, count)
      )
      point = score_point(per_image, num_samples)
      point.update(
        target_minutes=target,
        minutes=seconds[step] / 60,
        own_minutes=own_seconds[step] / 60,
        step=step,
        last=step == last,
      )
      points.append(point)
    runs.append({'workdir': workdir, 'points': points})
  mean = []
  targets = sorted(
    {p['target_minutes'] for r in runs for p in r['points']} - {None}
  )
  for target in targets:
    at = [p for r in runs for p in r['points'] if p['target_minutes'] == target]
    mean.append({'target_minutes': target, **across_seeds(at)})
  final = across_seeds([p for r in runs for p in r['points'] if p['last']])
  return {
    'num_samples': num_samples,
    'runs': runs,
    'mean': mean,
    'final': final,
    'clock': clock,
  }


def markdown(result: Mapping, *, machine: str) -> str:
  n = result['num_samples']
  lines = [
    f'Compute/quality curve at N = {n} samples ({machine}). Ratios are of means over the same '
    'test images; ± is the standard error over seeds (over images, marked img, with one seed).',
    '',
    '| target min | seeds | minutes | images | '
    + ' | '.join(label for _, label, *_ in QUANTITIES)
    + ' |',
    '|---' * (4 + len(QUANTITIES)) + '|',
  ]
  if result.get('clock'):
    lines[1:1] = [
      f'Minutes of every run are those of {result["clock"]} at the same step.'
    ]
  rows = [
    (
      f'{row["target_minutes"]:g}',
      row,
      [
        p
        for r in result['runs']
        for p in r['points']
        if p['target_minutes'] == row['target_minutes']
      ],
    )
    for row in result['mean']
  ]
  rows.append(
    (
      'last checkpoint',
      result['final'],
      [p for r in result['runs'] for p in r['points'] if p['last']],
    )
  )
  for label, row, at in rows:
    cells = []
    for key, *_ in QUANTITIES:
      if key not in row:
        cells.append('not scored')
        continue
      sem, tag = row[f'{key}_sem_seeds'], ''
      if math.isnan(sem) and len(at) == 1:
        sem, tag = at[0][f'{key}_sem_images'], ' img'
      cells.append(f'{row[key]:.3f} ± {sem:.3f}{tag}')
    lines.append(
      f'| {label} | {row["num_seeds"]} | {row["minutes"]:.1f} | '
      f'{"/".join(str(p["num_images"]) for p in at)} | '
      + ' | '.join(cells)
      + ' |'
    )
  return '\n'.join(lines) + '\n'


def plot(result: Mapping, path: str, *, targets: Mapping[str, Sequence[float]]):
  """Two panels (GED and mode TV over the oracle's) against minutes: thin per seed, bold mean."""
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top

    matplotlib.use('Agg')
    from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise SystemExit(
      'The plot needs matplotlib: pip install -e ".[plots]" (the JSON and Markdown were written).'
    ) from None
  fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
  for ax, (key, label, *_) in zip(axes, QUANTITIES[:2]):
    for run in result['runs']:
      name = os.path.basename(os.path.normpath(run['workdir']))
      pts = sorted(run['points'], key=lambda p: p['minutes'])
      # The line joins points scored on the same images; the last checkpoint, scored on more
      # images, is a separate marker (its ratio is over a different image set).
      count = min(p['num_images'] for p in pts)
      line = [p for p in pts if p['num_images'] == count]
      (drawn,) = ax.plot(
        [p['minutes'] for p in line],
        [p[key] for p in line],
        'o-',
        lw=0.8,
        alpha=0.5,
        label=f'{name} ({count} images)',
      )
      for p in pts:
        if p['num_images'] != count:
          ax.plot(
            [p['minutes']],
            [p[key]],
            's',
            mfc='none',
            color=drawn.get_color(),
            label=f'{name} ({p["num_images"]} images)',
          )
    mean = result['mean']
    if len(result['runs']) > 1:
      ax.errorbar(
        [m['minutes'] for m in mean],
        [m[key] for m in mean],
        yerr=[m[f'{key}_sem_seeds'] for m in mean],
        fmt='k-',
        lw=2,
        label='mean ± s.e. (seeds)',
      )
    for value in targets.get(key, ()):
      ax.axhline(value, color='r', ls='--', lw=0.8)
    ax.axhline(1.0, color='g', ls=':', lw=0.8)
    ax.set_xlabel('training minutes')
    ax.set_ylabel(f'{label} (N={result["num_samples"]})')
    ax.legend(fontsize=7)
  fig.savefig(path, dpi=120)


def main(argv):
  del argv
  from absl import flags  # pylint: disable=g-import-not-at-top

  from benchmarks import report_files  # pylint: disable=g-import-not-at-top

  FLAGS = flags.FLAGS  # pylint: disable=invalid-name
  if REPO not in sys.path:
    sys.path.insert(0, REPO)
  from benchmarks import side_by_side  # pylint: disable=g-import-not-at-top

  result = curve(
    FLAGS.config,
    FLAGS.workdirs,
    [float(m) for m in FLAGS.minutes],
    num_examples=FLAGS.num_examples,
    final_num_examples=FLAGS.final_num_examples,
    num_samples=FLAGS.num_samples,
    clock=FLAGS.clock,
  )
  machine = side_by_side.cpu_model()
  result['machine'] = machine
  table = markdown(result, machine=machine)
  report_files.write(FLAGS.out, result=result, table=table)
  print(table)
  plot(
    result,
    FLAGS.out + '.png',
    targets={'ged': (1.45, 1.15), 'mode_tv': (1.5, 1.2)},
  )
  print(f'Wrote {FLAGS.out}.json, .md and .png')


if __name__ == '__main__':
  if REPO not in sys.path:
    sys.path.insert(0, REPO)  # configs/ and benchmarks/ as packages.
  from absl import app  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top

  config_flags.DEFINE_config_file(
    'config', None, 'The config the runs were trained with.', lock_config=False
  )
  flags.DEFINE_list('workdirs', None, 'One training workdir per seed.')
  flags.DEFINE_list(
    'minutes', ['5', '10', '20', '40', '60'], 'Target training minutes.'
  )
  flags.DEFINE_integer(
    'num_examples', 200, 'Test images at the intermediate points.'
  )
  flags.DEFINE_integer(
    'final_num_examples', 500, 'Test images at the last checkpoint.'
  )
  flags.DEFINE_integer(
    'num_samples', 16, 'N of the reported metrics (in eval.num_samples_list).'
  )
  flags.DEFINE_string(
    'clock',
    None,
    "A workdir whose checkpoints' training times stand for every run's (for runs "
    'trained pinned to one core or beside other jobs).',
  )
  flags.DEFINE_string('out', RESULTS, 'Output path without extension.')
  flags.mark_flags_as_required(['config', 'workdirs'])
  app.run(main)
