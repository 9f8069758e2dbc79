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

The train state is a plain pytree {params, ema_params, opt_state, step, rng, bad_steps}; the NNX
module is split once and merged inside the jitted step. The per-step randomness is `fold_in(rng, step)` and the data
order a pure function of (seed, step), so a run resumed from any checkpoint repeats exactly what an
uninterrupted run would have done.

Checkpoints follow Orbax's own save decision (`Checkpointer.should_save`: every
`config.checkpoint_every_steps`, the last step, and the step at which all processes agree to stop
after a SIGTERM). A preempted run raises `errors.PreemptedError` once that checkpoint is written;
`main` exits with status 143 and the same command resumes.

For benchmarks and notebooks, `build(config)` returns the pieces of a run (mesh, state, the jitted step)
exactly as `train_and_evaluate` uses them.
"""

import dataclasses
import signal
import threading
import time
from typing import Any, Callable, Mapping, Optional

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

_clock = time.monotonic  # Tests replace it.


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
      'bad_steps': jnp.zeros((), jnp.int32),
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
    'bad_steps': replicated,
  }
  return _compile_run_once(
    jax.jit(init, out_shardings=shardings), mesh
  )(), shardings


# A program that runs once is not worth LLVM's optimisation on XLA:CPU: create_train_state for the
# quickstart's U-Net took 19.6 s at XLA's default level and 7.0-7.7 s at level 0 (its compile 4.8 s;
# 2-core AMD EPYC), with bit-identical parameters (tests/test_train.py).
_RUN_ONCE_CPU_COMPILER_OPTIONS = {'xla_backend_optimization_level': 0}


def _compile_run_once(jitted, mesh):
  lowered = jitted.lower()
  if mesh.devices.flat[0].platform == 'cpu':
    try:
      return lowered.compile(compiler_options=_RUN_ONCE_CPU_COMPILER_OPTIONS)
    except (jax.errors.JaxRuntimeError, ValueError):
      # An XLA that does not know the option compiles as usual.
      pass
  return lowered.compile()


def all_finite(*trees) -> jax.Array:
  """True when every floating-point value in `trees` is finite (integer leaves are ignored).

  `x * 0` is 0 where x is finite and NaN elsewhere, so a sum of such terms is NaN exactly when a
  value is not finite (a plain sum of large finite values could overflow). Leaves of one shape (a
  parameter, its gradient, EMA and Adam moments) are added before one reduction per shape: a
  reduction per leaf made XLA:CPU compile the step several times slower.
  """
  by_shape = {}
  for x in jax.tree.leaves(trees):
    if jnp.issubdtype(x.dtype, jnp.inexact):
      by_shape.setdefault(x.shape, []).append(x.astype(jnp.float32) * 0)
  total = jnp.zeros((), jnp.float32)
  for terms in by_shape.values():
    total = total + jnp.sum(sum(terms[1:], terms[0]))
  return jnp.isfinite(total)


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
  max_bad_steps: int = 10,
  network_chunks: int = 1,
):
  """Returns the pure step (state, batch) -> (state, metrics); jit it with `jit_train_step`.

  One step: augment, the loss of `denoiser.example_losses` (dropout active if `dropout`), an optimizer
  update, the EMA update, and the NaN guard: the update is applied only when the loss, the gradients,
  the updated parameters, EMA parameters and optimizer state are all finite. A skipped step leaves
  the state as it was except `step` (the batch is consumed) and `bad_steps`, the count of consecutive
  skips; once it reaches `max_bad_steps` no later update is applied either, so the state stays the
  one before the first bad step until the host stops the run. `learning_rate` is the optimizer's
  schedule, only logged here. `network_chunks` cuts the batch into that many independent network
  calls (`denoiser.make_denoise_fn`).
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
        chunks=network_chunks,
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
    # A NaN learning rate gives a finite loss and gradient but NaN parameters: check the results.
    finite = jnp.isfinite(loss) & all_finite(grads, params, ema, opt_state)
    apply = finite & (state['bad_steps'] < max_bad_steps)
    kept = jax.tree.map(
      lambda new, old: jnp.where(apply, new, old),
      {'params': params, 'ema_params': ema, 'opt_state': opt_state},
      {k: state[k] for k in ('params', 'ema_params', 'opt_state')},
    )
    bad_steps = jnp.where(apply, 0, state['bad_steps'] + 1)
    new_state = {
      **kept,
      'step': step + 1,
      'rng': state['rng'],
      'bad_steps': bad_steps.astype(jnp.int32),
    }
    metrics_out = {
      'loss': loss,
      'grad_norm': optax.global_norm(grads),
      'finite': finite.astype(jnp.float32),
      'bad_steps': new_state['bad_steps'],
      'learning_rate': learning_rate(step),
    }
    return new_state, metrics_out

  return step_fn


