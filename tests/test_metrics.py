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

"""Tests for diffseg_jax.metrics against float64 numpy references."""

import itertools
import math
import os

import jax
import numpy as np
import pytest

from diffseg_jax import metrics

TOL = 1e-6
OFFICIAL = os.path.join(
  os.path.dirname(__file__),
  '..',
  '..',
  'shared',
  'data',
  'reference',
  'official_metrics.npz',
)


# --------------------------------------------------------------------------
# Plain float64 references, one pair at a time.
# --------------------------------------------------------------------------
def ref_iou(a, b):
  a, b = a.astype(bool), b.astype(bool)
  union = np.logical_or(a, b).sum()
  return 1.0 if union == 0 else np.logical_and(a, b).sum() / union


def ref_dice(a, b):
  a, b = a.astype(bool), b.astype(bool)
  total = a.sum() + b.sum()
  return 1.0 if total == 0 else 2.0 * np.logical_and(a, b).sum() / total


def ref_ged(s, y):
  n, m = len(s), len(y)
  cross = sum(1 - ref_iou(s[i], y[j]) for i in range(n) for j in range(m))
  ss = sum(1 - ref_iou(s[i], s[k]) for i in range(n) for k in range(n))
  yy = sum(1 - ref_iou(y[j], y[k]) for j in range(m) for k in range(m))
  return 2 * cross / (n * m) - ss / n**2 - yy / m**2


