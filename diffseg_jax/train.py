"""Training: mesh, train state, the jitted sharded step, EMA, Orbax checkpoints, logging, validation.

The train state is a plain pytree {params, ema_params, opt_state, step, rng}; the NNX module is split
once and merged inside the jitted step. The per-step randomness is `fold_in(rng, step)` and the data
order a pure function of (seed, step), so a run resumed from any checkpoint repeats exactly what an
uninterrupted run would have done.
"""

import os
import signal
import time
from typing import Any, Mapping

from absl import logging
from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from diffseg_jax import augment
from diffseg_jax import checkpoint
from diffseg_jax import denoiser
from diffseg_jax import diffusion
from diffseg_jax import errors
from diffseg_jax import input_pipeline
from diffseg_jax import metric_writers
from diffseg_jax import metrics
from diffseg_jax import sampling
from diffseg_jax import visualize
from diffseg_jax.models import unet

DATA_AXIS = "data"
FSDP_MIN_SIZE = 2**14


def prepare_dataset(config: ml_collections.ConfigDict) -> None:
  """Builds the synthetic data set on first use (no download); LIDC sets must be built by the user.

  A build of an older version of the builder (which may lack features) is not reused: the current
  version is built beside it. Process 0 builds while the others wait at a barrier.
  """
  name = config.dataset.name
  if not name.startswith("synthetic_lesions/"):
    return
  from tfds_lidc import build  # pylint: disable=g-import-not-at-top
  from tfds_lidc import synthetic_lesions  # pylint: disable=g-import-not-at-top

  current = name if ":" in name else f"{name}:{synthetic_lesions.SyntheticLesions.VERSION}"
  try:
    input_pipeline.load_source(name=current, split=config.dataset.train_split,
                               data_dir=config.dataset.data_dir)
    return
  except FileNotFoundError:
    pass
  if jax.process_index() == 0:
    logging.info("Building %s into %s (first use).", name, config.dataset.data_dir)
    build.build(name, os.path.expanduser(config.dataset.data_dir), log=logging.info)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f"prepare_dataset:{name}")


def make_mesh(config: ml_collections.ConfigDict) -> jax.sharding.Mesh:
  """A 1-D data-parallel mesh over `config.mesh.data` devices (-1: all devices of all hosts)."""
  n = jax.device_count() if config.mesh.data == -1 else config.mesh.data
  if n < 1 or n > jax.device_count():
    raise errors.ConfigError(f"config.mesh.data={config.mesh.data} but {jax.device_count()} devices exist.")
  return jax.make_mesh((n,), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=jax.devices()[:n])


def param_sharding(mesh, abstract_params, mode: str):
  """Replicated, or 'fsdp': each large parameter sharded over the data axis along its last divisible dim."""
  replicated = NamedSharding(mesh, P())
  if mode == "replicated":
    return jax.tree.map(lambda _: replicated, abstract_params)
  if mode != "fsdp":
    raise errors.ConfigError(f"config.mesh.param_sharding={mode!r} is not one of ['replicated', 'fsdp'].")
  n = mesh.shape[DATA_AXIS]

  def rule(x):
    if x.size < FSDP_MIN_SIZE:
      return replicated
    for axis in reversed(range(x.ndim)):
      if x.shape[axis] % n == 0:
        spec = [None] * x.ndim
        spec[axis] = DATA_AXIS
        return NamedSharding(mesh, P(*spec))
    return replicated

  return jax.tree.map(rule, abstract_params)


def learning_rate_schedule(optim: ml_collections.ConfigDict, num_train_steps: int):
  """Linear warm-up, constant, then cosine decay to 0 over the last `decay_steps` steps."""
  warmup = max(int(optim.warmup_steps), 0)
  decay = min(max(int(optim.decay_steps), 0), max(num_train_steps - warmup, 0))
  constant = max(num_train_steps - warmup - decay, 0)
  lr = optim.learning_rate
  pieces = [optax.linear_schedule(0.0, lr, warmup), optax.constant_schedule(lr),
            optax.cosine_decay_schedule(lr, max(decay, 1))]
  return optax.join_schedules(pieces, boundaries=[warmup, warmup + constant])


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  o = config.optim
  return optax.chain(
      optax.clip_by_global_norm(o.grad_clip) if o.grad_clip > 0 else optax.identity(),
      optax.adamw(learning_rate_schedule(o, config.num_train_steps), b1=o.b1, b2=o.b2,
                  weight_decay=o.weight_decay),
  )


