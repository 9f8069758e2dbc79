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

"""--mode=predict inputs: bit depths, the training window, --center, bad files.

The model is replaced by a recording stand-in (`fake_model`), so these tests
check what predict feeds the sampler and when, not the network (test_main.py
runs a real one end to end).
"""

import os

import numpy as np
from PIL import Image
import pydicom
from pydicom.dataset import FileDataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian
from pydicom.uid import generate_uid
import pytest

from diffseg_jax import checkpoint
from diffseg_jax import errors
from diffseg_jax import predict
from diffseg_jax import sampling
from tests.conftest import REPO
from tests.conftest import tiny_config

WINDOW = 32  # synthetic_lesions/32, the quickstart smoke config's data set.


def _config(tmp_path):
  from configs import quickstart  # pylint: disable=g-import-not-at-top

  config = quickstart.get_config('smoke')
  config.dataset.data_dir = str(tmp_path / 'not_built')
  return config


class _Recorder:
  """Stands in for sampling.Sampler: records each image, returns image > 0.5."""

  def __init__(self):
    self.images = []

  def __call__(self, graphdef, mesh, **kwargs):
    del graphdef, mesh, kwargs
    return self._sample

  def _sample(self, params, image, keys, num_samples, num_steps=None):
    del params, num_steps
    assert len(keys) == len(image), 'one key per image'
    self.images.append(np.array(image))
    b, h, w, _ = image.shape
    return np.broadcast_to(
      image[:, None, :, :, 0] > 0.5, (b, num_samples, h, w)
    )


@pytest.fixture
def fake_model(monkeypatch):
  recorder = _Recorder()
  monkeypatch.setattr(
    checkpoint, 'load_params', lambda *args, **kwargs: (None, None, 0)
  )
  monkeypatch.setattr(sampling, 'Sampler', recorder)
  return recorder


@pytest.fixture
def no_compute(monkeypatch):
  """Fails the test if predict gets as far as loading or running the model."""

  def fail(*args, **kwargs):
    raise AssertionError('predict loaded or sampled before refusing the input')

  monkeypatch.setattr(checkpoint, 'load_params', fail)
  monkeypatch.setattr(sampling, 'Sampler', fail)


def _png(path, array, mode=None):
  Image.fromarray(array, mode).save(path)
  return str(path)


def _ramp(h, w, high):
  return np.linspace(0, high, h * w).reshape(h, w)


@pytest.mark.parametrize(
  'kind', ['16bit', 'L', 'RGB', 'RGBA', 'P', 'LA', '1bit']
)
def test_png_read_at_its_bit_depth(tmp_path, kind):
  """16-bit PNGs became white; the 8-bit modes are regression cases."""
  if kind == '16bit':
    raw = _ramp(40, 40, 65535).astype(np.uint16)
    path = _png(tmp_path / 'x.png', raw)
    expected = raw / 65535.0
  else:
    grey = _ramp(40, 40, 255).astype(np.uint8)
    image = Image.fromarray(grey)
    if kind == 'RGB':
      image = Image.fromarray(np.stack([grey] * 3, -1))
    elif kind in ('RGBA', 'P', 'LA'):
      image = image.convert(kind)
    elif kind == '1bit':
      grey = np.where(grey > 127, 255, 0).astype(np.uint8)
      image = Image.fromarray(grey).convert('1')
    path = str(tmp_path / 'x.png')
    image.save(path)
    expected = grey / 255.0
  with Image.open(path) as im:
    assert kind != '16bit' or im.mode.startswith('I')
  image = predict.read_image(path)
  assert image.dtype == np.float32 and image.shape == (40, 40)
  np.testing.assert_allclose(image, expected, atol=1e-6)


def test_npy_must_be_a_float_image_in_range(tmp_path):
  """NaN and integer arrays were accepted; out of range is refused."""
  cases = {
    'nan.npy': (np.full((32, 32), np.nan, np.float32), 'NaN'),
    'mask.npy': (np.ones((32, 32), np.uint8), 'float array'),
    'hu.npy': (
      np.full((32, 32), 1.5, np.float32),
      r'values must lie in \[0, 1\]',
    ),
    'stack.npy': (np.zeros((2, 32, 32), np.float32), r'\[H, W\]'),
  }
  for name, (array, message) in cases.items():
    np.save(tmp_path / name, array)
    with pytest.raises(errors.DataError, match=message):
      predict.read_image(str(tmp_path / name))
  (tmp_path / 'pickle.npy').write_bytes(b'\x93NUMPY garbage')
  with pytest.raises(errors.DataError, match='pickle.npy'):
    predict.read_image(str(tmp_path / 'pickle.npy'))


