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

"""Training: the train state, the jitted sharded step, EMA, Orbax checkpoints, logging, validation.

The train state is a plain pytree {params, ema_params, opt_state, step, rng}; the NNX module is split
once and merged inside the jitted step. The per-step randomness is `fold_in(rng, step)` and the data
order a pure function of (seed, step), so a run resumed from any checkpoint repeats exactly what an
uninterrupted run would have done.

For benchmarks and notebooks, `build(config)` returns the pieces of a run (mesh, state, the jitted step)
exactly as `train_and_evaluate` uses them.
"""

import dataclasses
import os
import signal
from typing import Any, Callable, Mapping

from absl import logging
from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from diffseg_jax import augment as augment_lib
from diffseg_jax import checkpoint
from diffseg_jax import denoiser
from diffseg_jax import diffusion
from diffseg_jax import errors
from diffseg_jax import input_pipeline
from diffseg_jax import metric_writers
from diffseg_jax import optimizer as optimizer_lib
from diffseg_jax import parallel
from diffseg_jax import settings as settings_lib
from diffseg_jax import validation
from diffseg_jax.models import unet
from tfds_lidc import paths


def create_train_state(
  unet_config: unet.UNetConfig,
  mesh,
  optimizer,
  *,
  seed: int,
  param_sharding: str = 'replicated',
):
  """Builds the state directly in its shardings (identical on every host); returns (state, shardings)."""
  _, abstract_params = unet.abstract_model(unet_config)
  p_sharding = parallel.param_sharding(
    mesh, abstract_params.to_pure_dict(), param_sharding
  )
  replicated = parallel.replicated(mesh)
  rng = jax.random.PRNGKey(seed)
  init_rng, state_rng = jax.random.split(rng)

  def init():
    params = unet.init_params(unet_config, init_rng)
    return {
      'params': params,
      'ema_params': jax.tree.map(jnp.copy, params),
      'opt_state': optimizer.init(params),
      'step': jnp.zeros((), jnp.int32),
      'rng': jax.random.key_data(state_rng),
    }

  abstract = jax.eval_shape(init)
  # Optimizer moments follow their parameter's sharding; counters are replicated.
  opt_sharding = optax.tree_map_params(
    optimizer,
    lambda _, s: s,
    abstract['opt_state'],
    p_sharding,
    transform_non_params=lambda _: replicated,
  )
  shardings = {
    'params': p_sharding,
    'ema_params': p_sharding,
    'opt_state': opt_sharding,
    'step': replicated,
    'rng': replicated,
  }
  return jax.jit(init, out_shardings=shardings)(), shardings


def make_train_step(
  graphdef,
  optimizer,
  *,
  learning_rate: optax.Schedule,
  diffusion_config: diffusion.DiffusionConfig,
  augment_config: augment_lib.AugmentConfig,
  preprocessing: str,
  compute_dtype=jnp.float32,
  dropout: bool = False,
  ema_decay: float,
):
  """Returns the pure step (state, batch) -> (state, metrics); jit it with `jit_train_step`.

  One step: augment, the loss of `denoiser.example_losses` (dropout active if `dropout`), an optimizer
  update, the EMA update, and the NaN guard (a non-finite loss or gradient leaves the state as it was,
  except the step). `learning_rate` is the optimizer's schedule, only logged here.
  """

  def step_fn(state, batch):
    step = state['step']
    rng = jax.random.fold_in(jax.random.wrap_key_data(state['rng']), step)
    aug_rng, annot_rng, loss_rng, dropout_rng = jax.random.split(rng, 4)
    image, masks = augment_lib.augment(
      aug_rng, batch['image'], batch['masks'], augment_config
    )

    def loss_fn(params):
      losses = denoiser.example_losses(
        nnx.merge(graphdef, params),
        image=image,
        masks=masks,
        annotation_rng=annot_rng,
        noise_rng=loss_rng,
        diffusion_config=diffusion_config,
        preprocessing=preprocessing,
        compute_dtype=compute_dtype,
        dropout_rng=dropout_rng if dropout else None,
      )
      return jnp.mean(losses)

    loss, grads = jax.value_and_grad(loss_fn)(state['params'])
    updates, opt_state = optimizer.update(
      grads, state['opt_state'], state['params']
    )
    params = optax.apply_updates(state['params'], updates)
    ema = optimizer_lib.ema_update(
      state['ema_params'], params, decay=ema_decay, step=step
    )
    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    new_state = {
      'params': params,
      'ema_params': ema,
      'opt_state': opt_state,
      'step': step + 1,
      'rng': state['rng'],
    }
    # A non-finite step leaves the state untouched (except the step) so the host can stop cleanly.
    kept = jax.tree.map(
      lambda new, old: jnp.where(finite, new, old), new_state, state
    )
    kept['step'] = step + 1
    metrics_out = {
      'loss': loss,
      'grad_norm': grad_norm,
      'finite': finite.astype(jnp.float32),
      'learning_rate': learning_rate(step),
    }
    return kept, metrics_out

  return step_fn


