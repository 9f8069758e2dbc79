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

"""Tests for diffseg_jax.evaluation on a tiny synthetic three-mode source."""

import json

import jax
import numpy as np
import pytest

from diffseg_jax import evaluation
from diffseg_jax import input_pipeline
from diffseg_jax import metrics
from diffseg_jax import sampling
from tfds_lidc import synthetic_lesions as syn

SIZE = 32
BATCH = 5


def _tiny_source(seed=0, num_images=12):
  """Synthetic-lesion test images whose annotation distribution is known."""
  arrays = syn.generate_chunk(
    seed=seed, split='test', chunk=0, n=num_images, size=SIZE
  )
  return [
    dict({k: v[i] for k, v in arrays.items()}, id=f'img{i}')
    for i in range(num_images)
  ]


def _train_average(seed=0):
  """The training split's average mode probabilities (the blind baseline's)."""
  arrays = syn.generate_chunk(
    seed=seed, split='train', chunk=0, n=256, size=SIZE
  )
  return arrays['mode_probs'].astype(np.float64).mean(0)


def _batches(images):
  """Fixed-size batches; the last is padded with copies marked invalid."""
  out = []
  for start in range(0, len(images), BATCH):
    chunk = images[start : start + BATCH]
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

  def sample_fn(image, keys, num_samples):
    image = np.asarray(image)
    seeds = sampling.key_data(keys)
    out = []
    for b in range(image.shape[0]):
      x = table[image[b].tobytes()]
      p = x['mode_probs'] if blind_probs is None else blind_probs
      draw = np.random.default_rng(seeds[b].tolist())
      out.append(x['modes'][draw.choice(3, size=num_samples, p=p)])
    return np.stack(out).astype(bool)

  return sample_fn


def _run(tmp_path, sample_fn, images, name, blind_mode_probs=None):
  lines = []
  summary = evaluation.evaluate(
    sample_fn,
    _batches(images),
    num_samples_list=(4, 32),
    out_dir=str(tmp_path / name),
    rng=jax.random.PRNGKey(0),
    split_name='test',
    blind_mode_probs=blind_mode_probs,
    log=lines.append,
  )
  return summary, lines


def test_end_to_end_good_vs_blind(tmp_path):
  images = _tiny_source()
  average = _train_average()
  good, lines = _run(
    tmp_path, _mode_sampler(images), images, 'good', blind_mode_probs=average
  )
  blind, _ = _run(tmp_path, _mode_sampler(images, average), images, 'blind')

  out = tmp_path / 'good'
  with open(out / 'metrics.json') as f:
    written = json.load(f)
  assert written['num_images'] == len(images)
  assert written['split'] == 'test'
  assert written['metrics'] == json.loads(json.dumps(good))
  with open(out / 'per_image.jsonl') as f:
    records = [json.loads(line) for line in f]
  assert [r['id'] for r in records] == [f'img{i}' for i in range(len(images))]
  for key in (
    'ged_4',
    'ged_32',
    'hm_iou_32',
    'ci',
    's_c',
    'd_max',
    'd_a',
    'ncc',
    'ged_pp',
    'ci_pp',
    'mode_tv_32',
    'oracle_ged_32',
    'oracle_mode_tv_32',
    'mode_oracle_ged_32',
    'mode_oracle_mode_tv_32',
    'blind_ged_32',
    'blind_mode_tv_32',
  ):
    assert key in good and key in records[0], key
  # Every metric counts every image (no silent drops).
  assert {v['n'] for v in good.values()} == {len(images)}
  assert (
    (out / 'metrics.md')
    .read_text()
    .strip()
    .endswith(lines[0].strip().splitlines()[-1])
  )
  table = lines[0]
  rows = [
    line.split(' |')[0] for line in table.splitlines() if line.startswith('| ')
  ]
  assert (
    rows.index('| ged')
    < rows.index('| oracle_ged')
    < rows.index('| mode_oracle_ged')
    < rows.index('| blind_ged')
  )
  assert 'blind_ged_32' not in blind  # No blind_mode_probs, no baseline.

  # A sampler of the modes with the true probabilities scores like the mode
  # oracle; the blind baseline is the same sampler with the training split's
  # average probabilities.
  tv_good = good['mode_tv_32']['mean']
  assert abs(tv_good - good['mode_oracle_mode_tv_32']['mean']) < 0.08
  assert (
    abs(blind['mode_tv_32']['mean'] - good['blind_mode_tv_32']['mean']) < 0.08
  )
  assert blind['mode_tv_32']['mean'] > tv_good + 0.1
  assert (
    good['mode_oracle_mode_tv_32']['mean'] < (good['blind_mode_tv_32']['mean'])
  )