def test_training_window_comes_from_the_config(tiny_synthetic, tmp_path):
  from configs import crop64  # pylint: disable=g-import-not-at-top
  from configs import default  # pylint: disable=g-import-not-at-top

  assert predict.training_window(_config(tmp_path)) == 32
  assert predict.training_window(default.get_config('smoke')) == 128
  assert predict.training_window(crop64.get_config('smoke')) == 64
  # A built data set (here a config name with overrides) is read as built.
  assert predict.training_window(tiny_config(tiny_synthetic)) == 32
  config = _config(tmp_path)
  config.dataset.name = 'synthetic_lesions/mine'
  with pytest.raises(errors.ConfigError, match='synthetic_lesions/mine'):
    predict.training_window(config)


def test_one_pixel_png_is_refused_before_compute(tmp_path, no_compute):
  path = _png(tmp_path / 'dot.png', np.full((1, 1), 128, np.uint8))
  with pytest.raises(
    errors.DataError,
    match=r'dot.png: the image is 1x1 '
    'pixels, smaller than the 32x32',
  ):
    predict.predict(_config(tmp_path), str(tmp_path), path)


def test_large_png_without_center_fails_before_compute(tmp_path, no_compute):
  path = _png(tmp_path / 'big.png', _ramp(256, 200, 255).astype(np.uint8))
  with pytest.raises(
    errors.DataError, match=r'big.png: the image is 256x200 .* --center=ROW,'
  ):
    predict.predict(_config(tmp_path), str(tmp_path), path)


def test_center_cuts_that_window(tmp_path, fake_model):
  pixels = np.random.default_rng(0).integers(0, 256, (100, 120))
  pixels = pixels.astype(np.uint8)
  path = _png(tmp_path / 'big.png', pixels)
  out = tmp_path / 'out'
  stems = predict.predict(
    _config(tmp_path), str(tmp_path), path, output_dir=str(out), center='40,70'
  )
  assert stems == [str(out / 'big')]
  (fed,) = fake_model.images
  crop = pixels[40 - 16 : 40 + 16, 70 - 16 : 70 + 16] / 255.0
  np.testing.assert_allclose(fed[0, :, :, 0], crop, atol=1e-6)
  samples = np.load(out / 'big_samples.npy')
  assert samples.shape == (2, WINDOW, WINDOW)
  np.testing.assert_array_equal(samples[0], crop > 0.5)


def test_center_window_must_lie_inside_the_image(tmp_path, no_compute):
  path = _png(tmp_path / 'big.png', _ramp(100, 120, 255).astype(np.uint8))
  with pytest.raises(
    errors.DataError,
    match=r'window around --center=10,70 leaves the 100x120 '
    r'image; the centre must lie in rows 16..84 and columns '
    r'16..104',
  ):
    predict.predict(_config(tmp_path), str(tmp_path), path, center=(10, 70))
  with pytest.raises(errors.ConfigError, match='ROW,COL'):
    predict.predict(_config(tmp_path), str(tmp_path), path, center='10')


def _write_ct(path, hu, *, spacing_mm, slope=0.5, intercept=-1024.0):
  meta = FileMetaDataset()
  meta.MediaStorageSOPClassUID = '1.2.840.10008.5.1.4.1.1.2'
  meta.MediaStorageSOPInstanceUID = generate_uid()
  meta.TransferSyntaxUID = ExplicitVRLittleEndian
  ds = FileDataset(str(path), {}, file_meta=meta, preamble=b'\0' * 128)
  ds.Modality = 'CT'
  ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
  ds.Rows, ds.Columns = hu.shape
  ds.PixelSpacing = [spacing_mm, spacing_mm]
  ds.ImagePositionPatient = [0.0, 0.0, -10.0]
  ds.SamplesPerPixel = 1
  ds.PhotometricInterpretation = 'MONOCHROME2'
  ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
  ds.PixelRepresentation = 1
  ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
  ds.PixelData = np.round((hu - intercept) / slope).astype(np.int16).tobytes()
  ds.save_as(str(path), enforce_file_format=True)
  return str(path)