def jit_train_step(step_fn, mesh, state_shardings):
  batch_sharding = {
    'image': parallel.batch_sharding(mesh),
    'masks': parallel.batch_sharding(mesh),
  }
  return jax.jit(
    step_fn,
    in_shardings=(state_shardings, batch_sharding),
    out_shardings=(state_shardings, parallel.replicated(mesh)),
    donate_argnums=(0,),
  )


@dataclasses.dataclass
class TrainParts:
  """The pieces of a training run, as `train_and_evaluate` uses them (see `build`)."""

  settings: settings_lib.Settings
  mesh: jax.sharding.Mesh
  graphdef: Any
  state: Mapping[str, Any]
  shardings: Mapping[str, Any]
  train_step: Callable[[Any, Any], Any]


def build(config: ml_collections.ConfigDict) -> TrainParts:
  """Resolves `config` and builds the mesh, the initial state and the jitted train step.

  `parts.train_step(parts.state, batch)` with batch {'image' [B,H,W,1], 'masks' [B,M,H,W]} sharded
  with `parallel.batch_sharding(parts.mesh)` is one real training step (augmentation, EMA, NaN guard).
  """
  settings = settings_lib.resolve(config)
  mesh = parallel.make_mesh(config.mesh.data)
  _check_batch_size(config.batch_size, mesh)
  schedule = optimizer_lib.learning_rate_schedule(
    settings.optim, config.num_train_steps
  )
  optimizer = optimizer_lib.make_optimizer(settings.optim, schedule)
  graphdef, _ = unet.abstract_model(settings.unet)
  state, shardings = create_train_state(
    settings.unet,
    mesh,
    optimizer,
    seed=config.seed,
    param_sharding=config.mesh.param_sharding,
  )
  step_fn = make_train_step(
    graphdef,
    optimizer,
    learning_rate=schedule,
    diffusion_config=settings.diffusion,
    augment_config=settings.augment,
    preprocessing=settings.preprocessing,
    compute_dtype=settings.compute_dtype,
    dropout=settings.unet.dropout > 0,
    ema_decay=config.ema_decay,
  )
  return TrainParts(
    settings=settings,
    mesh=mesh,
    graphdef=graphdef,
    state=state,
    shardings=shardings,
    train_step=jit_train_step(step_fn, mesh, shardings),
  )


def _check_batch_size(batch_size: int, mesh):
  n = mesh.shape[parallel.DATA_AXIS]
  if batch_size % n or batch_size % jax.process_count():
    raise errors.ConfigError(
      f'config.batch_size={batch_size} must divide evenly over {n} devices and '
      f'{jax.process_count()} processes; pick a multiple of {n}.'
    )


def _config_json(config) -> str:
  return config.to_json_best_effort(sort_keys=True, indent=2)