def abstract_model(config: ml_collections.ConfigDict):
  """(graphdef, abstract params) of the configured UNet, without allocating it."""
  cfg = denoiser.unet_config(config)
  graphdef, params = nnx.split(nnx.eval_shape(lambda: unet.UNet(cfg, rngs=nnx.Rngs(0))), nnx.Param)
  return graphdef, params.to_pure_dict()


def init_params(config: ml_collections.ConfigDict, rng):
  cfg = denoiser.unet_config(config)
  _, params = nnx.split(unet.UNet(cfg, rngs=nnx.Rngs(params=rng)), nnx.Param)
  return params.to_pure_dict()


def ema_decay(decay: float, step):
  """EMA decay with the usual warm-up min(decay, (1 + step) / (10 + step))."""
  step = step.astype(jnp.float32)
  return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def create_train_state(config, mesh, optimizer):
  """Builds the state directly in its shardings (identical on every host); returns (state, shardings)."""
  _, abstract_params = abstract_model(config)
  p_sharding = param_sharding(mesh, abstract_params, config.mesh.param_sharding)
  replicated = NamedSharding(mesh, P())
  rng = jax.random.PRNGKey(config.seed)
  init_rng, state_rng = jax.random.split(rng)

  def init():
    params = init_params(config, init_rng)
    return {
        "params": params,
        "ema_params": jax.tree.map(jnp.copy, params),
        "opt_state": optimizer.init(params),
        "step": jnp.zeros((), jnp.int32),
        "rng": jax.random.key_data(state_rng),
    }

  abstract = jax.eval_shape(init)
  # Optimizer moments follow their parameter's sharding; counters are replicated.
  opt_sharding = optax.tree_map_params(
      optimizer, lambda _, s: s, abstract["opt_state"], p_sharding,
      transform_non_params=lambda _: replicated)
  shardings = {"params": p_sharding, "ema_params": p_sharding, "opt_state": opt_sharding,
               "step": replicated, "rng": replicated}
  return jax.jit(init, out_shardings=shardings)(), shardings


def make_train_step(config: ml_collections.ConfigDict, graphdef, optimizer):
  """Returns the pure step (state, batch) -> (state, metrics); jit it with shardings."""
  dcfg = denoiser.diffusion_config(config)
  acfg = augment.AugmentConfig(**config.augment.to_dict())
  preprocessing = config.dataset.image_preprocessing
  compute_dtype = jnp.dtype(config.model.dtype)

  def step_fn(state, batch):
    step = state["step"]
    rng = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), step)
    aug_rng, annot_rng, loss_rng, dropout_rng = jax.random.split(rng, 4)
    image, masks = augment.augment(aug_rng, batch["image"], batch["masks"], acfg)
    x0 = augment.choose_annotation(annot_rng, masks)
    net_image = denoiser.network_image(image, preprocessing=preprocessing).astype(compute_dtype)

    def loss_fn(params):
      model = nnx.merge(graphdef, params)
      rngs = nnx.Rngs(dropout=dropout_rng) if config.model.dropout > 0 else None
      denoise_fn = denoiser.make_denoise_fn(model, rngs=rngs)
      losses, _ = diffusion.loss(denoise_fn, x0=x0, image=net_image, rng=loss_rng, config=dcfg)
      return jnp.mean(losses)

    loss, grads = jax.value_and_grad(loss_fn)(state["params"])
    updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    decay = ema_decay(config.ema_decay, step)
    ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, state["ema_params"], params)
    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    new_state = {"params": params, "ema_params": ema, "opt_state": opt_state, "step": step + 1,
                 "rng": state["rng"]}
    # A non-finite step leaves the state untouched (except the step) so the host can stop cleanly.
    kept = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
    kept["step"] = step + 1
    metrics_out = {"loss": loss, "grad_norm": grad_norm, "finite": finite.astype(jnp.float32),
                   "learning_rate": learning_rate_schedule(config.optim, config.num_train_steps)(step)}
    return kept, metrics_out

  return step_fn


