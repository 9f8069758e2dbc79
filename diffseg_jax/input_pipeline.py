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

"""From a built data set to global, sharded `jax.Array` batches (and host eval batches).

Training order is a pure function of (seed, step): epoch e is the permutation
`np.random.default_rng([seed, e]).permutation(N)`, the epochs are concatenated into
one stream, and step s is the window [s B, (s + 1) B) of that stream. Every process
computes the same global indices and reads only the rows of the global batch that its
devices hold. Reading is a grain pipeline (`train_dataset`: an endless
`grain.MapDataset` of steps mapped to host batches, read ahead by grain's threads)
whose iterator state is the next step; `TrainIterator.get_state` adds the settings
that fix the order and goes into the Orbax checkpoint, so a resumed run sees exactly
the batches it would have seen, on any number of hosts.

A source is anything with `__len__` and `__getitem__(i) -> dict of numpy arrays`
(optionally a batched `__getitems__(list)`), e.g. `tfds.data_source(...)`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
import sys
from typing import Any

import grain
import jax
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec
import numpy as np

from diffseg_jax import errors
from diffseg_jax import parallel
from tfds_lidc import paths

TRAIN_KEYS = ('image', 'masks')
STRING_KEYS = ('id', 'patient_id')
ENDLESS = sys.maxsize  # Length of the endless train data set (steps).


def _check_known_name(name: str, data_dir: str) -> None:
  """Raises ConfigError unless `name` ('NAME/CONFIG') is one tfds_lidc.build can build."""
  import importlib  # pylint: disable=g-import-not-at-top

  from tfds_lidc import build  # pylint: disable=g-import-not-at-top

  builder, _, config = name.partition('/')
  if builder not in build.BUILDERS:
    raise errors.ConfigError(
      f'Unknown data set {name!r} (config.dataset.name): the data sets are '
      f'{sorted(build.BUILDERS)}, e.g. synthetic_lesions/32 or lidc/knegt_pickle.'
    )
  module, cls = build.BUILDERS[builder]
  configs = sorted(
    c.name
    for c in getattr(importlib.import_module(module), cls).BUILDER_CONFIGS
  )
  # Builds with overrides are named CONFIG_<field><value>...
  if not any(config == c or config.startswith(c + '_') for c in configs):
    raise errors.ConfigError(
      f'Unknown config {config!r} of data set {builder!r} (config.dataset.name={name!r}), and '
      f'nothing of that name is built in {data_dir!r}: choose one of {configs} (builds with '
      '--override are named CONFIG_<field><value>..., or as their name= override).'
    )


def load_source(*, name: str, split: str, data_dir: str):
  """Opens split `split` of the built TFDS data set `name` ('NAME/CONFIG[:VERSION]').

  Reads array_record files without TensorFlow. Returns a random-access source
  (`len`, `source[i]` -> dict of numpy arrays).

  Raises:
    FileNotFoundError: the data set (or the version) is not built under data_dir.
    ValueError: bad name or unknown split.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  if '/' not in name:
    raise ValueError(
      f'dataset name must be NAME/CONFIG, e.g. synthetic_lesions/32; got {name!r}.'
    )
  data_dir = paths.resolve(data_dir, what='config.dataset.data_dir')
  base, _, version = name.partition(':')
  config_dir = data_dir / base
  build_cmd = (
    f'python -m tfds_lidc.build --dataset={base} --data_dir={data_dir}'
  )
  versions = []
  if config_dir.is_dir():
    for entry in config_dir.iterdir():
      try:
        parsed = tuple(int(v) for v in entry.name.split('.'))
      except ValueError:
        continue
      if (entry / 'dataset_info.json').is_file():
        versions.append((parsed, entry.name))
  if version:
    versions = [v for v in versions if v[1] == version]
  if not versions:
    _check_known_name(base, str(data_dir))
    what = f'version {version} of ' if version else ''
    raise FileNotFoundError(
      f'{what}data set {base!r} is not built in data_dir {str(data_dir)!r} (no {config_dir}/'
      f'<version>/dataset_info.json). Build it first: {build_cmd} (LIDC configs also need '
      '--manual_dir=...).'
    )
  version_dir = config_dir / max(versions)[1]
  builder = tfds.builder_from_directory(version_dir)
  splits = sorted(builder.info.splits.keys())
  if split not in splits:
    raise ValueError(
      f'data set {base!r} in {version_dir} has splits {splits}, not {split!r}.'
    )
  return builder.as_data_source(split=split)


