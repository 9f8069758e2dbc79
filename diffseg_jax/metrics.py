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


# --------------------------------------------------------------------------
# Shared pairwise pass.
# --------------------------------------------------------------------------
def _float_dtype():
  return jnp.float64 if jax.config.jax_enable_x64 else jnp.float32


def _flatten(masks: Array) -> Array:
  """bool [..., K, H, W] -> bool [..., K, H*W]."""
  masks = jnp.asarray(masks).astype(bool)
  return masks.reshape(masks.shape[:-2] + (-1,))


def _count(masks: Array, axis: int) -> Array:
  """Number of True along axis, as float (integer sums are cheap on CPU)."""
  return jnp.sum(masks, axis=axis, dtype=jnp.int32).astype(_float_dtype())


def _sample_mean(fs: Array) -> Array:
  """Per-pixel foreground frequency p of samples [..., N, P] -> [..., P]."""
  return _count(fs, -2) / fs.shape[-2]


def _annotation_mean(fa: Array, w: Array) -> Array:
  """Per-pixel mean of the valid annotations [..., M, P] -> [..., P]."""
  return _count(fa & (w[..., None] > 0), -2) / jnp.sum(w, -1)[..., None]


def _packed_gram(flat: Array) -> Array:
  """AND-popcount product of bit-packed {0, 1} rows, int32 [..., K, K]."""
  pad = -flat.shape[-1] % 32
  bits = jnp.pad(flat.astype(jnp.uint32), [(0, 0)] * (flat.ndim - 1) +
                 [(0, pad)])
  bits = bits.reshape(bits.shape[:-1] + (-1, 32))
  words = jnp.sum(bits << jnp.arange(32, dtype=jnp.uint32), axis=-1,
                  dtype=jnp.uint32)
  both = words[..., :, None, :] & words[..., None, :, :]
  return jnp.sum(jax.lax.population_count(both).astype(jnp.int32), axis=-1)


def _matmul_gram(flat: Array) -> Array:
  """Float matmul of {0, 1} rows, exact with bf16 inputs and f32 sums."""
  flat = flat.astype(jnp.bfloat16)
  return jnp.einsum('...kp,...lp->...kl', flat, flat,
                    preferred_element_type=_float_dtype())


def _gram(flat: Array) -> tuple[Array, Array]:
  """Pairwise intersections [..., K, K] and areas [..., K] of flat masks.

  The product A·B of {0, 1} rows. On CPU it runs as an AND-popcount product of
  bit-packed rows (the same integers, several times faster than XLA's batched
  float matmul there); on GPU/TPU as a float matmul (exact for {0, 1}).
  """
  if jax.default_backend() == 'cpu':
    inter = _packed_gram(flat).astype(_float_dtype())
  else:
    inter = _matmul_gram(flat)
  areas = jnp.diagonal(inter, axis1=-2, axis2=-1)
  return inter, areas


def _ratio_or_one(num: Array, den: Array) -> Array:
  """num / den, defined as 1 where den == 0 (two empty masks)."""
  safe = jnp.where(den > 0, den, 1)
  return jnp.where(den > 0, num / safe, 1)


def _iou_dice(inter: Array, areas: Array) -> tuple[Array, Array]:
  """IoU and Dice matrices [..., K, K] from intersections and areas."""
  total = areas[..., :, None] + areas[..., None, :]
  iou_m = _ratio_or_one(inter, total - inter)
  dice_m = _ratio_or_one(2 * inter, total)
  return iou_m, dice_m


def _valid_weights(annotations: Array, annotation_valid: Array | None) -> Array:
  shape = jnp.shape(annotations)[:-2]
  if annotation_valid is None:
    return jnp.ones(shape, _float_dtype())
  if jnp.shape(annotation_valid) != shape:
    raise ValueError(
        f'annotation_valid has shape {jnp.shape(annotation_valid)}, expected '
        f'{shape} (the leading dims of annotations [..., M, H, W]).')
  return jnp.asarray(annotation_valid).astype(_float_dtype())


