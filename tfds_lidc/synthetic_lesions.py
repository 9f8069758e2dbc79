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

"""`synthetic_lesions`: an ambiguous segmentation set whose true answer is known.

Generative process (all lengths in pixels of an S x S image, S in {32, 64, 128};
every random number comes from `np.random.default_rng((seed, split, chunk))`, so a
build is a pure function of the config):

1. Background: 0.3 + smooth texture (white noise low-pass filtered with a Gaussian
   of width S/8 in Fourier space, scaled to standard deviation 0.06).
2. Core: an ellipse with centre uniform in the central S/4 x S/4 box, semi-axes
   uniform in [0.08 S, 0.2 S] (aspect clipped to <= 2) and a uniform rotation; added
   with contrast 0.35 (clearly visible) and a soft half-pixel edge.
3. Lobe: an ellipse attached to the core boundary in a uniform direction phi; its
   semi-axes are sqrt(a b) * U(0.7, 0.95) and that times U(0.75, 1), its centre lies
   0.7 lobe radii beyond the core boundary along phi. The lobe adds at least 30% of
   the core's area (checked on the pixel grid; geometries that fail are redrawn).
   Its contrast is uniform in [0, 0.35]: from invisible to as clear as the core.
4. Pixel noise N(0, 0.03^2); the image is clipped to [0, 1].
5. True annotation distribution over three modes, empty / core / core u lobe:
     p_empty = sigmoid(-(core_area / S^2 - 0.035) / 0.008)   (small cores are missed),
     p_lobe  = sigmoid((lobe_contrast - 0.15) / 0.04)         (faint lobes are left out),
     mode_probs = [p_empty, (1 - p_empty)(1 - p_lobe), (1 - p_empty) p_lobe].
6. Four annotators draw a mode independently from `mode_probs` and trace it with a
   boundary jitter of at most +-1 pixel: the mask is {d(x) + j(x) > 0} where d is
   the (approximate) signed distance to the mode's boundary and
   j(x) = o + A cos(k . x + psi), o ~ U(-0.5, 0.5), A ~ U(0, 0.5), |k| = 8 pi / S,
   a smooth field with |j| <= 1. d is (1 - r) / |grad r| for an ellipse with
   normalised radius r (exact for circles) and max(d_core, d_lobe) for the union.

Features: 'image' float32 [S, S, 1] in [0, 1]; 'masks' uint8 [4, S, S] in {0, 1};
'modes' uint8 [3, S, S] (empty, core, core u lobe without jitter); 'mode_probs'
float32 [3]; 'geometry' float64 [10] (the core and lobe ellipses, GEOMETRY_KEYS);
'id' and 'patient_id' (the same string, e.g. 'synth32-train-000012').

The true annotation distribution of an example is known exactly: `draw_annotations`
draws fresh annotations from its 'geometry' and 'mode_probs' with the code path that
drew the stored ones (step 6).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import special
import tensorflow_datasets as tfds

from tfds_lidc import dataset_info

NUM_ANNOTATORS = 4
NUM_MODES = 3
CHUNK = 256  # Examples drawn per random stream; part of the generative process.
CORE_CONTRAST = 0.35
BACKGROUND, TEXTURE_STD, PIXEL_NOISE_STD = 0.3, 0.06, 0.03
MIN_LOBE_FRACTION = 0.3
# Centres and widths of the logistic mode probabilities (module doc, step 5).
EMPTY_AREA_CENTRE, EMPTY_AREA_WIDTH = 0.035, 0.008
LOBE_CONTRAST_CENTRE, LOBE_CONTRAST_WIDTH = 0.15, 0.04
# Largest offset and cosine amplitude of the annotators' boundary jitter (pixels,
# module doc, step 6): |j| <= JITTER_OFFSET + JITTER_AMPLITUDE = 1.
JITTER_OFFSET, JITTER_AMPLITUDE = 0.5, 0.5
_SPLIT_INDEX = {'train': 0, 'validation': 1, 'test': 2}
# The 'geometry' feature: core centre, semi-axes and rotation, then the lobe's.
GEOMETRY_KEYS = (
  'cy',
  'cx',
  'a',
  'b',
  'theta',
  'ly',
  'lx',
  'la',
  'lb',
  'ltheta',
)


@dataclasses.dataclass
class SyntheticLesionsConfig(tfds.core.BuilderConfig):
  """Image size, split sizes and seed of the synthetic set."""

  size: int = 32
  num_train: int = 8000
  num_validation: int = 500
  num_test: int = 500
  seed: int = 0


def _sigmoid(x):
  return special.expit(x)


def _ellipse_distance(*, yy, xx, cy, cx, a, b, theta):
  """Signed distance (pixels, > 0 inside) to ellipse boundaries, to first order.

  Args:
    yy, xx: [S, S] pixel-centre coordinates.
    cy, cx, a, b, theta: [...] centres, semi-axes and rotations.

  Returns:
    [..., S, S] float32: (1 - r) / |grad r| with r the normalised elliptic radius;
    exact for circles and accurate to first order near any ellipse boundary.
  """
  f32 = lambda v: np.asarray(v, np.float32)[..., None]
  # The grid is separable: [S] row and column coordinates.
  y, x = (
    yy[:, 0],
    xx[0, :],
  )
  cos, sin = np.cos(f32(theta)), np.sin(f32(theta))
  inv_a, inv_b = 1.0 / f32(a), 1.0 / f32(b)
  dy, dx = y - f32(cy), x - f32(cx)  # [..., S]
  u = (dx * cos * inv_a)[..., None, :] + (dy * sin * inv_a)[..., :, None]
  v = (dy * cos * inv_b)[..., :, None] - (dx * sin * inv_b)[..., None, :]
  r = np.sqrt(u * u + v * v)
  u *= inv_a[..., None]
  v *= inv_b[..., None]
  grad = np.sqrt(u * u + v * v)
  # (1 - r) / (grad / r); at the centre grad / r tends to a value in [1/a, 1/b].
  centre = np.sqrt(f32(a) * f32(b))[..., None]
  return np.where(r > 1e-6, (1.0 - r) * r / np.maximum(grad, 1e-12), centre)


def _smooth_texture(rng, *, n, size):
  """[n, S, S] Gaussian-low-passed white noise with unit standard deviation."""
  noise = rng.standard_normal((n, size, size))
  fy, fx = np.fft.fftfreq(size), np.fft.rfftfreq(size)
  width = 1.0 / (size / 8.0)
  kernel = np.exp(-0.5 * (fy[:, None] ** 2 + fx[None, :] ** 2) / width**2)
  tex = np.fft.irfft2(np.fft.rfft2(noise) * kernel, s=(size, size))
  tex -= tex.mean(axis=(1, 2), keepdims=True)
  return tex / (tex.std(axis=(1, 2), keepdims=True) + 1e-12)


def _draw_geometry(rng, *, n, size):
  """Draws core and lobe ellipses; returns a dict of [n] arrays."""
  s = float(size)
  cy = s / 2 + rng.uniform(-s / 8, s / 8, n)
  cx = s / 2 + rng.uniform(-s / 8, s / 8, n)
  a = rng.uniform(0.08 * s, 0.2 * s, n)
  b = np.clip(rng.uniform(0.08 * s, 0.2 * s, n), a / 2, 2 * a)
  theta = rng.uniform(0, np.pi, n)
  phi = rng.uniform(0, 2 * np.pi, n)
  la = np.sqrt(a * b) * rng.uniform(0.7, 0.95, n)
  lb = la * rng.uniform(0.75, 1.0, n)
  # Core radius along phi (in the core's frame), then the lobe centre beyond it.
  rel = phi - theta
  r_core = 1.0 / np.sqrt((np.cos(rel) / a) ** 2 + (np.sin(rel) / b) ** 2)
  dist = r_core + 0.7 * la
  return dict(
    cy=cy,
    cx=cx,
    a=a,
    b=b,
    theta=theta,
    ly=cy + dist * np.sin(phi),
    lx=cx + dist * np.cos(phi),
    la=la,
    lb=lb,
    ltheta=phi + rng.uniform(-0.5, 0.5, n),
  )


def _distances(geom, *, size):
  """Signed distances [n, S, S] float32 to core and lobe boundaries."""
  yy, xx = np.meshgrid(
    np.arange(size, dtype=np.float32) + 0.5,
    np.arange(size, dtype=np.float32) + 0.5,
    indexing='ij',
  )
  d_core = _ellipse_distance(
    yy=yy,
    xx=xx,
    cy=geom['cy'],
    cx=geom['cx'],
    a=geom['a'],
    b=geom['b'],
    theta=geom['theta'],
  )
  d_lobe = _ellipse_distance(
    yy=yy,
    xx=xx,
    cy=geom['ly'],
    cx=geom['lx'],
    a=geom['la'],
    b=geom['lb'],
    theta=geom['ltheta'],
  )
  return d_core, d_lobe


def mode_distances(*, geometry, size):
  """Signed distances (pixels, > 0 inside) to the core and the lobe of examples.

  Args:
    geometry: float64 [..., 10], the examples' 'geometry' feature.
    size: the image size S.

  Returns:
    (d_core, d_lobe), float32 [..., S, S] each; the core u lobe mode is max(d_core, d_lobe) > 0.
  """
  geometry = np.asarray(geometry, np.float64)
  flat = geometry.reshape(-1, len(GEOMETRY_KEYS))
  d_core, d_lobe = _distances(dict(zip(GEOMETRY_KEYS, flat.T)), size=size)
  shape = geometry.shape[:-1] + (size, size)
  return d_core.reshape(shape), d_lobe.reshape(shape)


def _valid_geometry(geom, d_core, d_lobe, *, size):
  """[n] bool: the lobe adds >= 30% of the core's area and stays inside the image."""
  core = d_core > 0
  added = (d_lobe > 0) & ~core
  core_area = core.sum(axis=(1, 2))
  inside = (
    (geom['ly'] - geom['la'] > 0)
    & (geom['ly'] + geom['la'] < size)
    & (geom['lx'] - geom['la'] > 0)
    & (geom['lx'] + geom['la'] < size)
  )
  return (
    (added.sum(axis=(1, 2)) >= MIN_LOBE_FRACTION * core_area)
    & (core_area > 0)
    & inside
  )


