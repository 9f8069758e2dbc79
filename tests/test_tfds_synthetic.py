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

"""Tests of the synthetic_lesions builder and the build entry point."""

import json
import os
import sys
import tempfile

import numpy as np
import pytest
from scipy import ndimage
from scipy import stats
import tensorflow_datasets as tfds

from tfds_lidc import build
from tfds_lidc import synthetic_lesions as syn

TINY = dict(num_train=40, num_validation=16, num_test=16)
CHUNK_N = 2048  # Examples in the statistical tests' chunk.


def _sigmoid64(x):
  return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


@pytest.fixture(scope='module')
def built(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp('syn'))
  report = build.build(
    'synthetic_lesions/32', data_dir, overrides=TINY, log=lambda *_: None
  )
  return data_dir, report


@pytest.fixture(scope='module')
def chunk():
  return syn.generate_chunk(seed=3, split='train', chunk=0, n=CHUNK_N, size=32)


def test_build_and_read_without_tensorflow(built):
  data_dir, report = built
  assert (
    report['dataset']
    == 'synthetic_lesions/32_num_test16_num_train40_num_validation16'
  )
  assert report['num_examples'] == {'train': 40, 'validation': 16, 'test': 16}
  with open(os.path.join(report['data_dir'], build.REPORT_NAME)) as f:
    assert json.load(f)['num_examples'] == report['num_examples']
  ids = {}
  for split, n in report['num_examples'].items():
    source = tfds.data_source(report['dataset'], split=split, data_dir=data_dir)
    assert len(source) == n
    ex = source[n - 1]
    assert ex['image'].shape == (32, 32, 1) and ex['image'].dtype == np.float32
    assert 0.0 <= ex['image'].min() and ex['image'].max() <= 1.0
    assert ex['masks'].shape == (syn.NUM_ANNOTATORS, 32, 32)
    assert ex['masks'].dtype == np.uint8
    assert set(np.unique(ex['masks'])) <= {0, 1}
    assert ex['modes'].shape == (syn.NUM_MODES, 32, 32)
    assert ex['modes'].dtype == np.uint8
    np.testing.assert_allclose(ex['mode_probs'].sum(), 1.0, atol=1e-5)
    assert ex['geometry'].shape == (len(syn.GEOMETRY_KEYS),)
    assert ex['geometry'].dtype == np.float64
    assert ex['id'] == f'synth32-{split}-{n - 1:06d}'.encode()
    ids[split] = {source[i]['id'] for i in range(n)}
  assert not ids['train'] & ids['validation'] and not ids['train'] & ids['test']
  assert not ids['validation'] & ids['test']
  assert 'tensorflow' not in sys.modules


def test_two_builds_identical(built, tmp_path):
  data_dir, report = built
  report2 = build.build(
    'synthetic_lesions/32', str(tmp_path), overrides=TINY, log=lambda *_: None
  )
  for split in ('train', 'test'):
    a = tfds.data_source(report['dataset'], split=split, data_dir=data_dir)
    b = tfds.data_source(
      report2['dataset'], split=split, data_dir=str(tmp_path)
    )
    for i in range(len(a)):
      for key in ('image', 'masks', 'modes', 'mode_probs', 'geometry', 'id'):
        np.testing.assert_array_equal(a[i][key], b[i][key])
  other = syn.generate_chunk(seed=4, split='train', chunk=0, n=4, size=32)
  same = syn.generate_chunk(seed=0, split='train', chunk=0, n=4, size=32)
  assert not np.array_equal(other['image'], same['image'])


def test_train_split_matches_generator(built):
  data_dir, report = built
  ref = syn.generate_chunk(seed=0, split='train', chunk=0, n=40, size=32)
  source = tfds.data_source(report['dataset'], split='train', data_dir=data_dir)
  np.testing.assert_array_equal(source[7]['masks'], ref['masks'][7])
  np.testing.assert_array_equal(source[7]['image'], ref['image'][7])
  np.testing.assert_array_equal(source[7]['geometry'], ref['geometry'][7])


