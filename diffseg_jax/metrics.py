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

"""Metrics for distributions of binary segmentations (SPEC §3).

Every function is batched over arbitrary leading dimensions:

  samples      bool [..., N, H, W]  N model samples per image,
  annotations  bool [..., M, H, W]  M expert annotations per image,
  annotation_valid  optional bool [..., M]; False marks a missing annotation
                    (a variable number of annotators). Invalid annotations are
                    ignored everywhere; an image needs at least one valid one.

Conventions, shared by all functions (those of PHiSeg, CCDM, MoSE, CAR, the
authors' code):

* d(a, b) = 1 - IoU(a, b) on the foreground; IoU(empty, empty) = 1 and
  Dice(empty, empty) = 1 (distance 0 between two empty masks).
* All pairwise intersections come from one matrix product of the flattened
  masks, |A ∩ B| = A·B and |A ∪ B| = |A| + |B| - A·B. With {0, 1} entries the
  product is exact in float32 for up to 2**24 pixels (also under bf16/tf32
  matmul precision), so GED, HM-IoU, CI and Dice share one exact pass.

Device functions are jit-compiled jnp code; `hm_iou` and `all_metrics` finish
on the host (scipy's assignment solver) and return numpy arrays.
"""

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from scipy import optimize

Array = Any

METRIC_NAMES = (
  'ged',
  'hm_iou',
  'ci',
  's_c',
  'd_max',
  'd_a',
  'ci_compat',
  's_c_compat',
  'd_a_compat',
  'ncc',
  'ece',
  'dice_of_mean',
  'iou_of_mean',
)


# --------------------------------------------------------------------------
# Batching and the shared pairwise pass.
# --------------------------------------------------------------------------
def _float_dtype():
  return jnp.float64 if jax.config.jax_enable_x64 else jnp.float32


def _on_cpu() -> bool:
  return jax.default_backend() == 'cpu'


def _per_image(fn, *args):
  """Applies fn to every image; args are (array, trailing_rank) pairs.

  On CPU a lax.map over images (per-image 2D GEMMs and reductions are several
  times faster there than XLA's batched forms); elsewhere a vmap.
  """
  lead = jnp.shape(args[0][0])[: jnp.ndim(args[0][0]) - args[0][1]]
  flat = tuple(
    jnp.reshape(x, (-1,) + jnp.shape(x)[jnp.ndim(x) - rank :])
    for x, rank in args
  )
  if _on_cpu():
    out = jax.lax.map(lambda xs: fn(*xs), flat)
  else:
    out = jax.vmap(fn)(*flat)
  return jax.tree.map(lambda y: y.reshape(lead + y.shape[1:]), out)


def _rows(masks: Array) -> Array:
  """{0, 1} rows in the matmul dtype: bool [K, H, W] -> [K, H*W]."""
  dtype = _float_dtype() if _on_cpu() else jnp.bfloat16  # {0, 1}: exact.
  return jnp.reshape(masks, masks.shape[:-2] + (-1,)).astype(dtype)


def _dot(a: Array, b: Array) -> Array:
  """Exact product of {0, 1} (or small integer) matrices, float result."""
  return jnp.dot(
    a,
    b,
    preferred_element_type=_float_dtype(),
    precision=jax.lax.Precision.HIGHEST,
  )


def _ratio_or_one(num: Array, den: Array) -> Array:
  """num / den, defined as 1 where den == 0 (two empty masks)."""
  safe = jnp.where(den > 0, den, 1)
  return jnp.where(den > 0, num / safe, 1)


def _iou_dice(inter: Array, area_a: Array, area_b: Array):
  """IoU and Dice [K, L] from intersections [K, L] and areas [K], [L]."""
  total = area_a[:, None] + area_b[None, :]
  return _ratio_or_one(inter, total - inter), _ratio_or_one(2 * inter, total)


def _check(samples: Array, annotations: Array) -> None:
  s, a = jnp.shape(samples), jnp.shape(annotations)
  if len(s) < 3 or len(a) < 3 or s[:-3] != a[:-3] or s[-2:] != a[-2:]:
    raise ValueError(
      f'samples {s} and annotations {a} must be [..., N, H, W] and '
      '[..., M, H, W] with equal leading dims and equal H, W.'
    )


