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

"""Batched, sharded sampling of many segmentations per image with the trained network.

Sample j of an image is a function of the image, the image's key and j alone: it starts from
noise drawn with `split(fold_in(key, j))[0]` and the DDPM steps draw with `split(fold_in(key, j))[1]`
(see `sample_key`). Which other images share the call, how the samples are chunked, how many devices
or processes take part do not change it (up to the float rounding of network calls of other batch
shapes; on XLA CPU a network batch of 1 example rounds differently from larger ones).
"""

import dataclasses

from flax import nnx
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

from diffseg_jax import denoiser
from diffseg_jax import diffusion
from diffseg_jax.parallel import DATA_AXIS


def key_data(keys) -> np.ndarray:
  """Raw uint32 key data of PRNG keys (typed key arrays or legacy uint32 [..., 2])."""
  keys = jnp.asarray(keys) if not isinstance(keys, jax.Array) else keys
  if jnp.issubdtype(keys.dtype, jax.dtypes.prng_key):
    keys = jax.random.key_data(keys)
  return np.asarray(keys, np.uint32)


def image_keys(rng, indices) -> jax.Array:
  """Per-image keys [B]: fold_in(rng, index) for each image's index in its split (< 2**31)."""
  indices = np.asarray(indices, np.int64)
  if indices.size and (indices.min() < 0 or indices.max() >= 2**31):
    raise ValueError(f'image indices must lie in [0, 2**31), got {indices}.')
  return jax.vmap(lambda i: jax.random.fold_in(rng, i))(
    indices.astype(np.int32)
  )


def sample_key(key, index):
  """The key of sample `index` of an image whose key is `key`: fold_in(key, index)."""
  return jax.random.fold_in(key, index)