def prepare_dataset(*, name: str, data_dir: str, split: str = 'train') -> None:
  """Builds a synthetic data set on first use (no download); LIDC sets must be built by the user.

  Process 0 builds while the others wait at a barrier. Does nothing for other data sets or when
  `split` of `name` already exists in `data_dir` at the builder's current version (a build of an
  older version, which may lack features, is not reused: the current one is built beside it).
  """
  if not name.startswith('synthetic_lesions/'):
    return
  from tfds_lidc import build  # pylint: disable=g-import-not-at-top
  from tfds_lidc import synthetic_lesions  # pylint: disable=g-import-not-at-top

  current = (
    name
    if ':' in name
    else f'{name}:{synthetic_lesions.SyntheticLesions.VERSION}'
  )
  try:
    load_source(name=current, split=split, data_dir=data_dir)
    return
  except FileNotFoundError:
    pass
  if jax.process_index() == 0:
    from absl import logging  # pylint: disable=g-import-not-at-top

    logging.info('Building %s into %s (first use).', name, data_dir)
    build.build(name, data_dir, log=logging.info)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f'prepare_dataset:{name}')


def epoch_permutation(
  *, seed: int, epoch: int, num_examples: int
) -> np.ndarray:
  """The order of epoch `epoch`: [num_examples] int64, a permutation of range(num_examples)."""
  return np.random.default_rng([seed, epoch]).permutation(num_examples)


def batch_indices(
  *, seed: int, step: int, global_batch_size: int, num_examples: int
) -> np.ndarray:
  """Source indices of global batch `step`: [global_batch_size] int64.

  Positions [step B, (step + 1) B) of the concatenated stream of epoch permutations.
  """
  if num_examples <= 0:
    raise ValueError('the source is empty.')
  positions = np.arange(
    step * global_batch_size, (step + 1) * global_batch_size, dtype=np.int64
  )
  epochs, offsets = np.divmod(positions, num_examples)
  out = np.empty_like(positions)
  for epoch in np.unique(epochs):
    perm = epoch_permutation(
      seed=seed, epoch=int(epoch), num_examples=num_examples
    )
    out[epochs == epoch] = perm[offsets[epochs == epoch]]
  return out


def local_rows(
  *, sharding: jax.sharding.Sharding, global_batch_size: int
) -> tuple[int, int]:
  """Rows [start, stop) of the global batch held by this process's devices under `sharding`.

  Raises:
    ValueError: the rows are not one contiguous block (unsupported device layout).
  """
  rows = set()
  for index in sharding.addressable_devices_indices_map(
    (global_batch_size,)
  ).values():
    rows.update(range(global_batch_size)[index[0]])
  start, stop = min(rows), max(rows) + 1
  if len(rows) != stop - start:
    raise ValueError(
      f'this process holds the non-contiguous batch rows {sorted(rows)}; '
      'order the mesh so that each process holds one contiguous block.'
    )
  return start, stop


def read_examples(
  source, indices: Sequence[int], keys: Sequence[str] | None = None
) -> dict:
  """Reads examples `indices` and stacks them: dict key -> [len(indices), ...] numpy.

  Args:
    source: random-access source.
    indices: source indices.
    keys: features to keep (all of the first example's if None).

  Raises:
    KeyError: an example lacks a requested feature.
  """
  indices = [int(i) for i in indices]
  if hasattr(source, '__getitems__'):
    examples = source.__getitems__(indices)
  else:
    examples = [source[i] for i in indices]
  keys = list(examples[0].keys()) if keys is None else list(keys)
  out = {}
  for key in keys:
    if key not in examples[0]:
      raise KeyError(
        f'source examples have features {sorted(examples[0])}, not {key!r}; expected '
        "'image' float32 [H,W,1] and 'masks' uint8 [4,H,W] (build with tfds_lidc.build)."
      )
    values = [ex[key] for ex in examples]
    if key in STRING_KEYS:
      out[key] = np.array(
        [v.decode('utf-8') if isinstance(v, bytes) else str(v) for v in values]
      )
    else:
      out[key] = np.stack([np.asarray(v) for v in values])
  return out