def _jitter_field(rng, *, shape, size):
  """[*shape, S, S] float32 smooth fields with |j| <= 1 pixel (annotator boundary jitter).

  j(y, x) = o + A cos(k (cos(ang) x + sin(ang) y) + psi), evaluated separably.
  """
  o = rng.uniform(-JITTER_OFFSET, JITTER_OFFSET, shape)[..., None, None]
  amp = rng.uniform(0.0, JITTER_AMPLITUDE, shape)[..., None]
  ang = rng.uniform(0, 2 * np.pi, shape)[..., None]
  psi = rng.uniform(0, 2 * np.pi, shape)[..., None]
  k = 8 * np.pi / size
  t = np.arange(size) + 0.5
  phase_x = k * np.cos(ang) * t  # [..., S] along x
  phase_y = k * np.sin(ang) * t + psi  # [..., S] along y
  cy, sy = (
    (amp * np.cos(phase_y)).astype(np.float32),
    (amp * np.sin(phase_y)).astype(np.float32),
  )
  cx, sx = (
    np.cos(phase_x).astype(np.float32),
    np.sin(phase_x).astype(np.float32),
  )
  return (
    o.astype(np.float32)
    + cy[..., :, None] * cx[..., None, :]
    - sy[..., :, None] * sx[..., None, :]
  )


