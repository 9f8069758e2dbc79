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

"""Batched, sharded sampling of many segmentations per image with the trained network."""

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


class Sampler:
  """`sampler(params, image [B,H,W,1] in [0,1], rng, num_samples) -> bool numpy [B, N, H, W]`.

  Images are split over the mesh's data axis (B is padded to a multiple of it); samples are drawn in
  equal chunks so that one network call sees at most `max_batch` examples per device; every chunk is
  one compiled `lax` loop over all sampler steps, chunk i drawn with `fold_in(rng, i)`. Every process
  passes the same images and gets all samples.

  Args:
    graphdef: the U-Net's graph (settings.Settings.unet, `unet.abstract_model`).
    mesh: the device mesh (`parallel.make_mesh`).
    diffusion_config: the diffusion the network was trained with.
    sampler_config: sampler name, steps and variance.
    preprocessing: config.dataset.image_preprocessing.
    compute_dtype: the network's compute dtype.
    max_batch: max examples (images x samples) per device and network call.
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
  ):
    self._mesh = mesh
    self._max_batch = int(max_batch)
    self._image_sharding = NamedSharding(mesh, P(DATA_AXIS))
    dcfg = diffusion_config
    scfg = sampler_config

    def sample(params, image, rng, num_samples):
      model = nnx.merge(graphdef, params)
      net_image = denoiser.network_image(
        image, preprocessing=preprocessing
      ).astype(compute_dtype)
      return diffusion.sample(
        denoiser.make_denoise_fn(model),
        image=net_image,
        rng=rng,
        num_samples=num_samples,
        diffusion=dcfg,
        sampler=scfg,
      )

    self._sample = jax.jit(
      sample,
      static_argnums=(3,),
      out_shardings=NamedSharding(mesh, P(DATA_AXIS)),
    )

  def __call__(self, params, image, rng, num_samples: int) -> np.ndarray:
    image = np.asarray(image, np.float32)
    batch = image.shape[0]
    n_dev = self._mesh.shape[DATA_AXIS]
    padded = -(-batch // n_dev) * n_dev
    if padded != batch:
      image = np.concatenate(
        [image, np.repeat(image[-1:], padded - batch, axis=0)]
      )
    global_image = jax.make_array_from_process_local_data(
      self._image_sharding, image, image.shape
    )
    # Equal chunks (the last one trimmed afterwards), so a call compiles one sampler shape only.
    max_chunk = max(1, min(num_samples, self._max_batch * n_dev // padded))
    num_chunks = -(-num_samples // max_chunk)
    chunk = -(-num_samples // num_chunks)
    outputs = []
    for i in range(num_chunks):
      out = self._sample(
        params, global_image, jax.random.fold_in(rng, i), chunk
      )
      outputs.append(
        np.asarray(multihost_utils.process_allgather(out, tiled=True))
      )
    return np.concatenate(outputs, axis=1)[:batch, :num_samples].astype(bool)
