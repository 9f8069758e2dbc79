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

"""`--mode=predict`: segmentation samples, mean and uncertainty for new images.

The model sees one window of the size it was trained on (`training_window`:
the data set's image size, or `config.augment.crop_size`), at the training
pixel spacing. Inputs:
  PNG: 8-bit grey/RGB/RGBA/palette -> grey / 255, 16-bit grey -> / 65535;
    taken as already at the training pixel spacing.
  NPY: a float [H, W] (or [H, W, 1]) array in [0, 1], at the training spacing.
  DICOM: a CT slice through its modality LUT (rescale slope/intercept) and the
    builders' HU window, resampled to 0.5 mm like the TCIA builder.
  Or a folder of them.
An input of exactly the window size is used whole; a larger one needs
`center=(row, col)` in its own pixels (a DICOM window is resampled around that
point, the others cut around it); a smaller one is refused. Every input is
read and checked before the model is loaded; in a folder the good inputs are
processed and the bad ones listed at the end (a `DataError`, one line each).
Per input `<name>` the output folder gets `<name>_samples.npy` (bool
[N, H, W]), `<name>_mean.{npy,png}`, `<name>_variance.{npy,png}`,
`<name>_entropy.{npy,png}` and `<name>_grid.png`.
"""

import importlib
import json

from absl import logging
from etils import epath
import jax
import ml_collections
import numpy as np
from PIL import Image

from diffseg_jax import checkpoint
from diffseg_jax import errors
from diffseg_jax import metrics
from diffseg_jax import parallel
from diffseg_jax import sampling
from diffseg_jax import settings as settings_lib
from diffseg_jax import visualize
from tfds_lidc import paths

SUFFIXES = ('.png', '.npy', '.dcm')
# Full-scale values of PIL's high-bit-depth modes (16-bit grey PNGs open so).
_PNG_FULL_SCALE = {
  'I;16': 65535.0,
  'I;16B': 65535.0,
  'I;16L': 65535.0,
  'I': 65535.0,
}


def list_inputs(path: str) -> list[str]:
  """The input files `path` names (local, file:// or cloud): itself, or a folder's images."""
  path = paths.resolve(path, what='--input')
  if path.is_dir():
    files = sorted(
      str(f) for f in path.iterdir() if f.name.lower().endswith(SUFFIXES)
    )
    if not files:
      raise FileNotFoundError(
        f'--input folder {path} holds no {", ".join(SUFFIXES)} files.'
      )
    return files
  if not path.is_file():
    raise FileNotFoundError(f'--input {path} does not exist.')
  path = str(path)
  if not path.lower().endswith(SUFFIXES):
    raise errors.DataError(
      f'--input {path}: expected a {", ".join(SUFFIXES)} file or a folder of them.'
    )
  return [path]


def _version_key(name: str):
  try:
    return (1, tuple(int(v) for v in name.split('.')))
  except ValueError:
    return (0, ())


def _static_image_side(version_dir) -> int | None:
  """Side of a built data set's square 'image' feature, None if unknown."""
  try:
    text = (version_dir / 'features.json').read_text()
    features = json.loads(text)['featuresDict']['features']
    dims = features['image']['tensor']['shape']['dimensions']
    side = int(dims[0])
    return side if side > 0 and int(dims[1]) == side else None
  except (OSError, ValueError, KeyError, IndexError, TypeError):
    return None


