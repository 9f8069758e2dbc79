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

"""benchmarks/quality_curve.py: checkpoint choice, ratios and their errors, seeds, on real runs."""

import json
import math
import os

import numpy as np
import pytest

from benchmarks import quality_curve
from diffseg_jax import train
from tests.conftest import tiny_config


def test_pick_steps_nearest_in_time_and_drops_unreached_targets():
  seconds = {500: 290.0, 1000: 610.0, 1500: 900.0, 2000: 1220.0}
  picked = quality_curve.pick_steps(seconds, [5, 10, 20, 40])
  assert picked == {5.0: 500, 10.0: 1000, 20.0: 2000}
  assert quality_curve.pick_steps(seconds, [22])[22.0] == 2000


def test_ratio_and_its_delta_method_error_match_a_float64_bootstrap():
  rng = np.random.default_rng(0)
  reference = rng.uniform(0.05, 0.3, 400)
  values = 1.5 * reference + rng.normal(0, 0.03, 400)
  ratio, sem = quality_curve.ratio_and_sem(list(values), list(reference))
  assert ratio == pytest.approx(values.mean() / reference.mean(), rel=1e-12)
  idx = rng.integers(0, 400, (4000, 400))
  boot = values[idx].mean(1) / reference[idx].mean(1)
  assert sem == pytest.approx(boot.std(ddof=1), rel=0.1)


def test_difference_and_sem_is_the_paired_standard_error():
  values, reference = [0.5, 0.7, 0.6], [0.4, 0.5, 0.6]
  mean, sem = quality_curve.difference_and_sem(values, reference)
  d = np.array(values) - np.array(reference)
  assert mean == pytest.approx(d.mean())
  assert sem == pytest.approx(d.std(ddof=1) / math.sqrt(3))


def test_across_seeds_mean_and_standard_error_over_seeds():
  points = [
    {'ged': 1.2, 'mode_tv': 1.4, 'hm_iou': -0.05, 'minutes': 10.0},
    {'ged': 1.4, 'mode_tv': 1.6, 'hm_iou': -0.03, 'minutes': 11.0},
  ]
  out = quality_curve.across_seeds(points)
  assert out['ged'] == pytest.approx(1.3)
  assert out['ged_sem_seeds'] == pytest.approx(0.1)
  assert math.isnan(quality_curve.across_seeds(points[:1])['ged_sem_seeds'])


def test_curve_on_a_real_run_scores_kept_checkpoints_by_training_time(
  tiny_synthetic, tmp_path, monkeypatch
):
  config = tiny_config(
    tiny_synthetic,
    num_train_steps=4,
    checkpoint_every_steps=2,
    **{'eval.num_samples_list': (4,)},
  )
  workdir = str(tmp_path / 'seed0')
  train.train_and_evaluate(config, workdir)
  seconds = quality_curve.checkpoint_seconds(workdir)
  assert sorted(seconds) == [2, 4] and seconds[2] <= seconds[4]
  minutes = [seconds[2] / 60]
  result = quality_curve.curve(
    config,
    [workdir],
    minutes,
    num_examples=2,
    final_num_examples=3,
    num_samples=4,
  )
  points = result['runs'][0]['points']
  assert [(p['step'], p['num_images']) for p in points] == [(2, 2), (4, 3)]
  per_image = [
    json.loads(line)
    for line in open(
      os.path.join(
        workdir, 'eval', 'curve', 'step_0000002_n2', 'per_image.jsonl'
      )
    )
  ]
  ged = [r['ged_4'] for r in per_image]
  oracle = [r['oracle_ged_4'] for r in per_image]
  assert points[0]['ged'] == pytest.approx(np.mean(ged) / np.mean(oracle))
  assert points[0]['minutes'] == pytest.approx(seconds[2] / 60)
  assert result['mean'][0]['num_seeds'] == 1
  assert [p['last'] for p in points] == [False, True]
  assert result['final']['ged'] == pytest.approx(points[1]['ged'])
  table = quality_curve.markdown(result, machine='test')
  assert ' img |' in table
  assert '| last checkpoint | 1 |' in table

  # Another run's clock: steps are picked, and minutes reported, by its times at the same steps.
  own = quality_curve.checkpoint_seconds
  clock = str(tmp_path / 'clock_run')

  def curve_on_clock(clock_seconds):
    monkeypatch.setattr(
      quality_curve,
      'checkpoint_seconds',
      lambda w: clock_seconds if w == clock else own(w),
    )
    return quality_curve.curve(
      config,
      [workdir],
      [1.0],
      num_examples=2,
      final_num_examples=3,
      num_samples=4,
      clock=clock,
    )

  timed = curve_on_clock({2: 600.0, 4: 60.0})
  points = timed['runs'][0]['points']
  assert [(p['step'], p['minutes']) for p in points] == [(4, 1.0)]
  assert points[0]['own_minutes'] == pytest.approx(seconds[4] / 60)
  assert clock in quality_curve.markdown(timed, machine='test')
  with pytest.raises(ValueError, match=r'steps \[2\] that the clock run'):
    curve_on_clock({4: 60.0})


def test_checkpoint_seconds_names_a_missing_workdir(tmp_path):
  with pytest.raises(FileNotFoundError, match='checkpoints does not exist'):
    quality_curve.checkpoint_seconds(str(tmp_path / 'nothing'))


def test_model_modes_ratio_is_scored_where_evaluated_and_skipped_where_not():
  rows = [
    {
      'ged_16': g,
      'mode_tv_16': 0.2,
      'hm_iou_16': 0.7,
      'oracle_ged_16': 0.1,
      'oracle_mode_tv_16': 0.1,
      'oracle_hm_iou_16': 0.8,
      'model_modes_ged_16': m,
    }
    for g, m in ((0.2, 0.12), (0.3, 0.14))
  ]
  point = quality_curve.score_point(rows, 16)
  assert point['model_modes_ged'] == pytest.approx(1.3)
  assert point['ged'] == pytest.approx(2.5)
  old = quality_curve.score_point(
    [{k: v for k, v in r.items() if not k.startswith('model_')} for r in rows],
    16,
  )
  assert 'model_modes_ged' not in old
  mixed = quality_curve.across_seeds(
    [dict(point, minutes=1.0), dict(old, minutes=2.0)]
  )
  assert 'model_modes_ged' not in mixed and mixed['ged'] == pytest.approx(2.5)
