"""Where the network meets the diffusion math: config -> UNet, and UNet -> `denoise_fn(z, t, image)`.

`models/` knows nothing of diffusion and `diffusion.py` knows nothing of Flax; this module (used by the
trainer, evaluation and prediction) is the one place that knows both.
"""

import contextlib
import dataclasses

import jax.numpy as jnp
import ml_collections

from diffseg_jax import diffusion
from diffseg_jax import errors
from diffseg_jax.models import unet

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_PREPROCESSINGS = ("grey", "imagenet_rgb")


def image_channels(preprocessing: str) -> int:
  _check_choice("dataset.image_preprocessing", preprocessing, IMAGE_PREPROCESSINGS)
  return 3 if preprocessing == "imagenet_rgb" else 1


def network_image(image: jnp.ndarray, *, preprocessing: str) -> jnp.ndarray:
  """Maps a grey [B,H,W,1] image in [0, 1] to the network's image input.

  'imagenet_rgb' is the authors' input (SPEC §2a): quantised to uint8, repeated to 3 channels and
  normalised with ImageNet statistics; their released checkpoints need exactly this.
  """
  _check_choice("dataset.image_preprocessing", preprocessing, IMAGE_PREPROCESSINGS)
  image = image.astype(jnp.float32)
  if preprocessing == "grey":
    return image
  quantised = jnp.round(jnp.clip(image, 0.0, 1.0) * 255.0) / 255.0
  rgb = jnp.repeat(quantised, 3, axis=-1)
  return (rgb - jnp.asarray(IMAGENET_MEAN)) / jnp.asarray(IMAGENET_STD)


def diffusion_config(config: ml_collections.ConfigDict) -> diffusion.DiffusionConfig:
  d = config.diffusion
  with _naming("config.diffusion"):
    return diffusion.DiffusionConfig(
        schedule=d.schedule, input_scale=d.input_scale, prediction=d.prediction,
        weighting=d.weighting, decoupled=d.decoupled, conditioning=d.time_conditioning)


def sampler_config(config: ml_collections.ConfigDict) -> diffusion.SamplerConfig:
  s = config.sampler
  with _naming("config.sampler"):
    return diffusion.SamplerConfig(name=s.name, num_steps=s.num_steps, variance=s.variance,
                                   ddim_eps=s.ddim_eps)


def unet_config(config: ml_collections.ConfigDict) -> unet.UNetConfig:
  """The UNet for `config`: x-prediction gets a tanh output layer, v and eps an identity."""
  m = config.model
  fields = {f.name for f in dataclasses.fields(unet.UNetConfig)}
  kwargs = {k: (tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in m.items() if k in fields}
  unknown = sorted(set(m.keys()) - fields)
  if unknown:
    raise errors.ConfigError(f"config.model has keys the UNet does not know: {unknown}; valid: {sorted(fields)}")
  with _naming("config.model"):
    return unet.UNetConfig(
        **kwargs,
        image_channels=image_channels(config.dataset.image_preprocessing),
        out_channels=1,
        output_activation="tanh" if config.diffusion.prediction == "x" else "identity",
    )


def make_denoise_fn(model, *, rngs=None):
  """Returns `denoise_fn(z, t, image) -> raw network output` (dropout active only with `rngs`).

  What arrives as `t` (time or logSNR) is the diffusion config's `conditioning` choice.
  """

  def denoise_fn(z, t, image):
    return model(z, t, image, rngs=rngs)

  return denoise_fn


@contextlib.contextmanager
def _naming(section: str):
  """Re-raises a dataclass's ValueError as a ConfigError that names the config section."""
  try:
    yield
  except errors.ConfigError:
    raise
  except ValueError as e:
    raise errors.ConfigError(f"{section}: {e}") from e


def _check_choice(key: str, value: str, choices) -> None:
  if value not in choices:
    raise errors.ConfigError(f"config.{key}={value!r} is not one of {list(choices)}.")