def training_window(config: ml_collections.ConfigDict) -> int:
  """Side of the square windows the model was trained on.

  `config.augment.crop_size` if set, else the image side of
  `config.dataset.name`: read from the built data set under
  `config.dataset.data_dir` if it is there, else from the builder's named
  config (synthetic_lesions/S: S; lidc/*: 128; lidc/*_crop64: 64).

  Raises:
    errors.ConfigError: the data set name is not one the builders know.
  """
  if config.augment.crop_size:
    return int(config.augment.crop_size)
  name = config.dataset.name.partition(':')[0]
  data_dir = paths.resolve(
    config.dataset.data_dir, what='config.dataset.data_dir'
  )
  config_dir = data_dir / name
  if config_dir.is_dir():
    for version in sorted(
      (d.name for d in config_dir.iterdir()), key=_version_key, reverse=True
    ):
      side = _static_image_side(config_dir / version)
      if side:
        return side
  from tfds_lidc import build  # pylint: disable=g-import-not-at-top

  builder_name, _, config_name = name.partition('/')
  if builder_name in build.BUILDERS:
    module_name, class_name = build.BUILDERS[builder_name]
    module = importlib.import_module(module_name)
    # A config with overrides is named '<config>_<key><value>...' (build.py).
    known = [
      c
      for c in getattr(module, class_name).BUILDER_CONFIGS
      if config_name == c.name or config_name.startswith(c.name + '_')
    ]
    if known:
      c = max(known, key=lambda c: len(c.name))
      if hasattr(c, 'size'):
        return int(c.size)
      return module.CROP if c.crop64 else module.SIZE
  raise errors.ConfigError(
    f'config.dataset.name={config.dataset.name!r}: cannot tell the size of '
    'the images the model was trained on (the data set is not built in '
    f'{config.dataset.data_dir} and its name is not a known builder '
    'config); pass the config the model was trained with.'
  )


def parse_center(center) -> tuple[int, int] | None:
  """'ROW,COL' (or a pair, or None) -> (row, col) ints or None."""
  if center is None:
    return None
  try:
    if isinstance(center, str):
      center = center.split(',')
    row, col = (int(v) for v in center)
  except (TypeError, ValueError) as e:
    raise errors.ConfigError(
      f'--center={center}: expected ROW,COL (two integers, the window '
      "centre in the input's pixels), e.g. --center=250,310."
    ) from e
  return row, col


def _one_line(e: Exception) -> str:
  return ' '.join(f'{type(e).__name__}: {e}'.split())


def _cannot_read(path: str, e: Exception) -> errors.DataError:
  cause = e.__cause__ if e.__cause__ is not None else e
  return errors.DataError(f'Cannot read {path}: {_one_line(cause)}')


def _read_png(path: str) -> np.ndarray:
  with paths.resolve(path).open('rb') as f, Image.open(f) as im:
    if im.mode in _PNG_FULL_SCALE:
      full_scale = _PNG_FULL_SCALE[im.mode]
      return (np.asarray(im, np.float64) / full_scale).astype(np.float32)
    if im.mode == 'F':
      raise errors.DataError(
        f'{path}: a floating-point image; save it as an 8- or 16-bit PNG '
        'or as an NPY in [0, 1].'
      )
    return np.asarray(im.convert('L'), np.float32) / 255.0


def _read_npy(path: str) -> np.ndarray:
  with paths.resolve(path).open('rb') as f:
    x = np.load(f)
  x = x[..., 0] if x.ndim == 3 and x.shape[-1] == 1 else x
  if x.ndim != 2:
    raise errors.DataError(
      f'{path}: expected an [H, W] array, got shape {x.shape}.'
    )
  if not np.issubdtype(x.dtype, np.floating):
    raise errors.DataError(
      f'{path}: expected a float array in [0, 1], got {x.dtype}; save the '
      'image scaled to [0, 1] as float32 (e.g. uint8 / 255), or as a PNG.'
    )
  x = x.astype(np.float32)
  if not np.all(np.isfinite(x)):
    raise errors.DataError(f'{path}: holds NaN or infinite values.')
  if x.min() < 0.0 or x.max() > 1.0:
    raise errors.DataError(
      f'{path}: values must lie in [0, 1] (got {x.min():.3g}..'
      f'{x.max():.3g}); save the preprocessed image, or pass the DICOM '
      'file itself.'
    )
  return x


