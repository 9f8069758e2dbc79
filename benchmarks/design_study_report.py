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

r"""Markdown tables of the design-space study from the runs' metrics.json (see launch/sweep.py).

  python benchmarks/design_study_report.py --workroot=~/runs/study [--num_samples=16] [--out=FILE.md]

Reads WORKROOT/manifest.json (written by launch/sweep.py) and each run's
WORKDIR/eval/<name>/metrics.json ({'metrics': {key: {'mean', 'sem', 'n'}}}). One table per study:
a row per setting with GED_N, HM-IoU_N, CI_N and mode TV_N of the model, then the oracle (samples
of the true distribution) and the image-blind baseline. Cells are mean ± standard error over seeds
when two or more seeds finished; with one seed the standard error is over test images (marked
'img'). Missing runs are listed, so a partial study can be reported while it runs.

Each setting is also compared with the study's reference setting (x-prediction, b = 0.1,
SNR_plus1, DDPM 10 steps) *paired*: per seed, the per-image differences over the same test images
(WORKDIR/eval/<name>/per_image.jsonl, matched by image id), then their mean over seeds; the
standard error is over seeds when two or more seeds have both runs, else over images ('img').
`z` = difference / standard error says how sure a ranking is; GED / oracle re-bases GED on the
true annotation distribution of the same runs.
"""

from __future__ import annotations

import json
import math
import os
import sys
from typing import Mapping, Sequence

from absl import app
from absl import flags

COLUMNS = (
  ('ged', 'GED'),
  ('hm_iou', 'HM-IoU'),
  ('ci', 'CI'),
  ('mode_tv', 'mode TV'),
)
STUDY_TITLES = {
  'input_scale': 'Input scale b (x-prediction, SNR_plus1)',
  'prediction': 'Prediction type (b = 0.1, SNR_plus1)',
  'weighting': 'Loss weighting (x-prediction, b = 0.1)',
  'sampler': 'Sampler and number of steps (one model per seed: x, b = 0.1, SNR_plus1)',
}
# The setting every other one is compared with (launch/sweep.py's REFERENCE; DDPM 10 steps).
REFERENCE_SETTING = {
  'input_scale': {'b': 0.1},
  'prediction': {'prediction': 'x'},
  'weighting': {'weighting': 'snr_plus1'},
  'sampler': {'sampler': 'ddpm', 'steps': 10},
}
PAIRED = (('ged', 'GED'), ('mode_tv', 'mode TV'))
SETTING_KEYS = {
  'input_scale': ('b',),
  'prediction': ('prediction',),
  'weighting': ('weighting',),
  'sampler': ('sampler', 'steps'),
}


def load_metrics(path: str) -> dict | None:
  """{key: {'mean', 'sem', 'n'}} of one metrics.json, or None if the run has not finished."""
  if not os.path.exists(path):
    return None
  with open(path, encoding='utf-8') as f:
    data = json.load(f)
  if 'metrics' not in data:
    raise ValueError(
      f"{path} has no 'metrics' entry; it is not a diffseg_jax evaluation output."
    )
  return data['metrics']


def load_per_image(metrics_path: str) -> dict[str, dict] | None:
  """{image id: per-image record} from per_image.jsonl beside metrics.json, or None."""
  path = os.path.join(os.path.dirname(metrics_path), 'per_image.jsonl')
  if not os.path.exists(path):
    return None
  records = {}
  with open(path, encoding='utf-8') as f:
    for line in f:
      if line.strip():
        record = json.loads(line)
        records[str(record.get('id', record.get('index')))] = record
  return records


def paired_difference(
  pairs: Sequence[tuple[Mapping[str, Mapping], Mapping[str, Mapping]]], key: str
) -> tuple[float, float | None, str, int] | None:
  """Mean difference of `key` (run minus reference) over the images both scored.

  Args:
    pairs: one (run records, reference records) per seed, each {image id: record}.
    key: per-image metric, e.g. 'ged_16'.

  Returns:
    (mean, sem, basis, images): the mean over seeds of each seed's mean per-image
    difference; sem over seeds (basis 'seeds', two or more seeds) or, with one
    seed, over that seed's images (basis 'img'); None without a common image.
  """
  per_seed, diffs_of_seed = [], []
  for run, ref in pairs:
    diffs = [
      float(run[i][key]) - float(ref[i][key])
      for i in sorted(set(run) & set(ref))
      if run[i].get(key) is not None and ref[i].get(key) is not None
    ]
    diffs = [d for d in diffs if math.isfinite(d)]
    if diffs:
      per_seed.append(sum(diffs) / len(diffs))
      diffs_of_seed.append(diffs)
  if not per_seed:
    return None
  images = min(len(d) for d in diffs_of_seed)
  if len(per_seed) == 1:
    diffs = diffs_of_seed[0]
    if len(diffs) < 2:
      return per_seed[0], None, 'img', images
    mean = per_seed[0]
    var = sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1)
    return mean, math.sqrt(var / len(diffs)), 'img', images
  k = len(per_seed)
  mean = sum(per_seed) / k
  std = math.sqrt(sum((m - mean) ** 2 for m in per_seed) / (k - 1))
  return mean, std / math.sqrt(k), 'seeds', images


