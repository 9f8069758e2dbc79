"""Tests for diffseg_jax.evaluation on a tiny synthetic three-mode source."""

import json

import jax
import numpy as np
import pytest

from diffseg_jax import evaluation
from diffseg_jax import metrics

SIZE = 16
BATCH = 5


def _tiny_source(seed=0, num_images=12):
  """Images whose three modes (empty, core, core u lobe) and probs are known."""
  rng = np.random.default_rng(seed)
  images = []
  for i in range(num_images):
    core = np.zeros((SIZE, SIZE), bool)
    r, c = rng.integers(2, 8, size=2)
    core[r:r + 5, c:c + 5] = True
    union = core.copy()
    union[r:r + 5, c + 5:c + 8] = True
    modes = np.stack([np.zeros_like(core), core, union])
    probs = (np.array([0.05, 0.85, 0.10]) if i % 2 else
             np.array([0.10, 0.10, 0.80]))
    masks = modes[rng.choice(3, size=4, p=probs)]
    image = (core.astype(np.float32) + 0.5 * union + 0.01 * i)[..., None]
    images.append(dict(image=image, masks=masks.astype(np.uint8),
                       modes=modes.astype(np.uint8),
                       mode_probs=probs.astype(np.float32), id=f'img{i}'))
  return images


def _batches(images):
  """Fixed-size batches; the last is padded with copies marked invalid."""
  out = []
  for start in range(0, len(images), BATCH):
    chunk = images[start:start + BATCH]
    valid = [True] * len(chunk) + [False] * (BATCH - len(chunk))
    chunk = chunk + [chunk[0]] * (BATCH - len(chunk))
    batch = {k: np.stack([x[k] for x in chunk]) for k in chunk[0]}
    batch['valid'] = np.array(valid)
    out.append(batch)
  return out


def _lookup(images):
  return {x['image'].tobytes(): x for x in images}


def _mode_sampler(images, blind_probs=None):
  """Draws each image's true modes, with its true or with fixed probabilities."""
  table = _lookup(images)
  def sample_fn(image, rng, num_samples):
    image = np.asarray(image)
    out = []
    for b in range(image.shape[0]):
      x = table[image[b].tobytes()]
      p = x['mode_probs'] if blind_probs is None else blind_probs
      draw = np.random.default_rng(
          np.asarray(jax.random.key_data(rng)).ravel().tolist() + [b])
      out.append(x['modes'][draw.choice(3, size=num_samples, p=p)])
    return np.stack(out).astype(bool)
  return sample_fn


def _run(tmp_path, sample_fn, images, name):
  lines = []
  summary = evaluation.evaluate(
      sample_fn, _batches(images), num_samples_list=(4, 32),
      out_dir=str(tmp_path / name), rng=jax.random.PRNGKey(0),
      split_name='test', log=lines.append)
  return summary, lines


def test_end_to_end_good_vs_blind(tmp_path):
  images = _tiny_source()
  good, lines = _run(tmp_path, _mode_sampler(images), images, 'good')
  blind, _ = _run(tmp_path, _mode_sampler(images, np.array([.075, .475, .45])),
                  images, 'blind')

  out = tmp_path / 'good'
  with open(out / 'metrics.json') as f:
    written = json.load(f)
  assert written['num_images'] == len(images)
  assert written['split'] == 'test'
  assert written['metrics'] == json.loads(json.dumps(good))
  with open(out / 'per_image.jsonl') as f:
    records = [json.loads(line) for line in f]
  assert [r['id'] for r in records] == [f'img{i}' for i in range(len(images))]
  for key in ('ged_4', 'ged_32', 'hm_iou_32', 'ci', 's_c', 'd_max', 'd_a',
              'ncc', 'ged_pp', 'ci_pp', 'mode_tv_32', 'oracle_ged_32',
              'oracle_mode_tv_32', 'blind_ged_32', 'blind_mode_tv_32'):
    assert good[key]['n'] > 0, key
    assert key in records[0], key
  assert (out / 'metrics.md').read_text().strip().endswith(lines[0].strip()
                                                           .splitlines()[-1])
  assert '| ged |' in lines[0]

  # A sampler of the true distribution scores like the oracle; an image-blind
  # one (the data set's average probabilities) has a clearly larger mode TV.
  tv_good = good['mode_tv_32']['mean']
  assert abs(tv_good - good['oracle_mode_tv_32']['mean']) < 0.08
  assert blind['mode_tv_32']['mean'] > tv_good + 0.15
  assert abs(blind['mode_tv_32']['mean'] -
             good['blind_mode_tv_32']['mean']) < 0.08
  assert good['oracle_mode_tv_32']['mean'] < good['blind_mode_tv_32']['mean']