def _valid_weights(annotations: Array, annotation_valid: Array | None) -> Array:
  shape = jnp.shape(annotations)[:-2]
  if annotation_valid is None:
    return jnp.ones(shape, _float_dtype())
  if jnp.shape(annotation_valid) != shape:
    raise ValueError(
      f'annotation_valid has shape {jnp.shape(annotation_valid)}, expected '
      f'{shape} (the leading dims of annotations [..., M, H, W]).'
    )
  return jnp.asarray(annotation_valid).astype(_float_dtype())


# --------------------------------------------------------------------------
# Per-image formulas (no leading dims).
# --------------------------------------------------------------------------
def _ged(iou_m, n, w):
  """GED from the joint IoU matrix [N+M, N+M] of samples and annotations."""
  d = 1.0 - iou_m
  wsum = jnp.sum(w)
  cross = jnp.sum(d[:n, n:] * w[None, :]) / (n * wsum)
  within_s = jnp.mean(d[:n, :n])
  within_y = jnp.sum(d[n:, n:] * w[:, None] * w[None, :]) / wsum**2
  return 2 * cross - within_s - within_y


def _masked_max_min(v, mask):
  """Max and min of v over mask; (0, 0) for an empty mask."""
  has = jnp.any(mask)
  vmax = jnp.max(jnp.where(mask, v, -jnp.inf))
  vmin = jnp.min(jnp.where(mask, v, jnp.inf))
  return jnp.where(has, vmax, 0.0), jnp.where(has, vmin, 0.0)


def _collective_insight(*, gram, dice_sy, n, w, union_s, union_y, compat):
  """CI parts from the Gram matrix [K, K] and the unions [P] (see public fn)."""
  m = w.shape[0]
  num_pixels = union_s.shape[0]
  both = jnp.sum(union_s & union_y).astype(gram.dtype)
  den = jnp.sum(union_s if compat else union_y).astype(gram.dtype)
  s_c = _ratio_or_one(both, den)
  d_max = jnp.sum(jnp.max(dice_sy, axis=0) * w) / jnp.sum(w)

  # Pixel variance of A_i - A_k: |A xor B| / P - ((|A| - |B|) / P)^2.
  areas = jnp.diagonal(gram)
  ai, ak = areas[:, None], areas[None, :]
  var = (ai + ak - 2 * gram) / num_pixels - ((ai - ak) / num_pixels) ** 2
  valid = w > 0
  pair_y = valid[:, None] & valid[None, :]
  mask_s = jnp.ones((n, n), bool)
  if not compat:
    mask_s = ~jnp.eye(n, dtype=bool)
    pair_y = pair_y & ~jnp.eye(m, dtype=bool)
  s_max, s_min = _masked_max_min(var[:n, :n], mask_s)
  y_max, y_min = _masked_max_min(var[n:, n:], pair_y)
  d_a = 1 - (jnp.abs(s_max - y_max) + jnp.abs(s_min - y_min)) / 2

  prod = s_c * d_max * d_a
  den = (
    (s_c + d_max + d_a) if compat else (s_c * d_max + d_max * d_a + d_a * s_c)
  )
  ci = jnp.where(den > 0, 3 * prod / jnp.where(den > 0, den, 1), 0.0)
  return dict(s_c=s_c, d_max=d_max, d_a=d_a, ci=ci)


def _ncc(p, a, w):
  """PHiSeg NCC from the sample mean p [P] and annotations bool [M, P]."""
  e_ss = 2 * p * (1 - p)
  e_sy = jnp.where(a, 1 - p[None, :], p[None, :])
  # A constant map has no correlation: 0 (as the authors' code), not NaN.
  constant = (jnp.max(e_ss) == jnp.min(e_ss)) | (
    jnp.max(e_sy, axis=-1) == jnp.min(e_sy, axis=-1)
  )
  e_ss = e_ss - jnp.mean(e_ss)
  e_sy = e_sy - jnp.mean(e_sy, axis=-1, keepdims=True)
  den = jnp.sqrt(jnp.sum(e_ss * e_ss) * jnp.sum(e_sy * e_sy, axis=-1))
  constant = constant | (den <= 0)
  corr = jnp.where(
    constant,
    0.0,
    jnp.sum(e_ss[None, :] * e_sy, axis=-1) / jnp.where(constant, 1.0, den),
  )
  return jnp.sum(jnp.where(w > 0, corr, 0.0) * w) / jnp.sum(w)


