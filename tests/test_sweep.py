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

"""launch/sweep.py (plans and commands of the design study) and benchmarks/design_study_report.py."""

import importlib.util
import json
import math
import os
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(relative_path, name):
  spec = importlib.util.spec_from_file_location(
    name, os.path.join(REPO, relative_path)
  )
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module  # dataclasses resolve their module by name.
  spec.loader.exec_module(module)
  return module


sweep = _load(os.path.join('launch', 'sweep.py'), 'sweep_under_test')
report = _load(
  os.path.join('benchmarks', 'design_study_report.py'),
  'design_study_report_under_test',
)


def _flags(run):
  """{config key: value string} of a run's --config.<key>=<value> flags."""
  out = {}
  for arg in run.command(config='c.py', python='python'):
    if arg.startswith('--config.'):
      key, value = arg[len('--config.') :].split('=', 1)
      out[key] = value
  return out


def _trainings(runs):
  return [r for r in runs if r.mode == 'train']


@pytest.mark.parametrize(
  'study,factor,values',
  [
    ('input_scale', 'diffusion.input_scale', ['1.0', '0.3', '0.1', '0.03']),
    ('prediction', 'diffusion.prediction', ['x', 'v', 'eps']),
    (
      'weighting',
      'diffusion.weighting',
      ['uniform', 'snr', 'snr_plus1', 'snr_trunc', 'sigmoid_0'],
    ),
  ],
)
def test_training_studies_vary_one_factor(tmp_path, study, factor, values):
  runs, entries = sweep.plan(
    studies=[study], seeds=[0, 1], steps=1234, workroot=str(tmp_path)
  )
  assert all(r.mode == 'train' for r in runs)
  assert len(runs) == 2 * len(values) == len(entries)
  for seed in (0, 1):
    flags = [_flags(r) for r in runs if _flags(r)['seed'] == str(seed)]
    assert [f[factor] for f in flags] == values
    for f in flags:
      assert f['num_train_steps'] == '1234'
      assert f['evaluate_after_training'] == 'True'
      others = {
        k: v for k, v in f.items() if k.startswith('diffusion.') and k != factor
      }
      expected = {
        k: sweep._flag_value(v)
        for k, v in sweep.REFERENCE.items()
        if k != factor
      }
      assert others == expected
  assert len({r.workdir for r in runs}) == len(runs)
  for r in runs:
    assert r.metrics_path == os.path.join(
      str(tmp_path), r.name, 'eval', 'test', 'metrics.json'
    )
    command = r.command(config='configs/synthetic_paper.py', python='python')
    assert command[:3] == ['python', '-m', 'diffseg_jax.main']
    assert '--mode=train' in command and f'--workdir={r.workdir}' in command


def test_the_study_runs_on_the_papers_method():
  # The quickstart carries wins beyond the paper; the study's base config must not.
  config = _load(
    os.path.relpath(sweep.DEFAULT_CONFIG, REPO), 'study_config_under_test'
  ).get_config()
  assert config.diffusion.target == 'annotation'
  assert config.diffusion.loss == 'mse' and not config.diffusion.self_condition
  for key, value in sweep.REFERENCE.items():
    section, name = key.split('.')
    assert config[section][name] == value, key
  assert (config.sampler.name, config.sampler.num_steps) == (
    sweep.SAMPLER_REFERENCE
  )


def test_sampler_study_evaluates_one_checkpoint_per_seed(tmp_path):
  runs, entries = sweep.plan(
    studies=['sampler'], seeds=[0, 1], steps=10, workroot=str(tmp_path)
  )
  trainings = _trainings(runs)
  evaluations = [r for r in runs if r.mode == 'evaluate']
  assert len(trainings) == 2
  assert (
    len(evaluations)
    == 2 * len(sweep.SAMPLERS) * len(sweep.SAMPLER_STEPS)
    == len(entries)
  )
  # Trainings run before the evaluations that need them.
  assert runs[:2] == trainings
  by_name = {r.name: r for r in trainings}
  settings = set()
  for r in evaluations:
    f = _flags(r)
    train = by_name[r.requires]
    assert r.workdir == train.workdir
    assert f['seed'] == _flags(train)['seed']
    assert (
      f['eval.output_name']
      == f'{f["sampler.name"]}_{f["sampler.num_steps"]}'
      == r.output_name
    )
    assert r.metrics_path == os.path.join(
      train.workdir, 'eval', r.output_name, 'metrics.json'
    )
    # The network must be the trained one: same diffusion settings as the training.
    assert {k: v for k, v in f.items() if k.startswith('diffusion.')} == {
      k: v for k, v in _flags(train).items() if k.startswith('diffusion.')
    }
    assert '--mode=evaluate' in r.command(config='c.py')
    settings.add((f['seed'], f['sampler.name'], int(f['sampler.num_steps'])))
  assert settings == {
    (str(s), n, k)
    for s in (0, 1)
    for n in sweep.SAMPLERS
    for k in sweep.SAMPLER_STEPS
  }