def jit_train_step(step_fn, mesh, state_shardings):
  batch_sharding = {"image": NamedSharding(mesh, P(DATA_AXIS)),
                    "masks": NamedSharding(mesh, P(DATA_AXIS))}
  replicated = NamedSharding(mesh, P())
  return jax.jit(step_fn, in_shardings=(state_shardings, batch_sharding),
                 out_shardings=(state_shardings, replicated), donate_argnums=(0,))


def _check_batch_size(config, mesh):
  n = mesh.shape[DATA_AXIS]
  if config.batch_size % n or config.batch_size % jax.process_count():
    raise errors.ConfigError(
        f"config.batch_size={config.batch_size} must divide evenly over {n} devices and "
        f"{jax.process_count()} processes; pick a multiple of {n}.")


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
    except ValueError:  # Not the main thread: no handler (tests running the loop in a thread).
      self._previous = None
    return self

  def _handler(self, signum, frame):
    del signum, frame
    self.set = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> Mapping[str, Any]:
  """Trains (resuming from the latest checkpoint in `workdir`), validating and saving periodically.

  Returns the final train state (for tests and notebooks).
  """
  workdir = os.path.abspath(os.path.expanduser(workdir))
  is_main = jax.process_index() == 0
  if is_main:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
      f.write(_config_json(config))
  writer = metric_writers.create_writer(workdir, just_logging=not is_main)

  mesh = make_mesh(config)
  _check_batch_size(config, mesh)
  prepare_dataset(config)
  train_source = input_pipeline.load_source(
      name=config.dataset.name, split=config.dataset.train_split, data_dir=config.dataset.data_dir)
  eval_source = input_pipeline.load_source(
      name=config.dataset.name, split=config.dataset.eval_split, data_dir=config.dataset.data_dir)

  optimizer = make_optimizer(config)
  graphdef, _ = abstract_model(config)
  state, shardings = create_train_state(config, mesh, optimizer)
  ckpt = checkpoint.Checkpointer(
      os.path.join(workdir, "checkpoints"), max_to_keep=config.max_checkpoints_to_keep,
      async_save=config.async_checkpointing)
  batches = input_pipeline.train_batches(
      train_source, global_batch_size=config.batch_size, seed=config.seed, mesh=mesh,
      data_axis=DATA_AXIS)
  if ckpt.latest_step() is not None:
    state, _ = ckpt.restore(checkpoint.abstract_like(state, shardings), data_iterator=batches)
    logging.info("Resumed from step %d (%s).", int(state["step"]), ckpt.directory)
  start_step = int(state["step"])
  if start_step == 0 and is_main:
    num_params = sum(x.size for x in jax.tree.leaves(state["params"]))
    writer.write_hparams({"num_params": num_params, **_flat(config.to_dict())})
    logging.info("UNet with %d parameters on a %s mesh of %s.", num_params, dict(mesh.shape),
                 jax.devices()[0].platform)

  train_step = jit_train_step(make_train_step(config, graphdef, optimizer), mesh, shardings)
  validator = _Validator(config, graphdef, mesh, eval_source, workdir, writer, is_main)
  report = metric_writers.ReportProgress(num_train_steps=config.num_train_steps, writer=writer,
                                         every_steps=config.log_every_steps, every_secs=None)

  def save(step, force=False):
    ckpt.save(step, state, {"data_step": step, "config": config.to_dict()}, data_iterator=batches,
              force=force)

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
        if config.eval_every_steps > 0 and (step % config.eval_every_steps == 0 or last):
          validator(state, step)
        if stop:
          logging.warning("SIGTERM received: saved step %d to %s; exiting.", step, ckpt.directory)
          break
  finally:
    # Whatever stops the loop, finish the checkpoint writes already started.
    ckpt.close()
    writer.flush()
    writer.close()
    if hasattr(batches, "close"):
      batches.close()
  return state


