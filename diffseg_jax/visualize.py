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

"""PNG grids: image | annotations | samples | sample mean | per-pixel uncertainty (variance).

Columns carry labels in a header row (PIL's built-in font, no font files needed), and small images
are enlarged by an integer factor (nearest neighbour) so that a cell is at least `MIN_CELL` pixels.
"""

import numpy as np
from PIL import Image
from PIL import ImageDraw
from PIL import ImageFont

from tfds_lidc import paths

_GAP = 2
_GAP_VALUE = 64
MIN_CELL = 96
_HEADER = 16


def _to_rgb(x: np.ndarray) -> np.ndarray:
  x = np.clip(np.asarray(x, np.float32), 0.0, 1.0)
  return np.repeat((x * 255).round().astype(np.uint8)[..., None], 3, axis=-1)


def _heat(x: np.ndarray) -> np.ndarray:
  """A black-red-yellow-white ramp for maps in [0, 1]."""
  x = np.clip(np.asarray(x, np.float32), 0.0, 1.0)
  rgb = np.stack(
    [np.clip(3 * x, 0, 1), np.clip(3 * x - 1, 0, 1), np.clip(3 * x - 2, 0, 1)],
    -1,
  )
  return (rgb * 255).round().astype(np.uint8)


def upscale_factor(height: int, width: int, min_cell: int = MIN_CELL) -> int:
  """The smallest integer factor that makes an H x W cell at least `min_cell` pixels on its short side."""
  return max(1, -(-min_cell // max(1, min(height, width))))


def grid_picture(
  *, image, annotations, samples, max_samples: int = 8, min_cell: int = MIN_CELL
) -> np.ndarray:
  """uint8 [header + rows*H', cols*W', 3]: a header row of column labels, then one row per example.

  Args:
    image: [K, H, W, 1] or [K, H, W] float in [0, 1].
    annotations: [K, M, H, W] bool (M may be 0).
    samples: [K, N, H, W] bool.
    max_samples: samples shown per row (mean and variance use all N).
    min_cell: cells smaller than this are enlarged by an integer factor (nearest neighbour).
  """
  image = np.asarray(image)
  if image.ndim == 4:
    image = image[..., 0]
  annotations = np.asarray(annotations, bool)
  samples = np.asarray(samples, bool)
  factor = upscale_factor(*image.shape[1:3], min_cell=min_cell)
  rows = []
  for k in range(image.shape[0]):
    mean = samples[k].mean(0)
    tiles = (
      [_to_rgb(image[k])]
      + [_to_rgb(a) for a in annotations[k]]
      + [_to_rgb(s) for s in samples[k][:max_samples]]
      + [_to_rgb(mean), _heat(4.0 * mean * (1.0 - mean))]
    )
    rows.append(_hstack([_enlarge(t, factor) for t in tiles]))
  body = _vstack(rows)
  cell = image.shape[2] * factor
  groups = [
    ('image', 1),
    ('annotations', annotations.shape[1]),
    ('samples', min(samples.shape[1], max_samples)),
    ('mean', 1),
    ('uncertainty', 1),
  ]
  return np.concatenate(
    [_header(groups, cell=cell, width=body.shape[1]), body], axis=0
  )


def save_grid(path: str, **kwargs) -> np.ndarray:
  """Writes `grid_picture(**kwargs)` as a PNG at `path` and returns the picture."""
  picture = grid_picture(**kwargs)
  _save_png(path, picture)
  return picture


def save_map(path: str, x: np.ndarray, *, heat: bool = False) -> None:
  """One [H, W] map in [0, 1] as a PNG (grey, or heat-coloured)."""
  _save_png(path, _heat(x) if heat else _to_rgb(x))


def _save_png(path, picture: np.ndarray) -> None:
  """Writes a uint8 [H, W, 3] picture to `path` (local, file:// or cloud), creating its folder."""
  path = paths.resolve(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  with path.open('wb') as f:
    Image.fromarray(picture).save(f, format='PNG')


def _enlarge(tile: np.ndarray, factor: int) -> np.ndarray:
  return np.repeat(np.repeat(tile, factor, axis=0), factor, axis=1)


def _header(groups, *, cell: int, width: int) -> np.ndarray:
  """A dark strip with each group's label left-aligned over its first column."""
  header = Image.new('RGB', (width, _HEADER), (_GAP_VALUE // 2,) * 3)
  draw = ImageDraw.Draw(header)
  font = ImageFont.load_default()
  x = 0
  for label, count in groups:
    if count:
      draw.text((x + 2, 2), label, fill=(255, 255, 255), font=font)
    x += count * (cell + _GAP)
  return np.asarray(header)


def _hstack(tiles):
  h = tiles[0].shape[0]
  gap = np.full((h, _GAP, 3), _GAP_VALUE, np.uint8)
  out = []
  for t in tiles:
    out += [t, gap]
  return np.concatenate(out[:-1], axis=1)


def _vstack(rows):
  w = max(r.shape[1] for r in rows)
  rows = [np.pad(r, ((0, 0), (0, w - r.shape[1]), (0, 0))) for r in rows]
  gap = np.full((_GAP, w, 3), _GAP_VALUE, np.uint8)
  out = []
  for r in rows:
    out += [r, gap]
  return np.concatenate(out[:-1], axis=0)
