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

"""CT intensity and geometry preprocessing shared by the tcia builder and predict mode.

The HU window is the lung window (level -600 HU, width 1500 HU): [-1350, 150] HU maps
linearly to [0, 1] and values outside are clipped, so air and padding (-1024 to -3024)
are 0, lung parenchyma is dark and soft-tissue nodules (around 0 HU) are bright.
Images are resampled to 0.5 mm pixels in-plane, the resolution of the LIDCv2 crops.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pydicom
from scipy import ndimage

from tfds_lidc import errors
from tfds_lidc import paths

HU_MIN = -1350.0
HU_MAX = 150.0
TARGET_SPACING_MM = 0.5
AIR_HU = -1024.0


def hu_to_unit(hu):
  """Maps Hounsfield units to [0, 1] with the fixed window [HU_MIN, HU_MAX] (clipped).

  Args:
    hu: array of any shape (HU).

  Returns:
    float32 array of the same shape in [0, 1].
  """
  hu = np.asarray(hu, np.float32)
  return np.clip((hu - HU_MIN) / (HU_MAX - HU_MIN), 0.0, 1.0).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class DicomSlice:
  """One CT slice: hu [rows, cols] float32, shape (rows, cols), spacing_mm (row, col), z_mm, UIDs."""

  hu: np.ndarray
  shape: tuple[int, int]
  spacing_mm: tuple[float, float]
  z_mm: float
  sop_uid: str
  series_uid: str
  patient_id: str
  study_uid: str = ''


def _dcmread(path, *, stop_before_pixels):
  """pydicom's dcmread of a local path, or of a cloud one (gs://) through etils.epath."""
  path = paths.resolve(path)
  if paths.is_local(path):
    return pydicom.dcmread(str(path), stop_before_pixels=stop_before_pixels)
  with path.open('rb') as f:
    return pydicom.dcmread(f, stop_before_pixels=stop_before_pixels)


def _read(path, *, stop_before_pixels=False):
  try:
    ds = _dcmread(path, stop_before_pixels=stop_before_pixels)
    if 'ImagePositionPatient' not in ds or 'PixelSpacing' not in ds:
      raise ValueError('no ImagePositionPatient/PixelSpacing (not a CT slice)')
    return ds
  # Pydicom raises many exception types for broken files.
  except Exception as e:
    raise errors.CorruptFileError(
      f'Cannot read DICOM CT slice {path}: {type(e).__name__}: {e}. Re-download this '
      'file or pass --skip_corrupt to build without it.'
    ) from e


def read_dicom_header(path):
  """DicomSlice of `path` without pixel data (hu is an empty array)."""
  ds = _read(path, stop_before_pixels=True)
  return _slice(ds, np.zeros((0, 0), np.float32))


def read_dicom_slice(path) -> DicomSlice:
  """Reads a CT DICOM file: HU from rescale slope/intercept, z from ImagePositionPatient."""
  ds = _read(path)
  try:
    pixels = ds.pixel_array.astype(np.float32)
  except Exception as e:
    raise errors.CorruptFileError(
      f'Cannot decode the pixel data of {path}: {type(e).__name__}: {e}. Re-download this '
      'file or pass --skip_corrupt to build without it.'
    ) from e
  slope = float(ds.get('RescaleSlope', 1.0))
  intercept = float(ds.get('RescaleIntercept', 0.0))
  return _slice(ds, pixels * slope + intercept)


def _slice(ds, hu):
  row_mm, col_mm = (float(v) for v in ds.PixelSpacing)
  return DicomSlice(
    hu=hu,
    shape=(int(ds.Rows), int(ds.Columns)),
    spacing_mm=(row_mm, col_mm),
    z_mm=float(ds.ImagePositionPatient[2]),
    sop_uid=str(ds.get('SOPInstanceUID', '')),
    series_uid=str(ds.get('SeriesInstanceUID', '')),
    patient_id=str(ds.get('PatientID', '')),
    study_uid=str(ds.get('StudyInstanceUID', '')),
  )


def read_dicom_hu(path) -> np.ndarray:
  """HU image [rows, cols] float32 of a CT DICOM file (for predict mode)."""
  return read_dicom_slice(path).hu


def read_dicom_unit(path, *, target_spacing_mm=TARGET_SPACING_MM) -> np.ndarray:
  """A whole CT slice as model input: resampled to 0.5 mm pixels and windowed to [0, 1].

  Returns:
    float32 [round(rows * row_mm / 0.5), round(cols * col_mm / 0.5)] in [0, 1]; the same
    resampling and window as the tcia builder's examples (for predict mode).
  """
  ct = read_dicom_slice(path)
  rows, cols = ct.hu.shape
  out_r = int(round(rows * ct.spacing_mm[0] / target_spacing_mm))
  out_c = int(round(cols * ct.spacing_mm[1] / target_spacing_mm))
  r = (np.arange(out_r) + 0.5) * target_spacing_mm / ct.spacing_mm[0] - 0.5
  c = (np.arange(out_c) + 0.5) * target_spacing_mm / ct.spacing_mm[1] - 0.5
  grid = np.stack(np.meshgrid(r, c, indexing='ij'))
  hu = ndimage.map_coordinates(
    ct.hu.astype(np.float64), grid, order=1, mode='nearest'
  )
  return hu_to_unit(hu)


def resample_crop(
  array,
  *,
  spacing_mm,
  center_rc,
  size,
  order,
  target_spacing_mm=TARGET_SPACING_MM,
  cval=0.0,
):
  """Resamples a 2-D array to `target_spacing_mm` pixels and crops size x size around a centre.

  Args:
    array: [rows, cols] source image (HU or a float mask).
    spacing_mm: (row, col) pixel spacing of `array` in mm.
    center_rc: (row, col) crop centre in source pixel coordinates.
    size: output side length in target pixels.
    order: spline order (1 = bilinear for images and masks).
    cval: value outside the source.

  Returns:
    [size, size] float32; output pixel (i, j) samples source position
    center + ((i, j) - (size - 1) / 2) * target_spacing / spacing.
  """
  offs = (
    np.arange(size, dtype=np.float64) - (size - 1) / 2.0
  ) * target_spacing_mm
  rows = center_rc[0] + offs / spacing_mm[0]
  cols = center_rc[1] + offs / spacing_mm[1]
  grid = np.stack(np.meshgrid(rows, cols, indexing='ij'))
  return ndimage.map_coordinates(
    np.asarray(array, np.float64), grid, order=order, mode='constant', cval=cval
  ).astype(np.float32)


def center_crop(array, *, size, axes=(-2, -1)):
  """Crops `size` x `size` from the centre of `axes` (offset (n - size) // 2)."""
  slices = [slice(None)] * array.ndim
  for ax in axes:
    n = array.shape[ax]
    if n < size:
      raise ValueError(f'Cannot centre-crop {size} from a dimension of {n}.')
    start = (n - size) // 2
    slices[ax] = slice(start, start + size)
  return array[tuple(slices)]