def test_blind_baseline_uses_the_given_probabilities(tmp_path):
  images = _tiny_source(seed=3, num_images=6)
  # Always the core: the mode TV is exactly 1 - p_core of each image.
  summary, _ = _run(
    tmp_path,
    _mode_sampler(images),
    images,
    'core',
    blind_mode_probs=np.array([0.0, 1.0, 0.0]),
  )
  expected = np.mean(
    [1 - x['mode_probs'][1].astype(np.float64) for x in images]
  )
  assert summary['blind_mode_tv_32']['mean'] == pytest.approx(
    expected, abs=1e-6
  )
  with pytest.raises(ValueError, match='blind_mode_probs has shape'):
    _run(
      tmp_path,
      _mode_sampler(images),
      images,
      'bad',
      blind_mode_probs=np.ones(4) / 4,
    )


def test_average_mode_probs():
  images = _tiny_source(seed=4, num_images=9)
  np.testing.assert_allclose(
    evaluation.average_mode_probs(images),
    np.mean([x['mode_probs'] for x in images], axis=0, dtype=np.float64),
  )
  no_probs = [{'image': x['image'], 'masks': x['masks']} for x in images]
  assert evaluation.average_mode_probs(no_probs) is None


def test_true_oracle_draws_fresh_annotations(tmp_path):
  """oracle_ = mode + jitter like the stored annotations; below mode_oracle_."""
  images = _tiny_source(seed=5, num_images=200)
  summary = evaluation.evaluate(
    _mode_sampler(images),
    _batches(images),
    num_samples_list=(4, 16),
    out_dir=None,
    rng=jax.random.PRNGKey(1),
    split_name='test',
    log=lambda *_: None,
  )
  true, mode = summary['oracle_ged_16'], summary['mode_oracle_ged_16']
  assert true['mean'] < mode['mean'] - 2 * max(true['sem'], mode['sem'])
  assert true['n'] == mode['n'] == 200


def test_model_modes_row_separates_mode_frequencies_from_shapes(tmp_path):
  """Jitter-free modes with the true probabilities: right frequencies, wrong shapes.

  Traced like the annotators, they are distributed as the true oracle, so model_modes_ scores
  like oracle_ (the shape part of the gap is all of it), and keeps the model's mode frequencies.
  """
  images = _tiny_source(seed=5, num_images=200)
  summary = evaluation.evaluate(
    _mode_sampler(images),
    _batches(images),
    num_samples_list=(4, 16),
    out_dir=None,
    rng=jax.random.PRNGKey(1),
    split_name='test',
    log=lambda *_: None,
  )
  traced, true = summary['model_modes_ged_16'], summary['oracle_ged_16']
  model = summary['ged_16']
  assert abs(traced['mean'] - true['mean']) < 3 * max(
    traced['sem'], true['sem']
  )
  assert traced['mean'] < model['mean'] - 2 * max(traced['sem'], model['sem'])
  assert summary['model_modes_mode_tv_16']['mean'] == pytest.approx(
    summary['mode_tv_16']['mean'], abs=0.01
  )
  assert traced['n'] == summary['ideal_ged_16']['n'] == 200


def test_ideal_observer_row_sits_between_the_oracle_and_the_blind_baseline():
  images = _tiny_source(seed=7, num_images=200)
  summary = evaluation.evaluate(
    _mode_sampler(images),
    _batches(images),
    num_samples_list=(4, 16),
    out_dir=None,
    rng=jax.random.PRNGKey(2),
    split_name='test',
    blind_mode_probs=_train_average(),
    log=lambda *_: None,
  )
  tv = {p: summary[f'{p}mode_tv_16'] for p in ('oracle_', 'ideal_', 'blind_')}
  sem = max(t['sem'] for t in tv.values())
  assert tv['oracle_']['mean'] - 2 * sem < tv['ideal_']['mean']
  assert tv['ideal_']['mean'] < tv['blind_']['mean'] - 3 * sem