def host_batch(
  source,
  *,
  seed: int,
  step: int,
  global_batch_size: int,
  rows: tuple[int, int],
  keys: Sequence[str] = TRAIN_KEYS,
) -> dict:
  """Rows [start, stop) of global train batch `step`, read from `source` (host numpy)."""
  indices = batch_indices(
    seed=seed,
    step=step,
    global_batch_size=global_batch_size,
    num_examples=len(source),
  )
  batch = read_examples(source, indices[rows[0] : rows[1]], keys)
  if 'image' in batch:
    batch['image'] = batch['image'].astype(np.float32)
  if 'masks' in batch:
    batch['masks'] = batch['masks'].astype(np.uint8)
  return batch


def train_dataset(
  source,
  *,
  seed: int,
  global_batch_size: int,
  rows: tuple[int, int],
  keys: Sequence[str] = TRAIN_KEYS,
) -> grain.MapDataset:
  """Endless `grain.MapDataset` whose element `step` is `host_batch(source, step=step, ...)`.

  The order is our own permutation stream (`batch_indices`), not grain's shuffle, so
  that it stays a pure function of (seed, step); a grain iterator over this data set
  checkpoints as {'next_index': step}.
  """
  if len(source) <= 0:
    raise ValueError('the source is empty.')

  def read(step):
    return host_batch(
      source,
      seed=seed,
      step=int(step),
      global_batch_size=global_batch_size,
      rows=rows,
      keys=keys,
    )

  return grain.MapDataset.range(ENDLESS).map(read)


def _source_name(source) -> tuple[str, str]:
  """(data set 'NAME/CONFIG/VERSION', split) of a TFDS source; the class name and '' otherwise."""
  info = getattr(source, 'dataset_info', None)
  name = getattr(info, 'full_name', None) or type(source).__name__
  return str(name), str(getattr(source, 'split', '') or '')


class TrainIterator:
  """Checkpointable iterator of global train batches, read by a grain iterator.

  `get_state()` is a JSON-able dict: 'next_index' (the step of the next batch) and
  the settings that fix the order ('dataset', 'split', 'seed', 'global_batch_size',
  'num_examples'; 'process_count' for information: any number of processes reads the
  same global batches). `set_state` refuses a state written with other settings.
  """

  def __init__(
    self,
    source,
    *,
    global_batch_size: int,
    seed: int,
    mesh: jax.sharding.Mesh,
    data_axis: str = parallel.DATA_AXIS,
    prefetch: int = 2,
    num_threads: int = 2,
    keys: Sequence[str] = TRAIN_KEYS,
  ):
    axis_size = mesh.shape[data_axis]
    if global_batch_size % axis_size:
      raise ValueError(
        f'global_batch_size={global_batch_size} is not divisible by the size '
        f'{axis_size} of mesh axis {data_axis!r}.'
      )
    self._sharding = NamedSharding(mesh, PartitionSpec(data_axis))
    self._global_batch_size = global_batch_size
    rows = local_rows(
      sharding=self._sharding, global_batch_size=global_batch_size
    )
    dataset = train_dataset(
      source,
      seed=seed,
      global_batch_size=global_batch_size,
      rows=rows,
      keys=keys,
    )
    read_options = grain.ReadOptions(
      num_threads=num_threads if prefetch > 0 else 0,
      prefetch_buffer_size=max(prefetch, 0),
    )
    self._iterator = dataset.to_iter_dataset(read_options).__iter__()
    name, split = _source_name(source)
    self.order = {
      'dataset': name,
      'split': split,
      'seed': int(seed),
      'global_batch_size': int(global_batch_size),
      'num_examples': len(source),
    }

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, jax.Array]:
    batch = next(self._iterator)
    return {
      k: jax.make_array_from_process_local_data(
        self._sharding, v, (self._global_batch_size,) + v.shape[1:]
      )
      for k, v in batch.items()
    }

  def get_state(self) -> dict[str, Any]:
    return {
      'next_index': int(self._iterator.get_state()['next_index']),
      **self.order,
      'process_count': jax.process_count(),
    }

  def set_state(self, state: Mapping[str, Any]) -> None:
    """Continues from `state` (from `get_state`; {'next_index': step} alone is accepted).

    Raises:
      errors.ConfigError: the state is malformed or comes from another data set,
        split, seed, global batch size or number of examples.
    """
    step = state.get('next_index') if isinstance(state, Mapping) else None
    if not isinstance(step, int) or step < 0:
      raise errors.ConfigError(
        f'data iterator state {state!r} has no non-negative int '
        "'next_index'; it was not written by TrainIterator.get_state."
      )
    changed = [
      f'{k}={state[k]!r} (this run: {v!r})'
      for k, v in self.order.items()
      if k in state and state[k] != v
    ]
    if changed:
      raise errors.ConfigError(
        f'data iterator state written with {", ".join(changed)}: it belongs to another data '
        'set or config. Resume with the config that wrote it (workdir/config.json) or train '
        'in a new workdir.'
      )
    self._iterator.set_state({'next_index': step})

  def close(self) -> None:
    self._iterator.close()


