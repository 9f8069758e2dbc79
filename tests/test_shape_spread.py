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