def test_all_studies_share_the_reference_training(tmp_path):
  runs, entries = sweep.plan(
    studies=list(sweep.STUDIES), seeds=[0], steps=None, workroot=str(tmp_path)
  )
  trainings = _trainings(runs)
  # 4 scales + 3 predictions + 5 weightings, the reference (b 0.1, x, snr_plus1) counted once.
  assert len(trainings) == 4 + 3 + 5 - 2
  assert len({r.name for r in runs}) == len(runs)
  reference = sweep._train_name(sweep.REFERENCE, 0)
  users = {
    e.study
    for e in entries
    if e.run == reference or e.run.startswith(reference + '_eval_')
  }
  assert users == set(sweep.STUDIES)
  assert all('num_train_steps' not in _flags(r) for r in runs)


def test_a_narrow_grid_keeps_the_reference_and_drops_the_rest(tmp_path, capsys):
  grid = sweep.Grid(
    input_scales=(0.3, 1.0),
    predictions=('v',),
    weightings=('uniform', 'snr_plus1'),
    samplers=('ddim', 'dpm_solver_pp_2m'),
    sampler_steps=(100,),
  )
  runs, entries = sweep.plan(
    studies=list(sweep.STUDIES),
    seeds=[0, 1, 2],
    steps=None,
    workroot=str(tmp_path),
    grid=grid,
  )
  cells = {(e.study, tuple(sorted(e.setting.items())), e.seed) for e in entries}
  expected = set()
  for seed in (0, 1, 2):
    for b in (0.1, 0.3, 1.0):
      expected.add(
        (
          'input_scale',
          (('b', b), ('prediction', 'x'), ('weighting', 'snr_plus1')),
          seed,
        )
      )
    for p in ('x', 'v'):
      expected.add(
        (
          'prediction',
          (('b', 0.1), ('prediction', p), ('weighting', 'snr_plus1')),
          seed,
        )
      )
    for w in ('uniform', 'snr_plus1'):
      expected.add(
        ('weighting', (('b', 0.1), ('prediction', 'x'), ('weighting', w)), seed)
      )
    for s, n in (('ddpm', 10), ('ddim', 100), ('dpm_solver_pp_2m', 100)):
      expected.add(('sampler', (('sampler', s), ('steps', n)), seed))
  assert cells == expected
  # Reference, b 0.3, b 1, v and uniform: five trainings per seed.
  assert len(_trainings(runs)) == 5 * 3
  assert len(runs) == 5 * 3 + 3 * 3

  for bad, named in (
    ('--input_scales=0.3,zero', '--input_scales'),
    ('--input_scales=-1', 'positive'),
    ('--weightings=snr_plus_one', '--weightings'),
    ('--sampler_steps=ten', '--sampler_steps'),
  ):
    with pytest.raises(SystemExit):
      sweep.main(['--study=all', '--dry', bad])
    assert named in capsys.readouterr().err


def test_eval_overrides_and_cli_dry(tmp_path, capsys):
  runs, _ = sweep.plan(
    studies=['prediction'],
    seeds=[3],
    steps=5,
    workroot=str(tmp_path),
    eval_overrides=[('eval.num_examples', 100)],
  )
  assert all(_flags(r)['eval.num_examples'] == '100' for r in runs)
  workroot = tmp_path / 'dry'
  rc = sweep.main(
    [
      '--study=sampler',
      '--seeds=0',
      '--steps=7',
      f'--workroot={workroot}',
      '--dry',
      '--eval_examples=50',
      '--num_samples_list=4,16',
    ]
  )
  assert rc == 0 and not workroot.exists()
  lines = [
    line
    for line in capsys.readouterr().out.splitlines()
    if not line.startswith('#')
  ]
  assert len(lines) == 1 + 15
  assert all(
    '--config.eval.num_samples_list=(4,16,)' in line
    and '--config.num_train_steps=7' in line
    for line in lines
  )


def test_plan_files_and_resume_skips_finished(tmp_path):
  workroot = tmp_path / 'study'
  assert (
    sweep.main(
      [
        '--study=input_scale',
        '--seeds=0',
        '--steps=3',
        f'--workroot={workroot}',
      ]
    )
    == 0
  )
  manifest = json.loads((workroot / 'manifest.json').read_text())
  assert len(manifest['runs']) == 4 and len(manifest['entries']) == 4
  assert (workroot / 'commands.sh').read_text().count('diffseg_jax.main') == 4
  runs, _ = sweep.plan(
    studies=['sampler'], seeds=[0], steps=3, workroot=str(workroot)
  )
  for r in runs:  # Every run already finished: nothing is started.
    os.makedirs(os.path.dirname(r.metrics_path), exist_ok=True)
    with open(r.metrics_path, 'w') as f:
      f.write('{}')
  status = sweep.execute(
    runs, config='c.py', workroot=str(workroot), log=lambda *a: None
  )
  assert set(status.values()) == {'done'}


