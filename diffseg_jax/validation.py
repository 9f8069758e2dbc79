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

"""Validation during training: loss, GED and HM-IoU with few samples, and a PNG grid of EMA samples.

A health check, not the paper protocol (that is `evaluation.evaluate_checkpoint`). It samples with the
same `sampling.Sampler`, scores with the same `metrics.all_metrics` and computes the loss with the same
`denoiser.example_losses` as the train step. Each process samples and scores its share of the images
(image i drawn with `sampling.image_keys`, so the numbers do not depend on the number of processes or
the batch size); the scores are gathered before averaging. Every process computes the (cheap) loss of
every image.
"""

import time

from flax import nnx
import jax
from jax.experimental import multihost_utils
import numpy as np

from diffseg_jax import denoiser
from diffseg_jax import input_pipeline
from diffseg_jax import metric_writers
from diffseg_jax import metrics
from diffseg_jax import sampling
from diffseg_jax import settings as settings_lib
from diffseg_jax import visualize
from tfds_lidc import paths


class Validator:
  """`validator(params, step)` scores `params` on the first images of a split and writes the scalars.

  Args:
    graphdef: the U-Net's graph.
    mesh: the device mesh.
    source: the validation split (random-access source).
    settings: the resolved config.
    num_images: how many images of `source` to score (config.validation.num_images).
    batch_size: images per batch (config.validation.batch_size).
    num_samples: samples per image (config.validation.num_samples).
    num_grid_images: rows of the PNG grid (config.num_grid_images).
    seed: the validation randomness is `PRNGKey(seed + 1)`, the same at every step; image i's
      samples are drawn with `sampling.image_keys(fold_in(that key, 10_000), i)`.
    workdir: the grids go to WORKDIR/grids/val_step_<step>.png.
    writer: receives `val/...` scalars and the grid.
    is_main: whether this process writes the PNG.
  """

  def __init__(
    self,
    graphdef,
    mesh,
    source,
    *,
    settings: settings_lib.Settings,
    num_images: int,
    batch_size: int,
    num_samples: int,
    num_grid_images: int,
    seed: int,
    workdir: str,
    writer: metric_writers.MetricWriter,
    is_main: bool,
  ):
    self._num_samples = num_samples
    self._num_grid_images = num_grid_images
    self._seed = seed
    self._workdir = workdir
    self._writer = writer
    self._is_main = is_main
    num = min(num_images, len(source))
    self._batches = list(
      input_pipeline.eval_batches(
        source, batch_size=batch_size, num_examples=num
      )
    )
    self._processes = jax.process_count()
    self._sample_batches = self._batches
    if self._processes > 1:
      self._sample_batches = list(
        input_pipeline.eval_batches(
          source,
          batch_size=batch_size,
          num_examples=num,
          process_index=jax.process_index(),
          process_count=self._processes,
        )
      )
    self._sampler = sampling.Sampler(
      graphdef, mesh, **settings.sampler_kwargs()
    )

    def val_loss(params, image, masks, rng):
      annotation_rng, noise_rng = jax.random.split(rng)
      return denoiser.example_losses(
        nnx.merge(graphdef, params),
        image=image,
        masks=masks,
        annotation_rng=annotation_rng,
        noise_rng=noise_rng,
        diffusion_config=settings.diffusion,
        preprocessing=settings.preprocessing,
        compute_dtype=settings.compute_dtype,
      )

    self._loss_fn = jax.jit(
      val_loss, compiler_options=settings.unet.compiler_options()
    )

  def __call__(self, params, step: int) -> dict[str, float]:
    start = time.time()
    rng = jax.random.PRNGKey(self._seed + 1)
    n = self._num_samples
    losses = []
    for i, batch in enumerate(self._batches):
      loss = self._loss_fn(
        params, batch['image'], batch['masks'], jax.random.fold_in(rng, i)
      )
      losses.append(np.asarray(loss)[batch['valid']])
    sample_rng = jax.random.fold_in(rng, 10_000)
    geds, hm_ious, valid = [], [], []
    grid = None
    for batch in self._sample_batches:
      keys = sampling.image_keys(sample_rng, batch['index'])
      samples = self._sampler(params, batch['image'], keys, n)
      annotations = batch['masks'].astype(bool)
      scores = metrics.all_metrics(samples, annotations)
      geds.append(np.asarray(scores['ged'], np.float32))
      hm_ious.append(np.asarray(scores['hm_iou'], np.float32))
      valid.append(batch['valid'].astype(np.int32))
      if grid is None and batch['valid'].any():
        v = batch['valid']
        grid = (batch['image'][v], annotations[v], samples[v])
    geds, hm_ious, valid = (
      self._gather(np.concatenate(x)) for x in (geds, hm_ious, valid)
    )
    valid = valid.astype(bool)
    scalars = {
      'val/loss': float(np.mean(np.concatenate(losses))),
      f'val/ged_{n}': float(np.mean(geds[valid], dtype=np.float64)),
      f'val/hm_iou_{n}': float(np.mean(hm_ious[valid], dtype=np.float64)),
      'val/seconds': time.time() - start,
    }
    self._writer.write_scalars(step, scalars)
    if self._is_main and grid is not None:
      k = self._num_grid_images
      path = paths.resolve(self._workdir) / 'grids' / f'val_step_{step:08d}.png'
      picture = visualize.save_grid(
        path, image=grid[0][:k], annotations=grid[1][:k], samples=grid[2][:k]
      )
      self._writer.write_images(step, {'val/grid': picture[None]})
    return scalars

  def _gather(self, values: np.ndarray) -> np.ndarray:
    """This process's per-row values -> every process's, in process (= image) order."""
    if self._processes == 1:
      return values
    return np.asarray(multihost_utils.process_allgather(values)).reshape(-1)