def _check(samples: Array, annotations: Array) -> None:
  s, a = jnp.shape(samples), jnp.shape(annotations)
  if len(s) < 3 or len(a) < 3 or s[:-3] != a[:-3] or s[-2:] != a[-2:]:
    raise ValueError(
        f'samples {s} and annotations {a} must be [..., N, H, W] and '
        '[..., M, H, W] with equal leading dims and equal H, W.')


def _weighted_mean(x: Array, w: Array, axis: int) -> Array:
  return jnp.sum(x * w, axis=axis) / jnp.sum(w, axis=axis)


# --------------------------------------------------------------------------
# Individual metrics (device).
# --------------------------------------------------------------------------
def _ged_from(iou_m, n, w):
  """GED from the joint IoU matrix of [samples; annotations; ...]."""
  d = 1.0 - iou_m
  d_sy = d[..., :n, n:n + w.shape[-1]]
  d_ss = d[..., :n, :n]
  d_yy = d[..., n:n + w.shape[-1], n:n + w.shape[-1]]
  wsum = jnp.sum(w, axis=-1)
  cross = jnp.sum(d_sy * w[..., None, :], axis=(-2, -1)) / (n * wsum)
  within_s = jnp.mean(d_ss, axis=(-2, -1))
  within_y = jnp.sum(d_yy * w[..., :, None] * w[..., None, :],
                     axis=(-2, -1)) / wsum**2
  return 2 * cross - within_s - within_y


@jax.jit
def ged(samples: Array, annotations: Array,
        annotation_valid: Array | None = None) -> Array:
  """Squared generalized energy distance, [...].

  GED = 2 E d(S, Y) - E d(S, S') - E d(Y, Y') with d = 1 - IoU and
  IoU(empty, empty) = 1. The within-set means run over all ordered pairs
  including i = k (the V-statistic every published implementation uses).

  Args:
    samples: bool [..., N, H, W].
    annotations: bool [..., M, H, W].
    annotation_valid: optional bool [..., M].

  Returns:
    float [...].
  """
  _check(samples, annotations)
  n = samples.shape[-3]
  w = _valid_weights(annotations, annotation_valid)
  inter, areas = _gram(jnp.concatenate(
      [_flatten(samples), _flatten(annotations)], axis=-2))
  iou_m, _ = _iou_dice(inter, areas)
  return _ged_from(iou_m, n, w)


@jax.jit
def pairwise_iou(a: Array, b: Array) -> Array:
  """IoU of every pair, float [..., K, L] for a [..., K, H, W], b [..., L, H, W].

  IoU(empty, empty) = 1.
  """
  k = a.shape[-3]
  inter, areas = _gram(jnp.concatenate([_flatten(a), _flatten(b)], axis=-2))
  iou_m, _ = _iou_dice(inter, areas)
  return iou_m[..., :k, k:]


def _hm_iou_host(iou_sy: np.ndarray, valid: np.ndarray) -> np.ndarray:
  """Hungarian-matched IoU on the host.

  Args:
    iou_sy: float [..., N, M] IoU between samples and annotations.
    valid: bool [..., M].

  Returns:
    float64 [...].
  """
  iou_sy = np.asarray(iou_sy, np.float64)
  valid = np.asarray(valid, bool)
  lead = iou_sy.shape[:-2]
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
  return out.reshape(lead)


def hm_iou(samples: Array, annotations: Array,
           annotation_valid: Array | None = None) -> np.ndarray:
  """Hungarian-matched IoU, float64 numpy [...].

  Both sets are tiled to L = lcm(N, M) elements (each sample repeated L/N
  times, each valid annotation L/M times); the maximum-weight assignment of the
  L x L IoU matrix is solved with scipy on the host and the mean matched IoU is
  returned. The IoU matrices come from the batched device pass. With
  `annotation_valid`, M is the per-image number of valid annotations.
  """
  _check(samples, annotations)
  iou_sy = pairwise_iou(samples, annotations)
  valid = (np.ones(np.shape(annotations)[:-2], bool) if annotation_valid is None
           else np.asarray(annotation_valid, bool))
  return _hm_iou_host(np.asarray(iou_sy), valid)