def mode_probabilities(*, core_area_fraction, lobe_contrast):
  """True mode probabilities [..., 3] (empty, core, core u lobe); see module doc."""
  p_empty = _sigmoid(
    -(core_area_fraction - EMPTY_AREA_CENTRE) / EMPTY_AREA_WIDTH
  )
  p_lobe = _sigmoid(
    (lobe_contrast - LOBE_CONTRAST_CENTRE) / LOBE_CONTRAST_WIDTH
  )
  return np.stack(
    [p_empty, (1 - p_empty) * (1 - p_lobe), (1 - p_empty) * p_lobe], -1
  )


def _annotate(rng, *, d_core, d_union, mode_probs, num):
  """Step 6: `num` annotators per example, each a mode traced with jitter.

  Args:
    rng: numpy Generator; draws the modes, then the jitter fields.
    d_core, d_union: [n, S, S] signed distances to the core and core u lobe.
    mode_probs: [n, 3] probabilities of (empty, core, core u lobe).
    num: annotations per example.

  Returns:
    bool [n, num, S, S].
  """
  n, size = d_core.shape[0], d_core.shape[-1]
  u = rng.uniform(size=(n, num, 1))
  choice = (u > np.cumsum(mode_probs, -1)[:, None, :]).sum(-1)  # [n, num]
  choice = np.minimum(choice, NUM_MODES - 1)
  jitter = _jitter_field(rng, shape=(n, num), size=size)
  c = choice[:, :, None, None]
  return ((c == 1) & (d_core[:, None] + jitter > 0)) | (
    (c == 2) & (d_union[:, None] + jitter > 0)
  )


