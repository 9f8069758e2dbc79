"""Tests for diffseg_jax.input_pipeline on in-memory sources and a tiny built data set."""

import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from diffseg_jax import input_pipeline as ip

REPO = os.path.join(os.path.dirname(__file__), '..')


class ListSource:
  """Random-access source of N tiny examples; example i has image value i / 1000."""

  def __init__(self, num, size=4, with_modes=False):
    self.num, self.size, self.with_modes = num, size, with_modes
    self.getitems_calls = 0

  def __len__(self):
    return self.num

  def __getitem__(self, i):
    if not 0 <= i < self.num:
      raise IndexError(i)
    ex = {'image': np.full((self.size, self.size, 1), i / 1000.0, np.float32),
          'masks': np.stack([np.full((self.size, self.size), (i >> k) & 1, np.uint8) for k in range(4)]),
          'id': f'ex-{i:03d}'.encode(), 'patient_id': f'p-{i // 2}'.encode()}
    if self.with_modes:
      ex['modes'] = np.zeros((3, self.size, self.size), np.uint8)
      ex['mode_probs'] = np.array([0.2, 0.3, 0.5], np.float32)
    return ex


class BatchedSource(ListSource):

  def __getitems__(self, indices):
    self.getitems_calls += 1
    return [self[i] for i in indices]


def _index_of(image):
  """Source indices from images [B, H, W, 1] of ListSource."""
  return np.rint(np.asarray(image)[:, 0, 0, 0] * 1000).astype(np.int64)


def _reference_stream(seed, num, length):
  """First `length` source indices of the train stream (float64-free numpy reference)."""
  epochs = -(-length // num)
  stream = np.concatenate([np.random.default_rng([seed, e]).permutation(num) for e in range(epochs)])
  return stream[:length]


def _mesh():
  return jax.make_mesh((1,), ('data',), devices=jax.devices()[:1])


def test_batch_indices_follow_reference_stream_and_cover_each_epoch():
  num, batch, steps = 10, 4, 15
  got = np.concatenate([ip.batch_indices(seed=3, step=s, global_batch_size=batch, num_examples=num)
                        for s in range(steps)])
  np.testing.assert_array_equal(got, _reference_stream(3, num, batch * steps))
  for e in range(batch * steps // num):
    np.testing.assert_array_equal(np.sort(got[e * num:(e + 1) * num]), np.arange(num))
  assert not np.array_equal(got[:num], got[num:2 * num])
  other = ip.batch_indices(seed=4, step=0, global_batch_size=10, num_examples=num)
  assert not np.array_equal(other, got[:10])


@pytest.mark.parametrize('prefetch', [0, 3])
def test_train_batches_order_sharding_and_exact_resume(prefetch):
  source, mesh = BatchedSource(10), _mesh()
  kwargs = dict(global_batch_size=4, seed=7, mesh=mesh, prefetch=prefetch)
  it = ip.train_batches(source, start_step=0, **kwargs)
  batches = [next(it) for _ in range(6)]
  it.close()
  expected = _reference_stream(7, 10, 24).reshape(6, 4)
  sharding = NamedSharding(mesh, PartitionSpec('data'))
  for batch, want in zip(batches, expected):
    assert set(batch) == {'image', 'masks'}
    assert batch['image'].shape == (4, 4, 4, 1) and batch['image'].dtype == np.float32
    assert batch['masks'].shape == (4, 4, 4, 4) and batch['masks'].dtype == np.uint8
    assert isinstance(batch['image'], jax.Array)
    assert batch['image'].sharding.is_equivalent_to(sharding, 4)
    assert batch['masks'].sharding.is_equivalent_to(sharding, 4)
    np.testing.assert_array_equal(_index_of(batch['image']), want)
    bits = np.stack([(want >> k) & 1 for k in range(4)], 1)
    np.testing.assert_array_equal(np.asarray(batch['masks'])[:, :, 0, 0], bits)
  resumed = ip.train_batches(source, start_step=3, **kwargs)
  for step in range(3, 6):
    got = next(resumed)
    for key in ('image', 'masks'):
      np.testing.assert_array_equal(np.asarray(got[key]), np.asarray(batches[step][key]))
  resumed.close()
  assert source.getitems_calls > 0


def test_simulated_processes_concatenate_to_the_global_batch():
  source = ListSource(13)
  mesh = _mesh()
  sharding = NamedSharding(mesh, PartitionSpec('data'))
  assert ip.local_rows(sharding=sharding, global_batch_size=6) == (0, 6)
  for step in (0, 2, 5):
    whole = ip.host_batch(source, seed=1, step=step, global_batch_size=6, rows=(0, 6))
    parts = [ip.host_batch(source, seed=1, step=step, global_batch_size=6,
                           rows=(3 * p, 3 * p + 3))
             for p in range(2)]
    assert parts[0]['image'].shape[0] == 3
    for key in ('image', 'masks'):
      np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), whole[key])