def _paired_cell(stat) -> str:
  if stat is None:
    return '–'
  mean, sem, basis, _ = stat
  if sem is None:
    return f'{mean:+.4f}'
  z = mean / sem if sem > 0 else math.copysign(math.inf, mean)
  return f'{mean:+.4f} ± {sem:.4f} (z {z:+.1f})' + (
    ' (img)' if basis == 'img' else ''
  )


def combine(
  values: Sequence[Mapping],
) -> tuple[float, float | None, str] | None:
  """Mean ± standard error of one metric over seeds.

  Args:
    values: one {'mean', 'sem'} per finished seed (entries with mean None are dropped).

  Returns:
    (mean, sem, basis): basis 'seeds' (sem = std over seed means / sqrt(k), k >= 2) or 'img'
    (one seed: the over-image sem of metrics.json); None if no value.
  """
  means = [
    float(v['mean'])
    for v in values
    if v is not None and v.get('mean') is not None
  ]
  if not means:
    return None
  if len(means) == 1:
    single = next(
      v for v in values if v is not None and v.get('mean') is not None
    )
    sem = single.get('sem')
    return means[0], (None if sem is None else float(sem)), 'img'
  k = len(means)
  mean = sum(means) / k
  std = math.sqrt(sum((m - mean) ** 2 for m in means) / (k - 1))
  return mean, std / math.sqrt(k), 'seeds'


def _cell(stat) -> str:
  if stat is None:
    return '–'
  mean, sem, basis = stat
  if sem is None:
    return f'{mean:.4f}'
  return f'{mean:.4f} ± {sem:.4f}' + (' (img)' if basis == 'img' else '')


def _label(study: str, setting: Mapping) -> str:
  return ', '.join(str(setting[k]) for k in SETTING_KEYS[study])


def study_table(
  study: str, entries: Sequence[Mapping], *, num_samples: int = 16
) -> str:
  """Markdown table of one study from manifest entries (study, setting, seed, metrics path)."""
  settings: dict[str, list[dict | None]] = {}
  per_image: dict[str, dict[int, dict]] = {}
  missing = []
  for e in entries:
    if e['study'] != study:
      continue
    label = _label(study, e['setting'])
    loaded = load_metrics(e['metrics'])
    settings.setdefault(label, []).append(loaded)
    if loaded is None:
      missing.append(f'{label} (seed {e["seed"]})')
    else:
      records = load_per_image(e['metrics'])
      if records is not None:
        per_image.setdefault(label, {})[int(e['seed'])] = records
  reference = _label(study, REFERENCE_SETTING[study])
  keys = [f'{name}_{num_samples}' for name, _ in COLUMNS]
  paired_keys = [f'{name}_{num_samples}' for name, _ in PAIRED]
  header = (
    '| '
    + ' / '.join(SETTING_KEYS[study])
    + ' | seeds | '
    + ' | '.join(f'{title}_{num_samples}' for _, title in COLUMNS)
    + f' | GED_{num_samples} / oracle | '
    + ' | '.join(
      f'Δ {title}_{num_samples} vs {reference}' for _, title in PAIRED
    )
    + ' |'
  )
  lines = [
    f'### {STUDY_TITLES[study]}',
    '',
    header,
    '|---' * (len(COLUMNS) + len(PAIRED) + 3) + '|',
  ]
  all_loaded = []
  for label, runs in settings.items():
    loaded = [m for m in runs if m is not None]
    all_loaded += loaded
    cells = [_cell(combine([m.get(k) for m in loaded])) for k in keys]
    ratios = [
      m[keys[0]]['mean'] / m['oracle_' + keys[0]]['mean']
      for m in loaded
      if m.get(keys[0])
      and m.get('oracle_' + keys[0])
      and m['oracle_' + keys[0]].get('mean')
    ]
    cells.append(f'{sum(ratios) / len(ratios):.2f}' if ratios else '–')
    if label == reference:
      cells += ['(reference)'] * len(PAIRED)
    else:
      mine, ref = per_image.get(label, {}), per_image.get(reference, {})
      pairs = [(mine[seed], ref[seed]) for seed in sorted(set(mine) & set(ref))]
      cells += [_paired_cell(paired_difference(pairs, k)) for k in paired_keys]
    lines.append(
      f'| {label} | {len(loaded)}/{len(runs)} | ' + ' | '.join(cells) + ' |'
    )
  for prefix, title in (
    ('oracle_', 'oracle (true distribution)'),
    ('blind_', 'image-blind baseline'),
  ):
    # The baselines do not depend on the model: pooled over every finished run of the study.
    cells = [
      _cell(combine([m.get(prefix + k) for m in all_loaded])) for k in keys
    ]
    if any(c != '–' for c in cells):
      cells += ['–'] * (len(PAIRED) + 1)
      lines.append(
        f'| {title} | {len(all_loaded)} runs | ' + ' | '.join(cells) + ' |'
      )
  if missing:
    lines += ['', 'Not finished: ' + '; '.join(missing) + '.']
  return '\n'.join(lines)