def draw_annotations(*, geometry, mode_probs, num, size, seed):
  """Fresh annotations from the true annotation distribution of examples.

  The same process as the stored 'masks' (module doc, step 6): a mode drawn with
  `mode_probs`, traced with a random boundary jitter of at most +-1 pixel.

  Args:
    geometry: float64 [..., 10], the examples' 'geometry' feature.
    mode_probs: [..., 3], the examples' 'mode_probs' feature.
    num: annotations per example.
    size: the image size S.
    seed: anything `np.random.default_rng` accepts; the draws are a pure
      function of it and the inputs.

  Returns:
    bool [..., num, S, S].
  """
  geometry = np.asarray(geometry, np.float64)
  probs = np.asarray(mode_probs, np.float64)
  if geometry.shape[-1:] != (len(GEOMETRY_KEYS),) or (
    probs.shape != geometry.shape[:-1] + (NUM_MODES,)
  ):
    raise ValueError(
      f'geometry {geometry.shape} and mode_probs {probs.shape} must be '
      f'[..., {len(GEOMETRY_KEYS)}] and [..., {NUM_MODES}] (the features '
      "'geometry' and 'mode_probs' of synthetic_lesions >= 1.1.0)."
    )
  lead = geometry.shape[:-1]
  flat = geometry.reshape(-1, len(GEOMETRY_KEYS))
  d_core, d_lobe = _distances(dict(zip(GEOMETRY_KEYS, flat.T)), size=size)
  masks = _annotate(
    np.random.default_rng(seed),
    d_core=d_core,
    d_union=np.maximum(d_core, d_lobe),
    mode_probs=probs.reshape(-1, NUM_MODES),
    num=num,
  )
  return masks.reshape(lead + (num, size, size))


def _texture_spectrum(size):
  """[S, S] eigenvalues of the covariance of `_smooth_texture` (circulant, unit marginal variance).

  Gaussian-filtered white noise has power kernel(f)^2; removing the mean zeroes the DC term;
  dividing by the standard deviation makes the average eigenvalue (the marginal variance) 1.
  """
  f = np.fft.fftfreq(size)
  width = 1.0 / (size / 8.0)
  power = np.exp(-(f[:, None] ** 2 + f[None, :] ** 2) / width**2)
  power[0, 0] = 0.0
  return power / power.mean()


def _image_and_geometry(image, geometry):
  image = np.asarray(image, np.float64)
  geometry = np.asarray(geometry, np.float64)
  if (
    image.ndim < 3
    or image.shape[-1] != 1
    or image.shape[-2] != image.shape[-3]
    or image.shape[:-3] != geometry.shape[:-1]
    or geometry.shape[-1] != len(GEOMETRY_KEYS)
  ):
    raise ValueError(
      f'image {image.shape} and geometry {geometry.shape} must be [..., S, S, 1] and '
      f"[..., {len(GEOMETRY_KEYS)}] (the features 'image' and 'geometry')."
    )
  return image[..., 0], geometry, image.shape[-2]