def jit_train_step(step_fn, mesh, state_shardings, compiler_options=None):
  batch_sharding = {
    'image': parallel.batch_sharding(mesh),
    'masks': parallel.batch_sharding(mesh),
  }
  return jax.jit(
    step_fn,
    in_shardings=(state_shardings, batch_sharding),
    out_shardings=(state_shardings, parallel.replicated(mesh)),
    donate_argnums=(0,),
    compiler_options=compiler_options,
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
  _check_max_bad_steps(config.max_bad_steps)
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
    max_bad_steps=config.max_bad_steps,
    network_chunks=denoiser.num_chunks(
      config.batch_size // mesh.shape[parallel.DATA_AXIS],
      settings.train_network_chunk_size,
    ),
  )
  return TrainParts(
    settings=settings,
    mesh=mesh,
    graphdef=graphdef,
    state=state,
    shardings=shardings,
    train_step=jit_train_step(
      step_fn, mesh, shardings, settings.unet.compiler_options()
    ),
  )


def _check_batch_size(batch_size: int, mesh):
  n = mesh.shape[parallel.DATA_AXIS]
  if batch_size % n or batch_size % jax.process_count():
    raise errors.ConfigError(
      f'config.batch_size={batch_size} must divide evenly over {n} devices and '
      f'{jax.process_count()} processes; pick a multiple of {n}.'
    )


def _check_max_bad_steps(value) -> None:
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise errors.ConfigError(
      f'config.max_bad_steps={value!r} must be a positive integer (the number of consecutive '
      'non-finite updates skipped before training stops): set --config.max_bad_steps=N with N >= 1.'
    )


def _config_json(config) -> str:
  return config.to_json_best_effort(sort_keys=True, indent=2)


