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

"""Orbax checkpoints of the train state: what is saved, where, and how it comes back.

A checkpoint step holds the items `params`, `ema_params`, `opt_state`, `train` ({step, rng,
bad_steps}; checkpoints written before `bad_steps` existed restore it as 0), `meta`
(JSON: data position, config) and `data` (JSON: the train data iterator's `get_state()`, e.g.
`input_pipeline.TrainIterator`: next step, data set, split, seed, batch size). Exported checkpoints (`save_params`, e.g. converted PyTorch weights) hold
only `params`, `ema_params` and `meta`; evaluation and prediction read just the parameter items, so they
work on both kinds.
"""

from typing import Any, Mapping, Optional

from absl import logging
from etils import epath
import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import (
  save_decision_policy as save_policy,
)

from diffseg_jax import errors
from diffseg_jax.models import unet
from tfds_lidc import paths

TRAIN_ITEMS = ('params', 'ema_params', 'opt_state', 'train', 'meta', 'data')
PARAM_ITEMS = ('params', 'ema_params')


class CheckpointNotFoundError(FileNotFoundError):
  pass


class CheckpointMismatchError(ValueError):
  """The checkpoint's parameter names or shapes differ from the network being restored."""


def _key_str(path) -> str:
  return '/'.join(str(getattr(k, 'key', getattr(k, 'idx', k))) for k in path)


def _check_shapes(item_dir: epath.Path, abstract_params: Any) -> None:
  """Raises CheckpointMismatchError naming the parameters whose names or shapes differ.

  Reads only the item's metadata; a checkpoint without it (another layout) is left to the restore.
  """
  if not item_dir.is_dir():
    return
  handler = ocp.StandardCheckpointHandler()
  try:
    stored = handler.metadata(item_dir)
  except (OSError, ValueError, KeyError):
    return
  finally:
    handler.close()
  stored = {
    _key_str(p): tuple(m.shape)
    for p, m in jax.tree_util.tree_leaves_with_path(stored)
    if hasattr(m, 'shape')
  }
  wanted = {
    _key_str(p): tuple(x.shape)
    for p, x in jax.tree_util.tree_leaves_with_path(abstract_params)
  }
  if not stored or stored == wanted:
    return
  shapes = [
    f'{k} {stored[k]} vs {wanted[k]}'
    for k in sorted(wanted)
    if k in stored and stored[k] != wanted[k]
  ]
  only_stored = sorted(set(stored) - set(wanted))
  only_wanted = sorted(set(wanted) - set(stored))
  parts = []
  if shapes:
    parts.append(
      f'{len(shapes)} of {len(wanted)} parameter shapes differ (checkpoint vs config), '
      f'e.g. {"; ".join(shapes[:3])}'
    )
  if only_stored:
    parts.append(
      f'{len(only_stored)} parameters only in the checkpoint, e.g. {", ".join(only_stored[:3])}'
    )
  if only_wanted:
    parts.append(
      f"{len(only_wanted)} parameters only in the config's network, e.g. "
      f'{", ".join(only_wanted[:3])}'
    )
  raise CheckpointMismatchError(
    '; '.join(parts)
    + ': config.model (base_channels, channel_mult, num_res_blocks, '
    'num_middle_blocks, attention_levels, num_heads) or the image channels differ from the run '
    'that wrote it'
  )


def _stored_keys(item_dir: epath.Path) -> set[str]:
  """Top-level keys of a saved StandardSave item (from its metadata), or an empty set."""
  handler = ocp.StandardCheckpointHandler()
  try:
    stored = handler.metadata(epath.Path(item_dir))
  except (OSError, ValueError, KeyError):
    return set()
  finally:
    handler.close()
  return set(stored.keys()) if hasattr(stored, 'keys') else set()