def test_mode_probability_formula():
  area = np.linspace(0.0, 0.15, 301)
  contrast = np.linspace(0.0, syn.CORE_CONTRAST, 301)
  p = syn.mode_probabilities(core_area_fraction=area, lobe_contrast=contrast)
  p_empty = _sigmoid64(-(area - syn.EMPTY_AREA_CENTRE) / syn.EMPTY_AREA_WIDTH)
  p_lobe = _sigmoid64(
    (contrast - syn.LOBE_CONTRAST_CENTRE) / syn.LOBE_CONTRAST_WIDTH
  )
  np.testing.assert_allclose(p[:, 0], p_empty, rtol=1e-12)
  np.testing.assert_allclose(p[:, 2], (1 - p_empty) * p_lobe, rtol=1e-12)
  np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-12)
  # Smooth, not a threshold: many intermediate values along the range.
  assert np.sum((p_empty > 0.1) & (p_empty < 0.9)) > 20
  assert np.all(np.diff(p[:, 0]) < 0)


def test_modes_geometry(chunk):
  modes = chunk['modes'].astype(bool)
  assert not modes[:, 0].any()
  core, union = modes[:, 1], modes[:, 2]
  assert np.all(core <= union)
  added = (union & ~core).sum((1, 2))
  assert np.all(added >= syn.MIN_LOBE_FRACTION * core.sum((1, 2)))
  assert np.all(core.sum((1, 2)) > 0)
  p = chunk['mode_probs'].astype(np.float64)
  # All three modes occur with substantial probability across the data set.
  assert np.all(p.mean(0) > 0.1)
  # p_empty decreases with the core's area (smooth logistic).
  rho = stats.spearmanr(core.sum((1, 2)), p[:, 0]).statistic
  assert rho < -0.99


def test_fainter_lobe_rarer_union(chunk):
  image = chunk['image'][..., 0].astype(np.float64)
  modes = chunk['modes'].astype(bool)
  lobe_only = modes[:, 2] & ~modes[:, 1]
  ring = (
    np.stack([ndimage.binary_dilation(m, iterations=3) for m in modes[:, 2]])
    & ~modes[:, 2]
  )
  lobe_contrast = (image * lobe_only).sum((1, 2)) / lobe_only.sum((1, 2)) - (
    image * ring
  ).sum((1, 2)) / ring.sum((1, 2))
  p = chunk['mode_probs'].astype(np.float64)
  p_lobe_given_lesion = p[:, 2] / (p[:, 1] + p[:, 2])
  assert stats.spearmanr(lobe_contrast, p_lobe_given_lesion).statistic > 0.8


def _annotation_modes(masks, modes):
  """[n, 4] index of the mode with the highest IoU to each annotation (empty -> 0)."""
  m = masks.astype(bool)[:, :, None]
  mo = modes.astype(bool)[:, None]
  inter = (m & mo).sum((-1, -2))
  union = (m | mo).sum((-1, -2))
  iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
  return iou.argmax(-1)


def test_annotation_frequencies_match_probabilities(chunk):
  chosen = _annotation_modes(chunk['masks'], chunk['modes'])
  p = chunk['mode_probs'].astype(np.float64)
  observed = np.stack([(chosen == k).sum(1) for k in range(syn.NUM_MODES)], -1)
  # Chi-square over all annotations: counts per mode vs the stored probabilities.
  expected = syn.NUM_ANNOTATORS * p.sum(0)
  chi2 = np.sum((observed.sum(0) - expected) ** 2 / expected)
  assert stats.chi2.sf(chi2, df=2) > 1e-3, (observed.sum(0), expected)
  # Calibration within probability bins of each mode (z-scores from binomial variances).
  for k in range(syn.NUM_MODES):
    for lo, hi in ((0.0, 0.2), (0.2, 0.8), (0.8, 1.0)):
      sel = (p[:, k] >= lo) & (p[:, k] < hi)
      if sel.sum() < 30:
        continue
      mean = syn.NUM_ANNOTATORS * p[sel, k].sum()
      var = syn.NUM_ANNOTATORS * (p[sel, k] * (1 - p[sel, k])).sum()
      z = (observed[sel, k].sum() - mean) / np.sqrt(var)
      assert abs(z) < 4.5, (k, lo, hi, z)


