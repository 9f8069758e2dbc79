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

"""Tests for diffseg_jax.input_pipeline on in-memory sources and a tiny built data set."""

import json
import os
import subprocess
import sys
import textwrap

import grain
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec
import numpy as np
import pytest

from diffseg_jax import checkpoint
from diffseg_jax import errors
from diffseg_jax import input_pipeline as ip
from tests.conftest import with_xla_flags
from tfds_lidc import synthetic_lesions

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
    ex = {
      'image': np.full((self.size, self.size, 1), i / 1000.0, np.float32),
      'masks': np.stack(
        [
          np.full((self.size, self.size), (i >> k) & 1, np.uint8)
          for k in range(4)
        ]
      ),
      'id': f'ex-{i:03d}'.encode(),
      'patient_id': f'p-{i // 2}'.encode(),
    }
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
  stream = np.concatenate(
    [np.random.default_rng([seed, e]).permutation(num) for e in range(epochs)]
  )
  return stream[:length]


def _mesh():
  return jax.make_mesh((1,), ('data',), devices=jax.devices()[:1])


def test_batch_indices_follow_reference_stream_and_cover_each_epoch():
  num, batch, steps = 10, 4, 15
  got = np.concatenate(
    [
      ip.batch_indices(
        seed=3, step=s, global_batch_size=batch, num_examples=num
      )
      for s in range(steps)
    ]
  )
  np.testing.assert_array_equal(got, _reference_stream(3, num, batch * steps))
  for e in range(batch * steps // num):
    np.testing.assert_array_equal(
      np.sort(got[e * num : (e + 1) * num]), np.arange(num)
    )
  assert not np.array_equal(got[:num], got[num : 2 * num])
  other = ip.batch_indices(
    seed=4, step=0, global_batch_size=10, num_examples=num
  )
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
    assert (
      batch['image'].shape == (4, 4, 4, 1)
      and batch['image'].dtype == np.float32
    )
    assert (
      batch['masks'].shape == (4, 4, 4, 4) and batch['masks'].dtype == np.uint8
    )
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
      np.testing.assert_array_equal(
        np.asarray(got[key]), np.asarray(batches[step][key])
      )
  resumed.close()
  assert source.getitems_calls > 0


def test_simulated_processes_concatenate_to_the_global_batch():
  source = ListSource(13)
  mesh = _mesh()
  sharding = NamedSharding(mesh, PartitionSpec('data'))
  assert ip.local_rows(sharding=sharding, global_batch_size=6) == (0, 6)
  for step in (0, 2, 5):
    whole = ip.host_batch(
      source, seed=1, step=step, global_batch_size=6, rows=(0, 6)
    )
    parts = [
      ip.host_batch(
        source, seed=1, step=step, global_batch_size=6, rows=(3 * p, 3 * p + 3)
      )
      for p in range(2)
    ]
    assert parts[0]['image'].shape[0] == 3
    for key in ('image', 'masks'):
      np.testing.assert_array_equal(
        np.concatenate([p[key] for p in parts]), whole[key]
      )


def _assert_batches_equal(a, b):
  assert set(a) == set(b)
  for key in a:
    np.testing.assert_array_equal(np.asarray(a[key]), np.asarray(b[key]))


@pytest.mark.parametrize('prefetch', [0, 3])
def test_grain_iterator_state_resumes_exactly(prefetch):
  source, mesh = BatchedSource(10), _mesh()
  kwargs = dict(global_batch_size=4, seed=7, mesh=mesh, prefetch=prefetch)
  uninterrupted = ip.train_batches(source, **kwargs)
  reference = [next(uninterrupted) for _ in range(9)]
  uninterrupted.close()
  for k in (0, 2, 5):
    it = ip.train_batches(source, **kwargs)
    for step in range(k):
      _assert_batches_equal(next(it), reference[step])
    # As the Orbax JSON item stores it.
    saved = json.loads(json.dumps(it.get_state()))
    it.close()
    assert saved == {
      'next_index': k,
      'dataset': 'BatchedSource',
      'split': '',
      'seed': 7,
      'global_batch_size': 4,
      'num_examples': 10,
      'process_count': 1,
    }
    fresh = ip.train_batches(source, **kwargs)
    fresh.set_state(saved)
    for step in range(k, 9):
      _assert_batches_equal(next(fresh), reference[step])
    assert fresh.get_state()['next_index'] == 9
    fresh.close()


def test_train_dataset_is_a_grain_map_dataset_of_steps():
  source = ListSource(10)
  ds = ip.train_dataset(source, seed=7, global_batch_size=4, rows=(0, 4))
  assert isinstance(ds, grain.MapDataset) and len(ds) == ip.ENDLESS
  want = _reference_stream(7, 10, 4 * 40).reshape(40, 4)
  for step in (0, 3, 39):
    np.testing.assert_array_equal(_index_of(ds[step]['image']), want[step])
  with pytest.raises(ValueError, match='empty'):
    ip.train_dataset(ListSource(0), seed=0, global_batch_size=2, rows=(0, 2))


def test_two_processes_read_disjoint_rows_covering_the_global_batch():
  # Batches do not straddle epochs: their examples are distinct.
  source = ListSource(12)
  rows = [
    (0, 3),
    (3, 6),
  ]  # Each process's devices hold half of the global batch.
  datasets = [
    ip.train_dataset(source, seed=1, global_batch_size=6, rows=r) for r in rows
  ]
  iterators = [
    iter(
      ds.to_iter_dataset(
        grain.ReadOptions(num_threads=2, prefetch_buffer_size=2)
      )
    )
    for ds in datasets
  ]
  want = _reference_stream(1, 12, 6 * 5).reshape(5, 6)
  for step in range(5):
    parts = [_index_of(next(it)['image']) for it in iterators]
    assert [len(p) for p in parts] == [3, 3]
    assert not set(parts[0]) & set(parts[1])
    np.testing.assert_array_equal(np.concatenate(parts), want[step])
  assert [it.get_state() for it in iterators] == [{'next_index': 5}] * 2


def test_state_from_another_data_set_or_config_is_refused():
  mesh = _mesh()
  it = ip.train_batches(
    ListSource(10), global_batch_size=4, seed=7, mesh=mesh, prefetch=0
  )
  next(it)
  state = it.get_state()
  it.close()
  others = {
    'num_examples': dict(source=ListSource(11)),
    'seed': dict(seed=8),
    'global_batch_size': dict(global_batch_size=2),
    'dataset': dict(source=BatchedSource(10)),
  }
  for key, change in others.items():
    kwargs = dict(
      dict(source=ListSource(10), global_batch_size=4, seed=7), **change
    )
    other = ip.train_batches(
      kwargs.pop('source'), mesh=mesh, prefetch=0, **kwargs
    )
    with pytest.raises(
      errors.ConfigError, match=f'{key}=.*this run.*config.json'
    ) as err:
      other.set_state(state)
    assert '\n' not in str(err.value)
  # Another number of processes reads the same global batches: accepted.
  same = ip.train_batches(
    ListSource(10), global_batch_size=4, seed=7, mesh=mesh, prefetch=0
  )
  same.set_state(dict(state, process_count=4))
  np.testing.assert_array_equal(
    _index_of(next(same)['image']), _reference_stream(7, 10, 8)[4:]
  )
  for bad in ({}, {'next_index': -1}, {'next_index': '3'}, [3]):
    with pytest.raises(errors.ConfigError, match='next_index'):
      same.set_state(bad)


def _tiny_state():
  return {
    'params': {'w': jnp.arange(3.0)},
    'ema_params': {'w': jnp.ones(3)},
    'opt_state': {'mu': jnp.zeros(3)},
    'step': jnp.asarray(0, jnp.int32),
    'rng': jnp.zeros(2, jnp.uint32),
  }


def test_checkpointer_saves_and_restores_the_data_iterator(tmp_path):
  source, mesh = ListSource(10), _mesh()
  kwargs = dict(global_batch_size=4, seed=7, mesh=mesh)
  reference = ip.train_batches(source, **kwargs)
  expected = [next(reference) for _ in range(5)]
  reference.close()
  it = ip.train_batches(source, **kwargs)
  for _ in range(3):
    next(it)
  state = dict(_tiny_state(), step=jnp.asarray(3, jnp.int32))
  ckpt = checkpoint.Checkpointer(str(tmp_path / 'ckpt'), async_save=False)
  ckpt.save(3, state, {'data_step': 3}, data_iterator=it, force=True)
  state['step'] = jnp.asarray(1, jnp.int32)
  # As written before the 'data' item existed.
  ckpt.save(1, state, {'data_step': 1}, force=True)
  ckpt.close()
  it.close()
  data_file = [f for f in os.listdir(tmp_path / 'ckpt' / '3' / 'data')]
  assert data_file

  ckpt = checkpoint.Checkpointer(str(tmp_path / 'ckpt'), async_save=False)
  abstract = checkpoint.abstract_like(_tiny_state())
  resumed = ip.train_batches(source, **kwargs)
  restored, _ = ckpt.restore(abstract, data_iterator=resumed)
  assert int(restored['step']) == 3 and resumed.get_state()['next_index'] == 3
  for step in (3, 4):
    _assert_batches_equal(next(resumed), expected[step])
  legacy = ip.train_batches(source, **kwargs)
  ckpt.restore(abstract, step=1, data_iterator=legacy)
  _assert_batches_equal(next(legacy), expected[1])
  other_seed = ip.train_batches(source, global_batch_size=4, seed=8, mesh=mesh)
  with pytest.raises(
    errors.ConfigError, match=r'ckpt/3/data: .*seed=7 \(this run: 8\)'
  ):
    ckpt.restore(abstract, data_iterator=other_seed)
  ckpt.close()
  for i in (resumed, legacy, other_seed):
    i.close()


def test_checkpointer_refuses_a_data_state_at_another_step(tmp_path):
  it = ip.train_batches(
    ListSource(10), global_batch_size=4, seed=7, mesh=_mesh()
  )
  next(it)
  ckpt = checkpoint.Checkpointer(str(tmp_path), async_save=False)
  ckpt.save(
    2,
    dict(_tiny_state(), step=jnp.asarray(2, jnp.int32)),
    {},
    data_iterator=it,
    force=True,
  )
  with pytest.raises(
    errors.ConfigError, match='at batch 1 but the train state at step 2'
  ):
    ckpt.restore(checkpoint.abstract_like(_tiny_state()), data_iterator=it)
  ckpt.close()
  it.close()


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
  env = dict(
    os.environ,
    XLA_FLAGS=with_xla_flags('--xla_force_host_platform_device_count=4'),
    JAX_PLATFORMS='cpu',
  )
  out = subprocess.run(
    [sys.executable, '-c', script],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert out.returncode == 0 and 'OK' in out.stdout, out.stderr[-3000:]


def test_train_batches_missing_feature_is_named():
  with pytest.raises(KeyError, match='labels'):
    next(
      ip.train_batches(
        ListSource(5),
        global_batch_size=2,
        seed=0,
        mesh=_mesh(),
        prefetch=0,
        keys=('image', 'masks', 'labels'),
      )
    )


def test_eval_batches_pad_and_mark_padding():
  source = ListSource(10, with_modes=True)
  batches = list(ip.eval_batches(source, batch_size=4))
  assert len(batches) == 3
  assert set(batches[0]) == {
    'image',
    'masks',
    'id',
    'patient_id',
    'modes',
    'mode_probs',
    'index',
    'valid',
  }
  ids = np.concatenate([b['id'] for b in batches])
  assert ids.dtype.kind == 'U'
  np.testing.assert_array_equal(
    ids, [f'ex-{i:03d}' for i in list(range(10)) + [9, 9]]
  )
  np.testing.assert_array_equal(
    np.concatenate([b['valid'] for b in batches]), [True] * 10 + [False] * 2
  )
  np.testing.assert_array_equal(_index_of(batches[-1]['image']), [8, 9, 9, 9])
  np.testing.assert_array_equal(batches[-1]['index'], [8, 9, 9, 9])
  assert batches[0]['mode_probs'].shape == (4, 3) and batches[0][
    'masks'
  ].shape == (4, 4, 4, 4)
  again = list(ip.eval_batches(source, batch_size=4))
  for a, b in zip(batches, again):
    np.testing.assert_array_equal(a['image'], b['image'])
  short = list(ip.eval_batches(ListSource(10), batch_size=4, num_examples=5))
  assert len(short) == 2 and set(short[0]) == {
    'image',
    'masks',
    'id',
    'patient_id',
    'index',
    'valid',
  }
  assert int(sum(b['valid'].sum() for b in short)) == 5


def test_eval_batches_shard_over_processes():
  source = ListSource(10)
  per_process = [
    list(
      ip.eval_batches(source, batch_size=3, process_index=p, process_count=3)
    )
    for p in range(3)
  ]
  assert len({len(b) for b in per_process}) == 1
  valid_ids = [
    i
    for batches in per_process
    for b in batches
    for i, v in zip(b['id'], b['valid'])
    if v
  ]
  assert valid_ids == [f'ex-{i:03d}' for i in range(10)]
  valid_indices = [
    int(i)
    for batches in per_process
    for b in batches
    for i, v in zip(b['index'], b['valid'])
    if v
  ]
  assert valid_indices == list(range(10))
  assert ip.eval_shard(10, process_index=2, process_count=3) == (8, 10)


def test_load_source_not_built_names_the_fix(tmp_path):
  with pytest.raises(FileNotFoundError) as err:
    ip.load_source(
      name='synthetic_lesions/32', split='train', data_dir=str(tmp_path)
    )
  msg = str(err.value)
  assert (
    'python -m tfds_lidc.build --dataset=synthetic_lesions/32' in msg
    and str(tmp_path) in msg
  )
  with pytest.raises(ValueError, match='NAME/CONFIG'):
    ip.load_source(
      name='synthetic_lesions', split='train', data_dir=str(tmp_path)
    )


def test_built_synthetic_set_through_the_pipeline(tmp_path):
  from tfds_lidc import build  # pylint: disable=g-import-not-at-top

  report = build.build(
    'synthetic_lesions/32',
    str(tmp_path),
    log=lambda *a: None,
    overrides=dict(num_train=12, num_validation=5, num_test=3),
  )
  source = ip.load_source(
    name=report['dataset'], split='train', data_dir=str(tmp_path)
  )
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
  assert (
    image.min() >= 0.0
    and image.max() <= 1.0
    and set(np.unique(masks)) <= {0, 1}
  )
  assert len(set(direct['id'])) == 12  # one epoch = every example once

  val = ip.load_source(
    name=report['dataset'], split='validation', data_dir=str(tmp_path)
  )
  evals = list(ip.eval_batches(val, batch_size=2))
  assert len(evals) == 3 and evals[-1]['valid'].tolist() == [True, False]
  assert {
    'image',
    'masks',
    'modes',
    'mode_probs',
    'geometry',
    'id',
    'patient_id',
    'index',
    'valid',
  } == set(evals[0])
  assert evals[0]['id'].dtype.kind == 'U' and evals[0]['modes'].shape == (
    2,
    3,
    32,
    32,
  )
  with pytest.raises(ValueError, match='splits'):
    ip.load_source(
      name=report['dataset'], split='training', data_dir=str(tmp_path)
    )
  state = ip.train_batches(
    source, global_batch_size=4, seed=5, mesh=_mesh()
  ).get_state()
  assert (
    state['dataset']
    == (
      report['dataset'] + '/' + str(synthetic_lesions.SyntheticLesions.VERSION)
    )
    and state['split'] == 'train'
  )
  on_val = ip.train_batches(val, global_batch_size=4, seed=5, mesh=_mesh())
  with pytest.raises(
    errors.ConfigError, match="split='train' \\(this run: 'validation'\\)"
  ):
    on_val.set_state(state)
