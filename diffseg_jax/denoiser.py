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

"""Where the network meets the diffusion math: the network's image input, `denoise_fn(z, t, image)`
and the per-example training loss.

`models/` knows nothing of diffusion and `diffusion.py` knows nothing of Flax; this module (used by the
train step, validation, evaluation and prediction) is the one place that knows both.
"""

from flax import nnx
import jax
import jax.numpy as jnp

from diffseg_jax import augment
from diffseg_jax import diffusion
from diffseg_jax import errors

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_PREPROCESSINGS = ('grey', 'imagenet_rgb')


def image_channels(preprocessing: str) -> int:
  _check_choice(
    'dataset.image_preprocessing', preprocessing, IMAGE_PREPROCESSINGS
  )
  return 3 if preprocessing == 'imagenet_rgb' else 1


def network_image(image: jnp.ndarray, *, preprocessing: str) -> jnp.ndarray:
  """Maps a grey [B,H,W,1] image in [0, 1] to the network's image input.

  'imagenet_rgb' is the authors' input (SPEC §2a): quantised to uint8, repeated to 3 channels and
  normalised with ImageNet statistics; their released checkpoints need exactly this.
  """
  _check_choice(
    'dataset.image_preprocessing', preprocessing, IMAGE_PREPROCESSINGS
  )
  image = image.astype(jnp.float32)
  if preprocessing == 'grey':
    return image
  quantised = jnp.round(jnp.clip(image, 0.0, 1.0) * 255.0) / 255.0
  rgb = jnp.repeat(quantised, 3, axis=-1)
  return (rgb - jnp.asarray(IMAGENET_MEAN)) / jnp.asarray(IMAGENET_STD)


# Each call is a copy of the network in the compiled program: more would mostly add compile time.
MAX_CHUNKS = 8


def num_chunks(rows_per_device: int, chunk_size: int) -> int:
  """How many network calls a batch of `rows_per_device` examples per device is cut into.

  The most calls (at most MAX_CHUNKS) of at least `chunk_size` examples that divide the rows
  evenly; 1 when `chunk_size` is 0 (one call for the whole batch).
  """
  if chunk_size < 0:
    raise ValueError(f'chunk_size must be >= 0, got {chunk_size}.')
  if not chunk_size or rows_per_device <= chunk_size:
    return 1
  k = min(MAX_CHUNKS, rows_per_device // chunk_size)
  while rows_per_device % k:
    k -= 1
  return k


def make_denoise_fn(model, *, rngs=None, chunks: int = 1):
  """Returns `denoise_fn(z, t, image, self_cond=None) -> raw network output` (dropout only with `rngs`).

  What arrives as `t` (time or logSNR) is the diffusion config's `conditioning` choice; `self_cond`
  (the diffusion's self-conditioning x0 estimate) goes to the network's extra input channel.

  With `chunks` > 1 the batch goes through the network as that many independent calls (example
  i in call i % chunks, so each call keeps a batch-sharded layout) and the outputs are put back in
  order: the same numbers, but XLA:CPU runs the independent calls side by side on its cores
  (`config.network_chunk_size`; benchmarks/RESULTS.md).
  """

  def call(z, t, image, self_cond):
    return model(z, t, image, extra=self_cond, rngs=rngs)

  def denoise_fn(z, t, image, self_cond=None):
    batch = z.shape[0]
    if chunks <= 1 or batch % chunks:
      return call(z, t, image, self_cond)

    def part(x, i):
      return (
        None
        if x is None
        else x.reshape((batch // chunks, chunks) + x.shape[1:])[:, i]
      )

    outs = [
      call(part(z, i), part(t, i), part(image, i), part(self_cond, i))
      for i in range(chunks)
    ]
    return jnp.stack(outs, axis=1).reshape((batch,) + outs[0].shape[1:])

  return denoise_fn


def example_losses(
  model,
  *,
  image,
  masks,
  annotation_rng,
  noise_rng,
  diffusion_config: diffusion.DiffusionConfig,
  preprocessing: str,
  compute_dtype=jnp.float32,
  dropout_rng=None,
  chunks: int = 1,
) -> jax.Array:
  """The diffusion loss of each example against one of its annotations drawn at random.

  With diffusion_config.target 'annotation_posterior' the loss also sees all of the example's
  annotations (`diffusion.annotation_posterior_mean`).

  The one loss of training (after augmentation) and validation.

  Args:
    model: the U-Net.
    image: [B, H, W, 1] in [0, 1].
    masks: [B, M, H, W] annotations in {0, 1}.
    annotation_rng: picks one annotation per example.
    noise_rng: the diffusion time and noise.
    diffusion_config: the diffusion.
    preprocessing: config.dataset.image_preprocessing.
    compute_dtype: the dtype the network's image input is cast to.
    dropout_rng: dropout randomness (None: no dropout).
    chunks: independent network calls the batch is cut into (`make_denoise_fn`).

  Returns:
    float32 [B] weighted losses.
  """
  x0 = augment.choose_annotation(annotation_rng, masks)
  net_image = network_image(image, preprocessing=preprocessing).astype(
    compute_dtype
  )
  rngs = None if dropout_rng is None else nnx.Rngs(dropout=dropout_rng)
  losses, _ = diffusion.loss(
    make_denoise_fn(model, rngs=rngs, chunks=chunks),
    x0=x0,
    image=net_image,
    rng=noise_rng,
    config=diffusion_config,
    annotations=(2.0 * jnp.asarray(masks, jnp.float32) - 1.0)[..., None],
  )
  return losses


def _check_choice(key: str, value: str, choices) -> None:
  if value not in choices:
    raise errors.ConfigError(
      f'config.{key}={value!r} is not one of {list(choices)}.'
    )
