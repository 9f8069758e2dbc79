"""PNG grids: image | annotations | samples | sample mean | per-pixel uncertainty (variance)."""

import os

import numpy as np
from PIL import Image

_GAP = 2


def _to_rgb(x: np.ndarray) -> np.ndarray:
  x = np.clip(np.asarray(x, np.float32), 0.0, 1.0)
  return np.repeat((x * 255).round().astype(np.uint8)[..., None], 3, axis=-1)


def _heat(x: np.ndarray) -> np.ndarray:
  """A black-red-yellow-white ramp for maps in [0, 1]."""
  x = np.clip(np.asarray(x, np.float32), 0.0, 1.0)
  rgb = np.stack([np.clip(3 * x, 0, 1), np.clip(3 * x - 1, 0, 1), np.clip(3 * x - 2, 0, 1)], -1)
  return (rgb * 255).round().astype(np.uint8)


def grid_picture(*, image, annotations, samples, max_samples: int = 8) -> np.ndarray:
  """uint8 [rows*H', cols*W', 3]: one row per example.

  Args:
    image: [K, H, W, 1] or [K, H, W] float in [0, 1].
    annotations: [K, M, H, W] bool.
    samples: [K, N, H, W] bool.
    max_samples: samples shown per row (mean and variance use all N).
  """
  image = np.asarray(image)
  if image.ndim == 4:
    image = image[..., 0]
  annotations = np.asarray(annotations, bool)
  samples = np.asarray(samples, bool)
  rows = []
  for k in range(image.shape[0]):
    mean = samples[k].mean(0)
    tiles = ([_to_rgb(image[k])] + [_to_rgb(a) for a in annotations[k]]
             + [_to_rgb(s) for s in samples[k][:max_samples]]
             + [_to_rgb(mean), _heat(4.0 * mean * (1.0 - mean))])
    rows.append(_hstack(tiles))
  return _vstack(rows)


def save_grid(path: str, **kwargs) -> np.ndarray:
  """Writes `grid_picture(**kwargs)` as a PNG at `path` and returns the picture."""
  picture = grid_picture(**kwargs)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  Image.fromarray(picture).save(path)
  return picture


def save_map(path: str, x: np.ndarray, *, heat: bool = False) -> None:
  """One [H, W] map in [0, 1] as a PNG (grey, or heat-coloured)."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  Image.fromarray(_heat(x) if heat else _to_rgb(x)).save(path)


def _hstack(tiles):
  h = tiles[0].shape[0]
  gap = np.full((h, _GAP, 3), 64, np.uint8)
  out = []
  for t in tiles:
    out += [t, gap]
  return np.concatenate(out[:-1], axis=1)


def _vstack(rows):
  w = max(r.shape[1] for r in rows)
  rows = [np.pad(r, ((0, 0), (0, w - r.shape[1]), (0, 0))) for r in rows]
  gap = np.full((_GAP, w, 3), 64, np.uint8)
  out = []
  for r in rows:
    out += [r, gap]
  return np.concatenate(out[:-1], axis=0)
