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

r"""Design-space study on the synthetic set: generate (and optionally run) the paper's ablations.

Studies (issue 6; every run trains with the same step budget on configs/synthetic_paper.py, the
paper's method on the synthetic set, which the quickstart was until 2026-12-07):
  input_scale  b in {1.0, 0.3, 0.1, 0.03}, x-prediction (SNR_plus1 weighting);
  prediction   x / v / eps at b = 0.1;
  weighting    uniform / snr / snr_plus1 / snr_trunc / sigmoid_0, x-prediction, b = 0.1;
  sampler      DDPM, DDIM and DPM-Solver++(2M) with {2, 5, 10, 25, 100} steps on one trained model
               (x, b = 0.1, SNR_plus1) per seed: evaluate-only runs, each writing
               WORKDIR/eval/<sampler>_<steps>/ through config.eval.output_name;
  all          the union; identical trainings are run once (e.g. x, b = 0.1, SNR_plus1 serves all four).

  python launch/sweep.py --study=all --seeds=0,1 --steps=3000 --workroot=~/runs/study          # print plan
  python launch/sweep.py --study=all --seeds=0,1 --steps=3000 --workroot=~/runs/study --run    # run it
  python launch/sweep.py --study=sampler --dry                                                   # print only
  python launch/sweep.py --study=sampler --eval_examples=200 --num_samples_list=4,16 \
      --override=dataset.data_dir=/data/tfds --run                                              # cheaper evals
  python benchmarks/design_study_report.py --workroot=~/runs/study                               # tables

Without --dry the plan is written to WORKROOT/manifest.json (read by the report) and
WORKROOT/commands.sh. With --run the runs go one after another (a run whose metrics.json exists
is skipped, an interrupted training resumes from its checkpoint), each logging to
WORKROOT/logs/<run>.log; a failed training skips the evaluations that need its checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import subprocess
import sys
import time
from typing import NoReturn, Sequence

from absl import flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(REPO, 'configs', 'synthetic_paper.py')
EVAL_SPLIT = 'test'  # configs/synthetic_paper.py: config.eval.split.

# The reference training of every study: x-prediction, b = 0.1, SNR_plus1 (the paper's choice).
REFERENCE = {
  'diffusion.input_scale': 0.1,
  'diffusion.prediction': 'x',
  'diffusion.weighting': 'snr_plus1',
}
INPUT_SCALES = (1.0, 0.3, 0.1, 0.03)
PREDICTIONS = ('x', 'v', 'eps')
WEIGHTINGS = ('uniform', 'snr', 'snr_plus1', 'snr_trunc', 'sigmoid_0')
SAMPLERS = ('ddpm', 'ddim', 'dpm_solver_pp_2m')
SAMPLER_STEPS = (2, 5, 10, 25, 100)
SAMPLER_REFERENCE = ('ddpm', 10)
STUDIES = ('input_scale', 'prediction', 'weighting', 'sampler')
CONTROLLED = tuple(REFERENCE) + (
  'seed',
  'num_train_steps',
  'evaluate_after_training',
  'sampler.name',
  'sampler.num_steps',
  'eval.output_name',
)


@dataclasses.dataclass(frozen=True)
class Run:
  """One command of the sweep.

  Attributes:
    name: unique run name (also the log file's name).
    mode: 'train' (trains, then evaluates with the config's sampler) or 'evaluate'.
    workdir: the run's --workdir; evaluate runs share their training's workdir.
    overrides: ((config key, value), ...) on top of the base config.
    output_name: config.eval.output_name ('' = the split name).
    requires: name of the training run whose checkpoint an evaluate run needs ('' for trainings).
  """

  name: str
  mode: str
  workdir: str
  overrides: tuple[tuple[str, object], ...]
  output_name: str = ''
  requires: str = ''

  @property
  def metrics_path(self) -> str:
    return os.path.join(
      self.workdir, 'eval', self.output_name or EVAL_SPLIT, 'metrics.json'
    )

  def command(self, *, config: str, python: str = sys.executable) -> list[str]:
    flags = [
      f'--config={config}',
      f'--workdir={self.workdir}',
      f'--mode={self.mode}',
    ]
    flags += [
      f'--config.{key}={_flag_value(value)}' for key, value in self.overrides
    ]
    return [python, '-m', 'diffseg_jax.main'] + flags


@dataclasses.dataclass(frozen=True)
class Entry:
  """A (study, setting, seed) cell of a report table and the run that produces it."""

  study: str
  setting: dict
  seed: int
  run: str
  metrics: str


def _flag_value(value) -> str:
  return repr(value) if isinstance(value, float) else str(value)


def _train_name(setting: dict, seed: int) -> str:
  b = setting['diffusion.input_scale']
  return (
    f'train_b{b:g}_{setting["diffusion.prediction"]}_{setting["diffusion.weighting"]}'
    f'_s{seed}'
  )


@dataclasses.dataclass(frozen=True)
class Grid:
  """The values each study tries (default: all of them).

  A narrower grid re-runs only some cells, e.g. the close calls with more seeds. The reference
  setting (REFERENCE; DDPM with 10 steps in the sampler study) is always kept, since every other
  cell is compared with it over the same images.
  """

  input_scales: tuple[float, ...] = INPUT_SCALES
  predictions: tuple[str, ...] = PREDICTIONS
  weightings: tuple[str, ...] = WEIGHTINGS
  samplers: tuple[str, ...] = SAMPLERS
  sampler_steps: tuple[int, ...] = SAMPLER_STEPS

  def __post_init__(self):
    for name, allowed in (
      ('predictions', PREDICTIONS),
      ('weightings', WEIGHTINGS),
      ('samplers', SAMPLERS),
    ):
      unknown = [v for v in getattr(self, name) if v not in allowed]
      if unknown:
        raise ValueError(f'--{name}: {unknown} not among {list(allowed)}.')
    bad = [b for b in self.input_scales if not b > 0]
    bad += [n for n in self.sampler_steps if n < 1]
    if bad:
      raise ValueError(
        f'{bad}: input scales must be positive and sampler steps whole numbers >= 1.'
      )

  def cells(self, study: str) -> list[dict]:
    """The settings of `study` (the reference added first if missing); sampler cells are
    {'sampler', 'steps'}."""

    def with_reference(values, reference):
      values = list(dict.fromkeys(values))
      return values if reference in values else [reference] + values

    factor = {
      'input_scale': (
        'diffusion.input_scale',
        [float(b) for b in self.input_scales],
      ),
      'prediction': ('diffusion.prediction', self.predictions),
      'weighting': ('diffusion.weighting', self.weightings),
    }
    if study in factor:
      key, values = factor[study]
      return [
        {**REFERENCE, key: v} for v in with_reference(values, REFERENCE[key])
      ]
    if study == 'sampler':
      pairs = [(s, int(n)) for s in self.samplers for n in self.sampler_steps]
      return [
        {'sampler': s, 'steps': n}
        for s, n in with_reference(pairs, SAMPLER_REFERENCE)
      ]
    raise ValueError(
      f'--study={study!r} is not one of {list(STUDIES) + ["all"]}.'
    )


def _training_settings(study: str, grid: Grid) -> list[dict]:
  """The diffusion settings a study trains, each a full copy of REFERENCE with one factor changed."""
  if study == 'sampler':
    return [dict(REFERENCE)]
  return grid.cells(study)


def plan(
  *,
  studies: Sequence[str],
  seeds: Sequence[int],
  steps: int | None,
  workroot: str,
  eval_overrides: Sequence[tuple[str, object]] = (),
  grid: Grid = Grid(),
) -> tuple[list[Run], list[Entry]]:
  """The runs (trainings first, deduplicated) and the report entries of `studies`.

  Args:
    studies: names from STUDIES.
    seeds: training seeds (config.seed; the data order and initialisation follow it).
    steps: config.num_train_steps for every training (None: the base config's).
    workroot: directory holding one workdir per training.
    eval_overrides: extra (key, value) pairs for every run (e.g. ('eval.num_examples', 200));
      keys the sweep itself sets (CONTROLLED) are refused.
    grid: the values each study tries (default: all).

  Returns:
    (runs in execution order, entries: one per study setting and seed).
  """
  clash = sorted({k for k, _ in eval_overrides} & set(CONTROLLED))
  if clash:
    raise ValueError(
      f"overrides of {clash} would fight the sweep's own settings; the study sets "
      f'{list(CONTROLLED)} (use --steps / --seeds for the budget and seeds).'
    )
  workroot = os.path.abspath(os.path.expanduser(workroot))
  trainings: dict[str, Run] = {}
  evaluations: list[Run] = []
  entries: list[Entry] = []
  budget = () if steps is None else (('num_train_steps', int(steps)),)
  for study in studies:
    for seed in seeds:
      for setting in _training_settings(study, grid):
        name = _train_name(setting, seed)
        if name not in trainings:
          trainings[name] = Run(
            name=name,
            mode='train',
            workdir=os.path.join(workroot, name),
            overrides=tuple(setting.items())
            + (('seed', int(seed)),)
            + budget
            + tuple(eval_overrides)
            + (('evaluate_after_training', True),),
          )
        train = trainings[name]
        if study != 'sampler':
          entries.append(
            Entry(
              study=study,
              setting=_short(setting),
              seed=int(seed),
              run=name,
              metrics=train.metrics_path,
            )
          )
          continue
        for cell in grid.cells('sampler'):
          sampler, num_steps = cell['sampler'], cell['steps']
          output_name = f'{sampler}_{num_steps}'
          run = Run(
            name=f'{name}_eval_{output_name}',
            mode='evaluate',
            workdir=train.workdir,
            overrides=tuple(setting.items())
            + (('seed', int(seed)),)
            + budget
            + tuple(eval_overrides)
            + (
              ('sampler.name', sampler),
              ('sampler.num_steps', num_steps),
              ('eval.output_name', output_name),
            ),
            output_name=output_name,
            requires=name,
          )
          evaluations.append(run)
          entries.append(
            Entry(
              study=study,
              setting={'sampler': sampler, 'steps': num_steps},
              seed=int(seed),
              run=run.name,
              metrics=run.metrics_path,
            )
          )
  return list(trainings.values()) + evaluations, entries


def _short(setting: dict) -> dict:
  return {
    'b': setting['diffusion.input_scale'],
    'prediction': setting['diffusion.prediction'],
    'weighting': setting['diffusion.weighting'],
  }


def write_plan(
  *,
  runs: Sequence[Run],
  entries: Sequence[Entry],
  workroot: str,
  config: str,
  args: dict,
) -> str:
  """Writes WORKROOT/manifest.json and WORKROOT/commands.sh; returns the manifest path."""
  workroot = os.path.abspath(os.path.expanduser(workroot))
  os.makedirs(workroot, exist_ok=True)
  manifest = {
    'created': time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime()),
    'config': config,
    'args': args,
    'runs': [
      {
        **dataclasses.asdict(r),
        'metrics': r.metrics_path,
        'command': shlex.join(r.command(config=config, python='python')),
      }
      for r in runs
    ],
    'entries': [dataclasses.asdict(e) for e in entries],
  }
  path = os.path.join(workroot, 'manifest.json')
  with open(path, 'w', encoding='utf-8') as f:
    json.dump(manifest, f, indent=1)
  with open(os.path.join(workroot, 'commands.sh'), 'w', encoding='utf-8') as f:
    f.write(
      '#!/usr/bin/env bash\n# Generated by launch/sweep.py; run from the repository root.\n'
    )
    f.write('set -e\n')
    for r in runs:
      f.write(shlex.join(r.command(config=config, python='python')) + '\n')
  return path


def execute(
  runs: Sequence[Run], *, config: str, workroot: str, log=print
) -> dict[str, str]:
  """Runs `runs` in order from the repository root; returns {run name: status}.

  Status: 'done' (metrics.json existed), 'ok', 'failed (rc N)' or 'skipped (needs NAME)'.
  """
  logs = os.path.join(os.path.abspath(os.path.expanduser(workroot)), 'logs')
  os.makedirs(logs, exist_ok=True)
  status: dict[str, str] = {}
  for i, run in enumerate(runs):
    prefix = f'[{i + 1}/{len(runs)}] {run.name}'
    if os.path.exists(run.metrics_path):
      status[run.name] = 'done'
      log(f'{prefix}: done ({run.metrics_path})')
      continue
    if run.requires and status.get(run.requires) not in ('done', 'ok'):
      status[run.name] = f'skipped (needs {run.requires})'
      log(f'{prefix}: skipped, {run.requires} did not finish')
      continue
    command = run.command(config=config)
    log_path = os.path.join(logs, f'{run.name}.log')
    log(f'{prefix}: {shlex.join(command)}  > {log_path}')
    start = time.time()
    with open(log_path, 'a', encoding='utf-8') as f:
      rc = subprocess.call(
        command, cwd=REPO, stdout=f, stderr=subprocess.STDOUT
      )
    ok = rc == 0 and os.path.exists(run.metrics_path)
    status[run.name] = 'ok' if ok else f'failed (rc {rc})'
    log(f'{prefix}: {status[run.name]} in {time.time() - start:.0f} s')
  return status


def _parse_eval_overrides(args) -> list[tuple[str, object]]:
  out = []
  for item in args.override:
    key, sep, value = item.partition('=')
    if not sep or not key:
      raise ValueError(
        f'--override={item!r} must look like KEY=VALUE, e.g. dataset.data_dir=/data.'
      )
    out.append((key, value))
  if args.eval_examples is not None:
    out.append(('eval.num_examples', args.eval_examples))
  if args.num_samples_list:
    out.append(
      (
        'eval.num_samples_list',
        '('
        + ','.join(str(int(n)) for n in args.num_samples_list.split(','))
        + ',)',
      )
    )
  return out


def _define_flags(fv: flags.FlagValues) -> None:
  flags.DEFINE_enum(
    'study',
    None,
    list(STUDIES) + ['all'],
    'Which study to plan.',
    flag_values=fv,
  )
  flags.mark_flag_as_required('study', flag_values=fv)
  flags.DEFINE_string(
    'seeds', '0', 'Comma-separated training seeds.', flag_values=fv
  )
  flags.DEFINE_integer(
    'steps',
    None,
    "Training steps of every run (default: the config's num_train_steps).",
    flag_values=fv,
  )
  flags.DEFINE_string(
    'workroot',
    '~/runs/design_study',
    'One workdir per training goes here.',
    flag_values=fv,
  )
  flags.DEFINE_string(
    'config', DEFAULT_CONFIG, 'Base config file.', flag_values=fv
  )
  flags.DEFINE_integer(
    'eval_examples',
    None,
    "config.eval.num_examples for every run (default: the config's).",
    flag_values=fv,
  )
  flags.DEFINE_string(
    'num_samples_list',
    '',
    "config.eval.num_samples_list, e.g. '4,16' (default: the config's).",
    flag_values=fv,
  )
  flags.DEFINE_multi_string(
    'override',
    [],
    'Extra KEY=VALUE config override for every run '
    '(repeatable), e.g. dataset.data_dir=/data.',
    flag_values=fv,
  )
  for name, default, what in (
    ('input_scales', [repr(b) for b in INPUT_SCALES], 'Input scales b'),
    ('predictions', list(PREDICTIONS), 'Predictions'),
    ('weightings', list(WEIGHTINGS), 'Loss weightings'),
    ('samplers', list(SAMPLERS), 'Samplers (each with every --sampler_steps)'),
    ('sampler_steps', [str(n) for n in SAMPLER_STEPS], 'Sampler step counts'),
  ):
    flags.DEFINE_list(
      name,
      default,
      f'{what} of their study; a subset re-runs only those cells (the reference is kept).',
      flag_values=fv,
    )
  flags.DEFINE_bool(
    'run', False, 'Run the commands one after another.', flag_values=fv
  )
  flags.DEFINE_bool(
    'dry', False, 'Only print the commands; write nothing.', flag_values=fv
  )


def _usage_error(message: str) -> NoReturn:
  print(f'launch/sweep.py: error: {message}', file=sys.stderr)
  raise SystemExit(2)


def main(argv: Sequence[str] | None = None) -> int:
  """Parses the absl flags in `argv` (default: sys.argv[1:]) and plans, writes or runs the sweep."""
  args = flags.FlagValues()
  _define_flags(args)
  argv = list(sys.argv[1:] if argv is None else argv)
  if '--help' in argv or '-h' in argv:
    print(__doc__ + '\n' + args.get_help())
    return 0
  try:
    args(['launch/sweep.py'] + argv)
  except flags.Error as e:
    _usage_error(str(e))
  if args.run and args.dry:
    _usage_error('--run and --dry exclude each other.')
  if args.steps is not None and args.steps < 1:
    _usage_error(f'--steps={args.steps} must be at least 1.')
  try:
    seeds = [int(s) for s in args.seeds.split(',') if s.strip()]
  except ValueError:
    _usage_error(
      f'--seeds={args.seeds!r} must be comma-separated integers, e.g. 0,1.'
    )
  if not seeds:
    _usage_error('--seeds is empty.')
  config = os.path.abspath(os.path.expanduser(args.config))
  if not os.path.isfile(config):
    _usage_error(f'--config={args.config}: no such file.')
  studies = list(STUDIES) if args.study == 'all' else [args.study]
  try:
    input_scales = [float(b) for b in args.input_scales]
  except ValueError:
    _usage_error(
      f'--input_scales={args.input_scales} must be numbers, e.g. 0.1,0.3,1.0.'
    )
  try:
    sampler_steps = [int(n) for n in args.sampler_steps]
  except ValueError:
    _usage_error(
      f'--sampler_steps={args.sampler_steps} must be whole numbers, e.g. 10,100.'
    )
  try:
    grid = Grid(
      input_scales=tuple(input_scales),
      predictions=tuple(args.predictions),
      weightings=tuple(args.weightings),
      samplers=tuple(args.samplers),
      sampler_steps=tuple(sampler_steps),
    )
    runs, entries = plan(
      grid=grid,
      studies=studies,
      seeds=seeds,
      steps=args.steps,
      workroot=args.workroot,
      eval_overrides=_parse_eval_overrides(args),
    )
  except ValueError as e:
    _usage_error(str(e))
  for run in runs:
    print(shlex.join(run.command(config=config, python='python')))
  trainings = sum(r.mode == 'train' for r in runs)
  print(
    f'# {len(runs)} runs: {trainings} trainings, {len(runs) - trainings} evaluations.'
  )
  if args.dry:
    return 0
  manifest = write_plan(
    runs=runs,
    entries=entries,
    workroot=args.workroot,
    config=config,
    args={name: args[name].value for name in args},
  )
  print(f'# plan written to {manifest}')
  if not args.run:
    return 0
  status = execute(runs, config=config, workroot=args.workroot)
  bad = {k: v for k, v in status.items() if v not in ('done', 'ok')}
  print(
    f'# {len(status) - len(bad)} of {len(status)} runs have results'
    + (f'; not finished: {bad}' if bad else '.')
  )
  return 1 if bad else 0


if __name__ == '__main__':
  sys.exit(main())
