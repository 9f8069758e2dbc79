"""Restoring trained (or converted) parameters, and `--mode=evaluate`: the full evaluation protocol."""

import os

from absl import logging
import jax
import ml_collections
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from diffseg_jax import checkpoint
from diffseg_jax import errors
from diffseg_jax import evaluation
from diffseg_jax import input_pipeline
from diffseg_jax import sampling
from diffseg_jax import train
from diffseg_jax import visualize


def load_params(config: ml_collections.ConfigDict, workdir: str, mesh):
  """(graphdef, params, step) of the latest checkpoint in WORKDIR/checkpoints, params replicated."""
  graphdef, abstract_params = train.abstract_model(config)
  replicated = NamedSharding(mesh, P())
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
                        abstract_params)
  directory = os.path.join(os.path.abspath(os.path.expanduser(workdir)), "checkpoints")
  try:
    params, step = checkpoint.restore_params(directory, target, use_ema=config.eval.use_ema)
  except ValueError as e:
    raise errors.ConfigError(
        f"The checkpoint in {directory} does not fit the network of this config ({e}). Evaluate with "
        "the config it was trained with (saved as WORKDIR/config.json).") from e
  return graphdef, params, step


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Samples config.eval.num_samples_list[-1] masks per image of config.eval.split and scores them.

  Writes WORKDIR/eval/<config.eval.output_name or split>/{metrics.json, per_image.jsonl, metrics.md,
  grid.png}; a separate output_name per sampler setting lets one checkpoint be scored many ways.
  """
  train.prepare_dataset(config)
  mesh = train.make_mesh(config)
  graphdef, params, step = load_params(config, workdir, mesh)
  split = config.eval.split
  source = input_pipeline.load_source(name=config.dataset.name, split=split,
                                      data_dir=config.dataset.data_dir)
  # The image-blind baseline draws with the training split's average mode probabilities.
  blind_mode_probs = evaluation.average_mode_probs(input_pipeline.load_source(
      name=config.dataset.name, split=config.dataset.train_split, data_dir=config.dataset.data_dir))
  num = None if config.eval.num_examples < 0 else min(config.eval.num_examples, len(source))
  batches = input_pipeline.eval_batches(source, batch_size=config.eval.batch_size, num_examples=num)
  sampler = sampling.Sampler(config, graphdef, mesh)
  is_main = jax.process_index() == 0
  out_dir = os.path.join(os.path.abspath(os.path.expanduser(workdir)), "eval",
                         config.eval.output_name or split)
  first = {}

  def sample_fn(image, rng, num_samples):
    samples = sampler(params, image, rng, num_samples)
    first.setdefault("samples", samples)
    return samples

  results = evaluation.evaluate(
      sample_fn, _remember_first(batches, first), num_samples_list=tuple(config.eval.num_samples_list),
      out_dir=out_dir if is_main else None, rng=jax.random.PRNGKey(config.eval.seed),
      split_name=split, blind_mode_probs=blind_mode_probs, log=logging.info)
  if is_main and first:
    k = config.num_grid_images
    visualize.save_grid(os.path.join(out_dir, "grid.png"), image=first["image"][:k],
                        annotations=first["masks"][:k], samples=first["samples"][:k])
    logging.info("Evaluated step %d on %s: results in %s", step, split, out_dir)
  return results


def _remember_first(batches, first):
  """Passes `batches` through, keeping the first one's images and masks for the picture."""
  for batch in batches:
    if "masks" not in first:
      first.update(image=batch["image"], masks=batch["masks"].astype(bool))
    yield batch
