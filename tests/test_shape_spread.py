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

"""benchmarks/shape_spread.py's pixel counts on hand-built masks."""

import numpy as np
import pytest

from benchmarks import shape_spread


def test_off_mode_and_within_mode_pixels_hand_computed():
  modes = np.zeros((1, 3, 8, 8), bool)
  modes[0, 1, 2:6, 2:6] = True  # core, 16 px
  modes[0, 2, 2:6, 2:8] = True  # union, 24 px
  samples = np.zeros((1, 4, 8, 8), bool)
  samples[0, 0] = modes[0, 1]  # core exactly: 0 off
  samples[0, 1] = modes[0, 1]
  samples[0, 1, 6, 2] = True  # core + 1 px: 1 off
  samples[0, 2] = modes[0, 2]
  samples[0, 2, 2, 2] = False  # union - 1 px: 1 off
  # samples[0, 3] empty: the empty mode, not counted
  out = shape_spread.spread(samples, modes)
  assert out['num_samples_matched'] == 3
  assert out['off_mode_pixels'] == pytest.approx((0 + 1 + 1) / 3)
  # One within-mode pair (the two core samples), 1 px apart; the union has one sample.
  assert out['within_mode_pixels'] == pytest.approx(1.0)
  assert out['unmatched_fraction'] == 0.0


def test_majority_off_mode_and_area_bias_hand_computed():
  modes = np.zeros((1, 3, 8, 8), bool)
  modes[0, 1, 2:6, 2:6] = True  # core, 16 px
  modes[0, 2, 2:6, 2:8] = True  # union, 24 px
  samples = np.repeat(modes[:, 1:2], 3, axis=1)  # three core samples
  samples[0, 0, 6, 2:4] = True  # +2 px
  samples[0, 1, 6, 2] = True  # +1 px: pixel (6, 2) is in 2 of 3, so in the vote
  samples[0, 2, 2, 2] = False  # -1 px, in 1 of 3: not in the vote
  out = shape_spread.spread(samples, modes)
  assert out['area_bias_pixels'] == pytest.approx((2 + 1 - 1) / 3)
  assert out['majority_off_mode_pixels'] == pytest.approx(1.0)


def test_majority_needs_three_samples_of_a_mode():
  modes = np.zeros((1, 3, 8, 8), bool)
  modes[0, 1, 2:6, 2:6] = True
  modes[0, 2, 2:6, 2:8] = True
  samples = np.repeat(modes[:, 1:2], 2, axis=1)
  out = shape_spread.spread(samples, modes)
  assert np.isnan(out['majority_off_mode_pixels'])
  assert out['area_bias_pixels'] == 0.0


def test_majority_split_into_missing_extra_and_by_mode():
  modes = np.zeros((1, 3, 8, 8), bool)
  modes[0, 1, 2:6, 2:6] = True
  modes[0, 2, 2:6, 2:8] = True
  samples = np.repeat(modes[:, 1:2], 3, axis=1)
  samples[:, :, 2, 2] = False  # every sample misses one core pixel
  samples[:, :2, 7, 7] = True  # two of three add a far pixel
  out = shape_spread.spread(samples, modes)
  assert out['majority_missing_pixels'] == 1.0
  assert out['majority_extra_pixels'] == 1.0
  assert out['majority_off_mode_pixels_by_mode'] == {'1': 2.0}
