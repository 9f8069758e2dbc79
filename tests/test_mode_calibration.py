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

"""benchmarks/mode_calibration.py: implied probabilities, exact expected TV, calibration tables."""

import itertools

import numpy as np
import pytest

from benchmarks import mode_calibration


def _regions():
  """One 1x8 'image': pixels 0-2 deep core, 3 near both boundaries, 4-6 deep lobe, 7 outside."""
  d_core = np.array([[[3.0, 2.5, 2.0, 0.2, -2.0, -2.5, -3.0, -4.0]]])
  d_lobe = np.array([[[-4.0, -3.0, -2.0, 0.1, 2.0, 2.5, 3.0, -2.0]]])
  return d_core, d_lobe


def test_implied_mode_probs_hand_computed():
  d_core, d_lobe = _regions()
  marginal = np.array([[[0.9, 0.8, 0.7, 0.5, 0.4, 0.3, 0.2, 0.0]]])
  probs, valid = mode_calibration.implied_mode_probs(
    marginal, d_core=d_core, d_lobe=d_lobe
  )
  np.testing.assert_allclose(probs, [[0.2, 0.5, 0.3]])
  assert valid.tolist() == [True]
  # A lobe brighter than the core is capped: P(core u lobe) <= P(non-empty).
  bright = np.array([[[0.5, 0.5, 0.5, 0.5, 0.9, 0.9, 0.9, 0.0]]])
  probs, _ = mode_calibration.implied_mode_probs(
    bright, d_core=d_core, d_lobe=d_lobe
  )
  np.testing.assert_allclose(probs, [[0.5, 0.0, 0.5]])
  # Fewer than 3 own pixels of the lobe: not valid.
  _, valid = mode_calibration.implied_mode_probs(
    marginal, d_core=d_core, d_lobe=d_lobe, margin=2.2
  )
  assert valid.tolist() == [False]


def _expected_tv_by_sequences(p, truth, n):
  """Float64 reference: every sequence of n draws, not count vectors."""
  total = 0.0
  for seq in itertools.product(range(len(p)), repeat=n):
    prob = np.prod([p[i] for i in seq])
    freq = np.bincount(seq, minlength=len(p)) / n
    total += prob * 0.5 * np.abs(freq - truth).sum()
  return total


def test_expected_tv_exact_against_enumerated_sequences_and_by_hand():
  # By hand: two fair draws of two modes: (2,0) and (0,2) each 1/4 with TV 1/2, (1,1) TV 0.
  assert mode_calibration.expected_tv(
    np.array([[0.5, 0.5]]), np.array([[0.5, 0.5]]), 2
  ) == pytest.approx([0.25])
  rng = np.random.default_rng(0)
  p = rng.dirichlet(np.ones(3), size=3)
  truth = rng.dirichlet(np.ones(3), size=3)
  p[0] = [0.0, 0.3, 0.7]  # a mode the draws never take
  got = mode_calibration.expected_tv(p, truth, 5)
  want = [_expected_tv_by_sequences(p[i], truth[i], 5) for i in range(3)]
  np.testing.assert_allclose(got, want, rtol=1e-12)
  # Many draws from the truth itself approach 0, from elsewhere the distribution-level TV.
  assert mode_calibration.expected_tv(truth, truth, 64).max() < 0.1
  far = mode_calibration.expected_tv(p, truth, 64)
  np.testing.assert_allclose(far, 0.5 * np.abs(p - truth).sum(-1), atol=0.06)


def test_compositions_count_and_sum():
  rows = mode_calibration._compositions(16, 3)
  assert rows.shape == (153, 3)  # C(18, 2)
  assert (rows.sum(1) == 16).all() and len({tuple(r) for r in rows}) == 153


def test_calibration_bins_and_lobe_given_non_empty():
  truth = np.array([0.0, 0.04, 0.3, 1.0])
  rows = mode_calibration.calibration(
    truth, {'x': np.array([0.1, 0.2, 0.5, 0.9])}, bins=(0.0, 0.05, 0.5, 1.0)
  )
  assert [r['n'] for r in rows] == [
    2,
    1,
    1,
  ]  # The last bin is closed: it keeps 1.0.
  assert rows[0]['true'] == pytest.approx(0.02)
  assert rows[0]['x'] == pytest.approx(0.15)
  assert rows[-1]['bin'] == [0.5, 1.0] and rows[-1]['x'] == pytest.approx(0.9)
  lobe = mode_calibration.lobe_given_non_empty(
    np.array([[0.5, 0.25, 0.25], [1.0, 0.0, 0.0]])
  )
  np.testing.assert_allclose(lobe, [0.5, 0.0])