def read_image(path: str) -> np.ndarray:
  """Reads one whole input as float32 [H, W] in [0, 1] (a DICOM at 0.5 mm).

  Raises:
    errors.DataError: unreadable, or not an image in the accepted forms.
  """
  lower = path.lower()
  try:
    if lower.endswith('.png'):
      return _read_png(path)
    if lower.endswith('.npy'):
      return _read_npy(path)
    from tfds_lidc import preprocessing  # pylint: disable=g-import-not-at-top

    return np.asarray(preprocessing.read_dicom_unit(path), np.float32)
  except errors.DataError:
    raise
  except Exception as e:  # PIL, numpy and pydicom raise many types.
    raise _cannot_read(path, e) from e


def cut_window(
  image: np.ndarray, *, size: int, center=None, where: str = 'input'
) -> np.ndarray:
  """The size x size window of `image` around `center` (row, col).

  Without a centre the image must be exactly size x size. The window covers
  rows row - size // 2 .. row - size // 2 + size - 1 (columns alike) and must
  lie inside the image.
  """
  h, w = image.shape
  if h < size or w < size:
    raise errors.DataError(
      f'{where}: the image is {h}x{w} pixels, smaller than the {size}x{size} '
      f'window the model was trained on; pass an image of at least '
      f'{size}x{size} pixels at the training pixel spacing.'
    )
  if center is None:
    if (h, w) != (size, size):
      raise errors.DataError(
        f'{where}: the image is {h}x{w} pixels, larger than the '
        f'{size}x{size} window the model was trained on; pass '
        "--center=ROW,COL (the lesion, in this image's pixels) to cut a "
        f'{size}x{size} window around it.'
      )
    return image
  row, col = center
  top, left = row - size // 2, col - size // 2
  if top < 0 or left < 0 or top + size > h or left + size > w:
    raise errors.DataError(
      f'{where}: the {size}x{size} window around --center={row},{col} '
      f'leaves the {h}x{w} image; the centre must lie in rows '
      f'{size // 2}..{h - size + size // 2} and columns '
      f'{size // 2}..{w - size + size // 2}.'
    )
  return image[top : top + size, left : left + size]


def _dicom_window(path: str, *, size: int, center) -> np.ndarray:
  from tfds_lidc import preprocessing  # pylint: disable=g-import-not-at-top

  try:
    ct = preprocessing.read_dicom_slice(path)
  except Exception as e:  # pylint: disable=broad-except
    raise _cannot_read(path, e) from e
  rows, cols = ct.hu.shape
  mm = preprocessing.TARGET_SPACING_MM
  out_r = int(round(rows * ct.spacing_mm[0] / mm))
  out_c = int(round(cols * ct.spacing_mm[1] / mm))
  at = (
    f'{path} ({rows}x{cols} pixels of {ct.spacing_mm[0]:g}x'
    f'{ct.spacing_mm[1]:g} mm): {out_r}x{out_c} pixels at {mm:g} mm'
  )
  if out_r < size or out_c < size:
    raise errors.DataError(
      f'{at}, smaller than the {size}x{size} window the model was trained on.'
    )
  if center is None:
    if (out_r, out_c) != (size, size):
      raise errors.DataError(
        f'{at}, larger than the {size}x{size} window the model was trained '
        "on; pass --center=ROW,COL (the lesion, in this slice's pixels) to "
        f'resample a {size}x{size} window around it.'
      )
    return read_image(path)
  row, col = center
  if not (0 <= row < rows and 0 <= col < cols):
    raise errors.DataError(
      f'{path}: --center={row},{col} lies outside the {rows}x{cols} slice.'
    )
  # As the TCIA builder: bilinear at 0.5 mm around the centre, air outside.
  hu = preprocessing.resample_crop(
    ct.hu,
    spacing_mm=ct.spacing_mm,
    center_rc=(row, col),
    size=size,
    order=1,
    cval=preprocessing.AIR_HU,
  )
  return preprocessing.hu_to_unit(hu)