class Sampler:
  """`sampler(params, image [b,H,W,C] in [0,1], keys [b], num_samples, num_steps=None) -> bool numpy [b, N, H, W]`.

  keys[i] is image i's PRNG key (a typed key array or legacy uint32 [b, 2]); sample j of image i
  depends on image i, keys[i] and j only (module doc). Every process passes its own b images (the
  same b on every process, and all processes call together: the images of all processes form one
  global batch over the mesh's data axis, padded to a multiple of the local device count) and gets
  their samples back. Samples are drawn in equal chunks so that one network call sees at most
  `max_batch` examples per device; every chunk is one compiled `lax` loop over the sampler steps.

  The step count and the chunk's first sample index are traced values: one compilation serves every
  step count (`num_steps`, default sampler_config.num_steps) and every chunk; a new chunk size or
  image batch shape compiles again.

  Args:
    graphdef: the U-Net's graph (settings.Settings.unet, `unet.abstract_model`).
    mesh: the device mesh (`parallel.make_mesh`).
    diffusion_config: the diffusion the network was trained with.
    sampler_config: sampler name, default step count and variance.
    preprocessing: config.dataset.image_preprocessing.
    compute_dtype: the network's compute dtype.
    max_batch: max examples (images x samples) per device and network call.
    chunk_size: examples per device of each independent network call inside a step
      (`denoiser.num_chunks`; 0: the whole batch in one call; settings.Settings.network_chunk_size).
    compiler_options: XLA options of the compiled sampler (`UNetConfig.compiler_options`).
  """

  def __init__(
    self,
    graphdef,
    mesh,
    *,
    diffusion_config: diffusion.DiffusionConfig,
    sampler_config: diffusion.SamplerConfig,
    preprocessing: str,
    compute_dtype=jnp.float32,
    max_batch: int = 256,
    chunk_size: int = 0,
    compiler_options=None,
  ):
    self._mesh = mesh
    self._max_batch = int(max_batch)
    self._num_steps = int(sampler_config.num_steps)
    self._sharding = NamedSharding(mesh, P(DATA_AXIS))
    me = jax.process_index()
    self._local_devices = sum(d.process_index == me for d in mesh.devices.flat)
    if not self._local_devices:
      raise ValueError(
        f'process {me} holds no device of the sampling mesh {dict(mesh.shape)}; '
        'use a mesh over the devices of every process (config.mesh.data=-1).'
      )
    self._processes = mesh.shape[DATA_AXIS] // self._local_devices
    dcfg = diffusion_config
    # The step count is an argument of the compiled function, never a constant of its trace.
    scfg = dataclasses.replace(sampler_config, num_steps=1)

    devices = mesh.shape[DATA_AXIS]

    def sample(params, image, keys, start, num_steps, *, num_samples):
      rows = image.shape[0]
      m = rows * num_samples
      chunks = denoiser.num_chunks(m // devices, chunk_size)
      denoise_fn = denoiser.make_denoise_fn(
        nnx.merge(graphdef, params), chunks=chunks
      )
      net_image = denoiser.network_image(
        image, preprocessing=preprocessing
      ).astype(compute_dtype)
      keys = jax.random.wrap_key_data(keys)
      indices = start + jnp.arange(num_samples, dtype=jnp.int32)
      # Example (image r, sample j) gets its own key; its noise depends on that key only.
      sample_keys = jax.vmap(
        lambda key: jax.vmap(lambda j: sample_key(key, j))(indices)
      )(keys).reshape(m)
      init_keys, loop_keys = jax.vmap(lambda k: tuple(jax.random.split(k)))(
        sample_keys
      )
      z_init = jax.vmap(
        lambda k: jax.random.normal(k, image.shape[1:3] + (1,), jnp.float32)
      )(init_keys)
      x0_hat = diffusion.sample_loop(
        denoise_fn,
        image=jnp.repeat(net_image, num_samples, axis=0),
        z_init=z_init,
        rng=loop_keys,
        diffusion=dcfg,
        sampler=scfg,
        num_steps=num_steps,
      )
      return (x0_hat[..., 0] > 0).reshape(
        (rows, num_samples) + image.shape[1:3]
      )

    self._sample = jax.jit(
      sample,
      static_argnames=('num_samples',),
      out_shardings=self._sharding,
      compiler_options=compiler_options,
    )

  def __call__(
    self, params, image, keys, num_samples: int, num_steps=None
  ) -> np.ndarray:
    image = np.asarray(image, np.float32)
    keys = key_data(keys)
    batch = image.shape[0]
    if keys.shape != (batch, 2):
      raise ValueError(
        f'Sampler: keys must be one PRNG key per image ({batch}), got key data {keys.shape}.'
      )
    num_steps = self._num_steps if num_steps is None else int(num_steps)
    if num_steps < 1:
      raise ValueError(f'Sampler: num_steps must be >= 1, got {num_steps}.')
    n_local = self._local_devices
    padded = -(-batch // n_local) * n_local
    if padded != batch:
      image = np.concatenate(
        [image, np.repeat(image[-1:], padded - batch, axis=0)]
      )
      keys = np.concatenate([keys, np.repeat(keys[-1:], padded - batch, 0)])
    rows = padded * self._processes
    global_image = jax.make_array_from_process_local_data(
      self._sharding, image, (rows,) + image.shape[1:]
    )
    global_keys = jax.make_array_from_process_local_data(
      self._sharding, keys, (rows, 2)
    )
    # Equal chunks (the last one trimmed afterwards), so a call compiles one sampler shape only.
    max_chunk = max(1, min(num_samples, self._max_batch * n_local // padded))
    num_chunks = -(-num_samples // max_chunk)
    chunk = -(-num_samples // num_chunks)
    outputs = []
    for i in range(num_chunks):
      out = self._sample(
        params,
        global_image,
        global_keys,
        np.int32(i * chunk),
        np.int32(num_steps),
        num_samples=chunk,
      )
      if self._processes > 1:
        out = multihost_utils.global_array_to_host_local_array(
          out, self._mesh, P(DATA_AXIS)
        )
      outputs.append(np.asarray(out))
    return np.concatenate(outputs, axis=1)[:batch, :num_samples]
