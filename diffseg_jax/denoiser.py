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


def make_denoise_fn(model, *, rngs=None):
  """Returns `denoise_fn(z, t, image, self_cond=None) -> raw network output` (dropout only with `rngs`).

  What arrives as `t` (time or logSNR) is the diffusion config's `conditioning` choice; `self_cond`
  (the diffusion's self-conditioning x0 estimate) goes to the network's extra input channel.
  """

  def denoise_fn(z, t, image, self_cond=None):
    return model(z, t, image, extra=self_cond, rngs=rngs)

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
) -> jax.Array:
  """The diffusion loss of each example against one of its annotations drawn at random.

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

  Returns:
    float32 [B] weighted losses.
  """
  x0 = augment.choose_annotation(annotation_rng, masks)
  net_image = network_image(image, preprocessing=preprocessing).astype(
    compute_dtype
  )
  rngs = None if dropout_rng is None else nnx.Rngs(dropout=dropout_rng)
  losses, _ = diffusion.loss(
    make_denoise_fn(model, rngs=rngs),
    x0=x0,
    image=net_image,
    rng=noise_rng,
    config=diffusion_config,
  )
  return losses


def _check_choice(key: str, value: str, choices) -> None:
  if value not in choices:
    raise errors.ConfigError(
      f'config.{key}={value!r} is not one of {list(choices)}.'
    )