def _manager(
  directory: epath.Path,
  *,
  max_to_keep: Optional[int] = 3,
  async_save: bool = True,
  read_only: bool = False,
  save_every_steps: Optional[int] = None,
  final_step: Optional[int] = None,
) -> ocp.CheckpointManager:
  # A reader (evaluation while training runs) neither creates nor cleans up anything.
  policies = [save_policy.PreemptionCheckpointingPolicy()]
  if save_every_steps:
    policies.append(save_policy.FixedIntervalPolicy(save_every_steps))
  if final_step is not None:
    policies.append(save_policy.SpecificStepsPolicy((final_step,)))
  options = ocp.CheckpointManagerOptions(
    max_to_keep=None if read_only else max_to_keep,
    enable_async_checkpointing=async_save,
    create=not read_only,
    cleanup_tmp_directories=not read_only,
    save_decision_policy=save_policy.AnySavePolicy(policies),
  )
  return ocp.CheckpointManager(
    directory, options=options, item_names=TRAIN_ITEMS
  )


class Checkpointer:
  """Periodic (async) saves of the full train state and exact restore of it.

  `directory` may be local, a file:// URL or a cloud URL that Orbax writes (gs://).

  When to save is Orbax's decision (`should_save`): every `save_every_steps`, at `final_step`, and at
  the step at which all processes agreed to stop after a preemption notice (`reached_preemption`).
  """

  def __init__(
    self,
    directory: str,
    *,
    max_to_keep: int = 3,
    async_save: bool = True,
    save_every_steps: Optional[int] = None,
    final_step: Optional[int] = None,
  ):
    self.directory = paths.resolve(directory)
    self._manager = _manager(
      self.directory,
      max_to_keep=max_to_keep,
      async_save=async_save,
      save_every_steps=save_every_steps,
      final_step=final_step,
    )

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def reached_preemption(self, step: int) -> bool:
    """Whether `step` is the step all processes agreed to save and stop at after a SIGTERM.

    JAX's preemption sync manager (multi-process runs) answers; call it with every step, on every
    process. Without `jax.distributed` it is always False.
    """
    return self._manager.reached_preemption(step)

  def should_save(self, step: int) -> bool:
    """Orbax's decision for `step`: the save interval, the final step or the preemption step."""
    return self._manager.should_save(step)

  def wait_until_finished(self) -> None:
    self._manager.wait_until_finished()

  def save(
    self,
    step: int,
    state: Mapping[str, Any],
    meta: Mapping[str, Any],
    *,
    data_iterator: Any = None,
    force: bool = False,
  ) -> bool:
    """Saves `state` (params, ema_params, opt_state, step, rng[, bad_steps]) at `step`; returns whether it saved.

    `data_iterator` (with `get_state()` -> JSON-able dict) is saved as item `data`; it
    must be positioned at the batch of step `step`.
    """
    items = dict(
      params=ocp.args.StandardSave(state['params']),
      ema_params=ocp.args.StandardSave(state['ema_params']),
      opt_state=ocp.args.StandardSave(state['opt_state']),
      train=ocp.args.StandardSave(
        {k: state[k] for k in ('step', 'rng', 'bad_steps') if k in state}
      ),
      meta=ocp.args.JsonSave(dict(meta)),
    )
    if data_iterator is not None:
      items['data'] = ocp.args.JsonSave(dict(data_iterator.get_state()))
    return self._manager.save(
      int(step), args=ocp.args.Composite(**items), force=force
    )

  def restore(
    self,
    abstract_state: Mapping[str, Any],
    step: Optional[int] = None,
    *,
    data_iterator: Any = None,
  ):
    """Restores the full state into the shapes/shardings of `abstract_state`; returns (state, meta).

    With `data_iterator`, also calls its `set_state` with the saved item `data`
    (checkpoints written before that item existed: {'next_index': the saved step}).

    Raises:
      CheckpointNotFoundError: no checkpoint.
      errors.ConfigError: the data iterator refuses the saved state (another data set or config).
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointNotFoundError(f'No checkpoint in {self.directory}.')
    train_keys = ['step', 'rng']
    if 'bad_steps' in abstract_state and 'bad_steps' in _stored_keys(
      self.directory / str(step) / 'train'
    ):
      train_keys.append('bad_steps')
    items = dict(
      params=ocp.args.StandardRestore(abstract_state['params']),
      ema_params=ocp.args.StandardRestore(abstract_state['ema_params']),
      opt_state=ocp.args.StandardRestore(abstract_state['opt_state']),
      train=ocp.args.StandardRestore(
        {k: abstract_state[k] for k in train_keys}
      ),
      meta=ocp.args.JsonRestore(),
    )
    data_dir = self.directory / str(step) / 'data'
    has_data = data_iterator is not None and data_dir.is_dir()
    if has_data:
      items['data'] = ocp.args.JsonRestore()
    restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    if data_iterator is not None:
      train_step = int(restored.train['step'])
      data_state = (
        restored.data
        if has_data
        else {'next_index': restored.meta.get('data_step', train_step)}
      )
      if data_state.get('next_index') != train_step:
        raise errors.ConfigError(
          f'{data_dir}: the data iterator is at batch {data_state.get("next_index")} but the train '
          f'state at step {train_step}: the checkpoint is inconsistent; delete {data_dir.parent} '
          'to resume from the previous checkpoint.'
        )
      try:
        data_iterator.set_state(data_state)
      except errors.ConfigError as e:
        raise errors.ConfigError(f'{data_dir}: {e}') from None
    state = {
      'params': restored.params,
      'ema_params': restored.ema_params,
      'opt_state': restored.opt_state,
      'step': restored.train['step'],
      'rng': restored.train['rng'],
    }
    if 'bad_steps' in restored.train:
      state['bad_steps'] = restored.train['bad_steps']
    elif 'bad_steps' in abstract_state:
      # Written before the NaN guard counted skips.
      bad = abstract_state['bad_steps']
      state['bad_steps'] = jax.device_put(
        np.zeros(bad.shape, bad.dtype), bad.sharding
      )
    return state, dict(restored.meta)

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def save_params(
  directory: str,
  params: Any,
  *,
  step: int = 0,
  meta: Optional[Mapping[str, Any]] = None,
) -> str:
  """Writes an inference-only checkpoint (params doubling as EMA params) that evaluation can restore."""
  directory = paths.resolve(directory)
  manager = _manager(directory, max_to_keep=None, async_save=False)
  manager.save(
    int(step),
    args=ocp.args.Composite(
      params=ocp.args.StandardSave(params),
      ema_params=ocp.args.StandardSave(params),
      meta=ocp.args.JsonSave(dict(meta or {'kind': 'exported_params'})),
    ),
    force=True,
  )
  manager.wait_until_finished()
  manager.close()
  return str(directory)


def _saved_model_settings(manager: ocp.CheckpointManager, step: int) -> str:
  """' (the run that wrote it had model.x=..., ...)' from a train checkpoint's meta, else ''."""
  keys = (
    'base_channels',
    'channel_mult',
    'num_res_blocks',
    'num_middle_blocks',
    'attention_levels',
    'num_heads',
  )
  try:
    meta = manager.restore(
      step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())
    ).meta
    model = meta['config']['model']
    image = meta['config']['dataset']['image_preprocessing']
  except Exception:  # pylint: disable=broad-except
    return ''  # Exported checkpoints carry no config.
  settings = [
    f'model.{k}={tuple(v) if isinstance(v, list) else v}'
    for k in keys
    if (v := model.get(k)) is not None
  ]
  return (
    f' (the run that wrote it had {", ".join(settings)}, '
    f'dataset.image_preprocessing={image!r})'
  )