def test_annotator_jitter_is_small(chunk):
  chosen = _annotation_modes(chunk['masks'], chunk['modes'])
  # The mask is {d + j > 0} with |j| <= max_jitter and d accurate to about a
  # pixel near the boundary: one pixel of slack on each side.
  max_jitter = int(np.ceil(syn.JITTER_OFFSET + syn.JITTER_AMPLITUDE))
  for i in range(0, CHUNK_N, 64):
    for k in range(syn.NUM_ANNOTATORS):
      mask = chunk['masks'][i, k].astype(bool)
      mode = chunk['modes'][i, chosen[i, k]].astype(bool)
      if not mode.any():
        assert not mask.any()
        continue
      assert np.all(
        mask <= ndimage.binary_dilation(mode, iterations=max_jitter + 1)
      )
      # At the union's concave neck max(d_core, d_lobe) underestimates the depth,
      # so the inner bound uses one more erosion step.
      assert np.all(
        ndimage.binary_erosion(mode, iterations=max_jitter + 2) <= mask
      )
  # Jitter is real: annotations of the same mode differ somewhere.
  assert np.any(
    chunk['masks'][:, 0] != chunk['modes'][np.arange(CHUNK_N), chosen[:, 0]]
  )


def test_geometry_reproduces_the_modes(chunk):
  geom = dict(zip(syn.GEOMETRY_KEYS, chunk['geometry'].T))
  d_core, d_lobe = syn._distances(geom, size=32)  # pylint: disable=protected-access
  np.testing.assert_array_equal(d_core > 0, chunk['modes'][:, 1].astype(bool))
  np.testing.assert_array_equal(
    np.maximum(d_core, d_lobe) > 0, chunk['modes'][:, 2].astype(bool)
  )


