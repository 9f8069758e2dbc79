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

"""Tests for diffseg_jax.augment against float64 numpy/scipy references."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage

from diffseg_jax import augment as aug
from tests.conftest import with_xla_flags

REPO = os.path.join(os.path.dirname(__file__), '..')
_OFF = dict(
  dihedral=False, gamma_p=0.0, brightness_contrast_p=0.0, affine_p=0.0
)


def _numpy_dihedral(x):
  """The 8 dihedral images of a [H, W, ...] array (numpy reference)."""
  return [
    np.rot90(y, k, axes=(0, 1))
    for y in (x, np.swapaxes(x, 0, 1))
    for k in range(4)
  ]


def _which(candidates, y):
  hits = [i for i, c in enumerate(candidates) if np.array_equal(c, y)]
  assert len(hits) == 1, f'expected exactly one matching transform, got {hits}'
  return hits[0]


def _run(config, image, masks, seed=0):
  fn = jax.jit(lambda r, x, m: aug.augment(r, x, m, config))
  image, masks = fn(
    jax.random.key(seed), jnp.asarray(image), jnp.asarray(masks)
  )
  return np.asarray(image), np.asarray(masks)


def test_dihedral_exact_all_eight_reached_and_masks_follow():
  rng = np.random.default_rng(0)
  batch, size = 96, 6
  image = np.repeat(rng.random((1, size, size, 1), np.float32), batch, 0)
  masks = np.repeat(
    (rng.random((1, 3, size, size)) > 0.5).astype(np.uint8), batch, 0
  )
  out_image, out_masks = _run(
    aug.AugmentConfig(**{**_OFF, 'dihedral': True}), image, masks
  )
  ref_images = _numpy_dihedral(image[0].astype(np.float64))
  ref_masks = _numpy_dihedral(np.moveaxis(masks[0], 0, -1))
  seen = set()
  for b in range(batch):
    k = _which(ref_images, out_image[b])
    assert np.array_equal(np.moveaxis(out_masks[b], 0, -1), ref_masks[k])
    seen.add(k)
  assert seen == set(range(8))
  assert out_masks.dtype == np.uint8


def test_dihedral_matrices_form_a_group_and_warps_compose():
  mats = [m.astype(np.int64) for m in aug.DIHEDRAL_MATRICES]
  keys = {m.tobytes() for m in mats}
  assert len(keys) == 8
  for a in mats:
    for b in mats:
      assert (a @ b).tobytes() in keys
  rng = np.random.default_rng(1)
  image = rng.random((5, 5, 1), np.float32)
  masks = (rng.random((2, 5, 5)) > 0.5).astype(np.uint8)
  zero = jnp.zeros((2,), jnp.float32)
  singles = [
    np.asarray(aug.warp(image=image, masks=masks, matrix=m, offset=zero)[0])
    for m in aug.DIHEDRAL_MATRICES
  ]
  for i in range(8):
    for j in range(8):
      once = aug.warp(
        image=image, masks=masks, matrix=aug.DIHEDRAL_MATRICES[i], offset=zero
      )
      twice = aug.warp(
        image=once[0],
        masks=once[1],
        matrix=aug.DIHEDRAL_MATRICES[j],
        offset=zero,
      )
      _which(singles, np.asarray(twice[0]))


def test_warp_matches_scipy_float64_reference():
  rng = np.random.default_rng(2)
  size = 24
  image = rng.random((size, size, 2))
  masks = (rng.random((3, size, size)) > 0.5).astype(np.uint8)
  angle, scale, offset = 17.0, 1.07, np.array([2.3, -1.6])
  matrix = aug.affine_matrix(angle_deg=angle, scale=scale)
  out_image, out_masks = aug.warp(
    image=image.astype(np.float32),
    masks=masks,
    matrix=matrix,
    offset=jnp.asarray(offset, jnp.float32),
  )
  theta = np.deg2rad(angle)
  inv = (
    np.array([[np.cos(theta), np.sin(theta)], [-np.sin(theta), np.cos(theta)]])
    / scale
  )
  centre = (size - 1) / 2.0
  grid = np.stack(
    np.meshgrid(np.arange(size), np.arange(size), indexing='ij')
  ).reshape(2, -1)
  src = (inv @ (grid - centre - offset[:, None]) + centre).reshape(
    2, size, size
  )
  for c in range(2):
    ref = scipy.ndimage.map_coordinates(
      image[..., c], src, order=1, mode='mirror'
    )
    np.testing.assert_allclose(np.asarray(out_image[..., c]), ref, atol=2e-5)
  for m in range(3):
    ref = scipy.ndimage.map_coordinates(
      masks[m].astype(np.float64), src, order=0, mode='mirror'
    )
    np.testing.assert_array_equal(
      np.asarray(out_masks[m]), ref.astype(np.uint8)
    )


def _shapes(batch, size, num):
  """Asymmetric ellipse/box patterns, a different one per annotation: [B, num, S, S] uint8."""
  rows, cols = np.mgrid[:size, :size].astype(np.float64)
  rng = np.random.default_rng(3)
  masks = np.zeros((batch, num, size, size), np.uint8)
  for b in range(batch):
    for m in range(num):
      cy, cx = rng.uniform(0.3 * size, 0.7 * size, 2)
      ry, rx = rng.uniform(0.1 * size, 0.25 * size, 2)
      blob = ((rows - cy) / ry) ** 2 + ((cols - cx) / rx) ** 2 <= 1
      box = (
        (rows > cy)
        & (rows < cy + 0.15 * size)
        & (cols > cx)
        & (cols < cx + 0.3 * size)
      )
      masks[b, m] = blob | box
  return masks


@pytest.mark.parametrize('crop_size', [0, 24])
def test_all_geometric_transforms_keep_image_and_masks_aligned(crop_size):
  batch, size, num = 32, 40, 3
  masks = _shapes(batch, size, num)
  # Channel c == annotation c.
  image = np.moveaxis(masks, 1, -1).astype(np.float32)
  config = aug.AugmentConfig(
    dihedral=True,
    affine_p=1.0,
    gamma_p=0.0,
    brightness_contrast_p=0.0,
    crop_size=crop_size,
  )
  out_image, out_masks = _run(config, image, masks, seed=4)
  side = crop_size or size
  assert out_image.shape == (batch, side, side, num) and out_masks.shape == (
    batch,
    num,
    side,
    side,
  )
  for b in range(batch):
    for m in range(num):
      mask = out_masks[b, m].astype(bool)
      diff = (out_image[b, ..., m] > 0.5) != mask
      boundary = scipy.ndimage.binary_dilation(
        mask
      ) != scipy.ndimage.binary_erosion(mask)
      assert not np.any(diff & ~boundary), (
        f'misaligned pixels away from the boundary (b={b}, m={m})'
      )
      assert diff.sum() <= max(3, 0.2 * boundary.sum())


def test_crop_matches_numpy_slicing():
  rng = np.random.default_rng(5)
  image = rng.random((20, 20, 2), np.float32)
  masks = rng.integers(0, 2, (4, 20, 20), np.uint8)
  for top, left in [(0, 0), (3, 11), (12, 12)]:
    out_image, out_masks = aug.crop(
      image=image, masks=masks, top=top, left=left, size=8
    )
    np.testing.assert_array_equal(
      np.asarray(out_image), image[top : top + 8, left : left + 8]
    )
    np.testing.assert_array_equal(
      np.asarray(out_masks), masks[:, top : top + 8, left : left + 8]
    )


def test_random_crop_is_a_uniform_window_of_image_and_masks():
  batch, size, crop = 400, 12, 8
  rng = np.random.default_rng(6)
  image = np.repeat(rng.random((1, size, size, 1), np.float32), batch, 0)
  masks = np.repeat(rng.integers(0, 2, (1, 2, size, size), np.uint8), batch, 0)
  out_image, out_masks = _run(
    aug.AugmentConfig(**_OFF, crop_size=crop), image, masks, seed=7
  )
  windows = {
    (t, c): image[0, t : t + crop, c : c + crop]
    for t in range(size - crop + 1)
    for c in range(size - crop + 1)
  }
  counts = {}
  for b in range(batch):
    ((t, c),) = [
      k for k, w in windows.items() if np.array_equal(w, out_image[b])
    ]
    np.testing.assert_array_equal(
      out_masks[b], masks[0][:, t : t + crop, c : c + crop]
    )
    counts[(t, c)] = counts.get((t, c), 0) + 1
  assert len(counts) == len(windows)  # all 25 windows drawn (expected 16 each)


def test_intensity_transforms_and_probabilities():
  batch = 800
  image = np.tile(
    np.linspace(0.0, 1.0, 16, dtype=np.float32).reshape(1, 4, 4, 1),
    (batch, 1, 1, 1),
  )
  masks = np.zeros((batch, 1, 4, 4), np.uint8)
  x = image[0, ..., 0].astype(np.float64)

  out, _ = _run(
    aug.AugmentConfig(**{**_OFF, 'gamma_p': 0.3}), image, masks, seed=8
  )
  changed = 0
  for b in range(batch):
    y = out[b, ..., 0].astype(np.float64)
    if np.array_equal(y, x.astype(np.float32)):
      continue
    changed += 1
    gamma = np.log(y[1, 1]) / np.log(x[1, 1])
    assert 0.7 - 1e-4 <= gamma <= 1.5 + 1e-4
    np.testing.assert_allclose(y, x**gamma, atol=1e-5)
  assert abs(changed / batch - 0.3) < 0.07

  out, _ = _run(
    aug.AugmentConfig(**{**_OFF, 'brightness_contrast_p': 0.3}),
    image,
    masks,
    seed=9,
  )
  changed = 0
  for b in range(batch):
    y = out[b, ..., 0].astype(np.float64)
    if np.array_equal(y, x.astype(np.float32)):
      continue
    changed += 1
    inside = (y > 1e-6) & (y < 1 - 1e-6)
    slope, intercept = np.polyfit(x[inside], y[inside], 1)
    assert (
      0.8 - 1e-4 <= slope <= 1.2 + 1e-4
      and -0.2 - 1e-4 <= intercept <= 0.2 + 1e-4
    )
    np.testing.assert_allclose(
      y, np.clip(slope * x + intercept, 0, 1), atol=1e-5
    )
  assert abs(changed / batch - 0.3) < 0.07


def test_full_augmentation_keeps_image_in_unit_range_and_shapes():
  rng = np.random.default_rng(10)
  image = rng.random((16, 32, 32, 1), np.float32)
  masks = rng.integers(0, 2, (16, 4, 32, 32), np.uint8)
  config = aug.AugmentConfig(
    gamma_p=1.0, brightness_contrast_p=1.0, affine_p=1.0, crop_size=16
  )
  out_image, out_masks = _run(config, image, masks, seed=11)
  assert out_image.dtype == np.float32 and out_image.shape == (16, 16, 16, 1)
  assert out_image.min() >= 0.0 and out_image.max() <= 1.0
  assert out_masks.shape == (16, 4, 16, 16) and set(np.unique(out_masks)) <= {
    0,
    1,
  }


def test_bad_shapes_are_rejected():
  with pytest.raises(ValueError, match='masks'):
    aug.augment(
      jax.random.key(0),
      jnp.zeros((2, 8, 8, 1)),
      jnp.zeros((2, 8, 8), jnp.uint8),
      aug.AugmentConfig(),
    )
  with pytest.raises(ValueError, match='crop_size'):
    aug.augment(
      jax.random.key(0),
      jnp.zeros((2, 8, 8, 1)),
      jnp.zeros((2, 4, 8, 8), jnp.uint8),
      aug.AugmentConfig(crop_size=16),
    )


def test_choose_annotation_uniform_and_encoded():
  batch, num = 4000, 4
  # Annotation m carries the 2-bit code of m in its two pixels, so the choice can be read back.
  codes = np.array([[(m >> 1) & 1, m & 1] for m in range(num)], np.uint8)
  masks = np.broadcast_to(codes[None, :, None, :], (batch, num, 1, 2))
  x0 = np.asarray(
    jax.jit(aug.choose_annotation)(jax.random.key(12), jnp.asarray(masks))
  )
  assert x0.shape == (batch, 1, 2, 1) and x0.dtype == np.float32
  assert set(np.unique(x0)) <= {-1.0, 1.0}
  bits = (x0[:, 0, :, 0] > 0).astype(np.int64)
  chosen = 2 * bits[:, 0] + bits[:, 1]
  np.testing.assert_array_equal(
    x0[:, 0, :, 0], 2.0 * codes[chosen].astype(np.float64) - 1.0
  )
  freq = np.bincount(chosen, minlength=num) / batch
  np.testing.assert_allclose(freq, np.full(num, 1.0 / num), atol=0.03)


def test_sharded_batches_give_the_unsharded_result():
  """The training mesh (Auto axis) over 2 CPU devices (subprocess: the device count is fixed at start)."""
  script = textwrap.dedent("""
      import jax, numpy as np
      from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
      from diffseg_jax import augment as aug
      config = aug.AugmentConfig(crop_size=16, affine_p=0.5)
      rng = np.random.default_rng(0)
      image = rng.random((4, 32, 32, 1), np.float32)
      masks = rng.integers(0, 2, (4, 4, 32, 32), np.uint8)
      ref_image, ref_masks = aug.augment(jax.random.key(0), image, masks, config)
      ref_x0 = aug.choose_annotation(jax.random.key(1), ref_masks)
      for axis_type in (AxisType.Auto,):
        mesh = jax.make_mesh((2,), ('data',), axis_types=(axis_type,))
        sharding = NamedSharding(mesh, P('data'))
        step = jax.jit(lambda r1, r2, x, m: (lambda o: (o[0], aug.choose_annotation(r2, o[1])))(
            aug.augment(r1, x, m, config)))
        out_image, x0 = step(jax.random.key(0), jax.random.key(1), jax.device_put(image, sharding),
                             jax.device_put(masks, sharding))
        np.testing.assert_array_equal(np.asarray(out_image), np.asarray(ref_image))
        np.testing.assert_array_equal(np.asarray(x0), np.asarray(ref_x0))
        assert out_image.sharding.spec[0] == 'data' and x0.sharding.spec[0] == 'data'
      print('OK')
  """)
  env = dict(
    os.environ,
    XLA_FLAGS=with_xla_flags('--xla_force_host_platform_device_count=2'),
    JAX_PLATFORMS='cpu',
  )
  out = subprocess.run(
    [sys.executable, '-c', script],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert out.returncode == 0 and 'OK' in out.stdout, out.stderr[-3000:]


def test_config_is_hashable_from_lists_and_checks_probabilities():
  config = aug.AugmentConfig(gamma_range=[0.8, 1.2])
  assert config.gamma_range == (0.8, 1.2) and hash(config) == hash(
    aug.AugmentConfig(gamma_range=(0.8, 1.2))
  )
  with pytest.raises(ValueError, match='affine_p'):
    aug.AugmentConfig(affine_p=1.5)