def test_dicom_window_is_resampled_around_the_center(tmp_path, no_compute):
  # HU linear in (row, col): bilinear resampling is exact, so the reference
  # is analytic.
  rows, cols = np.meshgrid(np.arange(100.0), np.arange(100.0), indexing='ij')
  path = _write_ct(
    tmp_path / 'slice.dcm', -1000.0 + 10.0 * rows + 5.0 * cols, spacing_mm=1.0
  )
  assert pydicom.dcmread(path).pixel_array.max() > 2000  # The slope matters.
  with pytest.raises(
    errors.DataError,
    match=r'slice.dcm .*200x200 pixels at 0.5 mm, larger .* '
    r'--center',
  ):
    predict.predict(_config(tmp_path), str(tmp_path), path)
  window = predict.read_window(path, size=WINDOW, center=(40, 60))
  # 0.5 mm steps in 1 mm pixels.
  offs = (np.arange(WINDOW) - (WINDOW - 1) / 2.0) * 0.5
  hu = -1000.0 + 10.0 * (40 + offs[:, None]) + 5.0 * (60 + offs[None, :])
  np.testing.assert_allclose(
    window, np.clip((hu + 1350.0) / 1500.0, 0, 1), atol=1e-5
  )
  small = _write_ct(tmp_path / 'small.dcm', np.zeros((10, 10)), spacing_mm=1.0)
  with pytest.raises(
    errors.DataError, match=r'small.dcm .*20x20 pixels at 0.5 mm, smaller'
  ):
    predict.read_window(small, size=WINDOW)


def test_folder_with_bad_files_processes_the_good_ones(tmp_path, fake_model):
  inputs = tmp_path / 'inputs'
  inputs.mkdir()
  _png(inputs / 'a_good.png', _ramp(32, 32, 255).astype(np.uint8))
  (inputs / 'b_corrupt.png').write_bytes(b'\x89PNG\r\n\x1a\n truncated')
  _png(inputs / 'c_dot.png', np.zeros((1, 1), np.uint8))
  np.save(inputs / 'd_good.npy', np.full((32, 32), 0.75, np.float32))
  np.save(inputs / 'e_hu.npy', np.full((32, 32), -1000.0, np.float32))
  out = tmp_path / 'out'
  with pytest.raises(errors.DataError) as info:
    predict.predict(
      _config(tmp_path), str(tmp_path), str(inputs), output_dir=str(out)
    )
  lines = str(info.value).splitlines()
  assert lines[0].startswith('3 of 5 inputs were skipped (the other 2 are in')
  assert len(lines) == 4
  expected = [
    ('b_corrupt.png', 'Cannot read'),
    ('c_dot.png', 'smaller'),
    ('e_hu.npy', 'values must lie in'),
  ]
  for line, (name, cause) in zip(lines[1:], expected):
    assert name in line and cause in line, line
  assert len(fake_model.images) == 2
  for stem in ('a_good', 'd_good'):
    assert (out / f'{stem}_samples.npy').exists()
    assert (out / f'{stem}_grid.png').exists()


def test_folder_of_only_bad_files_fails_before_compute(tmp_path, no_compute):
  (tmp_path / 'x.png').write_bytes(b'not a png')
  _png(tmp_path / 'y.png', _ramp(64, 64, 255).astype(np.uint8))
  with pytest.raises(
    errors.DataError, match=r'No usable input .*\n.*x.png.*\n.*y.png.*--center'
  ):
    predict.predict(_config(tmp_path), str(tmp_path), str(tmp_path))


def test_cli_center_flag(tmp_path):
  from tests.test_main import _main  # pylint: disable=g-import-not-at-top

  path = _png(tmp_path / 'big.png', _ramp(64, 64, 255).astype(np.uint8))
  config = os.path.join(REPO, 'configs', 'quickstart.py') + ':smoke'
  flags = [
    f'--workdir={tmp_path}',
    f'--config={config}',
    f'--config.dataset.data_dir={tmp_path}',
    '--mode=predict',
    f'--input={path}',
  ]
  result = _main(*flags)
  assert result.returncode == 2, result.stderr
  assert '--center=ROW,COL' in result.stderr
  # With a centre the input passes; then the missing checkpoint is the error.
  result = _main(*flags, '--center=32,32')
  assert result.returncode == 2, result.stderr
  assert 'train first' in result.stderr