def test_trace_assigned_keeps_unmatched_samples():
  (x,) = _tiny_source(seed=6, num_images=1)
  modes = x['modes'][None].astype(bool)
  samples = np.zeros((1, 4, SIZE, SIZE), bool)
  samples[0, 1] = modes[0, 1]
  samples[0, 2] = modes[0, 2]
  far = np.zeros((SIZE, SIZE), bool)
  far[:3, :3] = True
  assert not (far & modes[0, 2]).any()
  samples[0, 3] = far
  batch = {'geometry': x['geometry'][None]}
  keys = sampling.image_keys(jax.random.PRNGKey(0), np.arange(1))
  out = evaluation._trace_assigned(
    keys=keys, batch=batch, index=0, samples=samples, modes=modes
  )
  assert not out[0, 0].any()  # empty -> the empty mode, traced empty
  np.testing.assert_array_equal(out[0, 3], far)  # unmatched: kept
  for j in (
    1,
    2,
  ):  # traced: the mode within the +-1 px jitter, not the mode itself
    differs = out[0, j] ^ modes[0, j]
    assert 0 < differs.sum() < 0.6 * modes[0, j].sum()
  assign, _ = evaluation.assign_modes(samples=out, modes=modes)
  np.testing.assert_array_equal(assign, [[0, 1, 2, 3]])


def test_old_build_without_geometry_is_an_error(tmp_path):
  images = [
    {k: v for k, v in x.items() if k != 'geometry'}
    for x in _tiny_source(num_images=5)
  ]
  with pytest.raises(KeyError, match="lacks 'geometry'.*--overwrite"):
    _run(tmp_path, _mode_sampler(images), images, 'old')


@pytest.mark.parametrize('kind', ['identical', 'empty'])
def test_degenerate_samples_count_every_image(tmp_path, kind):
  """All samples identical (or all empty): every metric defined on every image."""
  images = _tiny_source(seed=6, num_images=7)
  table = _lookup(images)

  def sample_fn(image, keys, num_samples):
    del keys
    core = np.stack([table[x.tobytes()]['modes'][1] for x in np.asarray(image)])
    core = core.astype(bool) & (kind == 'identical')
    return np.repeat(core[:, None], num_samples, axis=1)

  summary, _ = _run(
    tmp_path, sample_fn, images, kind, blind_mode_probs=_train_average()
  )
  with open(tmp_path / kind / 'metrics.json') as f:
    written = json.load(f)['metrics']
  for key, stats in written.items():
    assert stats['n'] == len(images), key
    assert stats['mean'] is not None and np.isfinite(stats['mean']), key
  assert summary['ncc_32']['mean'] == 0.0


def test_aggregates_match_per_image_metrics(tmp_path):
  images = _tiny_source(seed=1, num_images=7)
  sample_fn = _mode_sampler(images)
  summary, _ = _run(tmp_path, sample_fn, images, 'agg')
  model_rng = jax.random.split(jax.random.PRNGKey(0), 4)[0]
  geds = []
  authors = {}
  for index, batch in enumerate(_batches(images)):
    rows = np.arange(index * BATCH, (index + 1) * BATCH)
    samples = sample_fn(
      batch['image'], sampling.image_keys(model_rng, rows), 32
    )
    values = metrics.all_metrics(samples, batch['masks'].astype(bool))
    geds.extend(values['ged'][batch['valid']])
    for n in (4, 32):
      for pp, suffix in ((False, ''), (True, '_pp')):
        theirs = metrics.authors_metrics(
          samples[:, :n], batch['masks'].astype(bool), postprocess=pp
        )
        for name, value in theirs.items():
          authors.setdefault(f'authors_{name}_{n}{suffix}', []).extend(
            np.asarray(value)[batch['valid']]
          )
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
    geds.std(ddof=1) / np.sqrt(len(geds)), abs=1e-6
  )
  assert summary['ged_32']['n'] == 7


def _per_image(path):
  with open(path / 'per_image.jsonl') as f:
    return [json.loads(line) for line in f]


