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


def test_boundary_profile_hand_computed():
  # One image, core = the left half of a 4 x 6 grid, the lobe far away (d_lobe < -1.5) except in
  # the last row.
  d_core = np.tile(np.array([2.0, 1.0, 0.75, 0.25, -0.75, -2.0]), (4, 1))[None]
  d_lobe = np.full((1, 4, 6), -5.0)
  d_lobe[0, 3] = 0.0
  mode_probs = np.array(
    [[0.2, 0.5, 0.3]]
  )  # P(non-empty) = 0.8, the vote is at 0.4
  sharp = 0.8 * (d_core > 0)
  r = shape_spread.boundary_profile(
    sharp, d_core=d_core, d_lobe=d_lobe, mode_probs=mode_probs
  )
  assert r['core_vote_off_pixels'] == 0
  assert r['profile'] == pytest.approx(
    {'-1..-0.5': 0.0, '0..0.5': 0.8, '0.5..1': 0.8}
  )
  blurred = sharp.copy()
  blurred[0, :, 3] = (
    0.3  # the column 0.25 px inside falls below the vote: 3 pixels off
  )
  blurred[0, :, 4] = 0.5  # the column 0.75 px outside rises above it: 3 more
  blurred[0, 3] = 0.0  # the lobe's row does not count
  r = shape_spread.boundary_profile(
    blurred, d_core=d_core, d_lobe=d_lobe, mode_probs=mode_probs
  )
  assert r['core_vote_off_pixels'] == 6
  assert r['profile'] == pytest.approx(
    {'-1..-0.5': 0.5, '0..0.5': 0.3, '0.5..1': 0.8}
  )
  # Images whose non-empty chance is at most one half have no vote.
  none = shape_spread.boundary_profile(
    blurred,
    d_core=d_core,
    d_lobe=d_lobe,
    mode_probs=np.array([[0.6, 0.2, 0.2]]),
  )
  assert np.isnan(none['core_vote_off_pixels'])


def test_mode_distances_give_the_stored_modes():
  from tfds_lidc import synthetic_lesions  # pylint: disable=g-import-not-at-top

  chunk = synthetic_lesions.generate_chunk(
    seed=0, split='test', chunk=0, n=6, size=32
  )
  d_core, d_lobe = synthetic_lesions.mode_distances(
    geometry=chunk['geometry'], size=32
  )
  np.testing.assert_array_equal(d_core > 0, chunk['modes'][:, 1] > 0)
  np.testing.assert_array_equal(
    np.maximum(d_core, d_lobe) > 0, chunk['modes'][:, 2] > 0
  )