def read_window(path: str, *, size: int, center=None) -> np.ndarray:
  """The float32 [size, size] model input of one file (see the module doc).

  Raises:
    errors.DataError: naming the file and the cause (unreadable, wrong range
      or type, too small, larger without a centre, window outside the image).
  """
  if path.lower().endswith('.dcm'):
    return _dicom_window(path, size=size, center=center)
  return cut_window(read_image(path), size=size, center=center, where=path)


def _save_npy(path: str, array: np.ndarray) -> None:
  with paths.resolve(path).open('wb') as f:
    np.save(f, array)


def predict(
  config: ml_collections.ConfigDict,
  workdir: str,
  input_path: str,
  *,
  output_dir: str | None = None,
  center=None,
) -> list[str]:
  """Writes samples, mean and uncertainty maps for every input.

  Args:
    config: the config the model was trained with.
    workdir: its working directory (the checkpoint).
    input_path: a file or a folder of them.
    output_dir: default WORKDIR/predict.
    center: 'ROW,COL' or (row, col): the window centre for inputs larger than
      the training window, in the input's pixels (the same for every file).

  Returns:
    The output stems (`<output_dir>/<name>`).

  Raises:
    errors.DataError: a bad input file: at once (before the model is loaded)
      for a single file or a folder without a good one; else after the good
      ones are written, one line per bad file.
  """
  files = list_inputs(input_path)
  size = training_window(config)
  center = parse_center(center)
  windows, bad = {}, []
  for path in files:
    try:
      windows[path] = read_window(path, size=size, center=center)
    except errors.DataError as e:
      if len(files) == 1:
        raise
      bad.append(' '.join(str(e).split()))
  if not windows:
    raise errors.DataError(
      f'No usable input in {input_path}:\n' + '\n'.join(bad)
    )
  settings = settings_lib.resolve(config)
  mesh = parallel.make_mesh(config.mesh.data)
  graphdef, params, step = checkpoint.load_params(
    workdir, settings.unet, mesh, use_ema=config.eval.use_ema
  )
  sampler = sampling.Sampler(graphdef, mesh, **settings.sampler_kwargs())
  output_dir = (
    paths.resolve(output_dir, what='--output')
    if output_dir
    else paths.resolve(workdir, what='--workdir') / 'predict'
  )
  rng = jax.random.PRNGKey(config.seed)
  stems = []
  for i, path in enumerate(files):
    if path not in windows:
      continue
    image = windows.pop(path)
    # Every process samples the same image with the same key (and gets the same samples).
    samples = np.asarray(
      sampler(
        params,
        image[None, :, :, None],
        jax.random.fold_in(rng, i)[None],
        config.predict.num_samples,
        num_steps=settings.sampler.num_steps,
      )[0]
    )
    maps = {
      k: np.asarray(v) for k, v in metrics.uncertainty_map(samples).items()
    }
    mean = samples.mean(0)
    stem = str(output_dir / epath.Path(path).stem)
    if jax.process_index() == 0:
      output_dir.mkdir(parents=True, exist_ok=True)
      _save_npy(stem + '_samples.npy', samples)
      _save_npy(stem + '_mean.npy', mean.astype(np.float32))
      visualize.save_map(stem + '_mean.png', mean)
      for name, value in maps.items():
        _save_npy(f'{stem}_{name}.npy', value.astype(np.float32))
        visualize.save_map(
          f'{stem}_{name}.png',
          value / (0.25 if name == 'variance' else 1.0),
          heat=True,
        )
      visualize.save_grid(
        stem + '_grid.png',
        image=image[None],
        annotations=np.zeros((1, 0, size, size), bool),
        samples=samples[None],
      )
    stems.append(stem)
    logging.info(
      'Predicted %d samples for %s (checkpoint step %d) -> %s_*',
      samples.shape[0],
      path,
      step,
      stem,
    )
  if bad:
    raise errors.DataError(
      f'{len(bad)} of {len(files)} inputs were skipped (the other '
      f'{len(stems)} are in {output_dir}):\n' + '\n'.join(bad)
    )
  return stems