def restore_params(
  directory: str,
  abstract_params: Any,
  *,
  use_ema: bool = True,
  step: Optional[int] = None,
):
  """Restores only the (EMA) parameters of the latest (or given) step; returns (params, step)."""
  directory = paths.resolve(directory)
  if not directory.is_dir():
    raise CheckpointNotFoundError(
      f'Checkpoint directory {directory} does not exist: train first (--mode=train) or convert '
      'weights with `python -m diffseg_jax.convert --out=...`.'
    )
  manager = _manager(directory, read_only=True, async_save=False)
  step = manager.latest_step() if step is None else step
  if step is None:
    raise CheckpointNotFoundError(
      f'No checkpoint steps in {directory}: train first (--mode=train) or convert weights.'
    )
  if step not in manager.all_steps():
    kept = sorted(manager.all_steps())
    manager.close()
    raise CheckpointNotFoundError(
      f'No checkpoint of step {step} in {directory}; it holds steps {kept}. Pick one of them '
      '(config.eval.checkpoint_step), or -1 for the latest.'
    )
  item = 'ema_params' if use_ema else 'params'
  # Without a sharding Orbax would restore into the saving run's device topology.
  replicated = jax.sharding.NamedSharding(
    jax.sharding.Mesh(jax.devices(), ('all',)), jax.sharding.PartitionSpec()
  )
  abstract_params = jax.tree.map(
    lambda x: (
      x
      if getattr(x, 'sharding', None) is not None
      else jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated)
    ),
    abstract_params,
  )
  try:
    # Checked first: a restore that fails midway leaves TensorStore callbacks printing "Event loop
    # is closed" tracebacks.
    try:
      _check_shapes(directory / str(step) / item, abstract_params)
    except CheckpointMismatchError as e:
      raise CheckpointMismatchError(
        f'{e}{_saved_model_settings(manager, step)}'
      ) from None
    restored = manager.restore(
      step,
      args=ocp.args.Composite(
        **{item: ocp.args.StandardRestore(abstract_params)}
      ),
    )
  finally:
    manager.close()
  logging.info('Restored %s of step %d from %s', item, step, directory)
  return restored[item], step