def _ece(p, q, num_bins):
  """ECE of p [P] against q [P] with equal-width bins (see public fn)."""
  index = jnp.minimum(jnp.floor(p * num_bins), num_bins - 1).astype(jnp.int32)
  per_bin = jax.ops.segment_sum(p - q, index, num_segments=num_bins)
  return jnp.sum(jnp.abs(per_bin)) / p.shape[0]


def _image_metrics(samples, annotations, w, *, threshold, num_bins):
  """Every device metric of one image: bool [N,H,W], bool [M,H,W], w [M]."""
  n = samples.shape[0]
  x = _rows(jnp.concatenate([samples, annotations], axis=0))
  gram = _dot(x, x.T)
  areas = jnp.diagonal(gram)
  iou_m, dice_m = _iou_dice(gram, areas, areas)
  counts = _dot(jnp.ones((1, n), x.dtype), x[:n])[0]
  p = counts / n
  annotated = _dot(w[None, :].astype(x.dtype), x[n:])[0]
  q = annotated / jnp.sum(w)
  union_s, union_y = counts > 0, annotated > 0
  a_flat = annotations.reshape(annotations.shape[0], -1)

  out = {'ged': _ged(iou_m, n, w), 'iou_sy': iou_m[:n, n:]}
  for compat, suffix in ((False, ''), (True, '_compat')):
    parts = _collective_insight(
      gram=gram,
      dice_sy=dice_m[:n, n:],
      n=n,
      w=w,
      union_s=union_s,
      union_y=union_y,
      compat=compat,
    )
    for key, value in parts.items():
      if not (compat and key == 'd_max'):
        out[key + suffix] = value
  out['ncc'] = _ncc(p, a_flat, w)
  out['ece'] = _ece(p, q, num_bins)
  mean = (p > threshold).astype(x.dtype)
  inter = _dot(x[n:], mean[:, None])[:, 0]
  iou_mean, dice_mean = _iou_dice(
    inter[None, :], jnp.sum(mean)[None], areas[n:]
  )
  out['dice_of_mean'] = jnp.sum(dice_mean[0] * w) / jnp.sum(w)
  out['iou_of_mean'] = jnp.sum(iou_mean[0] * w) / jnp.sum(w)
  return out


@functools.partial(jax.jit, static_argnames=('threshold', 'num_bins'))
def _device_metrics(
  samples, annotations, annotation_valid=None, *, threshold=0.5, num_bins=10
):
  _check(samples, annotations)
  w = _valid_weights(annotations, annotation_valid)
  fn = functools.partial(_image_metrics, threshold=threshold, num_bins=num_bins)
  return _per_image(
    fn,
    (jnp.asarray(samples, bool), 3),
    (jnp.asarray(annotations, bool), 3),
    (w, 1),
  )


# --------------------------------------------------------------------------
# Public metrics. Each runs the shared pass; jit drops the unused parts.
# --------------------------------------------------------------------------
@jax.jit
def ged(
  samples: Array, annotations: Array, annotation_valid: Array | None = None
) -> Array:
  """Squared generalized energy distance, float [...].

  GED = 2 E d(S, Y) - E d(S, S') - E d(Y, Y') with d = 1 - IoU and
  IoU(empty, empty) = 1. The within-set means run over all ordered pairs
  including i = k (the V-statistic every published implementation uses).
  """
  return _device_metrics(samples, annotations, annotation_valid)['ged']


@jax.jit
def pairwise_iou(a: Array, b: Array) -> Array:
  """IoU of every pair, float [..., K, L] for a [..., K, H, W], b [..., L, H, W].

  IoU(empty, empty) = 1.
  """
  _check(a, b)
  k = jnp.shape(a)[-3]

  def one(x, y):
    rows = _rows(jnp.concatenate([x, y], axis=0))
    gram = _dot(rows, rows.T)
    areas = jnp.diagonal(gram)
    return _iou_dice(gram[:k, k:], areas[:k], areas[k:])[0]

  return _per_image(one, (jnp.asarray(a, bool), 3), (jnp.asarray(b, bool), 3))