def test_failed_training_skips_its_evaluations(tmp_path):
  runs, _ = sweep.plan(
    studies=['sampler'], seeds=[0], steps=1, workroot=str(tmp_path)
  )
  # Main exits non-zero at once.
  bad_config = str(tmp_path / 'missing_config.py')
  status = sweep.execute(
    runs[:3], config=bad_config, workroot=str(tmp_path), log=lambda *a: None
  )
  assert status[runs[0].name].startswith('failed')
  assert (
    status[runs[1].name]
    == status[runs[2].name]
    == f'skipped (needs {runs[0].name})'
  )
  assert os.path.exists(tmp_path / 'logs' / f'{runs[0].name}.log')


def _write_metrics(path, values):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w') as f:
    json.dump(
      {
        'split': 'test',
        'metrics': {
          k: {'mean': m, 'sem': s, 'n': 10} for k, (m, s) in values.items()
        },
      },
      f,
    )


def test_combine_over_seeds_and_single_seed():
  assert report.combine([]) is None
  assert report.combine([{'mean': 0.5, 'sem': 0.01}]) == (0.5, 0.01, 'img')
  means = [0.2, 0.3, 0.7]
  mean, sem, basis = report.combine([{'mean': m, 'sem': 9.0} for m in means])
  ref_mean = sum(means) / 3
  ref_sem = math.sqrt(sum((m - ref_mean) ** 2 for m in means) / 2) / math.sqrt(
    3
  )
  assert basis == 'seeds'
  assert mean == pytest.approx(ref_mean, abs=1e-12) and sem == pytest.approx(
    ref_sem, abs=1e-12
  )
  assert report.combine([None, {'mean': None}, {'mean': 1.0, 'sem': None}]) == (
    1.0,
    None,
    'img',
  )


def test_report_tables_from_fake_metrics(tmp_path, capsys):
  workroot = tmp_path / 'study'
  assert (
    sweep.main(
      ['--study=all', '--seeds=0,1', '--steps=3', f'--workroot={workroot}']
    )
    == 0
  )
  manifest = json.loads((workroot / 'manifest.json').read_text())
  # Fake results: GED = 0.1 * seed + b for trainings; 1 + steps/1000 for sampler settings.
  for e in manifest['entries']:
    if (
      e['study'] == 'sampler'
      and e['setting']['sampler'] == 'ddim'
      and e['setting']['steps'] == 100
    ):
      continue  # one unfinished setting
    base = e['setting'].get('b', 1 + e['setting'].get('steps', 0) / 1000)
    ged = base + 0.1 * e['seed']
    _write_metrics(
      e['metrics'],
      {
        'ged_16': (ged, 0.5),
        'hm_iou_16': (0.6, 0.01),
        'ci_16': (0.7, 0.02),
        'mode_tv_16': (0.05, 0.01),
        'oracle_ged_16': (0.3 + 0.2 * e['seed'], 0.02),
        'blind_ged_16': (0.9, 0.03),
      },
    )
  assert report.main([f'--workroot={workroot}']) == 0
  text = capsys.readouterr().out
  assert (workroot / 'report.md').read_text().strip() in text
  for title in report.STUDY_TITLES.values():
    assert title in text
  # Seeds 0 and 1: means g, g + 0.1.
  sem_two_seeds = math.sqrt(2 * 0.05**2) / math.sqrt(2)
  assert f'| 0.03 | 2/2 | {0.08:.4f} ± {sem_two_seeds:.4f} |' in text
  assert f'| x | 2/2 | {0.15:.4f} ± {sem_two_seeds:.4f} |' in text
  assert f'| ddpm, 25 | 2/2 | {1.075:.4f} ± {sem_two_seeds:.4f} |' in text
  assert '| ddim, 100 | 0/2 | – | – | – | – |' in text
  assert 'Not finished: ddim, 100 (seed 0); ddim, 100 (seed 1).' in text
  oracle = [line for line in text.splitlines() if line.startswith('| oracle')]
  assert len(oracle) == 4 and all(f'{0.4:.4f} ±' in line for line in oracle)
  # Only GED is given for the baselines (3 other columns, no ratio, no paired differences).
  assert all(line.count('–') == 3 + 3 for line in oracle)
  one_seed = report.study_table(
    'input_scale', [e for e in manifest['entries'] if e['seed'] == 0]
  )
  assert f'| 1.0 | 1/1 | {1.0:.4f} ± {0.5:.4f} (img) |' in one_seed