def _pair_variances(inter, areas, num_pixels):
  """Pixel variance of (A_i - A_k) for every pair, [..., K, K].

  For binary masks mean((a - b)^2) = |A xor B| / P and mean(a - b) =
  (|A| - |B|) / P, so the population variance needs only the Gram matrix.
  """
  ai, ak = areas[..., :, None], areas[..., None, :]
  return (ai + ak - 2 * inter) / num_pixels - ((ai - ak) / num_pixels)**2


def _masked_max_min(v, mask):
  """Max and min of v over mask (last two axes); (0, 0) for an empty mask."""
  has = jnp.any(mask, axis=(-2, -1))
  vmax = jnp.max(jnp.where(mask, v, -jnp.inf), axis=(-2, -1))
  vmin = jnp.min(jnp.where(mask, v, jnp.inf), axis=(-2, -1))
  return jnp.where(has, vmax, 0.0), jnp.where(has, vmin, 0.0)


def _ci_from(*, inter, areas, dice_m, n, w, union_s, union_y, num_pixels,
             compat):
  """Collective insight parts from the joint Gram matrix."""
  m = w.shape[-1]
  both = _count(union_s & union_y, -1)
  denominator = _count(union_s if compat else union_y, -1)
  s_c = _ratio_or_one(both, denominator)
  d_max = _weighted_mean(jnp.max(dice_m[..., :n, n:n + m], axis=-2), w, -1)

  var = _pair_variances(inter, areas, num_pixels)
  eye_n = jnp.eye(n, dtype=bool)
  eye_m = jnp.eye(m, dtype=bool)
  valid = w > 0
  pair_y = valid[..., :, None] & valid[..., None, :]
  if compat:
    mask_s = jnp.ones((n, n), bool)
  else:
    mask_s = ~eye_n
    pair_y = pair_y & ~eye_m
  mask_s = jnp.broadcast_to(mask_s, var.shape[:-2] + (n, n))
  s_max, s_min = _masked_max_min(var[..., :n, :n], mask_s)
  y_max, y_min = _masked_max_min(var[..., n:n + m, n:n + m], pair_y)
  d_a = 1 - (jnp.abs(s_max - y_max) + jnp.abs(s_min - y_min)) / 2

  prod = s_c * d_max * d_a
  if compat:
    den = s_c + d_max + d_a
  else:
    den = s_c * d_max + d_max * d_a + d_a * s_c
  ci = jnp.where(den > 0, 3 * prod / jnp.where(den > 0, den, 1), 0.0)
  return dict(s_c=s_c, d_max=d_max, d_a=d_a, ci=ci)


def _unions(samples_flat, annotations_flat, w):
  union_s = jnp.any(samples_flat, axis=-2)
  union_y = jnp.any(annotations_flat & (w[..., :, None] > 0), axis=-2)
  return union_s, union_y


@functools.partial(jax.jit, static_argnames=('compat',))
def collective_insight(samples: Array, annotations: Array,
                       annotation_valid: Array | None = None, *,
                       compat: bool = False) -> dict[str, Array]:
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
  _check(samples, annotations)
  n = samples.shape[-3]
  w = _valid_weights(annotations, annotation_valid)
  fs, fa = _flatten(samples), _flatten(annotations)
  inter, areas = _gram(jnp.concatenate([fs, fa], axis=-2))
  _, dice_m = _iou_dice(inter, areas)
  union_s, union_y = _unions(fs, fa, w)
  return _ci_from(inter=inter, areas=areas, dice_m=dice_m, n=n, w=w,
                  union_s=union_s, union_y=union_y,
                  num_pixels=fs.shape[-1], compat=compat)


def _centered_corr(a, b):
  """Pearson correlation over the last axis (nan if either is constant)."""
  a = a - jnp.mean(a, axis=-1, keepdims=True)
  b = b - jnp.mean(b, axis=-1, keepdims=True)
  return jnp.sum(a * b, axis=-1) / jnp.sqrt(
      jnp.sum(a * a, axis=-1) * jnp.sum(b * b, axis=-1))


def _ncc_from(p, fa, w):
  e_ss = 2 * p * (1 - p)
  e_sy = jnp.where(fa, 1 - p[..., None, :], p[..., None, :])
  per_annotation = _centered_corr(e_ss[..., None, :], e_sy)
  per_annotation = jnp.where(w > 0, per_annotation, 0.0)
  return jnp.sum(per_annotation * w, axis=-1) / jnp.sum(w, axis=-1)


