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

"""sampling.Sampler: per-image keyed samples, whatever the chunking or batch; one compile for any step count."""

from flax import nnx
import jax
import numpy as np
import pytest

from diffseg_jax import denoiser
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
SAMPLER = diffusion.SamplerConfig(num_steps=2)


def _sampler(graphdef, mesh, max_batch, chunk_size=0):
  return sampling.Sampler(
    graphdef,
    mesh,
    diffusion_config=diffusion.DiffusionConfig(),
    sampler_config=SAMPLER,
    preprocessing='grey',
    max_batch=max_batch,
    chunk_size=chunk_size,
  )


# One pytest-xdist worker runs the module (`--dist loadgroup`), so `model` is built once.
pytestmark = pytest.mark.xdist_group('sampling')


@pytest.fixture(scope='module')
def model():
  graphdef, _ = unet.abstract_model(TINY)
  params = unet.init_params(TINY, jax.random.key(0))
  # The output layer starts at zero; perturb every weight so the samples depend on the network.
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  params = jax.tree.unflatten(
    tree,
    [x + 0.3 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)],
  )
  image = np.random.default_rng(0).random((3, 8, 8, 1)).astype(np.float32)
  keys = jax.random.split(jax.random.key(7), 3)
  return graphdef, params, parallel.make_mesh(1), image, keys


def test_samples_do_not_depend_on_chunking_or_the_other_images(model):
  graphdef, params, mesh, image, keys = model
  # At most 4 examples per call for 3 images: 6 chunks of one sample each.
  six = _sampler(graphdef, mesh, max_batch=4)(params, image, keys, 6)
  assert six.shape == (3, 6, 8, 8) and six.dtype == bool
  # All at once, fewer samples, or one image alone: the same samples.
  at_once = _sampler(graphdef, mesh, max_batch=1000)
  np.testing.assert_array_equal(at_once(params, image, keys, 6), six)
  np.testing.assert_array_equal(at_once(params, image, keys, 5), six[:, :5])
  np.testing.assert_array_equal(
    at_once(params, image[1:], keys[1:], 6), six[1:]
  )
  # Another order of the images: their samples follow them.
  order = np.array([2, 0, 1])
  np.testing.assert_array_equal(
    at_once(params, image[order], keys[order], 6), six[order]
  )
  for i, j in ((0, 1), (0, 3), (2, 5)):
    assert not np.array_equal(six[:, i], six[:, j]), 'samples repeat'


@pytest.mark.parametrize('chunk_size', [1, 2, 5])
def test_independent_network_calls_give_the_same_samples(model, chunk_size):
  """18 examples per step cut into 18, 9 or 3 network calls (denoiser.num_chunks): same masks."""
  graphdef, params, mesh, image, keys = model
  whole = _sampler(graphdef, mesh, max_batch=1000)(params, image, keys, 6)
  cut = _sampler(graphdef, mesh, max_batch=1000, chunk_size=chunk_size)
  np.testing.assert_array_equal(cut(params, image, keys, 6), whole)


def test_sample_j_is_drawn_with_fold_in_of_the_image_key(model):
  """The keying written out: start noise and DDPM noise from split(fold_in(key, j))."""
  graphdef, params, mesh, image, keys = model
  got = _sampler(graphdef, mesh, max_batch=1000)(params, image, keys, 4)
  denoise_fn = denoiser.make_denoise_fn(nnx.merge(graphdef, params))
  net_image = denoiser.network_image(image, preprocessing='grey')

  @jax.jit
  def reference(image_1, key):
    init_key, loop_key = jax.random.split(key)
    x0 = diffusion.sample_loop(
      denoise_fn,
      image=image_1[None],
      z_init=jax.random.normal(init_key, (1, 8, 8, 1)),
      rng=loop_key,
      diffusion=diffusion.DiffusionConfig(),
      sampler=SAMPLER,
    )
    return x0[0, ..., 0] > 0

  differ = 0
  for i in range(3):
    for j in range(4):
      want = reference(net_image[i], jax.random.fold_in(keys[i], j))
      differ += int(np.sum(np.asarray(want) != got[i, j]))
  # A network batch of one rounds differently on XLA CPU: a pixel at the threshold may flip.
  assert differ <= 2, differ


def test_one_compilation_for_any_step_count(model):
  graphdef, params, mesh, image, keys = model
  sampler = _sampler(graphdef, mesh, max_batch=1000)
  two = sampler(params, image, keys, 4)
  three = sampler(params, image, keys, 4, num_steps=3)
  np.testing.assert_array_equal(sampler(params, image, keys, 4, 2), two)
  assert not np.array_equal(two, three)
  assert sampler._sample._cache_size() == 1  # pylint: disable=protected-access
  with pytest.raises(ValueError, match='num_steps must be >= 1'):
    sampler(params, image, keys, 4, num_steps=0)
  with pytest.raises(ValueError, match='one PRNG key per image'):
    sampler(params, image, keys[:2], 4)