def lobe_contrast_estimate(*, image, geometry):
  """Generalised least-squares lobe contrast of examples whose geometry is known, with its s.d.

  With the core and lobe known, image = 0.3 + 0.35 soft_core + c lobe + 0.06 T + 0.03 noise is
  linear in the lobe contrast c with Gaussian texture T (`_texture_spectrum`) and pixel noise
  (clipping to [0, 1] ignored), so the estimate is unbiased with the returned standard deviation.

  Args:
    image: [..., S, S, 1], the examples' 'image'.
    geometry: float64 [..., 10], their 'geometry'.

  Returns:
    (c_hat, sd), float64 [...] each.
  """
  image, geometry, size = _image_and_geometry(image, geometry)
  lead = geometry.shape[:-1]
  flat = geometry.reshape(-1, len(GEOMETRY_KEYS))
  d_core, d_lobe = _distances(dict(zip(GEOMETRY_KEYS, flat.T)), size=size)
  soft_core = _sigmoid(d_core.astype(np.float64) / 0.5)
  lobe = (
    _sigmoid(np.maximum(d_core, d_lobe).astype(np.float64) / 0.5) - soft_core
  )
  residual = (
    image.reshape(-1, size, size) - BACKGROUND - CORE_CONTRAST * soft_core
  )
  # Sigma = 0.06^2 T + 0.03^2 I is diagonal in Fourier space: a' Sigma^-1 b = sum conj(A) B / s / N.
  spectrum = TEXTURE_STD**2 * _texture_spectrum(size) + PIXEL_NOISE_STD**2
  lobe_f = np.fft.fft2(lobe)
  num = (np.conj(lobe_f) * np.fft.fft2(residual) / spectrum).sum((-2, -1)).real
  den = (np.abs(lobe_f) ** 2 / spectrum).sum((-2, -1))
  return (num / den).reshape(lead), np.sqrt(size * size / den).reshape(lead)


def ideal_observer_mode_probs(*, image, geometry, grid_points=701):
  """Mode probabilities [..., 3] of an observer who knows the geometry and reads c off the image.

  The core area (hence p_empty) follows from the geometry; the lobe probability is the
  posterior mean of p_lobe(c) under the uniform prior on c and the Gaussian likelihood of
  `lobe_contrast_estimate`. An observer of the image alone knows less (not the exact geometry),
  so annotations drawn with these probabilities bound from below what a model can reach.
  """
  _, geometry, size = _image_and_geometry(image, geometry)
  c_hat, sd = lobe_contrast_estimate(image=image, geometry=geometry)
  grid = np.linspace(0.0, CORE_CONTRAST, grid_points)
  log_lik = -0.5 * ((grid - c_hat[..., None]) / sd[..., None]) ** 2
  weight = np.exp(log_lik - log_lik.max(-1, keepdims=True))
  p_lobe_grid = _sigmoid((grid - LOBE_CONTRAST_CENTRE) / LOBE_CONTRAST_WIDTH)
  p_lobe = (weight * p_lobe_grid).sum(-1) / weight.sum(-1)
  flat = geometry.reshape(-1, len(GEOMETRY_KEYS))
  d_core, _ = _distances(dict(zip(GEOMETRY_KEYS, flat.T)), size=size)
  core_area = (d_core > 0).sum((-2, -1)).reshape(geometry.shape[:-1]) / size**2
  p_empty = mode_probabilities(core_area_fraction=core_area, lobe_contrast=0.0)[
    ..., 0
  ]
  return np.stack(
    [p_empty, (1 - p_empty) * (1 - p_lobe), (1 - p_empty) * p_lobe], -1
  )


@dataclasses.dataclass(frozen=True)
class GeometryFit:
  """`fit_geometry`'s result: the fitted geometry [10], lobe contrast, and their covariance [11, 11]."""

  geometry: np.ndarray
  lobe_contrast: float
  covariance: np.ndarray


def _prior_sd(size):
  """Standard deviations [11] of the generator's priors (module doc, steps 2-3), per parameter.

  Centres and semi-axes of the core are uniform (width S/4 and 0.12 S). The lobe's centre is the
  core's plus an offset of 0.12-0.33 S in a uniform direction (about 0.16 S per coordinate), its
  semi-axes about sqrt(a b) * U(0.7, 0.95) (width ~0.13 S); rotations are uniform over pi (an
  ellipse's period); the lobe contrast is U(0, 0.35).
  """
  s = float(size)
  uniform = lambda width: width / np.sqrt(12.0)
  core_centre, lobe_centre = uniform(s / 4), np.hypot(uniform(s / 4), 0.16 * s)
  return np.array(
    [
      core_centre,
      core_centre,
      uniform(0.12 * s),
      uniform(0.12 * s),
      uniform(np.pi),
    ]
    + [
      lobe_centre,
      lobe_centre,
      uniform(0.13 * s),
      uniform(0.13 * s),
      uniform(np.pi),
    ]
    + [uniform(CORE_CONTRAST)]
  )