def train_batches(
  source,
  *,
  global_batch_size: int,
  seed: int,
  start_step: int = 0,
  mesh: jax.sharding.Mesh,
  data_axis: str = parallel.DATA_AXIS,
  prefetch: int = 2,
  num_threads: int = 2,
  keys: Sequence[str] = TRAIN_KEYS,
) -> TrainIterator:
  """Endless checkpointable iterator of global train batches, the first one being batch `start_step`.

  Args:
    source: random-access source.
    global_batch_size: B, divisible by the size of mesh axis `data_axis`.
    seed: shuffling seed (non-negative int).
    start_step: the step of the first batch (`set_state` of a checkpointed state
      does the same and checks that the state belongs to this data and config).
    mesh: device mesh; batches are sharded over `data_axis` along the batch dimension.
    data_axis: mesh axis name.
    prefetch: number of host batches grain reads ahead in background threads (0 = none).
    num_threads: grain's reader threads.
    keys: features to deliver.

  Returns:
    A `TrainIterator` yielding {'image': [B,H,W,1] float32, 'masks': [B,M,H,W] uint8}
    global jax.Arrays with NamedSharding(mesh, P(data_axis)); each process reads only
    the rows it holds.
  """
  iterator = TrainIterator(
    source,
    global_batch_size=global_batch_size,
    seed=seed,
    mesh=mesh,
    data_axis=data_axis,
    prefetch=prefetch,
    num_threads=num_threads,
    keys=keys,
  )
  if start_step:
    iterator.set_state({'next_index': int(start_step)})
  return iterator


def eval_shard(
  num_examples: int, *, process_index: int = 0, process_count: int = 1
) -> tuple[int, int]:
  """Examples [start, stop) that process `process_index` of `process_count` evaluates.

  `num_examples` split into `process_count` contiguous blocks of ceil(num_examples /
  process_count) (the last ones shorter or empty).
  """
  if not 0 <= process_index < process_count:
    raise ValueError(
      f'process_index={process_index} is not in [0, process_count={process_count}).'
    )
  per_process = -(-num_examples // process_count)
  start = min(process_index * per_process, num_examples)
  return start, min(start + per_process, num_examples)


def eval_batches(
  source,
  *,
  batch_size: int,
  num_examples: int | None = None,
  process_index: int = 0,
  process_count: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
  """Deterministic evaluation batches in source order (host numpy).

  The first `num_examples` examples (all if None) are split into `process_count`
  contiguous blocks (`eval_shard`); this process iterates over block `process_index`.
  Every process yields the same number of batches; the last ones are padded by
  repeating the last example, marked `valid=False`.

  Yields:
    dict with every feature of the source ('image' [b,H,W,C] float32, 'masks' [b,M,H,W]
    uint8, 'id'/'patient_id' [b] numpy str, 'modes', 'mode_probs' where present),
    'index' [b] int64 (each example's index in the source, its stable identity) and
    'valid' [b] bool, b = batch_size.
  """
  total = (
    len(source) if num_examples is None else min(int(num_examples), len(source))
  )
  if total <= 0:
    raise ValueError(
      'eval_batches: the source is empty (or num_examples <= 0).'
    )
  start, stop = eval_shard(
    total, process_index=process_index, process_count=process_count
  )
  per_process = -(-total // process_count)
  num_batches = -(-per_process // batch_size)
  fallback = stop - 1 if stop > start else total - 1
  for b in range(num_batches):
    indices = list(
      range(start + b * batch_size, min(start + (b + 1) * batch_size, stop))
    )
    pad = batch_size - len(indices)
    indices += [indices[-1] if indices else fallback] * pad
    valid = np.arange(batch_size) < batch_size - pad
    batch = read_examples(source, indices)
    if 'image' in batch:
      batch['image'] = batch['image'].astype(np.float32)
    batch['index'] = np.asarray(indices, np.int64)
    batch['valid'] = valid
    yield batch
