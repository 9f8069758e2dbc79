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

"""sampling.Sampler: drawing in several chunks gives the samples one chunk gives, extended."""

import jax
import numpy as np

from diffseg_jax import diffusion
from diffseg_jax import parallel
from diffseg_jax import sampling
from diffseg_jax.models import unet

TINY = unet.UNetConfig(
  base_channels=8,
  channel_mult=(1, 2),
  num_res_blocks=(1, 1),
  num_middle_blocks=1,
  attention_levels=(),
  num_heads=1,
)


def _sampler(graphdef, mesh, max_batch):
  return sampling.Sampler(
    graphdef,
    mesh,
    diffusion_config=diffusion.DiffusionConfig(),
    sampler_config=diffusion.SamplerConfig(num_steps=2),
    preprocessing='grey',
    max_batch=max_batch,
  )


def test_several_chunks_equal_their_one_chunk_samples():
  graphdef, _ = unet.abstract_model(TINY)
  params = unet.init_params(TINY, jax.random.key(0))
  # The output layer starts at zero; perturb every weight so the samples depend on the network.
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  params = jax.tree.unflatten(
    tree,
    [x + 0.3 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)],
  )
  mesh = parallel.make_mesh(1)
  image = np.random.default_rng(0).random((2, 8, 8, 1)).astype(np.float32)
  rng = jax.random.key(7)

  # At most 4 examples per call for 2 images: chunks of 2 samples, chunk i drawn with fold_in(rng, i).
  sampler = _sampler(graphdef, mesh, max_batch=4)
  six = sampler(params, image, rng, 6)  # 3 chunks.
  assert six.shape == (2, 6, 8, 8) and six.dtype == bool
  # Asking for fewer samples keeps the chunk size and the chunks' keys: a prefix of the same samples.
  np.testing.assert_array_equal(sampler(params, image, rng, 5), six[:, :5])
  np.testing.assert_array_equal(sampler(params, image, rng, 4), six[:, :4])
  # One chunk (a sampler allowed to draw everything at once) is the first chunk.
  one_chunk = _sampler(graphdef, mesh, max_batch=1000)(params, image, rng, 2)
  np.testing.assert_array_equal(one_chunk, six[:, :2])
  for i, j in ((0, 2), (0, 4), (2, 4)):
    assert not np.array_equal(six[:, i : i + 2], six[:, j : j + 2]), (
      'chunks repeat the same samples'
    )