def read_meta(directory: str, step: int) -> dict[str, Any]:
  """The JSON item `meta` saved with step `step` in `directory` ({} for a checkpoint without one)."""
  directory = paths.resolve(directory)
  if not (directory / str(step) / 'meta').is_dir():
    return {}
  manager = _manager(directory, read_only=True, async_save=False)
  try:
    restored = manager.restore(
      step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())
    )
  finally:
    manager.close()
  return dict(restored.meta)


def load_params(
  workdir: str,
  unet_config: unet.UNetConfig,
  mesh,
  *,
  use_ema: bool = True,
  step: Optional[int] = None,
):
  """(graphdef, params, step) of the latest (or given) checkpoint in WORKDIR/checkpoints, params replicated on `mesh`.

  Raises:
    CheckpointNotFoundError: no checkpoint there.
    errors.ConfigError: the checkpoint holds another network than `unet_config`.
  """
  graphdef, abstract_params = unet.abstract_model(unet_config)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  target = jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
    abstract_params.to_pure_dict(),
  )
  directory = paths.resolve(workdir, what='--workdir') / 'checkpoints'
  try:
    params, step = restore_params(directory, target, use_ema=use_ema, step=step)
  except ValueError as e:
    raise errors.ConfigError(
      f'The checkpoint in {directory} does not fit the network of this config ({e}). Evaluate with '
      'the config it was trained with (saved as WORKDIR/config.json).'
    ) from e
  return graphdef, params, step


def abstract_like(tree: Any, shardings: Any = None) -> Any:
  """ShapeDtypeStructs (with shardings, if given) describing `tree`, for restoring into it."""
  if shardings is None:
    return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(
        x.shape, x.dtype, sharding=getattr(x, 'sharding', None)
      ),
      tree,
    )
  return jax.tree.map(
    lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
    tree,
    shardings,
  )