def test_report_without_manifest_names_the_fix(tmp_path, capsys):
  assert report.main([f'--workroot={tmp_path}']) == 2
  assert 'launch/sweep.py' in capsys.readouterr().err


def test_report_rejects_foreign_json(tmp_path):
  path = tmp_path / 'metrics.json'
  path.write_text(json.dumps({'ged': 1.0}))
  with pytest.raises(ValueError, match="metrics.json has no 'metrics'"):
    report.load_metrics(str(path))


def test_extra_overrides_reach_every_run_and_clashes_are_refused(
  tmp_path, capsys
):
  rc = sweep.main(
    [
      '--study=sampler',
      '--dry',
      f'--workroot={tmp_path}',
      '--override=dataset.data_dir=/data/tfds',
      '--override=eval.batch_size=10',
    ]
  )
  assert rc == 0
  lines = [
    line
    for line in capsys.readouterr().out.splitlines()
    if not line.startswith('#')
  ]
  assert len(lines) == 16
  assert all(
    '--config.dataset.data_dir=/data/tfds' in line
    and '--config.eval.batch_size=10' in line
    for line in lines
  )
  with pytest.raises(ValueError, match='sampler.num_steps'):
    sweep.plan(
      studies=['sampler'],
      seeds=[0],
      steps=1,
      workroot=str(tmp_path),
      eval_overrides=[('sampler.num_steps', 3)],
    )
  for bad in ('--override=seed=3', '--override=no_equals_sign'):
    with pytest.raises(SystemExit):
      sweep.main(['--study=prediction', '--dry', bad])


def test_paired_difference_over_images_and_seeds():
  ref = {str(i): {'ged_16': 0.1 * i} for i in range(4)}
  run = {
    str(i): {'ged_16': 0.1 * i + d} for i, d in enumerate((0.1, 0.3, 0.1, 0.3))
  }
  run['extra'] = {'ged_16': 9.0}  # Not scored by the reference: not paired.
  mean, sem, basis, images = report.paired_difference([(run, ref)], 'ged_16')
  diffs = np.array([0.1, 0.3, 0.1, 0.3])
  assert basis == 'img' and images == 4
  assert mean == pytest.approx(diffs.mean())
  assert sem == pytest.approx(diffs.std(ddof=1) / 2)
  # Two seeds: the standard error is over the seeds' mean differences.
  run2 = {k: {'ged_16': v['ged_16'] + 0.2} for k, v in run.items()}
  mean, sem, basis, _ = report.paired_difference(
    [(run, ref), (run2, ref)], 'ged_16'
  )
  assert basis == 'seeds'
  assert mean == pytest.approx(0.3) and sem == pytest.approx(0.1)
  assert report.paired_difference([({}, ref)], 'ged_16') is None


def test_report_pairs_each_setting_with_the_reference_on_the_same_images(
  tmp_path, capsys
):
  workroot = tmp_path / 'study'
  assert (
    sweep.main(
      [
        '--study=input_scale',
        '--seeds=0',
        '--steps=3',
        f'--workroot={workroot}',
      ]
    )
    == 0
  )
  manifest = json.loads((workroot / 'manifest.json').read_text())
  rng = np.random.default_rng(0)
  base = rng.uniform(0.1, 0.5, 50)
  for e in manifest['entries']:
    b = e['setting']['b']
    ged = base + (0.0 if b == 0.1 else 0.02)  # Every other b: exactly +0.02.
    _write_metrics(
      e['metrics'],
      {'ged_16': (float(ged.mean()), 0.05), 'oracle_ged_16': (0.1, 0.01)},
    )
    with open(
      os.path.join(os.path.dirname(e['metrics']), 'per_image.jsonl'), 'w'
    ) as f:
      for i, g in enumerate(ged):
        f.write(json.dumps({'index': i, 'id': f'img{i}', 'ged_16': g}) + '\n')
  assert report.main([f'--workroot={workroot}']) == 0
  text = capsys.readouterr().out
  assert 'Δ GED_16 vs 0.1' in text
  row = next(line for line in text.splitlines() if line.startswith('| 0.3 |'))
  # Unpaired, the ±0.05 image spread would hide +0.02; paired it is exact.
  assert '+0.0200 ± 0.0000' in row
  assert f'| {(base.mean() + 0.02) / 0.1:.2f} |' in row
  ref_row = next(
    line for line in text.splitlines() if line.startswith('| 0.1 |')
  )
  assert '(reference)' in ref_row
