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

"""Training augmentations as pure JAX functions, run inside the jitted train step.

Every example draws its own random transform from its own key (`augment` splits the
key over the batch and vmaps the per-example function). The geometric part (one of
the eight dihedral transforms, then an optional shift-scale-rotate) is composed into a
single inverse coordinate map that samples the image bilinearly and every mask with
nearest neighbour, so the image and all its annotations stay aligned. Without the
affine part the map has integer coordinates and the dihedral transform is exact.
Then an optional random crop (`crop_size`, SPEC §4 "crop64") and the intensity
transforms (gamma, brightness/contrast) of the image, which stays in [0, 1].
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

# Inverse maps of the dihedral group D4 acting on centred (row, col) coordinates:
# k = 0..3 rotate by k * 90 degrees, k = 4..7 additionally transpose.
_ROT90 = np.array([[0, -1], [1, 0]], np.float32)
_TRANSPOSE = np.array([[0, 1], [1, 0]], np.float32)
DIHEDRAL_MATRICES = np.stack(
  [
    np.linalg.matrix_power(_ROT90, k % 4)
    @ (_TRANSPOSE if k >= 4 else np.eye(2, dtype=np.float32))
    for k in range(8)
  ]
).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
  """Augmentation settings (SPEC §2 "Augmentation", §4 "crop64").

  Attributes:
    dihedral: draw one of the 8 flips/rotations uniformly (needs square images).
    gamma_p: probability of `image ** g`, g ~ U(gamma_range).
    brightness_contrast_p: probability of `image * (1 + c) + b`,
      c ~ U(+-contrast_limit), b ~ U(+-brightness_limit).
    affine_p: probability of a shift-scale-rotate warp.
    max_rotation_deg: rotation ~ U(+-max_rotation_deg).
    crop_size: 0 for no crop, else a uniformly placed square window of this size.
    gamma_range: range of the gamma exponent.
    brightness_limit: brightness shift limit (image units).
    contrast_limit: relative contrast change limit.
    shift_limit: shift ~ U(+-shift_limit) times the image size, per axis.
    scale_limit: zoom factor ~ 1 + U(+-scale_limit).
  """

  dihedral: bool = True
  gamma_p: float = 0.3
  brightness_contrast_p: float = 0.3
  affine_p: float = 0.3
  max_rotation_deg: float = 20.0
  crop_size: int = 0
  gamma_range: tuple[float, float] = (0.7, 1.5)
  brightness_limit: float = 0.2
  contrast_limit: float = 0.2
  shift_limit: float = 0.0625
  scale_limit: float = 0.1

  def __post_init__(self):
    # Hashable (a static jit argument) even when built from lists, e.g. config overrides.
    object.__setattr__(
      self, 'gamma_range', tuple(float(g) for g in self.gamma_range)
    )
    for name in ('gamma_p', 'brightness_contrast_p', 'affine_p'):
      if not 0.0 <= getattr(self, name) <= 1.0:
        raise ValueError(
          f'AugmentConfig.{name}={getattr(self, name)} must be a probability in [0, 1].'
        )


def affine_matrix(*, angle_deg, scale):
  """Inverse 2x2 map (output -> input, centred coordinates) of rotation + zoom.

  Args:
    angle_deg: scalar rotation of the content in degrees.
    scale: scalar zoom factor (> 1 enlarges the content).

  Returns:
    [2, 2] float32 matrix R(-angle) / scale.
  """
  theta = jnp.deg2rad(jnp.asarray(angle_deg, jnp.float32))
  cos, sin = jnp.cos(theta), jnp.sin(theta)
  return jnp.array([[cos, sin], [-sin, cos]], jnp.float32) / scale


def warp(*, image, masks, matrix, offset):
  """Samples image and masks at input coordinates `c + matrix @ (p - c) - offset`.

  Args:
    image: [H, W, C] float; sampled bilinearly.
    masks: [M, H, W] integer/bool; sampled with nearest neighbour.
    matrix: [2, 2] inverse linear map in centred (row, col) coordinates.
    offset: [2] shift of the content in pixels (row, col).

  Returns:
    (image [H, W, C] float32, masks [M, H, W] of the masks' dtype). Outside the
    input, both are mirrored about the edge pixels (scipy "mirror").
  """
  height, width = image.shape[:2]
  centre = jnp.array([(height - 1) / 2.0, (width - 1) / 2.0], jnp.float32)
  rows, cols = jnp.meshgrid(
    jnp.arange(height, dtype=jnp.float32),
    jnp.arange(width, dtype=jnp.float32),
    indexing='ij',
  )
  out = (
    jnp.stack([rows, cols], axis=0).reshape(2, -1)
    - centre[:, None]
    - offset[:, None]
  )
  src = (matrix @ out + centre[:, None]).reshape(2, height, width)

  def sample(channel, order):
    return jax.scipy.ndimage.map_coordinates(
      channel, [src[0], src[1]], order=order, mode='mirror'
    )

  image = jax.vmap(lambda ch: sample(ch, 1), in_axes=-1, out_axes=-1)(
    image.astype(jnp.float32)
  )
  warped_masks = jax.vmap(lambda ch: sample(ch, 0))(masks.astype(jnp.float32))
  return image, warped_masks.astype(masks.dtype)


def crop(*, image, masks, top, left, size):
  """The window [top:top+size, left:left+size] of image [H,W,C] and masks [M,H,W]."""
  image = jax.lax.dynamic_slice(
    image, (top, left, 0), (size, size, image.shape[-1])
  )
  masks = jax.lax.dynamic_slice(
    masks, (0, top, left), (masks.shape[0], size, size)
  )
  return image, masks


def map_examples(fn, rng, *arrays):
  """Applies fn(key, *example) to every example, each with its own key from `rng`.

  Args:
    fn: per-example function of (key, *[...] slices).
    rng: PRNG key, split into one key per example.
    *arrays: [B, ...] arrays.

  Returns:
    fn's outputs stacked over the batch (a vmap: under the training mesh's Auto axes XLA keeps the
    per-example work on the devices that hold the examples).
  """
  keys = jax.random.split(rng, arrays[0].shape[0])
  return jax.vmap(fn)(keys, *arrays)


def _uniform(rng, low, high):
  return jax.random.uniform(rng, (), jnp.float32, low, high)


def augment_example(rng, image, masks, config: AugmentConfig):
  """Augments one example.

  Args:
    rng: PRNG key.
    image: [H, W, C] float in [0, 1].
    masks: [M, H, W] uint8/bool.
    config: AugmentConfig.

  Returns:
    (image [h, w, C] float32 in [0, 1], masks [M, h, w]), h = w = crop_size if set, else H, W.
  """
  height, width = image.shape[:2]
  keys = jax.random.split(rng, 12)
  matrix = jnp.eye(2, dtype=jnp.float32)
  offset = jnp.zeros((2,), jnp.float32)
  if config.dihedral:
    if height != width:
      raise ValueError(
        f'dihedral augmentation needs square images, got {height}x{width}; '
        'set AugmentConfig(dihedral=False) for non-square data.'
      )
    matrix = jnp.asarray(DIHEDRAL_MATRICES)[
      jax.random.randint(keys[0], (), 0, 8)
    ]
  if config.affine_p > 0:
    apply = jax.random.bernoulli(keys[1], config.affine_p)
    angle = _uniform(keys[2], -config.max_rotation_deg, config.max_rotation_deg)
    scale = 1.0 + _uniform(keys[3], -config.scale_limit, config.scale_limit)
    shift = jax.random.uniform(
      keys[4], (2,), jnp.float32, -config.shift_limit, config.shift_limit
    )
    shift = shift * jnp.array([height, width], jnp.float32)
    # Dihedral first, then the affine warp: the inverse maps compose in reverse order.
    matrix = jnp.where(
      apply, matrix @ affine_matrix(angle_deg=angle, scale=scale), matrix
    )
    offset = jnp.where(apply, shift, offset)
  if config.dihedral or config.affine_p > 0:
    image, masks = warp(image=image, masks=masks, matrix=matrix, offset=offset)
  image = image.astype(jnp.float32)
  if config.crop_size:
    size = config.crop_size
    if size > min(height, width):
      raise ValueError(
        f'crop_size={size} exceeds the image size {height}x{width}.'
      )
    top = jax.random.randint(keys[5], (), 0, height - size + 1)
    left = jax.random.randint(keys[6], (), 0, width - size + 1)
    image, masks = crop(image=image, masks=masks, top=top, left=left, size=size)
  if config.gamma_p > 0:
    gamma = _uniform(keys[7], *config.gamma_range)
    image = jnp.where(
      jax.random.bernoulli(keys[8], config.gamma_p),
      jnp.clip(image, 0.0, 1.0) ** gamma,
      image,
    )
  if config.brightness_contrast_p > 0:
    contrast = 1.0 + _uniform(
      keys[9], -config.contrast_limit, config.contrast_limit
    )
    brightness = _uniform(
      keys[10], -config.brightness_limit, config.brightness_limit
    )
    image = jnp.where(
      jax.random.bernoulli(keys[11], config.brightness_contrast_p),
      image * contrast + brightness,
      image,
    )
  return jnp.clip(image, 0.0, 1.0), masks


@functools.partial(jax.jit, static_argnames='config')
def augment(rng, image, masks, config: AugmentConfig):
  """Augments a batch, each example with its own random transform.

  Args:
    rng: PRNG key.
    image: [B, H, W, C] float in [0, 1].
    masks: [B, M, H, W] uint8/bool (all M annotations get the image's geometric transform).
    config: AugmentConfig (static).

  Returns:
    (image [B, h, w, C] float32 in [0, 1], masks [B, M, h, w] of the masks' dtype).
  """
  if (
    image.ndim != 4
    or masks.ndim != 4
    or image.shape[:3] != (masks.shape[0],) + masks.shape[2:]
  ):
    raise ValueError(
      f'augment expects image [B,H,W,C] and masks [B,M,H,W] of the same B, H, W; '
      f'got image {image.shape} and masks {masks.shape}.'
    )
  return map_examples(
    lambda k, x, m: augment_example(k, x, m, config), rng, image, masks
  )


@jax.jit
def choose_annotation(rng, masks):
  """Picks one of the M annotations per example uniformly and encodes it.

  Args:
    rng: PRNG key.
    masks: [B, M, H, W] uint8/bool in {0, 1}.

  Returns:
    x0 [B, H, W, 1] float32 in {-1, +1} (x0 = 2 m - 1).
  """
  num_masks = masks.shape[1]

  def choose(key, example_masks):
    return example_masks[jax.random.randint(key, (), 0, num_masks)]

  chosen = map_examples(choose, rng, masks)
  return (2.0 * chosen.astype(jnp.float32) - 1.0)[..., None]