class _Preemption:
  """Tells the loop at which step every process saves and stops after a SIGTERM (a preemption notice).

  Several processes: JAX's preemption sync manager, started by `jax.distributed.initialize`, catches
  SIGTERM on any process and agrees with all of them on one step, which Orbax's
  `CheckpointManager.reached_preemption(step)` reports on every process. Its handler must stay in
  place, so none is installed here. One process without `jax.distributed` has no sync manager: a
  SIGTERM handler here stands in for it (main thread only; tests run the loop in threads too).
  """

  def __init__(self, ckpt: checkpoint.Checkpointer, start_step: int):
    self._ckpt = ckpt
    self._start_step = start_step
    self._signalled = False
    self._previous = None

  def __enter__(self):
    local = jax.process_count() == 1
    if local and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handler)
    # The sync point is one past the furthest step any process has reported: report the first one
    # now, so that a notice arriving before the first step is honoured at that step.
    self._ckpt.reached_preemption(self._start_step)
    return self

  def _handler(self, signum, frame):
    del signum, frame
    self._signalled = True

  def reached(self, step: int) -> bool:
    """Whether to save `step` and stop; call once per step, with every step, on every process."""
    # Read the local flag once: SIGTERM may arrive at any moment.
    return self._ckpt.reached_preemption(step) or self._signalled

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def train_and_evaluate(
  config: ml_collections.ConfigDict, workdir: str
) -> Mapping[str, Any]:
  """Trains (resuming from the latest checkpoint in `workdir`), validating and saving periodically.

  Returns the final train state (for tests and notebooks).

  Raises:
    errors.PreemptedError: after a SIGTERM, once every process has saved the agreed step.
    errors.NonFiniteLossError: `config.max_bad_steps` consecutive updates were non-finite.
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
  ckpt = checkpoint.Checkpointer(
    workdir / 'checkpoints',
    max_to_keep=config.max_checkpoints_to_keep,
    async_save=config.async_checkpointing,
    save_every_steps=config.checkpoint_every_steps,
    final_step=config.num_train_steps,
  )
  batches = input_pipeline.train_batches(
    train_source,
    global_batch_size=config.batch_size,
    seed=config.seed,
    mesh=parts.mesh,
    data_axis=parallel.DATA_AXIS,
  )
  try:
    # From here on a SIGTERM is noted (one process) or agreed on (several), not fatal.
    with _Preemption(ckpt, ckpt.latest_step() or 0) as preemption:
      return _train_loop(
        config, workdir, parts, ckpt, batches, writer, preemption
      )
  finally:
    # Whatever stops the loop, finish the checkpoint writes already started.
    ckpt.close()
    writer.flush()
    writer.close()
    if hasattr(batches, 'close'):
      batches.close()


def _train_loop(config, workdir, parts, ckpt, batches, writer, preemption):
  """Restores the latest checkpoint, if any, then trains to config.num_train_steps."""
  mesh, state = parts.mesh, parts.state
  is_main = jax.process_index() == 0
  # Wall seconds spent in this loop, summed over the runs that led to each checkpoint (compilation
  # and in-training validation included): the x axis of benchmarks/quality_curve.py.
  seconds_before = 0.0
  if ckpt.latest_step() is not None:
    state, meta = ckpt.restore(
      checkpoint.abstract_like(state, parts.shardings), data_iterator=batches
    )
    seconds_before = float(meta.get('train_seconds', 0.0))
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

  pending = []
  step = start_step
  started = _clock()
  while step < config.num_train_steps:
    state, step_metrics = parts.train_step(state, next(batches))
    pending.append(step_metrics)
    step += 1
    report(step)
    # Orbax decides the saves (every checkpoint_every_steps, the last step, the step all processes
    # agreed on after a SIGTERM): the same on every process.
    preempted = preemption.reached(step)
    save_now = preempted or ckpt.should_save(step)
    if step % config.log_every_steps == 0 or save_now:
      # Raises NonFiniteLossError, before any save, after max_bad_steps skipped updates.
      _log_train_metrics(
        writer,
        step,
        pending,
        max_bad_steps=config.max_bad_steps,
        latest_checkpoint=ckpt.latest_step(),
        checkpoint_dir=ckpt.directory,
        train_seconds=seconds_before + _clock() - started,
      )
      pending = []
    if save_now:
      ckpt.save(
        step,
        state,
        {
          'data_step': step,
          'config': config.to_dict(),
          'train_seconds': seconds_before + _clock() - started,
        },
        data_iterator=batches,
        force=True,
      )
    if (
      validator is not None
      and not preempted
      and (step % val.every_steps == 0 or step == config.num_train_steps)
    ):
      validator(state['ema_params'], step)
    if preempted:
      ckpt.wait_until_finished()
      message = (
        f'SIGTERM (preemption): every process saved step {step} to {ckpt.directory} and '
        f'stopped; rerun the same command to resume (exit status {errors.EXIT_PREEMPTED}).'
      )
      logging.warning('%s', message)
      raise errors.PreemptedError(message)
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


def _log_train_metrics(
  writer,
  step: int,
  pending,
  *,
  max_bad_steps: int,
  latest_checkpoint: Optional[int],
  checkpoint_dir: str,
  train_seconds: float = 0.0,
):
  """Writes the mean metrics of the steps in `pending` (the last one is `step`) over applied steps.

  Raises:
    errors.NonFiniteLossError: `max_bad_steps` consecutive updates were non-finite (and skipped).
  """
  stacked = jax.device_get(pending)
  steps = range(step - len(stacked) + 1, step + 1)
  bad_steps = [int(m['bad_steps']) for m in stacked]
  for s, count in zip(steps, bad_steps):
    if count >= max_bad_steps:
      first = s - count + 1
      kept = (
        f'the latest checkpoint, step {latest_checkpoint} in {checkpoint_dir}, holds only finite '
        'values'
        if latest_checkpoint is not None
        else f'no checkpoint was written to {checkpoint_dir}'
      )
      raise errors.NonFiniteLossError(
        f'Non-finite update (loss, gradients, parameters or optimizer state) at step {first} and '
        f'the {max_bad_steps - 1} steps after it (config.max_bad_steps={max_bad_steps}): none was '
        f'applied or saved and training stopped; {kept}. Lower config.optim.learning_rate, check '
        "the data, or use config.model.dtype='float32', then rerun to resume."
      )
  skipped = [s for s, m in zip(steps, stacked) if not m['finite']]
  if skipped:
    logging.warning(
      'Skipped %d non-finite update(s), at step(s) %s; %d consecutive now (training stops at '
      'config.max_bad_steps=%d).',
      len(skipped),
      ', '.join(map(str, skipped)),
      bad_steps[-1],
      max_bad_steps,
    )
  applied = [m for m in stacked if m['finite']]
  means = {
    f'train/{k}': float(np.mean([m[k] for m in applied]))
    for k in stacked[0]
    if applied and k not in ('finite', 'bad_steps')
  }
  means['train/skipped_steps'] = float(len(skipped))
  means['train/minutes'] = train_seconds / 60
  writer.write_scalars(step, means)