@jax.jit
def ncc(samples: Array, annotations: Array,
        annotation_valid: Array | None = None) -> Array:
  """PHiSeg's normalized cross-correlation, float [...].

  E_ss = mean_i CE(S_i; mean S) and E_sy_j = mean_i CE(S_i; Y_j) are the
  pixel-wise cross-entropy maps of PHiSeg's `variance_ncc_dist`; NCC is the
  Pearson correlation of E_ss with E_sy_j, averaged over the annotations. For
  binary masks and PHiSeg's log(x + eps) these maps are, up to the common
  factor -log(eps) (which the correlation ignores) and O(eps) terms,
  E_ss = 2 p (1 - p) and E_sy_j = |Y_j - p| with p the sample mean; they are
  computed in that closed form. NaN when a map is constant (e.g. identical
  samples), as in PHiSeg.
  """
  _check(samples, annotations)
  w = _valid_weights(annotations, annotation_valid)
  return _ncc_from(_sample_mean(_flatten(samples)), _flatten(annotations), w)


@jax.jit
def uncertainty_map(samples: Array) -> dict[str, Array]:
  """Per-pixel uncertainty of the samples, dict of float [..., H, W].

  'variance' = p (1 - p) (population variance over samples) and
  'entropy' = binary entropy of p in bits (0 log 0 = 0), p = sample mean.
  """
  p = jnp.mean(jnp.asarray(samples).astype(_float_dtype()), axis=-3)
  def plogp(x):
    return jnp.where(x > 0, x * jnp.log2(jnp.where(x > 0, x, 1)), 0.0)
  return dict(variance=p * (1 - p), entropy=-(plogp(p) + plogp(1 - p)))


def _ece_from(p, q, num_bins):
  lead, num_pixels = p.shape[:-1], p.shape[-1]
  index = jnp.minimum(jnp.floor(p * num_bins), num_bins - 1).astype(jnp.int32)
  images = int(np.prod(lead))
  segment = index.reshape(images, num_pixels) + num_bins * jnp.arange(
      images, dtype=jnp.int32)[:, None]
  per_bin = jax.ops.segment_sum((p - q).reshape(-1), segment.reshape(-1),
                                num_segments=images * num_bins)
  return jnp.sum(jnp.abs(per_bin.reshape(lead + (num_bins,))),
                 axis=-1) / num_pixels


@functools.partial(jax.jit, static_argnames=('num_bins',))
def ece(samples: Array, annotations: Array,
        annotation_valid: Array | None = None, *, num_bins: int = 10) -> Array:
  """Expected calibration error of the foreground probability, float [...].

  p = sample mean per pixel, q = mean of the valid annotations per pixel.
  Pixels are binned by p into `num_bins` equal-width bins on [0, 1] (p = 1 in
  the last); ECE = sum_b (n_b / P) |mean_b p - mean_b q| over the image's P
  pixels.
  """
  _check(samples, annotations)
  w = _valid_weights(annotations, annotation_valid)
  p = _sample_mean(_flatten(samples))
  q = _annotation_mean(_flatten(annotations), w)
  return _ece_from(p, q, num_bins)


def _mean_mask(fs, threshold):
  return _sample_mean(fs) > threshold


def _mean_overlap(samples, annotations, annotation_valid, threshold):
  w = _valid_weights(annotations, annotation_valid)
  fa = _flatten(annotations)
  mean = _mean_mask(_flatten(samples), threshold)
  inter, areas = _gram(jnp.concatenate([fa, mean[..., None, :]], axis=-2))
  iou_m, dice_m = _iou_dice(inter, areas)
  return (_weighted_mean(dice_m[..., -1, :-1], w, -1),
          _weighted_mean(iou_m[..., -1, :-1], w, -1))


@functools.partial(jax.jit, static_argnames=('threshold',))
def dice(samples: Array, annotations: Array,
         annotation_valid: Array | None = None, *,
         threshold: float = 0.5) -> Array:
  """Dice of the thresholded sample mean (p > threshold) vs each annotation.

  Averaged over the valid annotations, float [...]; Dice(empty, empty) = 1.
  """
  _check(samples, annotations)
  return _mean_overlap(samples, annotations, annotation_valid, threshold)[0]