def test_score_separates_belief_from_samples():
  truth = np.array([[0.1, 0.6, 0.3], [0.0, 0.2, 0.8]])
  belief = truth.copy()
  # Samples that never draw the minority lobe of image 0 and always the lobe of image 1.
  freq = np.array([[0.1, 0.9, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]])
  out = mode_calibration.score(
    truth=truth, belief=belief, frequencies={'s': freq}, num_samples=4
  )
  assert out['tv_belief_vs_truth'] == 0.0
  assert out['expected_tv_belief'] == pytest.approx(out['expected_tv_oracle'])
  assert out['samplers']['s']['tv_samples'] == pytest.approx((0.3 + 0.2) / 2)
  rows = {tuple(r['bin']): r for r in out['lobe_calibration']}
  assert rows[(0.25, 0.5)]['true'] == pytest.approx(0.3 / 0.9)
  assert rows[(0.25, 0.5)]['belief'] == pytest.approx(0.3 / 0.9)
  assert rows[(0.25, 0.5)]['s'] == 0.0
  assert rows[(0.75, 0.95)]['s'] == 1.0
  table = mode_calibration.markdown(
    dict(out, images_scored=2, checkpoint_step=7)
  )
  assert '| samples, s | 0.2500 | |' in table


def test_memorization_slope_recovers_the_share_of_annotation_noise():
  rng = np.random.default_rng(0)
  truth = rng.dirichlet(np.ones(3), size=400)
  annotated = np.stack([rng.multinomial(4, p) / 4 for p in truth])
  for share in (0.0, 0.3, 1.0):
    belief = truth + share * (annotated - truth)
    m = mode_calibration.memorization(
      truth=truth, belief=belief, annotated=annotated
    )
    np.testing.assert_allclose(m['slope'], share, atol=1e-12)
    np.testing.assert_allclose(m['slope_se'], 0.0, atol=1e-12)
  # Independent errors of the belief: slope 0 within its standard error.
  belief = truth + 0.05 * rng.normal(size=truth.shape)
  m = mode_calibration.memorization(
    truth=truth, belief=belief, annotated=annotated
  )
  assert abs(m['slope']) < 3 * m['slope_se']
  assert 0.0 < m['slope_se'] < 0.05
  np.testing.assert_allclose(
    m['tv_annotated_vs_truth'],
    np.mean(0.5 * np.abs(annotated - truth).sum(-1)),
  )
  np.testing.assert_allclose(
    m['tv_belief_vs_annotated'],
    np.mean(0.5 * np.abs(belief - annotated).sum(-1)),
  )


def test_score_and_markdown_carry_memorization_and_split():
  truth = np.array([[0.2, 0.5, 0.3], [0.1, 0.1, 0.8]])
  annotated = np.array([[0.25, 0.5, 0.25], [0.0, 0.25, 0.75]])
  result = mode_calibration.score(
    truth=truth,
    belief=truth,
    frequencies={},
    num_samples=4,
    annotated=annotated,
  )
  assert result['memorization']['slope'] == 0.0
  result.update(split='train', images_scored=2, checkpoint_step=7)
  text = mode_calibration.markdown(result)
  assert text.startswith('2 train images (of 2;')
  assert 'slope 0.000' in text


def test_probability_errors_and_ideal_row():
  truth = np.array([[0.2, 0.4, 0.4], [0.0, 0.5, 0.5]])
  probs = np.array([[0.1, 0.45, 0.45], [0.0, 0.25, 0.75]])
  errors = mode_calibration.probability_errors(probs, truth)
  np.testing.assert_allclose(errors['tv'], np.mean([0.1, 0.25]))
  np.testing.assert_allclose(errors['abs_error_empty'], 0.05)
  # P(lobe | non-empty): 0.5 vs 0.5, then 0.75 vs 0.5.
  np.testing.assert_allclose(errors['abs_error_lobe_given_non_empty'], 0.125)
  result = mode_calibration.score(
    truth=truth, belief=truth, frequencies={}, num_samples=4, ideal=probs
  )
  assert result['belief_errors']['tv'] == 0.0
  np.testing.assert_allclose(
    result['ideal']['expected_tv16'],
    mode_calibration.expected_tv(probs, truth, 16).mean(),
  )
  result.update(images_scored=2, checkpoint_step=1)
  text = mode_calibration.markdown(result)
  assert "ideal observer's probabilities" in text
  assert 'ideal observer 0.0500 and 0.1250' in text