class _PreemptionFlag:
  """Set by SIGTERM (preemption): the loop saves a checkpoint and leaves at the next step."""

  def __init__(self):
    self.set = False
    self._previous = None

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handler)
    # Not the main thread: no handler (tests running the loop in a thread).
    except ValueError:
      self._previous = None
    return self

  def _handler(self, signum, frame):
    del signum, frame
    self.set = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def train_and_evaluate(
  config: ml_collections.ConfigDict, workdir: str
) -> Mapping[str, Any]:
  """Trains (resuming from the latest checkpoint in `workdir`), validating and saving periodically.

  Returns the final train state (for tests and notebooks).
  """
  workdir = paths.resolve(workdir, what='--workdir')
  is_main = jax.process_index() == 0
  if is_main:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / 'config.json').write_text(_config_json(config))
  writer = metric_writers.create_writer(workdir, just_logging=not is_main)

  input_pipeline.prepare_dataset(
    name=config.dataset.name,
    data_dir=config.dataset.data_dir,
    split=config.dataset.train_split,
  )
  train_source = input_pipeline.load_source(
    name=config.dataset.name,
    split=config.dataset.train_split,
    data_dir=config.dataset.data_dir,
  )
  parts = build(config)
  mesh, state = parts.mesh, parts.state
  ckpt = checkpoint.Checkpointer(
    workdir / 'checkpoints',
    max_to_keep=config.max_checkpoints_to_keep,
    async_save=config.async_checkpointing,
  )
  batches = input_pipeline.train_batches(
    train_source,
    global_batch_size=config.batch_size,
    seed=config.seed,
    mesh=mesh,
    data_axis=parallel.DATA_AXIS,
  )
  if ckpt.latest_step() is not None:
    state, _ = ckpt.restore(
      checkpoint.abstract_like(state, parts.shardings), data_iterator=batches
    )
    logging.info(
      'Resumed from step %d (%s).', int(state['step']), ckpt.directory
    )
  start_step = int(state['step'])
  if start_step == 0 and is_main:
    num_params = sum(x.size for x in jax.tree.leaves(state['params']))
    writer.write_hparams({'num_params': num_params, **_flat(config.to_dict())})
    logging.info(
      'UNet with %d parameters on a %s mesh of %s.',
      num_params,
      dict(mesh.shape),
      jax.devices()[0].platform,
    )

  train_step = parts.train_step
  val = config.validation
  validator = None
  if val.every_steps > 0:
    validator = validation.Validator(
      parts.graphdef,
      mesh,
      input_pipeline.load_source(
        name=config.dataset.name,
        split=val.split,
        data_dir=config.dataset.data_dir,
      ),
      settings=parts.settings,
      num_images=val.num_images,
      batch_size=val.batch_size,
      num_samples=val.num_samples,
      num_grid_images=config.num_grid_images,
      seed=config.seed,
      workdir=workdir,
      writer=writer,
      is_main=is_main,
    )
  report = metric_writers.ReportProgress(
    total=config.num_train_steps,
    every=config.log_every_steps,
    unit='steps',
    what='train',
    writer=writer,
  )

  def save(step, force=False):
    ckpt.save(
      step,
      state,
      {'data_step': step, 'config': config.to_dict()},
      data_iterator=batches,
      force=force,
    )

  pending = []
  last_good_step = ckpt.latest_step()
  step = start_step
  try:
    with _PreemptionFlag() as preempted:
      while step < config.num_train_steps:
        state, step_metrics = train_step(state, next(batches))
        pending.append(step_metrics)
        step += 1
        report(step)
        last = step == config.num_train_steps
        stop = preempted.set  # Read once: SIGTERM may arrive at any moment.
        save_now = step % config.checkpoint_every_steps == 0 or last or stop
        if step % config.log_every_steps == 0 or save_now:
          _log_train_metrics(writer, step, pending, last_good_step, workdir)
          pending = []
        if save_now:
          save(step, force=True)
          last_good_step = step
        if validator is not None and (step % val.every_steps == 0 or last):
          validator(state['ema_params'], step)
        if stop:
          logging.warning(
            'SIGTERM received: saved step %d to %s; exiting.',
            step,
            ckpt.directory,
          )
          break
  finally:
    # Whatever stops the loop, finish the checkpoint writes already started.
    ckpt.close()
    writer.flush()
    writer.close()
    if hasattr(batches, 'close'):
      batches.close()
  return state


def _flat(d, prefix=''):
  out = {}
  for k, v in d.items():
    if isinstance(v, Mapping):
      out.update(_flat(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = (
        v if isinstance(v, (int, float, str, bool)) else str(v)
      )
  return out


def _log_train_metrics(writer, step, pending, last_good_step, workdir):
  stacked = jax.device_get(pending)
  finite = np.array([m['finite'] for m in stacked])
  if not finite.all():
    bad = step - len(stacked) + int(np.argmin(finite)) + 1
    raise errors.NonFiniteLossError(
      f'Non-finite loss or gradient at step {bad}. The state was not updated by that step and no '
      f'checkpoint was written after it; the last good checkpoint is step {last_good_step} in '
      f'{os.path.join(workdir, "checkpoints")}. Lower config.optim.learning_rate, check the data, '
      "or use config.model.dtype='float32', then rerun to resume from it."
    )
  means = {
    k: float(np.mean([m[k] for m in stacked]))
    for k in stacked[0]
    if k != 'finite'
  }
  writer.write_scalars(step, {f'train/{k}': v for k, v in means.items()})