def _welch_z(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return (a.mean() - b.mean()) / np.sqrt(
    a.var(ddof=1) / a.size + b.var(ddof=1) / b.size
  )


def test_fresh_draws_match_the_stored_annotations(chunk):
  """draw_annotations is the stored annotations' distribution: modes and jitter."""
  p = chunk['mode_probs'].astype(np.float64)
  fresh = syn.draw_annotations(
    geometry=chunk['geometry'],
    mode_probs=p,
    num=syn.NUM_ANNOTATORS,
    size=32,
    seed=11,
  )
  assert fresh.shape == chunk['masks'].shape and fresh.dtype == bool
  stored_modes = _annotation_modes(chunk['masks'], chunk['modes'])
  fresh_modes = _annotation_modes(fresh, chunk['modes'])
  # Mode counts: both are independent draws with the same p per annotation.
  sd = np.sqrt(2 * syn.NUM_ANNOTATORS * (p * (1 - p)).sum(0))
  for k in range(syn.NUM_MODES):
    diff = (fresh_modes == k).sum() - (stored_modes == k).sum()
    assert abs(diff) < 4.5 * sd[k], (k, diff, sd[k])
  # Jitter: pixels where an annotation differs from its mode, per mode.
  index = np.arange(len(p))[:, None]

  def jitter_pixels(masks, chosen, k):
    modes = chunk['modes'][index, chosen].astype(bool)
    counts = (masks.astype(bool) != modes).sum((-1, -2))
    return counts[chosen == k]

  for k in (1, 2):
    a = jitter_pixels(fresh, fresh_modes, k)
    b = jitter_pixels(chunk['masks'], stored_modes, k)
    assert a.mean() > 5 and b.mean() > 5  # The jitter is there in both.
    assert abs(_welch_z(a, b)) < 4.5, (k, a.mean(), b.mean())
    assert stats.ks_2samp(a, b).pvalue > 1e-4, k
    areas = lambda m, c, k=k: m.astype(bool).sum((-1, -2))[c == k]
    assert (
      abs(
        _welch_z(areas(fresh, fresh_modes), areas(chunk['masks'], stored_modes))
      )
      < 4.5
    )


def test_draw_annotations_is_a_seeded_pure_function(chunk):
  geometry = chunk['geometry'][:6].reshape(2, 3, -1)
  probs = chunk['mode_probs'][:6].reshape(2, 3, -1)
  a = syn.draw_annotations(
    geometry=geometry, mode_probs=probs, num=5, size=32, seed=(1, 2)
  )
  b = syn.draw_annotations(
    geometry=geometry, mode_probs=probs, num=5, size=32, seed=(1, 2)
  )
  c = syn.draw_annotations(
    geometry=geometry, mode_probs=probs, num=5, size=32, seed=(1, 3)
  )
  assert a.shape == (2, 3, 5, 32, 32)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  with pytest.raises(ValueError, match="'geometry' and 'mode_probs'"):
    syn.draw_annotations(
      geometry=geometry[..., :9], mode_probs=probs, num=5, size=32, seed=0
    )


def test_prepare_dataset_does_not_reuse_an_older_version(tmp_path, monkeypatch):
  from diffseg_jax import input_pipeline  # pylint: disable=g-import-not-at-top

  data_dir = str(tmp_path)
  name = build.build(
    'synthetic_lesions/32', data_dir, overrides=TINY, log=lambda *_: None
  )['dataset']
  calls = []
  monkeypatch.setattr(build, 'build', lambda name, *a, **k: calls.append(name))
  input_pipeline.prepare_dataset(name=name, data_dir=data_dir, split='train')
  assert not calls  # The current version is built: reused.
  base = os.path.join(data_dir, name)
  os.rename(
    os.path.join(base, str(syn.SyntheticLesions.VERSION)),
    os.path.join(base, '1.0.0'),
  )
  input_pipeline.prepare_dataset(name=name, data_dir=data_dir, split='train')
  assert calls == [name]  # Only an older version: rebuilt.


def test_building_leaves_nothing_in_the_temp_folder(tmp_path, monkeypatch):
  temp = tmp_path / 'system_temp'
  temp.mkdir()
  monkeypatch.setattr(tempfile, 'tempdir', str(temp))
  builder = syn.SyntheticLesions(
    config='32', data_dir=str(tmp_path / 'data')
  )  # Not prepared: tfds would look the data set up on its bucket.
  assert not builder.is_prepared()
  build.build(
    'synthetic_lesions/32',
    str(tmp_path / 'data'),
    overrides=TINY,
    log=lambda *_: None,
  )
  assert sorted(os.listdir(temp)) == []


def test_cli_errors(capsys, tmp_path):
  assert build.main(['--dataset=nope/32', f'--data_dir={tmp_path}']) == 1
  assert 'Unknown data set' in capsys.readouterr().err
  assert (
    build.main(['--dataset=synthetic_lesions/7', f'--data_dir={tmp_path}']) == 1
  )
  names = sorted(c.name for c in syn.SyntheticLesions.BUILDER_CONFIGS)
  assert f'choose one of {names}' in capsys.readouterr().err
  assert build.parse_overrides('num_train=5, seed=2,x=a') == {
    'num_train': 5,
    'seed': 2,
    'x': 'a',
  }


def test_texture_spectrum_is_the_textures_covariance():
  """The ideal observer's noise model against Monte-Carlo textures (autocovariance by offset)."""
  size = 32
  textures = syn._smooth_texture(np.random.default_rng(0), n=400, size=size)
  power = np.abs(np.fft.fft2(textures)) ** 2 / size**2
  empirical = np.fft.ifft2(power.mean(0)).real  # autocovariance c(dy, dx)
  model = np.fft.ifft2(syn._texture_spectrum(size)).real
  assert model[0, 0] == pytest.approx(1.0)
  np.testing.assert_allclose(empirical[:6, :6], model[:6, :6], atol=0.03)


def test_lobe_contrast_estimate_is_unbiased_with_its_stated_sd():
  arrays = syn.generate_chunk(seed=3, split='train', chunk=0, n=256, size=32)
  probs = arrays['mode_probs'].astype(np.float64)
  keep = (
    probs[:, 0] < 0.5
  )  # p_lobe is recoverable from the stored probabilities
  p_lobe = probs[keep, 2] / (1 - probs[keep, 0])
  contrast = syn.LOBE_CONTRAST_CENTRE + syn.LOBE_CONTRAST_WIDTH * np.log(
    p_lobe / (1 - p_lobe)
  )
  c_hat, sd = syn.lobe_contrast_estimate(
    image=arrays['image'][keep], geometry=arrays['geometry'][keep]
  )
  z = (c_hat - contrast) / sd
  assert keep.sum() > 150
  assert abs(z.mean()) < 0.2
  assert 0.85 < z.std() < 1.15
  assert np.median(sd) < syn.LOBE_CONTRAST_WIDTH  # informative, not certain


def test_ideal_observer_probabilities_are_close_to_but_not_the_true_ones():
  arrays = syn.generate_chunk(seed=4, split='test', chunk=0, n=256, size=32)
  ideal = syn.ideal_observer_mode_probs(
    image=arrays['image'], geometry=arrays['geometry']
  )
  true = arrays['mode_probs'].astype(np.float64)
  np.testing.assert_allclose(ideal.sum(-1), 1.0, atol=1e-12)
  np.testing.assert_allclose(ideal[:, 0], true[:, 0], atol=1e-6)
  tv = 0.5 * np.abs(ideal - true).sum(-1)
  blind = 0.5 * np.abs(true.mean(0) - true).sum(-1)
  assert 0.005 < tv.mean() < 0.25 * blind.mean()
  with pytest.raises(ValueError, match=r'\[\.\.\., S, S, 1\]'):
    syn.ideal_observer_mode_probs(
      image=arrays['image'][..., 0], geometry=arrays['geometry']
    )


def test_fit_geometry_reads_the_core_off_the_image():
  """The maximum-likelihood fit from a start 1 px off moves the core most of the way to the truth."""
  chunk = syn.generate_chunk(seed=0, split='test', chunk=0, n=4, size=32)
  rng = np.random.default_rng(0)
  start_err, fit_err = [], []
  for image, truth in zip(chunk['image'], chunk['geometry']):
    start = truth + np.array(
      [1.0, 1.0, 1.0, 1.0, 0.1, 0, 0, 0, 0, 0]
    ) * rng.choice([-1, 1], 10)
    result = syn.fit_geometry(image=image, start=start)
    fit, contrast = result.geometry, result.lobe_contrast
    sd = np.sqrt(np.diag(result.covariance))
    # The Laplace s.d. of the core is sub-pixel and of the order of the actual error.
    assert (sd[:4] < 0.5).all() and (sd[:4] > 0.02).all()
    np.testing.assert_allclose(
      result.covariance, result.covariance.T, atol=1e-12
    )
    start_err.append(np.abs(start[:4] - truth[:4]).mean())
    fit_err.append(np.abs(fit[:4] - truth[:4]).mean())
    assert 0.0 <= contrast <= 0.5
    d_fit, _ = syn.mode_distances(geometry=fit, size=32)
    d_true, _ = syn.mode_distances(geometry=truth, size=32)
    assert ((d_fit > 0) != (d_true > 0)).sum() <= 16  # a 1 px shift moves ~30
  # Texture and noise leave ~0.1-0.4 px of error in centre and semi-axes.
  assert np.mean(fit_err) < 0.3 * np.mean(start_err)