@functools.partial(jax.jit, static_argnames=('threshold',))
def iou(samples: Array, annotations: Array,
        annotation_valid: Array | None = None, *,
        threshold: float = 0.5) -> Array:
  """IoU of the thresholded sample mean (p > threshold) vs each annotation.

  Averaged over the valid annotations, float [...]; IoU(empty, empty) = 1.
  """
  _check(samples, annotations)
  return _mean_overlap(samples, annotations, annotation_valid, threshold)[1]


@functools.partial(jax.jit, static_argnames=('min_area_fraction',))
def postprocess(samples: Array, *, min_area_fraction: float = 0.5) -> Array:
  """The paper's area filter, bool [..., N, H, W].

  Zeroes every sample whose foreground area is below `min_area_fraction` times
  the largest sample area of the same image.
  """
  samples = jnp.asarray(samples, bool)
  areas = jnp.sum(samples, axis=(-2, -1))
  keep = areas >= min_area_fraction * jnp.max(areas, axis=-1, keepdims=True)
  return samples & keep[..., None, None]


# --------------------------------------------------------------------------
# Everything in one pass.
# --------------------------------------------------------------------------
@functools.partial(jax.jit, static_argnames=('threshold', 'num_bins'))
def _device_metrics(samples, annotations, annotation_valid, *, threshold,
                    num_bins):
  n, m = samples.shape[-3], annotations.shape[-3]
  w = _valid_weights(annotations, annotation_valid)
  fs, fa = _flatten(samples), _flatten(annotations)
  p = _sample_mean(fs)
  mean = p > threshold
  inter, areas = _gram(jnp.concatenate([fs, fa, mean[..., None, :]], axis=-2))
  iou_m, dice_m = _iou_dice(inter, areas)
  union_s, union_y = _unions(fs, fa, w)
  out = {'ged': _ged_from(iou_m, n, w), 'iou_sy': iou_m[..., :n, n:n + m]}
  for compat, suffix in ((False, ''), (True, '_compat')):
    parts = _ci_from(inter=inter, areas=areas, dice_m=dice_m, n=n, w=w,
                     union_s=union_s, union_y=union_y,
                     num_pixels=fs.shape[-1], compat=compat)
    for key, value in parts.items():
      if not (compat and key == 'd_max'):
        out[key + suffix] = value
  out['ncc'] = _ncc_from(p, fa, w)
  out['ece'] = _ece_from(p, _annotation_mean(fa, w), num_bins)
  out['dice'] = _weighted_mean(dice_m[..., -1, n:n + m], w, -1)
  out['iou'] = _weighted_mean(iou_m[..., -1, n:n + m], w, -1)
  return out


METRIC_NAMES = ('ged', 'hm_iou', 'ci', 's_c', 'd_max', 'd_a', 'ci_compat',
                's_c_compat', 'd_a_compat', 'ncc', 'ece', 'dice', 'iou')


def all_metrics(samples: Array, annotations: Array,
                annotation_valid: Array | None = None, *,
                threshold: float = 0.5,
                num_bins: int = 10) -> dict[str, np.ndarray]:
  """Every per-image metric from one shared device pass, numpy [...] each.

  Keys (METRIC_NAMES): ged, hm_iou, ci, s_c, d_max, d_a (SPEC definition),
  ci_compat, s_c_compat, d_a_compat (the authors' code; d_max is shared),
  ncc, ece, dice, iou. Each value equals that of the single-metric function
  of the same name with the same arguments.
  """
  _check(samples, annotations)
  if annotation_valid is None:
    annotation_valid = np.ones(np.shape(annotations)[:-2], bool)
  out = _device_metrics(jnp.asarray(samples, bool),
                        jnp.asarray(annotations, bool),
                        jnp.asarray(annotation_valid, bool),
                        threshold=threshold, num_bins=num_bins)
  out = jax.device_get(out)
  iou_sy = out.pop('iou_sy')
  out['hm_iou'] = _hm_iou_host(iou_sy, np.asarray(annotation_valid, bool))
  return {key: np.asarray(out[key]) for key in METRIC_NAMES}
