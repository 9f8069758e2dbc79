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

r"""Paired comparison of evaluations over the same test images: what a change buys, with its error.

  python benchmarks/paired_probe.py --reference=base=RUN/eval/test \
      --probes=dpm25=RUN/eval/probe/dpm25,noema=RUN/eval/probe/noema [--num_samples=16] \
      [--out=benchmarks/results/limits]

Each argument is NAME=DIR, DIR an evaluation output (metrics.json + per_image.jsonl, see
`diffseg_jax.evaluation`). Images are matched by id; only those both scored count. Per probe: GED_N /
true-oracle GED_N, mode TV_N / oracle mode TV_N, HM-IoU_N minus the oracle's (as in quality_curve.py,
on the common images) and the paired differences probe minus reference of GED_N, mode TV_N and
HM-IoU_N with their standard error over images and z. Writes OUT.json and OUT.md.
"""

from __future__ import annotations

import math
import os
import sys
from typing import Mapping, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAIRED = (
  ('ged', 'GED'),
  ('mode_tv', 'mode TV'),
  ('hm_iou', 'HM-IoU'),
  # Evaluations since the model_modes_ row: its change is what the mode frequencies did.
  ('model_modes_ged', "GED of the model's modes"),
)


def _named_dir(arg: str) -> tuple[str, str]:
  name, sep, path = arg.partition('=')
  if not sep or not name or not path:
    raise ValueError(
      f'{arg!r}: expected NAME=DIR (e.g. base=/tmp/run/eval/test).'
    )
  return name, path


def load_records(out_dir: str) -> dict[str, dict]:
  """{image id: per-image record} of one evaluation; a clear error if it is not one."""
  from benchmarks import design_study_report  # pylint: disable=g-import-not-at-top

  records = design_study_report.load_per_image(
    os.path.join(out_dir, 'metrics.json')
  )
  if records is None:
    raise FileNotFoundError(
      f'{os.path.join(out_dir, "per_image.jsonl")} does not exist: {out_dir} is not a finished '
      'evaluation (run `python -m diffseg_jax.main --mode=evaluate ...` into it first).'
    )
  return records


def compare(
  reference: Mapping[str, Mapping], probe: Mapping[str, Mapping], n: int
) -> dict:
  """Scores of `probe` on the images both scored, and its paired differences from `reference`."""
  from benchmarks import quality_curve  # pylint: disable=g-import-not-at-top

  common = sorted(set(reference) & set(probe))
  if not common:
    raise ValueError('The probe and the reference share no image id.')
  out = quality_curve.score_point([probe[i] for i in common], n)
  for key, _ in PAIRED:
    if any(
      f'{key}_{n}' not in r[i] for r in (probe, reference) for i in common
    ):
      continue
    out[f'd_{key}'], out[f'd_{key}_sem'] = quality_curve.difference_and_sem(
      [float(probe[i][f'{key}_{n}']) for i in common],
      [float(reference[i][f'{key}_{n}']) for i in common],
    )
  return out


def _z(mean: float, sem: float) -> str:
  if not math.isfinite(sem) or sem == 0:
    return ''
  return f' (z {mean / sem:+.1f})'


def markdown(result: Mapping, *, n: int) -> str:
  lines = [
    f'Paired over the same test images, N = {n} samples; ± is the standard error over images. '
    f'Reference: {result["reference"]}.',
    '',
    '| probe | images | GED / true oracle | mode TV / oracle | HM-IoU - oracle | '
    + ' | '.join(f'Δ {label}' for _, label in PAIRED)
    + ' |',
    '|---' * (5 + len(PAIRED)) + '|',
  ]
  for name, row in result['probes'].items():
    cells = [
      f'{row["ged"]:.3f} ± {row["ged_sem_images"]:.3f}',
      f'{row["mode_tv"]:.3f} ± {row["mode_tv_sem_images"]:.3f}',
      f'{row["hm_iou"]:+.3f} ± {row["hm_iou_sem_images"]:.3f}',
    ] + [
      f'{row[f"d_{key}"]:+.4f} ± {row[f"d_{key}_sem"]:.4f}'
      + _z(row[f'd_{key}'], row[f'd_{key}_sem'])
      if f'd_{key}' in row
      else 'not scored'
      for key, _ in PAIRED
    ]
    lines.append(
      f'| {name} | {row["num_images"]} | ' + ' | '.join(cells) + ' |'
    )
  return '\n'.join(lines) + '\n'


def run(
  reference: tuple[str, str], probes: Sequence[tuple[str, str]], n: int
) -> dict:
  ref_records = load_records(reference[1])
  result = {
    'num_samples': n,
    'reference': reference[0],
    'dirs': {reference[0]: reference[1], **dict(probes)},
    'probes': {},
  }
  for name, path in [reference, *probes]:
    result['probes'][name] = compare(ref_records, load_records(path), n)
  return result


def main(argv):
  del argv
  from absl import flags  # pylint: disable=g-import-not-at-top

  from benchmarks import report_files  # pylint: disable=g-import-not-at-top

  FLAGS = flags.FLAGS  # pylint: disable=invalid-name
  result = run(
    _named_dir(FLAGS.reference),
    [_named_dir(p) for p in FLAGS.probes],
    FLAGS.num_samples,
  )
  table = markdown(result, n=FLAGS.num_samples)
  print(table)
  if FLAGS.out:
    report_files.write(FLAGS.out, result=result, table=table)


if __name__ == '__main__':
  if REPO not in sys.path:
    sys.path.insert(0, REPO)
  from absl import app  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top

  flags.DEFINE_string(
    'reference', None, 'NAME=DIR of the reference evaluation.'
  )
  flags.DEFINE_list('probes', [], 'NAME=DIR,... evaluations compared with it.')
  flags.DEFINE_integer(
    'num_samples', 16, 'N of the per-image metrics (GED_N, ...).'
  )
  flags.DEFINE_string('out', '', 'Writes OUT.json and OUT.md when given.')
  flags.mark_flag_as_required('reference')
  app.run(main)