def test_train_batches_on_four_cpu_devices():
  script = textwrap.dedent("""
      import jax, numpy as np
      from diffseg_jax import input_pipeline as ip
      from tests.test_input_pipeline import ListSource, _index_of, _reference_stream
      mesh = jax.make_mesh((4,), ('data',))
      it = ip.train_batches(ListSource(11), global_batch_size=8, seed=2, mesh=mesh)
      for step in range(3):
        batch = next(it)
        want = _reference_stream(2, 11, 24)[step * 8:(step + 1) * 8]
        np.testing.assert_array_equal(_index_of(batch['image']), want)
        shards = sorted(batch['image'].addressable_shards, key=lambda s: s.index[0].start)
        assert [s.data.shape[0] for s in shards] == [2, 2, 2, 2]
        assert len({s.device for s in shards}) == 4
        for s in shards:
          np.testing.assert_array_equal(_index_of(s.data), want[s.index[0]])
      try:
        next(ip.train_batches(ListSource(11), global_batch_size=6, seed=2, mesh=mesh))
      except ValueError as e:
        assert 'divisible' in str(e)
      else:
        raise AssertionError('indivisible batch accepted')
      print('OK')
  """)
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=4', JAX_PLATFORMS='cpu')
  out = subprocess.run([sys.executable, '-c', script], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=120)
  assert out.returncode == 0 and 'OK' in out.stdout, out.stderr[-3000:]


def test_train_batches_missing_feature_is_named():
  with pytest.raises(KeyError, match='labels'):
    next(ip.train_batches(ListSource(5), global_batch_size=2, seed=0, mesh=_mesh(), prefetch=0,
                          keys=('image', 'masks', 'labels')))


def test_eval_batches_pad_and_mark_padding():
  source = ListSource(10, with_modes=True)
  batches = list(ip.eval_batches(source, batch_size=4))
  assert len(batches) == 3
  assert set(batches[0]) == {'image', 'masks', 'id', 'patient_id', 'modes', 'mode_probs', 'valid'}
  ids = np.concatenate([b['id'] for b in batches])
  assert ids.dtype.kind == 'U'
  np.testing.assert_array_equal(ids, [f'ex-{i:03d}' for i in list(range(10)) + [9, 9]])
  np.testing.assert_array_equal(np.concatenate([b['valid'] for b in batches]), [True] * 10 + [False] * 2)
  np.testing.assert_array_equal(_index_of(batches[-1]['image']), [8, 9, 9, 9])
  assert batches[0]['mode_probs'].shape == (4, 3) and batches[0]['masks'].shape == (4, 4, 4, 4)
  again = list(ip.eval_batches(source, batch_size=4))
  for a, b in zip(batches, again):
    np.testing.assert_array_equal(a['image'], b['image'])
  short = list(ip.eval_batches(ListSource(10), batch_size=4, num_examples=5))
  assert len(short) == 2 and set(short[0]) == {'image', 'masks', 'id', 'patient_id', 'valid'}
  assert int(sum(b['valid'].sum() for b in short)) == 5


def test_eval_batches_shard_over_processes():
  source = ListSource(10)
  per_process = [list(ip.eval_batches(source, batch_size=3, process_index=p, process_count=3))
                 for p in range(3)]
  assert len({len(b) for b in per_process}) == 1
  valid_ids = [i for batches in per_process for b in batches for i, v in zip(b['id'], b['valid']) if v]
  assert valid_ids == [f'ex-{i:03d}' for i in range(10)]


def test_load_source_not_built_names_the_fix(tmp_path):
  with pytest.raises(FileNotFoundError) as err:
    ip.load_source(name='synthetic_lesions/32', split='train', data_dir=str(tmp_path))
  msg = str(err.value)
  assert 'python -m tfds_lidc.build --dataset=synthetic_lesions/32' in msg and str(tmp_path) in msg
  with pytest.raises(ValueError, match='NAME/CONFIG'):
    ip.load_source(name='synthetic_lesions', split='train', data_dir=str(tmp_path))


def test_built_synthetic_set_through_the_pipeline(tmp_path):
  from tfds_lidc import build  # pylint: disable=g-import-not-at-top
  report = build.build('synthetic_lesions/32', str(tmp_path), log=lambda *a: None,
                       overrides=dict(num_train=12, num_validation=5, num_test=3))
  source = ip.load_source(name=report['dataset'], split='train', data_dir=str(tmp_path))
  assert len(source) == 12
  it = ip.train_batches(source, global_batch_size=4, seed=5, mesh=_mesh())
  batches = [next(it) for _ in range(3)]
  it.close()
  order = _reference_stream(5, 12, 12)
  direct = ip.read_examples(source, order)
  image = np.concatenate([np.asarray(b['image']) for b in batches])
  masks = np.concatenate([np.asarray(b['masks']) for b in batches])
  assert image.shape == (12, 32, 32, 1) and masks.shape == (12, 4, 32, 32)
  np.testing.assert_array_equal(image, direct['image'])
  np.testing.assert_array_equal(masks, direct['masks'])
  assert image.min() >= 0.0 and image.max() <= 1.0 and set(np.unique(masks)) <= {0, 1}
  assert len(set(direct['id'])) == 12  # one epoch = every example once

  val = ip.load_source(name=report['dataset'], split='validation', data_dir=str(tmp_path))
  evals = list(ip.eval_batches(val, batch_size=2))
  assert len(evals) == 3 and evals[-1]['valid'].tolist() == [True, False]
  assert {'image', 'masks', 'modes', 'mode_probs', 'id', 'patient_id', 'valid'} == set(evals[0])
  assert evals[0]['id'].dtype.kind == 'U' and evals[0]['modes'].shape == (2, 3, 32, 32)
  with pytest.raises(ValueError, match='splits'):
    ip.load_source(name=report['dataset'], split='training', data_dir=str(tmp_path))