def _hm_iou_host(iou_sy: np.ndarray, valid: np.ndarray) -> np.ndarray:
  """Hungarian-matched IoU on the host: iou_sy [..., N, M], valid [..., M]."""
  iou_sy = np.asarray(iou_sy, np.float64)
  valid = np.broadcast_to(
    np.asarray(valid, bool), iou_sy.shape[:-2] + iou_sy.shape[-1:]
  )
  n = iou_sy.shape[-2]
  flat_iou = iou_sy.reshape((-1,) + iou_sy.shape[-2:])
  flat_valid = valid.reshape((-1, valid.shape[-1]))
  out = np.empty(flat_iou.shape[0], np.float64)
  for b in range(flat_iou.shape[0]):
    cols = flat_iou[b][:, flat_valid[b]]
    m = cols.shape[1]
    if m == 0:
      out[b] = np.nan
      continue
    length = n * m // math.gcd(n, m)
    tiled = np.repeat(np.repeat(cols, length // n, axis=0), length // m, axis=1)
    rows, matched = optimize.linear_sum_assignment(tiled, maximize=True)
    out[b] = tiled[rows, matched].mean()
  return out.reshape(iou_sy.shape[:-2])


def hm_iou(
  samples: Array, annotations: Array, annotation_valid: Array | None = None
) -> np.ndarray:
  """Hungarian-matched IoU, float64 numpy [...].

  Both sets are tiled to L = lcm(N, M) elements (each sample repeated L/N
  times, each valid annotation L/M times); the maximum-weight assignment of the
  L x L IoU matrix is solved with scipy on the host and the mean matched IoU is
  returned. The IoU matrices come from the batched device pass. With
  `annotation_valid`, M is the per-image number of valid annotations.
  """
  _check(samples, annotations)
  valid = (
    np.ones(np.shape(annotations)[:-2], bool)
    if annotation_valid is None
    else np.asarray(annotation_valid, bool)
  )
  return _hm_iou_host(np.asarray(pairwise_iou(samples, annotations)), valid)


@functools.partial(jax.jit, static_argnames=('compat',))
def collective_insight(
  samples: Array,
  annotations: Array,
  annotation_valid: Array | None = None,
  *,
  compat: bool = False,
) -> dict[str, Array]:
  """Collective insight (CIMD) and its parts, dict of float [...].

  Default (SPEC §3):
    s_c   = |∪S ∩ ∪Y| / |∪Y|  (combined sensitivity; 1 when ∪Y is empty),
    d_max = mean over annotations of the best Dice over samples
            (Dice(empty, empty) = 1),
    d_a   = 1 - (|max V(S) - max V(Y)| + |min V(S) - min V(Y)|) / 2 with
            V(S) = {pixel variance of S_i - S_k : i != k} (population
            variance; a set with fewer than two members has max V = min V = 0),
    ci    = 3 / (1/s_c + 1/d_max + 1/d_a)  (0 if any part is 0).
  compat=True reproduces the authors' code: s_c = |∪S ∩ ∪Y| / |∪S| (a
  precision; 1 when ∪S is empty), V includes the i = k pairs (so min V = 0),
  and ci = 3 abc / (a + b + c).
  """
  out = _device_metrics(samples, annotations, annotation_valid)
  suffix = '_compat' if compat else ''
  return {
    's_c': out['s_c' + suffix],
    'd_max': out['d_max'],
    'd_a': out['d_a' + suffix],
    'ci': out['ci' + suffix],
  }


@jax.jit
def ncc(
  samples: Array, annotations: Array, annotation_valid: Array | None = None
) -> Array:
  """PHiSeg's normalized cross-correlation, float [...].

  E_ss = mean_i CE(S_i; mean S) and E_sy_j = mean_i CE(S_i; Y_j) are the
  pixel-wise cross-entropy maps of PHiSeg's `variance_ncc_dist`; NCC is the
  Pearson correlation of E_ss with E_sy_j, averaged over the annotations. For
  binary masks and PHiSeg's log(x + eps) these maps are, up to the common
  factor -log(eps) (which the correlation ignores) and O(eps) terms,
  E_ss = 2 p (1 - p) and E_sy_j = |Y_j - p| with p the sample mean; they are
  computed in that closed form. The correlation with a constant map (e.g.
  all samples identical, or an annotation equal to all of them) is 0, as in
  the authors' code (PHiSeg's gives NaN).
  """
  return _device_metrics(samples, annotations, annotation_valid)['ncc']


@functools.partial(jax.jit, static_argnames=('num_bins',))
def ece(
  samples: Array,
  annotations: Array,
  annotation_valid: Array | None = None,
  *,
  num_bins: int = 10,
) -> Array:
  """Expected calibration error of the foreground probability, float [...].

  p = sample mean per pixel, q = mean of the valid annotations per pixel.
  Pixels are binned by p into `num_bins` equal-width bins on [0, 1] (p = 1 in
  the last); ECE = sum_b (n_b / P) |mean_b p - mean_b q| over the image's P
  pixels.
  """
  return _device_metrics(
    samples, annotations, annotation_valid, num_bins=num_bins
  )['ece']


@functools.partial(jax.jit, static_argnames=('threshold',))
def dice_of_mean(
  samples: Array,
  annotations: Array,
  annotation_valid: Array | None = None,
  *,
  threshold: float = 0.5,
) -> Array:
  """Dice of the thresholded sample mean (p > threshold) vs each annotation.

  Averaged over the valid annotations, float [...]; Dice(empty, empty) = 1.
  Not the authors' `dice` (their mean over all sample-annotation pairs, see
  authors_metrics).
  """
  return _device_metrics(
    samples, annotations, annotation_valid, threshold=threshold
  )['dice_of_mean']


@functools.partial(jax.jit, static_argnames=('threshold',))
def iou_of_mean(
  samples: Array,
  annotations: Array,
  annotation_valid: Array | None = None,
  *,
  threshold: float = 0.5,
) -> Array:
  """IoU of the thresholded sample mean (p > threshold) vs each annotation.

  Averaged over the valid annotations, float [...]; IoU(empty, empty) = 1.
  Not the authors' `iou` (see authors_metrics).
  """
  return _device_metrics(
    samples, annotations, annotation_valid, threshold=threshold
  )['iou_of_mean']


@jax.jit
def uncertainty_map(samples: Array) -> dict[str, Array]:
  """Per-pixel uncertainty of the samples, dict of float [..., H, W].

  'variance' = p (1 - p) (population variance over samples) and
  'entropy' = binary entropy of p in bits (0 log 0 = 0), p = sample mean.
  """
  samples = jnp.asarray(samples, bool)
  p = (
    jnp.sum(samples, axis=-3, dtype=jnp.int32).astype(_float_dtype())
    / samples.shape[-3]
  )

  def plogp(x):
    return jnp.where(x > 0, x * jnp.log2(jnp.where(x > 0, x, 1)), 0.0)

  return dict(variance=p * (1 - p), entropy=-(plogp(p) + plogp(1 - p)))


@functools.partial(jax.jit, static_argnames=('min_area_fraction',))
def postprocess(samples: Array, *, min_area_fraction: float = 0.5) -> Array:
  """The paper's area filter, bool [..., N, H, W].

  Keeps a sample only if its foreground area is strictly greater than
  `min_area_fraction` times the largest sample area of the same image
  (`area > 0.5 * max_area`, SPEC §3): a sample at exactly half is zeroed, and
  if all samples are empty they stay empty.
  """
  return _area_filter(jnp.asarray(samples, bool), min_area_fraction)


def _area_filter(samples, min_area_fraction=0.5):
  areas = jnp.sum(samples, axis=(-2, -1), dtype=jnp.int32)
  keep = areas > min_area_fraction * jnp.max(areas, axis=-1, keepdims=True)
  return samples & keep[..., None, None]


AUTHORS_KEYS = ('GED', 'CI', 'S_c', 'D_max', 'D_a', 'iou', 'dice', 'ncc')


def _authors_ncc(counts, annotations, n):
  """The authors' NCC from sample counts [P] and annotation rows [M, P].

  With one-hot masks and xent(m, g) = -sum_c g_c log(m_c + 1e-8), their maps
  are, with p = counts / N, L0 = log(1e-8) and L1 = log(1 + 1e-8),
  E_ss = -L1 + (L1 - L0) 2 p (1 - p) and
  E_sy_j = -L1 + (L1 - L0) |Y_j - p|: positive affine maps of the integer
  maps u = k (N - k) and v_j = |N Y_j - k| (k = counts). Their ncc is the
  Pearson correlation up to the 1e-8 guards in its denominators (relative
  effect < 1e-9 for a non-constant map), and 0 when either map is constant;
  the integer form makes "constant" exact.
  """
  u = counts * (n - counts)
  v = jnp.abs(n * annotations - counts[None, :])

  def centred(x):
    return x - jnp.mean(x, axis=-1, keepdims=True)

  def varying(x):
    return jnp.max(x, axis=-1) > jnp.min(x, axis=-1)

  cu, cv = centred(u), centred(v)
  su = jnp.sum(cu * cu)
  sv = jnp.sum(cv * cv, axis=-1)
  ok = varying(u) & varying(v)
  corr = jnp.sum(cu[None, :] * cv, axis=-1) / jnp.sqrt(
    jnp.where(ok, su * sv, 1)
  )
  return jnp.mean(jnp.where(ok, corr, 0.0))


def _authors_image(samples, annotations):
  """The authors' per-image metrics: bool [N, H, W], bool [M, H, W]."""
  n, m = samples.shape[0], annotations.shape[0]
  x = _rows(jnp.concatenate([samples, annotations], axis=0))
  gram = _dot(x, x.T)
  areas = jnp.diagonal(gram)
  iou_m, dice_m = _iou_dice(gram, areas, areas)
  w = jnp.ones((m,), gram.dtype)
  counts = _dot(jnp.ones((1, n), x.dtype), x[:n])[0]
  annotated = _dot(jnp.ones((1, m), x.dtype), x[n:])[0]
  ci = _collective_insight(
    gram=gram,
    dice_sy=dice_m[:n, n:],
    n=n,
    w=w,
    union_s=counts > 0,
    union_y=annotated > 0,
    compat=True,
  )
  return {
    'GED': _ged(iou_m, n, w),
    'CI': ci['ci'],
    'S_c': ci['s_c'],
    'D_max': ci['d_max'],
    'D_a': ci['d_a'],
    'iou': jnp.mean(iou_m[:n, n:]),
    'dice': jnp.mean(dice_m[:n, n:]),
    'ncc': _authors_ncc(counts, x[n:].astype(counts.dtype), n),
  }


@functools.partial(jax.jit, static_argnames=('postprocess',))
def authors_metrics(
  samples: Array, annotations: Array, *, postprocess: bool = False
) -> dict[str, Array]:
  """The authors' `get_ambiguous_metrics`, number for number (SPEC §3).

  For comparison with the paper's tables only; our own metrics (all_metrics)
  follow SPEC's definitions. Keys (AUTHORS_KEYS), each float [...]:
    GED    as `ged`;
    CI, S_c, D_max, D_a   as `collective_insight(..., compat=True)`:
           S_c = |∪S ∩ ∪Y| / |∪S|, D_a includes the i = k pairs,
           CI = 3 abc / (a + b + c);
    iou, dice   the mean over all M x N (annotation, sample) pairs of the
           pair's IoU / Dice (two empty masks score 1), not the score of the
           sample mean (that is iou_of_mean / dice_of_mean);
    ncc    their NCC: one-hot masks with a background channel, the log taken
           of the samples; 0 (never NaN) when a map is constant.

  Args:
    samples: bool [..., N, H, W].
    annotations: bool [..., M, H, W]; all M are used.
    postprocess: apply their area filter (`postprocess`) to the samples first.

  Returns:
    dict of float [...], one value per image.
  """
  _check(samples, annotations)
  samples = jnp.asarray(samples, bool)
  if postprocess:
    samples = _area_filter(samples)
  return _per_image(
    _authors_image, (samples, 3), (jnp.asarray(annotations, bool), 3)
  )


def all_metrics(
  samples: Array,
  annotations: Array,
  annotation_valid: Array | None = None,
  *,
  threshold: float = 0.5,
  num_bins: int = 10,
) -> dict[str, np.ndarray]:
  """Every per-image metric from one shared device pass, numpy [...] each.

  Keys (METRIC_NAMES): ged, hm_iou, ci, s_c, d_max, d_a (SPEC definition),
  ci_compat, s_c_compat, d_a_compat (the authors' code; d_max is shared),
  ncc, ece, dice_of_mean, iou_of_mean. Each value equals that of the
  single-metric function of the same name with the same arguments.
  """
  _check(samples, annotations)
  if annotation_valid is None:
    annotation_valid = np.ones(np.shape(annotations)[:-2], bool)
  out = jax.device_get(
    _device_metrics(
      jnp.asarray(samples, bool),
      jnp.asarray(annotations, bool),
      jnp.asarray(annotation_valid, bool),
      threshold=threshold,
      num_bins=num_bins,
    )
  )
  out['hm_iou'] = _hm_iou_host(out.pop('iou_sy'), annotation_valid)
  return {key: np.asarray(out[key]) for key in METRIC_NAMES}
