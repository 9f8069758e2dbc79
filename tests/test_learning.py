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

"""Slow: a short quickstart training must learn to read the image (beats the image-blind baseline)."""

import json

import pytest

from diffseg_jax import evaluation
from diffseg_jax import train


@pytest.mark.slow
def test_short_quickstart_training_beats_the_image_blind_baseline(tmp_path):
  from configs import quickstart  # pylint: disable=g-import-not-at-top

  config = quickstart.get_config()
  config.dataset.data_dir = str(tmp_path / 'data')
  config.num_train_steps = 800
  config.optim.decay_steps = 300
  config.validation.every_steps = 0
  config.evaluate_after_training = False
  config.eval.num_examples = 100
  train.train_and_evaluate(config, str(tmp_path / 'work'))
  evaluation.evaluate_checkpoint(config, str(tmp_path / 'work'))
  m = json.load(open(tmp_path / 'work' / 'eval' / 'test' / 'metrics.json'))[
    'metrics'
  ]
  assert m['ged_16']['mean'] < m['blind_ged_16']['mean']
  assert m['mode_tv_16']['mean'] < m['blind_mode_tv_16']['mean']
  assert m['ged_16']['mean'] < 1.6 * m['mode_oracle_ged_16']['mean']