def test_aggregates_match_per_image_metrics(tmp_path):
  images = _tiny_source(seed=1, num_images=7)
  sample_fn = _mode_sampler(images)
  summary, _ = _run(tmp_path, sample_fn, images, 'agg')
  model_rng, _ = jax.random.split(jax.random.PRNGKey(0))
  geds = []
  authors = {}
  for index, batch in enumerate(_batches(images)):
    key, _ = jax.random.split(jax.random.fold_in(model_rng, index))
    samples = sample_fn(batch['image'], key, 32)
    values = metrics.all_metrics(samples, batch['masks'].astype(bool))
    geds.extend(values['ged'][batch['valid']])
    for n in (4, 32):
      for pp, suffix in ((False, ''), (True, '_pp')):
        theirs = metrics.authors_metrics(
            samples[:, :n], batch['masks'].astype(bool), postprocess=pp)
        for name, value in theirs.items():
          authors.setdefault(f'authors_{name}_{n}{suffix}', []).extend(
              np.asarray(value)[batch['valid']])
  # The authors' keys, for every N, without and with their area filter, on
  # the model's samples only.
  assert len(authors) == 2 * 2 * len(metrics.AUTHORS_KEYS)
  assert sorted(k for k in summary if 'authors_' in k) == sorted(authors)
  for name, values in authors.items():
    assert summary[name]['n'] == 7, name
    assert summary[name]['mean'] == pytest.approx(np.mean(values), abs=1e-6)
  geds = np.array(geds, np.float64)
  assert summary['ged_32']['mean'] == pytest.approx(geds.mean(), abs=1e-6)
  assert summary['ged_32']['sem'] == pytest.approx(
      geds.std(ddof=1) / np.sqrt(len(geds)), abs=1e-6)
  assert summary['ged_32']['n'] == 7


def test_deterministic(tmp_path):
  images = _tiny_source(seed=2, num_images=5)
  a, _ = _run(tmp_path, _mode_sampler(images), images, 'a')
  b, _ = _run(tmp_path, _mode_sampler(images), images, 'b')
  assert a == b


def test_mode_tv_hand_computed():
  modes = np.zeros((1, 3, 6, 6), bool)
  modes[0, 1, :2, :2] = True
  modes[0, 2, :2, :4] = True
  probs = np.array([[0.5, 0.25, 0.25]])
  samples = np.zeros((1, 4, 6, 6), bool)
  samples[0, 0, 0, 0] = True  # 1 pixel -> empty mode.
  samples[0, 1, :2, :2] = True  # core.
  samples[0, 2, :2, :3] = True  # IoU 4/6 with core, 6/8 with union -> union.
  samples[0, 3, 4:, 4:] = True  # overlaps nothing -> unmatched.
  tv = evaluation.mode_tv(samples=samples, modes=modes, mode_probs=probs)
  # model (0.25, 0.25, 0.25, 0.25) vs true (0.5, 0.25, 0.25, 0).
  assert tv[0] == pytest.approx(0.5 * (0.25 + 0 + 0 + 0.25))


def test_render_table_layout():
  table = evaluation.render_table({
      'ged_16': {'mean': 0.25, 'sem': 0.01}, 'ged': {'mean': 0.3, 'sem': None},
      'ged_pp': {'mean': 0.29, 'sem': 0.02}, 'ged_4': {'mean': 0.3, 'sem': 0.1}})
  lines = table.splitlines()
  assert lines[0] == '| metric | N=4 | N=16 | paper (4) | paper pp |'
  assert lines[2] == '| ged | 0.3000 ± 0.1000 | 0.2500 ± 0.0100 | 0.3000 | 0.2900 ± 0.0200 |'
  table = evaluation.render_table({
      'authors_GED_4': {'mean': 0.5, 'sem': None},
      'authors_GED_4_pp': {'mean': 0.25, 'sem': None},
      'authors_GED_16_pp': {'mean': 0.125, 'sem': None}})
  assert table.splitlines()[2:] == ['| authors_GED | 0.5000 |  |',
                                    '| authors_GED_pp | 0.2500 | 0.1250 |']


def test_missing_key_is_reported(tmp_path):
  with pytest.raises(KeyError, match="lacks 'masks'"):
    evaluation.evaluate(lambda *a: None, [{'image': np.zeros((1, 4, 4, 1))}],
                        out_dir=str(tmp_path), rng=jax.random.PRNGKey(0),
                        split_name='x', num_samples_list=(4,))