def ref_hm_iou_bruteforce(s, y):
  n, m = len(s), len(y)
  length = n * m // math.gcd(n, m)
  s_t = [s[i // (length // n)] for i in range(length)]
  y_t = [y[j // (length // m)] for j in range(length)]
  mat = np.array([[ref_iou(a, b) for b in y_t] for a in s_t])
  best = max(
    mat[np.arange(length), list(p)].sum()
    for p in itertools.permutations(range(length))
  )
  return best / length


def ref_ci(s, y, compat):
  """Transcription of SPEC §3 (default) and of the authors' code (compat)."""
  union_s = np.any(s, axis=0)
  union_y = np.any(y, axis=0)
  both = np.logical_and(union_s, union_y).sum()
  den = union_s.sum() if compat else union_y.sum()
  s_c = 1.0 if den == 0 else both / den
  d_max = np.mean([max(ref_dice(si, yj) for si in s) for yj in y])

  def variances(x):
    x = x.astype(np.float64)
    return [
      np.var(x[i] - x[k])
      for i in range(len(x))
      for k in range(len(x))
      if compat or i != k
    ] or [0.0]

  v_s, v_y = variances(s), variances(y)
  d_a = 1 - (abs(max(v_s) - max(v_y)) + abs(min(v_s) - min(v_y))) / 2
  if compat:
    ci = 3 * s_c * d_max * d_a / (s_c + d_max + d_a)
  else:
    ci = 3 / (1 / s_c + 1 / d_max + 1 / d_a)
  return dict(s_c=s_c, d_max=d_max, d_a=d_a, ci=ci)


def ref_ncc(s, y, eps=1e-8):
  """PHiSeg's variance_ncc_dist with one-hot (background, foreground)."""
  onehot = lambda x: np.stack([1 - x, x], axis=-1).astype(np.float64)
  s1, y1 = onehot(s), onehot(y)
  mean_seg = s1.mean(axis=0)

  def xent(m_samp, m_gt):
    return -np.sum(m_gt * np.log(m_samp + eps), axis=-1)

  def ncc(a, v):
    a, v = a.ravel(), v.ravel()
    a = (a - a.mean()) / (a.std() * len(a))
    v = (v - v.mean()) / v.std()
    return np.correlate(a, v)[0]

  e_ss = np.mean([xent(si, mean_seg) for si in s1], axis=0)
  values = []
  for yj in y1:
    e_sy = np.mean([xent(si, yj) for si in s1], axis=0)
    values.append(ncc(e_ss, e_sy))
  return np.mean(values)


def ref_ece(s, y, num_bins=10):
  p = s.astype(np.float64).mean(axis=0).ravel()
  q = y.astype(np.float64).mean(axis=0).ravel()
  total = 0.0
  for b in range(num_bins):
    lo, hi = b / num_bins, (b + 1) / num_bins
    sel = (p >= lo) & ((p < hi) if b < num_bins - 1 else (p <= hi))
    if sel.any():
      total += sel.sum() / p.size * abs(p[sel].mean() - q[sel].mean())
  return total


def ref_mean_overlap(s, y):
  mean = s.astype(np.float64).mean(axis=0) > 0.5
  return (
    np.mean([ref_dice(mean, yj) for yj in y]),
    np.mean([ref_iou(mean, yj) for yj in y]),
  )


def random_set(rng, n, h=12, w=12):
  """Blobs of random extent; some masks empty, some overlapping."""
  out = np.zeros((n, h, w), bool)
  for i in range(n):
    if rng.random() < 0.15:
      continue
    r0, c0 = rng.integers(0, h // 2, size=2)
    out[
      i,
      r0 : r0 + rng.integers(1, h // 2 + 1),
      c0 : c0 + rng.integers(1, w // 2 + 1),
    ] = True
    out[i] ^= rng.random((h, w)) < 0.05
  return out


# --------------------------------------------------------------------------
# Hand-computed cases.
# --------------------------------------------------------------------------
def _square(h, w, r0, r1, c0, c1):
  m = np.zeros((h, w), bool)
  m[r0:r1, c0:c1] = True
  return m


def test_identical_sets():
  a = _square(8, 8, 0, 4, 0, 4)
  b = _square(8, 8, 2, 6, 2, 8)
  s = np.stack([a, b, a, b])
  out = metrics.all_metrics(s, s)
  assert out['hm_iou'] == pytest.approx(1.0, abs=TOL)
  # Within-set distance: pairs (a, b) have IoU 4/(16+24-4) = 1/9.
  # GED = 2 * mean d(S, S) - mean d(S, S) - mean d(S, S) = 0.
  assert out['ged'] == pytest.approx(0.0, abs=TOL)
  assert out['d_max'] == pytest.approx(1.0, abs=TOL)
  assert out['s_c'] == pytest.approx(1.0, abs=TOL)
  assert out['d_a'] == pytest.approx(1.0, abs=TOL)
  assert out['ci'] == pytest.approx(1.0, abs=TOL)
  assert out['ci_compat'] == pytest.approx(1.0, abs=TOL)


def test_disjoint_sets():
  s = np.stack([_square(8, 8, 0, 2, 0, 2)] * 2)
  y = np.stack([_square(8, 8, 4, 8, 4, 8)] * 2)
  out = metrics.all_metrics(s, y)
  # d(S, Y) = 1, within-set distances 0.
  assert out['ged'] == pytest.approx(2.0, abs=TOL)
  assert out['hm_iou'] == pytest.approx(0.0, abs=TOL)
  assert out['s_c'] == pytest.approx(0.0, abs=TOL)
  assert out['ci'] == pytest.approx(0.0, abs=TOL)
  assert out['dice_of_mean'] == pytest.approx(0.0, abs=TOL)
  assert out['iou_of_mean'] == pytest.approx(0.0, abs=TOL)


def test_all_empty():
  z = np.zeros((1, 3, 6, 6), bool)
  out = metrics.all_metrics(z, np.zeros((1, 4, 6, 6), bool))
  for key in (
    'hm_iou',
    's_c',
    'd_max',
    'd_a',
    'ci',
    'ci_compat',
    'dice_of_mean',
    'iou_of_mean',
  ):
    assert out[key][0] == pytest.approx(1.0, abs=TOL), key
  assert out['ged'][0] == pytest.approx(0.0, abs=TOL)
  assert out['ece'][0] == pytest.approx(0.0, abs=TOL)


def test_one_empty_annotation_among_four():
  a = _square(4, 4, 0, 2, 0, 2)  # area 4
  y = np.stack([a, a, a, np.zeros_like(a)])
  s = np.stack([a, a])
  out = metrics.all_metrics(s, y)
  # d(S, Y): 0 for three annotations, 1 for the empty one -> mean 1/4.
  # d(Y, Y): 6 of 16 ordered pairs mix empty and a -> 6/16. d(S, S) = 0.
  assert out['ged'] == pytest.approx(2 * 0.25 - 0 - 6 / 16, abs=TOL)
  # Tiling to 4: best matching gives IoU 1 to three, 0 to the empty one.
  assert out['hm_iou'] == pytest.approx(0.75, abs=TOL)
  assert out['d_max'] == pytest.approx(0.75, abs=TOL)
  # Marking the empty annotation invalid removes it everywhere.
  valid = np.array([True, True, True, False])
  out = metrics.all_metrics(s, y, valid)
  assert out['ged'] == pytest.approx(0.0, abs=TOL)
  assert out['hm_iou'] == pytest.approx(1.0, abs=TOL)


def test_n_differs_from_m():
  a = _square(4, 4, 0, 2, 0, 2)
  b = _square(4, 4, 2, 4, 2, 4)
  s = np.stack([a, b, a])  # N = 3
  y = np.stack([a, b])  # M = 2, L = 6: a x4 and b x2 vs a x3 and b x3.
  assert metrics.hm_iou(s, y) == pytest.approx(5 / 6, abs=TOL)
  # d(S, Y): a-a 0, a-b 1; S = (a, b, a), Y = (a, b): cross = 3/6.
  # d(S, S) = 4/9 (pairs a-b); d(Y, Y) = 2/4.
  assert metrics.ged(s, y) == pytest.approx(1 - 4 / 9 - 0.5, abs=TOL)


# --------------------------------------------------------------------------
# Random masks vs the references.
# --------------------------------------------------------------------------
@pytest.mark.parametrize('n,m', [(4, 4), (5, 3), (1, 4), (6, 2)])
def test_random_against_reference(n, m):
  rng = np.random.default_rng(n * 10 + m)
  s = np.stack([random_set(rng, n) for _ in range(4)])
  y = np.stack([random_set(rng, m) for _ in range(4)])
  out = metrics.all_metrics(s, y)
  for b in range(4):
    assert out['ged'][b] == pytest.approx(ref_ged(s[b], y[b]), abs=TOL)
    for compat, suffix in ((False, ''), (True, '_compat')):
      ref = ref_ci(s[b], y[b], compat)
      for key in ('s_c', 'd_a', 'ci'):
        assert out[key + suffix][b] == pytest.approx(ref[key], abs=TOL), key
      assert out['d_max'][b] == pytest.approx(ref['d_max'], abs=TOL)
    assert out['ece'][b] == pytest.approx(ref_ece(s[b], y[b]), abs=TOL)
    d, i = ref_mean_overlap(s[b], y[b])
    assert out['dice_of_mean'][b] == pytest.approx(d, abs=TOL)
    assert out['iou_of_mean'][b] == pytest.approx(i, abs=TOL)
    p = s[b].mean(axis=0)
    if n > 1 and np.ptp(p * (1 - p)) > 0:
      assert out['ncc'][b] == pytest.approx(ref_ncc(s[b], y[b]), abs=1e-5)


def test_single_functions_match_all_metrics():
  rng = np.random.default_rng(7)
  s = np.stack([random_set(rng, 5) for _ in range(3)])
  y = np.stack([random_set(rng, 4) for _ in range(3)])
  valid = rng.random((3, 4)) < 0.7
  valid[:, 0] = True
  out = metrics.all_metrics(s, y, valid)
  np.testing.assert_allclose(metrics.ged(s, y, valid), out['ged'], atol=TOL)
  np.testing.assert_allclose(
    metrics.hm_iou(s, y, valid), out['hm_iou'], atol=TOL
  )
  np.testing.assert_allclose(metrics.ncc(s, y, valid), out['ncc'], atol=TOL)
  np.testing.assert_allclose(metrics.ece(s, y, valid), out['ece'], atol=TOL)
  np.testing.assert_allclose(
    metrics.dice_of_mean(s, y, valid), out['dice_of_mean'], atol=TOL
  )
  np.testing.assert_allclose(
    metrics.iou_of_mean(s, y, valid), out['iou_of_mean'], atol=TOL
  )
  for compat, suffix in ((False, ''), (True, '_compat')):
    ci = metrics.collective_insight(s, y, valid, compat=compat)
    np.testing.assert_allclose(ci['ci'], out['ci' + suffix], atol=TOL)
    np.testing.assert_allclose(ci['d_max'], out['d_max'], atol=TOL)
  # Validity mask = dropping the invalid annotations.
  for b in range(3):
    assert out['ged'][b] == pytest.approx(
      ref_ged(s[b], y[b][valid[b]]), abs=TOL
    )
    ref = ref_ci(s[b], y[b][valid[b]], compat=False)
    assert out['ci'][b] == pytest.approx(ref['ci'], abs=TOL)


@pytest.mark.parametrize('n,m', [(2, 3), (3, 2), (4, 2), (2, 2)])
def test_hm_iou_brute_force(n, m):
  rng = np.random.default_rng(100 + n * m)
  for _ in range(3):
    s, y = random_set(rng, n, 6, 6), random_set(rng, m, 6, 6)
    assert metrics.hm_iou(s[None], y[None])[0] == pytest.approx(
      ref_hm_iou_bruteforce(s, y), abs=TOL
    )


def test_order_invariance():
  rng = np.random.default_rng(3)
  s = np.stack([random_set(rng, 6) for _ in range(2)])
  y = np.stack([random_set(rng, 4) for _ in range(2)])
  out = metrics.all_metrics(s, y)
  perm = metrics.all_metrics(s[:, rng.permutation(6)], y[:, rng.permutation(4)])
  for key in metrics.METRIC_NAMES:
    np.testing.assert_allclose(perm[key], out[key], atol=TOL, err_msg=key)


def test_batched_equals_looped():
  rng = np.random.default_rng(11)
  s = np.stack([[random_set(rng, 3) for _ in range(2)] for _ in range(2)])
  y = np.stack([[random_set(rng, 4) for _ in range(2)] for _ in range(2)])
  out = metrics.all_metrics(s, y)
  for i in range(2):
    for j in range(2):
      single = metrics.all_metrics(s[i, j], y[i, j])
      for key in metrics.METRIC_NAMES:
        assert out[key].shape == (2, 2)
        np.testing.assert_allclose(
          out[key][i, j], single[key], atol=TOL, err_msg=key
        )


def test_uncertainty_map():
  s = np.zeros((4, 2, 2), bool)
  s[:2, 0, 0] = True  # p = 0.5
  s[:1, 0, 1] = True  # p = 0.25
  s[:, 1, 1] = True  # p = 1
  out = metrics.uncertainty_map(s)
  np.testing.assert_allclose(
    out['variance'], [[0.25, 0.1875], [0.0, 0.0]], atol=TOL
  )
  h = -(0.25 * np.log2(0.25) + 0.75 * np.log2(0.75))
  np.testing.assert_allclose(out['entropy'], [[1.0, h], [0.0, 0.0]], atol=TOL)


def test_postprocess_area_filter():
  s = np.zeros((2, 3, 4, 4), bool)
  s[0, 0, :2, :] = True  # area 8 (largest)
  s[0, 1, 0, :] = True  # area 4 = 0.5 x 8: zeroed (strictly greater kept)
  s[0, 2, :, 0] = True
  s[0, 2, 1, 1] = True  # area 5 > 4: kept
  out = np.asarray(metrics.postprocess(s))  # image 1: all empty, stays so.
  np.testing.assert_array_equal(out[0, [0, 2]], s[0, [0, 2]])
  assert not out[0, 1].any() and not out[1].any()


# --------------------------------------------------------------------------
# The authors' get_ambiguous_metrics (SPEC §3).
# --------------------------------------------------------------------------
def ref_authors(s, y, postprocess=False):
  """Float64 transcription of SPEC §3's description of their code."""
  if postprocess:
    areas = s.sum(axis=(1, 2))
    s = s & (areas > 0.5 * areas.max())[:, None, None]
  ci = ref_ci(s, y, compat=True)
  onehot = lambda x: np.stack([x, 1 - x], axis=0).astype(np.float64)
  s1 = [onehot(si) for si in s]
  mean_seg = np.mean(s1, axis=0)
  xent = lambda m, g: -np.sum(g * np.log(m + 1e-8), axis=0)
  e_ss = np.mean([xent(si, mean_seg) for si in s1], axis=0).ravel()

  def ncc(a, v):
    a = (a - a.mean()) / (a.std() * len(a) + 1e-8)
    v = (v - v.mean()) / (v.std() + 1e-8)
    return np.sum(a * v)

  nccs = [
    ncc(e_ss, np.mean([xent(si, onehot(yj)) for si in s1], axis=0).ravel())
    for yj in y
  ]
  return {
    'GED': ref_ged(s, y),
    'CI': ci['ci'],
    'S_c': ci['s_c'],
    'D_max': ci['d_max'],
    'D_a': ci['d_a'],
    'iou': np.mean([[ref_iou(a, b) for a in s] for b in y]),
    'dice': np.mean([[ref_dice(a, b) for a in s] for b in y]),
    'ncc': np.mean(nccs),
  }


def _degenerate_sets():
  """Images of 4 samples vs 4 annotations at the edges of every formula."""
  a = _square(8, 8, 1, 5, 1, 5)  # area 16
  half = _square(8, 8, 1, 3, 1, 5)  # area 8
  b = _square(8, 8, 4, 8, 3, 8)
  empty = np.zeros_like(a)
  s = [
    [a, a, a, a],  # identical samples: constant E_ss, ncc 0
    [empty] * 4,  # all samples empty
    [a, half, b, empty],  # an area at exactly half the largest
    [a, b, a, half],
  ]
  y = [
    [a, b, a, half],
    [a, b, half, empty],
    [empty] * 4,  # all annotations empty
    [a, a, a, a],
  ]  # identical annotations
  return np.array(s), np.array(y)


@pytest.mark.parametrize('postprocess', [False, True])
def test_authors_metrics_against_transcription(postprocess):
  rng = np.random.default_rng(11)
  s_rand = np.stack([random_set(rng, 4, 8, 8) for _ in range(4)])
  y_rand = np.stack([random_set(rng, 4, 8, 8) for _ in range(4)])
  s_deg, y_deg = _degenerate_sets()
  s = np.concatenate([s_rand, s_deg])
  y = np.concatenate([y_rand, y_deg])
  out = metrics.authors_metrics(s, y, postprocess=postprocess)
  assert sorted(out) == sorted(metrics.AUTHORS_KEYS)
  for b in range(len(s)):
    ref = ref_authors(s[b], y[b], postprocess)
    for key in metrics.AUTHORS_KEYS:
      assert out[key][b] == pytest.approx(ref[key], abs=1e-5), (b, key)
  assert np.all(np.isfinite(np.asarray(out['ncc'])))
  # Constant E_ss (identical or all-empty samples): 0, not NaN.
  assert np.asarray(out['ncc'])[4] == 0 and np.asarray(out['ncc'])[5] == 0


@pytest.mark.parametrize('num_samples', [4, 16])
@pytest.mark.parametrize('postprocess', [False, True])
def test_authors_metrics_match_official(num_samples, postprocess):
  """Every image and key of the authors' own outputs, within 1e-4."""
  if not os.path.exists(OFFICIAL):
    pytest.skip(f'{OFFICIAL} missing (shared/ must sit beside the checkout)')
  with np.load(OFFICIAL) as f:
    keys = tuple(str(k) for k in f['keys'])
    preds = f[f'preds{num_samples}']
    gts = f[f'gts{num_samples}']
    ref = f[f'ref{num_samples}_{"pp" if postprocess else "plain"}']
  assert keys == metrics.AUTHORS_KEYS
  out = metrics.authors_metrics(preds, gts, postprocess=postprocess)
  got = np.stack([np.asarray(out[k], np.float64) for k in keys], axis=-1)
  assert got.shape == ref.shape
  np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)


def test_bad_shapes_raise():
  with pytest.raises(ValueError, match='equal leading dims'):
    metrics.all_metrics(
      np.zeros((2, 3, 4, 4), bool), np.zeros((3, 3, 4, 4), bool)
    )


def test_accelerator_path_matches_cpu_path(monkeypatch):
  """The vmap + bf16-matmul path used on GPU/TPU gives the same numbers."""
  rng = np.random.default_rng(9)
  s = np.stack([random_set(rng, 5, 10, 14) for _ in range(3)])
  y = np.stack([random_set(rng, 4, 10, 14) for _ in range(3)])
  cpu = metrics.all_metrics(s, y)
  jax.clear_caches()
  monkeypatch.setattr(metrics, '_on_cpu', lambda: False)
  accelerator = metrics.all_metrics(s, y)
  jax.clear_caches()
  for key in metrics.METRIC_NAMES:
    np.testing.assert_allclose(
      accelerator[key], cpu[key], atol=TOL, err_msg=key
    )
  np.testing.assert_allclose(
    accelerator['ged'], [ref_ged(a, b) for a, b in zip(s, y)], atol=TOL
  )
