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

r"""One row per setting over seeds: mean and standard error over seeds of paired_probe results.

Each input is the JSON of one seed's `benchmarks/paired_probe.py` run (every probe paired with that
seed's reference over the same images). Probes are matched across seeds by name after removing a
seed suffix (`_s1`, `_s2`, ...), so `ddim10` of seed 0 and `ddim10_s1` of seed 1 are one setting.

  python benchmarks/over_seeds.py \
      --inputs=design_study_3seeds_paired/sampler_seed0.json,...seed1.json,...seed2.json \
      [--out=benchmarks/results/design_study_3seeds_paired/sampler_over_seeds]

Per setting: the model's GED_N, mode TV_N and HM-IoU_N and GED_N / true-oracle GED_N (each the mean
of the per-seed values), and the paired differences from the reference with their standard error
over seeds and z. A setting missing from some seed is listed with the seeds it has.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
from typing import Mapping, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEED_SUFFIX = re.compile(r'_s\d+$')
VALUES = (
  ('ged_model', 'GED'),
  ('ged', 'GED / true oracle'),
  ('mode_tv_model', 'mode TV'),
  ('mode_tv', 'mode TV / oracle'),
  ('hm_iou_model', 'HM-IoU'),
)
DIFFERENCES = (
  ('d_ged', 'Δ GED'),
  ('d_mode_tv', 'Δ mode TV'),
  ('d_hm_iou', 'Δ HM-IoU'),
)


def setting_name(probe: str) -> str:
  return SEED_SUFFIX.sub('', probe)


def combine(per_seed: Sequence[Mapping]) -> dict:
  """{setting: {'seeds': k, 'reference': bool, key: [mean, sem]}} from paired_probe results."""
  from benchmarks import quality_curve  # pylint: disable=g-import-not-at-top

  if not per_seed:
    raise ValueError('No paired_probe results given.')
  n = {r['num_samples'] for r in per_seed}
  if len(n) != 1:
    raise ValueError(f'The inputs score different N: {sorted(n)}.')
  rows: dict[str, list[Mapping]] = {}
  for result in per_seed:
    seen = set()
    for probe, row in result['probes'].items():
      name = setting_name(probe)
      if name in seen:
        raise ValueError(
          f'Two probes of one input map to the setting {name!r}.'
        )
      seen.add(name)
      rows.setdefault(name, []).append(row)
  out = {}
  for name, seeds in rows.items():
    entry = {
      'seeds': len(seeds),
      'reference': all(
        r.get('d_ged') == 0.0 and r.get('d_ged_sem') == 0.0 for r in seeds
      ),
    }
    for key, _ in VALUES + DIFFERENCES:
      values = [float(r[key]) for r in seeds if key in r]
      if len(values) == len(seeds):
        entry[key] = list(quality_curve.mean_and_sem(values))
    out[name] = entry
  return {'num_samples': n.pop(), 'num_inputs': len(per_seed), 'settings': out}


def _cell(mean: float, sem: float, *, digits: int, z: bool = False) -> str:
  text = f'{mean:+.{digits}f}' if z else f'{mean:.{digits}f}'
  if math.isfinite(sem):
    text += f' ± {sem:.{digits}f}'
    if z and sem > 0:
      text += f' (z {mean / sem:+.1f})'
  return text


def markdown(result: Mapping) -> str:
  n = result['num_samples']
  lines = [
    f"Mean ± standard error over seeds (N = {n}); Δ = paired difference from each seed's "
    'reference over the same images, then over seeds.',
    '',
    '| setting | seeds | '
    + ' | '.join(label for _, label in VALUES + DIFFERENCES)
    + ' |',
    '|---' * (2 + len(VALUES) + len(DIFFERENCES)) + '|',
  ]
  settings = result['settings'].items()
  for name, entry in sorted(
    settings, key=lambda item: not item[1]['reference']
  ):
    cells = []
    for key, _ in VALUES:
      if key not in entry:
        cells.append('–')
        continue
      digits = 2 if key in ('ged', 'mode_tv') else 4
      mean, sem = entry[key]
      cells.append(
        f'{mean:.2f}' if digits == 2 else _cell(mean, sem, digits=digits)
      )
    for key, _ in DIFFERENCES:
      if entry['reference']:
        cells.append('reference')
      else:
        cells.append(
          _cell(*entry[key], digits=4, z=True) if key in entry else '–'
        )
    lines.append(
      f'| {name} | {entry["seeds"]}/{result["num_inputs"]} | '
      + ' | '.join(cells)
      + ' |'
    )
  return '\n'.join(lines) + '\n'


def main(argv):
  del argv
  from absl import flags  # pylint: disable=g-import-not-at-top

  from benchmarks import report_files  # pylint: disable=g-import-not-at-top

  FLAGS = flags.FLAGS  # pylint: disable=invalid-name
  per_seed = []
  for path in FLAGS.inputs:
    try:
      with open(path) as f:
        per_seed.append(json.load(f))
    except (OSError, json.JSONDecodeError) as e:
      raise SystemExit(
        f'{path}: not a readable paired_probe JSON ({e}); '
        'make it with benchmarks/paired_probe.py --out=...'
      ) from None
  result = combine(per_seed)
  result['inputs'] = list(FLAGS.inputs)
  table = markdown(result)
  print(table)
  if FLAGS.out:
    report_files.write(FLAGS.out, result=result, table=table)


if __name__ == '__main__':
  if REPO not in sys.path:
    sys.path.insert(0, REPO)
  from absl import app  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top

  flags.DEFINE_list(
    'inputs', None, 'paired_probe JSONs, one per seed (same reference setting).'
  )
  flags.DEFINE_string('out', '', 'Writes OUT.json and OUT.md when given.')
  flags.mark_flag_as_required('inputs')
  app.run(main)