def _flat(d, prefix=""):
  out = {}
  for k, v in d.items():
    if isinstance(v, Mapping):
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v if isinstance(v, (int, float, str, bool)) else str(v)
  return out


def _log_train_metrics(writer, step, pending, last_good_step, workdir):
  stacked = jax.device_get(pending)
  finite = np.array([m["finite"] for m in stacked])
  if not finite.all():
    bad = step - len(stacked) + int(np.argmin(finite)) + 1
    raise errors.NonFiniteLossError(
        f"Non-finite loss or gradient at step {bad}. The state was not updated by that step and no "
        f"checkpoint was written after it; the last good checkpoint is step {last_good_step} in "
        f"{os.path.join(workdir, 'checkpoints')}. Lower config.optim.learning_rate, check the data, "
        "or use config.model.dtype='float32', then rerun to resume from it.")
  means = {k: float(np.mean([m[k] for m in stacked])) for k in stacked[0] if k != "finite"}
  writer.write_scalars(step, {f"train/{k}": v for k, v in means.items()})


class _Validator:
  """Periodic validation: loss, GED and HM-IoU with few samples, and PNG grids of EMA samples."""

  def __init__(self, config, graphdef, mesh, eval_source, workdir, writer, is_main):
    self.config = config
    self.workdir = workdir
    self.writer = writer
    self.is_main = is_main
    num = min(config.eval_num_images, len(eval_source))
    self.batches = list(input_pipeline.eval_batches(
        eval_source, batch_size=config.eval_batch_size, num_examples=num))
    self.sampler = sampling.Sampler(config, graphdef, mesh)
    self.loss_fn = jax.jit(self._make_loss_fn(config, graphdef))

  @staticmethod
  def _make_loss_fn(config, graphdef):
    dcfg = denoiser.diffusion_config(config)

    def val_loss(params, image, masks, rng):
      annot_rng, loss_rng = jax.random.split(rng)
      x0 = augment.choose_annotation(annot_rng, masks)
      model = nnx.merge(graphdef, params)
      net_image = denoiser.network_image(image, preprocessing=config.dataset.image_preprocessing)
      losses, _ = diffusion.loss(denoiser.make_denoise_fn(model), x0=x0,
                                 image=net_image, rng=loss_rng, config=dcfg)
      return losses

    return val_loss

  def __call__(self, state, step):
    start = time.time()
    rng = jax.random.PRNGKey(self.config.seed + 1)
    losses, geds, hm_ious = [], [], []
    grid = None
    for i, batch in enumerate(self.batches):
      valid = batch["valid"]
      loss = self.loss_fn(state["ema_params"], batch["image"], batch["masks"], jax.random.fold_in(rng, i))
      samples = self.sampler(state["ema_params"], batch["image"], jax.random.fold_in(rng, 10_000 + i),
                             self.config.eval_num_samples)
      annotations = batch["masks"].astype(bool)
      losses.append(np.asarray(loss)[valid])
      scores = metrics.all_metrics(samples, annotations)
      geds.append(scores["ged"][valid])
      hm_ious.append(scores["hm_iou"][valid])
      if grid is None:
        grid = (batch["image"][valid], annotations[valid], samples[valid])
    scalars = {"val/loss": float(np.mean(np.concatenate(losses))),
               f"val/ged_{self.config.eval_num_samples}": float(np.mean(np.concatenate(geds))),
               f"val/hm_iou_{self.config.eval_num_samples}": float(np.mean(np.concatenate(hm_ious))),
               "val/seconds": time.time() - start}
    self.writer.write_scalars(step, scalars)
    if self.is_main and grid is not None:
      k = self.config.num_grid_images
      path = os.path.join(self.workdir, "grids", f"val_step_{step:08d}.png")
      picture = visualize.save_grid(path, image=grid[0][:k], annotations=grid[1][:k], samples=grid[2][:k])
      self.writer.write_images(step, {"val/grid": picture[None]})
    return scalars