def fit_geometry(*, image, start):
  """Maximum-likelihood core and lobe ellipses and lobe contrast of one image, from a start.

  The generator's own image model (module doc, steps 1-4: background, soft-edged core and lobe,
  Gaussian texture and pixel noise, clipping ignored), fitted by whitened least squares
  (`_texture_spectrum`) with scipy's trust-region solver: what an observer who knows the family of
  shapes can read off the image. A local fit: it finds the optimum in the basin of `start`. The
  covariance is a Laplace approximation of the posterior around the fit, inv(J'J + prior
  precision), with Gaussians of the generator's prior standard deviations (`_prior_sd`) standing in
  for its uniform priors: they keep it finite where the image says nothing (an invisible lobe).

  Args:
    image: [S, S, 1] or [S, S], one example's 'image'.
    start: float64 [10] geometry (GEOMETRY_KEYS) to start from.

  Returns:
    GeometryFit.
  """
  from scipy import optimize  # pylint: disable=g-import-not-at-top

  image = np.asarray(image, np.float64).reshape(np.shape(image)[:2])
  size = image.shape[0]
  inv_sqrt = 1.0 / np.sqrt(
    TEXTURE_STD**2 * _texture_spectrum(size) + PIXEL_NOISE_STD**2
  )

  def whitened_residual(p):
    d_core, d_lobe = _distances(
      dict(zip(GEOMETRY_KEYS, p[:10, None])), size=size
    )
    soft_core = _sigmoid(d_core[0].astype(np.float64) / 0.5)
    soft_union = _sigmoid(
      np.maximum(d_core, d_lobe)[0].astype(np.float64) / 0.5
    )
    model = (
      BACKGROUND + CORE_CONTRAST * soft_core + p[10] * (soft_union - soft_core)
    )
    return np.fft.ifft2(np.fft.fft2(image - model) * inv_sqrt).real.ravel()

  start = np.asarray(start, np.float64)
  c0, _ = lobe_contrast_estimate(image=image[..., None], geometry=start)
  # The distances are float32: finite differences need steps well above its rounding.
  fit = optimize.least_squares(
    whitened_residual,
    np.append(start, np.clip(c0, 0.0, CORE_CONTRAST)),
    x_scale='jac',
    diff_step=1e-3,
  )
  precision = fit.jac.T @ fit.jac + np.diag(_prior_sd(size) ** -2.0)
  return GeometryFit(
    geometry=fit.x[:10],
    lobe_contrast=float(fit.x[10]),
    covariance=np.linalg.inv(precision),
  )


