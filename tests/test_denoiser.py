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

"""The network's image input ('grey', 'imagenet_rgb') against a float64 reference."""

import jax
import numpy as np
import pytest

from diffseg_jax import denoiser
from diffseg_jax import errors


def test_imagenet_rgb_matches_float64_reference():
  rng = np.random.default_rng(0)
  levels = np.arange(256) / 255.0
  values = np.concatenate(
    [levels, levels + 0.4 / 255, rng.random(200), [-0.3, 1.7]]
  )
  image = values.astype(np.float32).reshape(1, -1, 1, 1)
  got = np.asarray(denoiser.network_image(image, preprocessing='imagenet_rgb'))

  x = np.float64(image)
  quantised = np.round(np.clip(x, 0.0, 1.0) * 255.0) / 255.0
  want = (
    np.repeat(quantised, 3, axis=-1) - np.array([0.485, 0.456, 0.406])
  ) / np.array([0.229, 0.224, 0.225])
  assert got.shape == (1, values.size, 1, 3) and got.dtype == np.float32
  np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)
  # Pixel 255/255 is white in every channel: (1 - mean) / std.
  np.testing.assert_allclose(
    got[0, 255, 0],
    (1 - np.array(denoiser.IMAGENET_MEAN)) / np.array(denoiser.IMAGENET_STD),
    atol=2e-6,
  )


def test_grey_is_the_image_and_unknown_names_fail():
  image = np.linspace(0, 1, 12, dtype=np.float32).reshape(1, 3, 4, 1)
  np.testing.assert_array_equal(
    np.asarray(denoiser.network_image(image, preprocessing='grey')), image
  )
  with pytest.raises(errors.ConfigError, match='image_preprocessing'):
    denoiser.network_image(image, preprocessing='rgb')


def test_num_chunks_divides_the_rows_evenly():
  assert denoiser.num_chunks(32, 0) == 1
  assert denoiser.num_chunks(32, 4) == 8
  assert denoiser.num_chunks(8, 4) == 2
  assert denoiser.num_chunks(3, 4) == 1
  assert (
    denoiser.num_chunks(18, 4) == 3
  )  # 4 calls would not divide 18; 3 of 6 do.
  assert denoiser.num_chunks(7, 2) == 1  # A prime: one call.
  assert denoiser.num_chunks(256, 4) == denoiser.MAX_CHUNKS == 8
  with pytest.raises(ValueError, match='chunk_size'):
    denoiser.num_chunks(8, -1)


@pytest.mark.parametrize('chunks', [2, 3, 6])
def test_chunked_calls_see_each_example_once_and_keep_the_order(chunks):
  calls = []

  def model(z, t, image, *, extra, rngs):
    del rngs
    calls.append(z.shape[0])
    out = z * 2.0 + image + t[:, None, None, None]
    return out if extra is None else out + extra

  rng = np.random.default_rng(0)
  z, image, extra = (
    rng.normal(size=(6, 4, 4, 1)).astype(np.float32) for _ in range(3)
  )
  t = rng.uniform(size=6).astype(np.float32)
  want = z * 2.0 + image + t[:, None, None, None]
  got = denoiser.make_denoise_fn(model, chunks=chunks)(z, t, image)
  np.testing.assert_array_equal(got, want)
  assert calls == [6 // chunks] * chunks
  got = jax.jit(denoiser.make_denoise_fn(model, chunks=chunks))(
    z, t, image, extra
  )
  np.testing.assert_allclose(got, want + extra, rtol=1e-6)


def test_example_losses_give_the_loss_every_annotation_of_the_example():
  from diffseg_jax import diffusion  # pylint: disable=g-import-not-at-top

  def model(z, t, image, *, extra, rngs):
    del t, extra, rngs
    return 0.5 * z + image - 0.5

  rng = np.random.default_rng(1)
  masks = (rng.uniform(size=(4, 3, 8, 8)) < 0.5).astype(np.uint8)
  image = rng.uniform(size=(4, 8, 8, 1)).astype(np.float32)
  kw = dict(
    image=image,
    annotation_rng=jax.random.key(1),
    noise_rng=jax.random.key(2),
    preprocessing='grey',
  )
  paper = diffusion.DiffusionConfig()
  posterior = diffusion.DiffusionConfig(target='annotation_posterior')
  drawn = denoiser.example_losses(
    model, masks=masks, diffusion_config=paper, **kw
  )
  pooled = denoiser.example_losses(
    model, masks=masks, diffusion_config=posterior, **kw
  )
  # Stratified times reach high noise, where the target is the annotations' mean, not the drawn one.
  assert not np.allclose(drawn, pooled)
  same = np.repeat(masks[:, :1], 3, axis=1)
  np.testing.assert_allclose(
    denoiser.example_losses(
      model, masks=same, diffusion_config=posterior, **kw
    ),
    denoiser.example_losses(model, masks=same, diffusion_config=paper, **kw),
    rtol=1e-6,
  )
