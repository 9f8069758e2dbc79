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

"""The ConfigDict read once, at the top, into the typed configs the library takes.

`resolve(config)` is the one place that reads the model, diffusion, sampler,
augment and optimizer sections; everything below it (train step, sampler,
validation, evaluation) takes these dataclasses and plain values. A bad value
fails here with a ConfigError naming its config section.
"""

import contextlib
import dataclasses

import jax
import jax.numpy as jnp
import ml_collections

from diffseg_jax import augment
from diffseg_jax import denoiser
from diffseg_jax import diffusion
from diffseg_jax import errors
from diffseg_jax import optimizer
from diffseg_jax.models import unet


@dataclasses.dataclass(frozen=True)
class Settings:
  """What the network, the diffusion and the optimizer are (from one config).

  Attributes:
    unet: the network.
    diffusion: noise schedule, prediction target, loss weighting.
    sampler: sampler name, steps, variance.
    augment: training augmentations.
    optim: optimizer and learning-rate schedule.
    preprocessing: config.dataset.image_preprocessing ('grey' | 'imagenet_rgb').
    compute_dtype: config.model.dtype, the dtype the network's image input is cast to.
    sampling_batch: max examples per network call when sampling (config.sampling_batch).
    network_chunk_size: examples per device of each independent network call when sampling
      (config.network_chunk_size, -1 resolved: 4 on the CPU back end, 0 = whole batch elsewhere).
    train_network_chunk_size: the same for the train step (-1 resolved: 0, the whole batch).
  """

  unet: unet.UNetConfig
  diffusion: diffusion.DiffusionConfig
  sampler: diffusion.SamplerConfig
  augment: augment.AugmentConfig
  optim: optimizer.OptimizerConfig
  preprocessing: str
  compute_dtype: jnp.dtype
  sampling_batch: int
  network_chunk_size: int = 0
  train_network_chunk_size: int = 0

  def sampler_kwargs(self) -> dict:
    """Keyword arguments of `sampling.Sampler` for this model."""
    return dict(
      diffusion_config=self.diffusion,
      sampler_config=self.sampler,
      preprocessing=self.preprocessing,
      compute_dtype=self.compute_dtype,
      max_batch=self.sampling_batch,
      chunk_size=self.network_chunk_size,
      compiler_options=self.unet.compiler_options(),
    )


def resolve(config: ml_collections.ConfigDict) -> Settings:
  """Reads `config` into `Settings` (raising a ConfigError that names the bad section)."""
  return Settings(
    unet=unet_config(config),
    diffusion=diffusion_config(config),
    sampler=sampler_config(config),
    augment=augment_config(config),
    optim=optimizer_config(config),
    preprocessing=config.dataset.image_preprocessing,
    compute_dtype=jnp.dtype(config.model.dtype),
    sampling_batch=int(config.sampling_batch),
    network_chunk_size=network_chunk_size(config),
    train_network_chunk_size=network_chunk_size(config, training=True),
  )


# Examples per network call of the sampler on XLA:CPU: independent calls of this size keep both
# cores of a 2-core machine busy (benchmarks/RESULTS.md, "Independent network calls"). The train
# step runs its batch in one call: with the convolutions of `UNetConfig.compiler_options` that took
# 2.33 s per step of the default U-Net at 128^2, batch 8, against 3.06 s in calls of 4 (AMD EPYC).
CPU_NETWORK_CHUNK_SIZE = 4


def network_chunk_size(
  config: ml_collections.ConfigDict, *, training: bool = False
) -> int:
  """config.network_chunk_size with -1 (auto) resolved for the default back end and the use."""
  size = config.network_chunk_size
  if not isinstance(size, int) or isinstance(size, bool) or size < -1:
    raise errors.ConfigError(
      f'config.network_chunk_size={size!r} must be an int >= 0, or -1 for automatic '
      f'(sampling: {CPU_NETWORK_CHUNK_SIZE} on CPU, 0 = the whole batch elsewhere; training: 0).'
    )
  if size == -1:
    if training:
      return 0
    return CPU_NETWORK_CHUNK_SIZE if jax.default_backend() == 'cpu' else 0
  return size


def diffusion_config(
  config: ml_collections.ConfigDict,
) -> diffusion.DiffusionConfig:
  d = config.diffusion
  with _naming('config.diffusion'):
    return diffusion.DiffusionConfig(
      schedule=d.schedule,
      input_scale=d.input_scale,
      prediction=d.prediction,
      weighting=d.weighting,
      decoupled=d.decoupled,
      conditioning=d.time_conditioning,
      loss=d.loss,
      self_condition=d.self_condition,
      self_condition_prob=d.self_condition_prob,
      target=d.target,
    )


def sampler_config(
  config: ml_collections.ConfigDict,
) -> diffusion.SamplerConfig:
  s = config.sampler
  with _naming('config.sampler'):
    return diffusion.SamplerConfig(
      name=s.name,
      num_steps=s.num_steps,
      variance=s.variance,
      ddim_eps=s.ddim_eps,
    )


def augment_config(config: ml_collections.ConfigDict) -> augment.AugmentConfig:
  with _naming('config.augment'):
    return augment.AugmentConfig(**config.augment.to_dict())


def optimizer_config(
  config: ml_collections.ConfigDict,
) -> optimizer.OptimizerConfig:
  with _naming('config.optim'):
    return optimizer.OptimizerConfig(**config.optim.to_dict())


def unet_config(config: ml_collections.ConfigDict) -> unet.UNetConfig:
  """The UNet for `config`: x-prediction gets a tanh output layer, v, eps and logit an identity.

  Self-conditioning (config.diffusion.self_condition) gives the network one extra input channel.
  """
  m = config.model
  fields = {f.name for f in dataclasses.fields(unet.UNetConfig)}
  kwargs = {
    k: (tuple(v) if isinstance(v, (list, tuple)) else v)
    for k, v in m.items()
    if k in fields
  }
  unknown = sorted(set(m.keys()) - fields)
  if unknown:
    raise errors.ConfigError(
      f'config.model has keys the UNet does not know: {unknown}; valid: {sorted(fields)}'
    )
  with _naming('config.model'):
    return unet.UNetConfig(
      **kwargs,
      image_channels=denoiser.image_channels(
        config.dataset.image_preprocessing
      ),
      extra_input_channels=1 if config.diffusion.self_condition else 0,
      out_channels=1,
      output_activation='tanh'
      if config.diffusion.prediction == 'x'
      else 'identity',
    )


@contextlib.contextmanager
def _naming(section: str):
  """Re-raises a dataclass's ValueError/TypeError as a ConfigError that names the config section."""
  try:
    yield
  except errors.ConfigError:
    raise
  except (ValueError, TypeError) as e:
    raise errors.ConfigError(f'{section}: {e}') from e
