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

"""The authors' kind of metric code: plain numpy loops over mask pairs, per image (SPEC §3).

A speed yardstick for benchmarks/metrics_throughput.py, written from SPEC §3 (not from the
authors' code): GED (V-statistic), the collective-insight parts in the authors' `compat` form
(S_c as a precision, D_a with i = k included, CI = 3abc / (a + b + c)), Hungarian-matched IoU
on the sets tiled to lcm(N, M), and the authors' iou / dice (mean over annotation x sample
pairs) and ncc. Each pair is scored by its own numpy call, as a per-pair loop does.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import optimize


def pair_iou(a: np.ndarray, b: np.ndarray) -> float:
  union = np.logical_or(a, b).sum()
  return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def pair_dice(a: np.ndarray, b: np.ndarray) -> float:
  total = a.sum() + b.sum()
  return 1.0 if total == 0 else float(2 * np.logical_and(a, b).sum() / total)


def ged(samples: np.ndarray, annotations: np.ndarray) -> float:
  """2 E d(S, Y) - E d(S, S') - E d(Y, Y'), d = 1 - IoU, all ordered pairs incl. i = k."""
  d = lambda x, y: 1.0 - pair_iou(x, y)  # pylint: disable=g-long-lambda
  cross = np.mean([d(s, y) for s in samples for y in annotations])
  within_s = np.mean([d(s, t) for s in samples for t in samples])
  within_y = np.mean([d(y, z) for y in annotations for z in annotations])
  return float(2 * cross - within_s - within_y)


def hm_iou(samples: np.ndarray, annotations: np.ndarray) -> float:
  """Mean IoU of the maximum-weight matching of both sets tiled to lcm(N, M)."""
  n, m = len(samples), len(annotations)
  length = n * m // math.gcd(n, m)
  s = [samples[i % n] for i in range(length)]
  y = [annotations[j % m] for j in range(length)]
  cost = np.array([[pair_iou(a, b) for b in y] for a in s])
  rows, cols = optimize.linear_sum_assignment(cost, maximize=True)
  return float(cost[rows, cols].mean())


def collective_insight(
  samples: np.ndarray, annotations: np.ndarray
) -> dict[str, float]:
  """The authors' CI: S_c = |U(S) n U(Y)| / |U(S)|, D_max, D_a with i = k, 3abc / (a+b+c)."""
  union_s = np.any(samples, axis=0)
  union_y = np.any(annotations, axis=0)
  area = union_s.sum()
  s_c = (
    1.0 if area == 0 else float(np.logical_and(union_s, union_y).sum() / area)
  )
  d_max = float(
    np.mean([max(pair_dice(s, y) for s in samples) for y in annotations])
  )

  def variances(masks):
    f = masks.astype(np.float64)
    return [np.var(a - b) for a in f for b in f]

  v_s, v_y = variances(samples), variances(annotations)
  d_a = 1.0 - (abs(max(v_s) - max(v_y)) + abs(min(v_s) - min(v_y))) / 2
  total = s_c + d_max + d_a
  ci = 0.0 if total == 0 else 3 * s_c * d_max * d_a / total
  return {'CI': ci, 'S_c': s_c, 'D_max': d_max, 'D_a': float(d_a)}


def _xent(m: np.ndarray, g: np.ndarray) -> np.ndarray:
  """-sum over (p, 1 - p) channels of g log(m + 1e-8), per pixel."""
  return -(g * np.log(m + 1e-8) + (1 - g) * np.log(1 - m + 1e-8))


def _ncc(a: np.ndarray, v: np.ndarray) -> float:
  a, v = a.ravel(), v.ravel()
  return float(
    np.sum(
      (a - a.mean())
      / (a.std() * len(a) + 1e-8)
      * (v - v.mean())
      / (v.std() + 1e-8)
    )
  )


def ncc(samples: np.ndarray, annotations: np.ndarray) -> float:
  f = samples.astype(np.float64)
  mean_seg = f.mean(axis=0)
  e_ss = np.mean([_xent(s, mean_seg) for s in f], axis=0)
  values = []
  for y in annotations.astype(np.float64):
    e_sy = np.mean([_xent(s, y) for s in f], axis=0)
    values.append(_ncc(e_ss, e_sy))
  return float(np.mean(values))


def image_metrics(
  samples: np.ndarray, annotations: np.ndarray
) -> dict[str, float]:
  """Every metric of one image: samples [N, H, W], annotations [M, H, W] (bool)."""
  out = {
    'GED': ged(samples, annotations),
    'HM_IoU': hm_iou(samples, annotations),
  }
  out.update(collective_insight(samples, annotations))
  out['iou'] = float(
    np.mean([pair_iou(y, s) for y in annotations for s in samples])
  )
  out['dice'] = float(
    np.mean([pair_dice(y, s) for y in annotations for s in samples])
  )
  out['ncc'] = ncc(samples, annotations)
  return out