def report(
  manifest: Mapping,
  *,
  num_samples: int = 16,
  studies: Sequence[str] | None = None,
) -> str:
  """All study tables of a sweep manifest, in the order of STUDY_TITLES."""
  entries = manifest['entries']
  present = [s for s in STUDY_TITLES if any(e['study'] == s for e in entries)]
  if studies:
    present = [s for s in present if s in studies]
  args = manifest.get('args', {})
  intro = (
    f'Design-space study: config {os.path.basename(manifest.get("config", "?"))}, '
    f'{args.get("steps") or "config"} training steps per run, seeds {args.get("seeds", "?")}. '
    f"Cells: mean ± standard error over seeds ('(img)': one seed, standard error over test "
    f'images); lower GED and mode TV and higher HM-IoU are better; CI as SPEC defines it.'
  )
  return '\n\n'.join(
    [intro]
    + [study_table(s, entries, num_samples=num_samples) for s in present]
  )


def _define_flags(flag_values: flags.FlagValues) -> None:
  """The command line's flags (only __main__ registers them: importing defines none)."""
  flags.DEFINE_string(
    'workroot',
    '~/runs/design_study',
    'The sweep folder (holds manifest.json).',
    flag_values=flag_values,
  )
  flags.DEFINE_integer(
    'num_samples',
    16,
    'N of the <metric>_N columns.',
    flag_values=flag_values,
  )
  flags.DEFINE_string(
    'study', 'all', "One study name, or 'all'.", flag_values=flag_values
  )
  flags.DEFINE_string(
    'out',
    '',
    'Also write the Markdown here (default WORKROOT/report.md).',
    flag_values=flag_values,
  )


def main(argv: Sequence[str]) -> int:
  """Prints and writes the report; returns the exit status (2 on bad input).

  Args:
    argv: as `app.run` passes it (program name first, flags already parsed into
      flags.FLAGS), or a list of flags such as ['--workroot=DIR'] that is parsed
      here (flags it leaves out take their defaults).
  """
  args = flags.FLAGS
  if not argv or argv[0].startswith('-'):
    args = flags.FlagValues()
    _define_flags(args)
    try:
      argv = args(['design_study_report.py'] + list(argv))
    except flags.Error as e:
      print(f'ERROR: {e}', file=sys.stderr)
      return 2
  if len(argv) > 1:
    print(
      f'ERROR: unexpected arguments {argv[1:]}; flags are --name=value.',
      file=sys.stderr,
    )
    return 2
  workroot = os.path.abspath(os.path.expanduser(args.workroot))
  path = os.path.join(workroot, 'manifest.json')
  if not os.path.exists(path):
    print(
      f'ERROR: {path} does not exist; create the plan first with '
      f'`python launch/sweep.py --study=... --workroot={args.workroot}`.',
      file=sys.stderr,
    )
    return 2
  with open(path, encoding='utf-8') as f:
    manifest = json.load(f)
  text = report(
    manifest,
    num_samples=args.num_samples,
    studies=None if args.study == 'all' else [args.study],
  )
  print(text)
  out = args.out or os.path.join(workroot, 'report.md')
  with open(out, 'w', encoding='utf-8') as f:
    f.write(text + '\n')
  print(f'\nwrote {out}')
  return 0


if __name__ == '__main__':
  _define_flags(flags.FLAGS)
  app.run(main)