def test_results_are_per_image_whatever_the_batches_or_shards(tmp_path):
  """Batch size and a split into process shards change nothing, baselines included."""
  images = [dict(x, id=f'img{i}') for i, x in enumerate(_tiny_source(9, 7))]
  sample_fn = _mode_sampler(images)

  def run(name, batch_size, process_index=0, process_count=1):
    return evaluation.evaluate(
      sample_fn,
      input_pipeline.eval_batches(
        images,
        batch_size=batch_size,
        process_index=process_index,
        process_count=process_count,
      ),
      num_samples_list=(4,),
      out_dir=str(tmp_path / name),
      rng=jax.random.PRNGKey(3),
      split_name='test',
      blind_mode_probs=_train_average(),
      log=lambda *_: None,
    )

  whole = run('b4', 4)
  assert any(k.startswith('blind_') for k in whole)
  assert run('b3', 3) == whole
  assert (tmp_path / 'b3' / 'metrics.json').read_text() == (
    tmp_path / 'b4' / 'metrics.json'
  ).read_text()
  records = _per_image(tmp_path / 'b4')
  assert [r['index'] for r in records] == list(range(len(images)))
  shards = []
  for p in range(2):
    run(f'shard{p}', 2, p, 2)
    shards += _per_image(tmp_path / f'shard{p}')
  assert shards == records
  # The keys really are per image: another seed changes every yardstick.
  other = evaluation.evaluate(
    sample_fn,
    input_pipeline.eval_batches(images, batch_size=4),
    num_samples_list=(4,),
    out_dir=None,
    rng=jax.random.PRNGKey(4),
    split_name='test',
    blind_mode_probs=_train_average(),
    log=lambda *_: None,
  )
  for key in ('ged_4', 'oracle_ged_4', 'mode_oracle_ged_4', 'blind_ged_4'):
    assert other[key] != whole[key], key


def test_an_image_scored_twice_is_an_error(tmp_path):
  images = _tiny_source(seed=2, num_images=3)
  batches = [dict(b, index=np.zeros(BATCH, np.int64)) for b in _batches(images)]
  with pytest.raises(ValueError, match='scored more than once'):
    evaluation.evaluate(
      _mode_sampler(images),
      batches,
      num_samples_list=(4,),
      out_dir=None,
      rng=jax.random.PRNGKey(0),
      split_name='x',
      log=lambda *_: None,
    )


class _Stopped(Exception):
  pass


@pytest.mark.parametrize('stop_after', [1, 4, 5])
def test_check_stop_ends_it_before_anything_is_written(tmp_path, stop_after):
  images = _tiny_source(seed=2, num_images=12)  # 3 batches
  calls = {'check': 0, 'sample': 0}
  sampler = _mode_sampler(images)

  def sample_fn(image, keys, num_samples):
    calls['sample'] += 1
    return sampler(image, keys, num_samples)

  def check_stop():
    calls['check'] += 1
    if calls['check'] >= stop_after:
      raise _Stopped

  with pytest.raises(_Stopped):
    evaluation.evaluate(
      sample_fn,
      _batches(images),
      num_samples_list=(4,),
      out_dir=str(tmp_path / 'out'),
      rng=jax.random.PRNGKey(0),
      split_name='x',
      log=lambda *_: None,
      check_stop=check_stop,
    )
  # Checked after each batch, then once more before the results are written.
  assert calls['sample'] == min(stop_after, 3)
  assert not (tmp_path / 'out').exists()


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
  table = evaluation.render_table(
    {
      'ged_16': {'mean': 0.25, 'sem': 0.01},
      'ged': {'mean': 0.3, 'sem': None},
      'ged_pp': {'mean': 0.29, 'sem': 0.02},
      'ged_4': {'mean': 0.3, 'sem': 0.1},
    }
  )
  lines = table.splitlines()
  assert lines[0] == '| metric | N=4 | N=16 | paper (4) | paper pp |'
  assert (
    lines[2]
    == '| ged | 0.3000 ± 0.1000 | 0.2500 ± 0.0100 | 0.3000 | 0.2900 ± 0.0200 |'
  )
  table = evaluation.render_table(
    {
      'authors_GED_4': {'mean': 0.5, 'sem': None},
      'authors_GED_4_pp': {'mean': 0.25, 'sem': None},
      'authors_GED_16_pp': {'mean': 0.125, 'sem': None},
    }
  )
  assert table.splitlines()[2:] == [
    '| authors_GED | 0.5000 |  |',
    '| authors_GED_pp | 0.2500 | 0.1250 |',
  ]


def test_missing_key_is_reported(tmp_path):
  with pytest.raises(KeyError, match="lacks 'masks'"):
    evaluation.evaluate(
      lambda *a: None,
      [{'image': np.zeros((1, 4, 4, 1))}],
      out_dir=str(tmp_path),
      rng=jax.random.PRNGKey(0),
      split_name='x',
      num_samples_list=(4,),
    )