def generate_chunk(*, seed, split, chunk, n, size):
  """Generates `n` examples from the random stream (seed, split, chunk).

  Returns:
    dict of numpy arrays: image [n, S, S, 1] float32, masks [n, 4, S, S] uint8,
    modes [n, 3, S, S] uint8, mode_probs [n, 3] float32, geometry [n, 10]
    float64.
  """
  rng = np.random.default_rng((seed, _SPLIT_INDEX[split], chunk))
  geom = _draw_geometry(rng, n=n, size=size)
  d_core, d_lobe = _distances(geom, size=size)
  ok = _valid_geometry(geom, d_core, d_lobe, size=size)
  while not ok.all():
    redo = np.flatnonzero(~ok)
    new = _draw_geometry(rng, n=redo.size, size=size)
    for key in geom:
      geom[key][redo] = new[key]
    d_core[redo], d_lobe[redo] = _distances(new, size=size)
    ok[redo] = _valid_geometry(new, d_core[redo], d_lobe[redo], size=size)
  d_union = np.maximum(d_core, d_lobe)
  lobe_contrast = rng.uniform(0.0, CORE_CONTRAST, n)

  soft = lambda d: _sigmoid(d / 0.5)
  background = BACKGROUND + TEXTURE_STD * _smooth_texture(rng, n=n, size=size)
  soft_core = soft(d_core)
  lesion = CORE_CONTRAST * soft_core + lobe_contrast[:, None, None] * (
    soft(d_union) - soft_core
  )
  image = (
    background + lesion + PIXEL_NOISE_STD * rng.standard_normal((n, size, size))
  )
  image = np.clip(image, 0.0, 1.0)

  core = d_core > 0
  modes = np.stack([np.zeros_like(core), core, d_union > 0], axis=1)
  probs = mode_probabilities(
    core_area_fraction=core.sum(axis=(1, 2)) / size**2,
    lobe_contrast=lobe_contrast,
  )
  masks = _annotate(
    rng, d_core=d_core, d_union=d_union, mode_probs=probs, num=NUM_ANNOTATORS
  )
  return dict(
    image=image[..., None].astype(np.float32),
    masks=masks.astype(np.uint8),
    modes=modes.astype(np.uint8),
    mode_probs=probs.astype(np.float32),
    geometry=np.stack([geom[k] for k in GEOMETRY_KEYS], -1).astype(np.float64),
  )


def generate_split(*, seed, split, num, size):
  """Yields (index, example dict) for `num` examples of `split`, in order."""
  for chunk in range((num + CHUNK - 1) // CHUNK):
    n = min(CHUNK, num - chunk * CHUNK)
    arrays = generate_chunk(seed=seed, split=split, chunk=chunk, n=n, size=size)
    for i in range(n):
      yield chunk * CHUNK + i, {k: v[i] for k, v in arrays.items()}


class SyntheticLesions(tfds.core.GeneratorBasedBuilder):
  """Synthetic lesions with a known three-mode annotation distribution."""

  VERSION = tfds.core.Version('1.1.0')
  RELEASE_NOTES = {
    '1.0.0': 'Initial release.',
    '1.1.0': "Adds 'geometry' (the core and lobe ellipses) so that fresh "
    'annotations can be drawn from the true distribution '
    '(draw_annotations); the other features are unchanged.',
  }
  BUILDER_CONFIGS = [
    SyntheticLesionsConfig(name='32', size=32, num_train=8000),
    SyntheticLesionsConfig(name='64', size=64, num_train=4000),
    SyntheticLesionsConfig(name='128', size=128, num_train=2000),
  ]

  def _info(self):
    s = self.builder_config.size
    zlib = tfds.features.Encoding.ZLIB
    return dataset_info.LocalDatasetInfo(
      builder=self,
      description=__doc__,
      disable_shuffling=True,
      features=tfds.features.FeaturesDict(
        {
          'image': tfds.features.Tensor(shape=(s, s, 1), dtype=np.float32),
          'masks': tfds.features.Tensor(
            shape=(NUM_ANNOTATORS, s, s), dtype=np.uint8, encoding=zlib
          ),
          'modes': tfds.features.Tensor(
            shape=(NUM_MODES, s, s), dtype=np.uint8, encoding=zlib
          ),
          'mode_probs': tfds.features.Tensor(
            shape=(NUM_MODES,), dtype=np.float32
          ),
          # Raw bytes: a plain float feature would be stored as float32.
          'geometry': tfds.features.Tensor(
            shape=(len(GEOMETRY_KEYS),),
            dtype=np.float64,
            encoding=tfds.features.Encoding.BYTES,
          ),
          'id': tfds.features.Text(),
          'patient_id': tfds.features.Text(),
        }
      ),
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    c = self.builder_config
    # TFDS cannot write empty splits: a split of size 0 is left out.
    return {
      split: self._generate_examples(split=split, num=num)
      for split, num in (
        ('train', c.num_train),
        ('validation', c.num_validation),
        ('test', c.num_test),
      )
      if num > 0
    }

  def _generate_examples(self, *, split, num):
    c = self.builder_config
    for index, ex in generate_split(
      seed=c.seed, split=split, num=num, size=c.size
    ):
      ex_id = f'synth{c.size}-{split}-{index:06d}'
      yield index, dict(ex, id=ex_id, patient_id=ex_id)
