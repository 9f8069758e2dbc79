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

"""Tests of the TCIA parser, HU preprocessing and the lidc/tcia builder (real 2-patient sample)."""

import functools
import glob
import importlib.util
import itertools
import os
import shutil
import xml.etree.ElementTree as ET

import numpy as np
import pydicom
import pytest
from scipy import ndimage
import tensorflow_datasets as tfds

from tfds_lidc import build
from tfds_lidc import errors
from tfds_lidc import preprocessing
from tfds_lidc import tcia

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(__file__), '..', '..', 'shared')
SAMPLE = os.path.join(SHARED, 'data', 'lidc_idri_tcia_sample')
NS = {'n': 'http://www.nih.gov'}
QUIET = dict(log=lambda *_: None)
needs_sample = pytest.mark.skipif(
  not os.path.isdir(SAMPLE), reason=f'real TCIA sample not found at {SAMPLE}'
)


def _even_odd_fill(points_xy, shape):
  """Independent rasteriser: pixel centres inside the polygon (ray casting) or on its points."""
  rr, cc = np.mgrid[: shape[0], : shape[1]]
  x, y = cc.astype(np.float64), rr.astype(np.float64)
  inside = np.zeros(shape, bool)
  pts = np.asarray(points_xy, np.float64)
  for (x0, y0), (x1, y1) in zip(pts, np.roll(pts, -1, axis=0)):
    crosses = (y0 > y) != (y1 > y)
    with np.errstate(divide='ignore', invalid='ignore'):
      xc = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
    inside ^= crosses & (x < xc)
  inside[pts[:, 1].astype(int), pts[:, 0].astype(int)] = True
  return inside


def _xml_contours(xml_path):
  """Independent parse: per reader, {z: [points]} of rois with >= 3 points (inclusion only)."""
  root = ET.parse(xml_path).getroot()
  readers = []
  for session in root.findall('n:readingSession', NS):
    by_z = {}
    for node in session.findall('n:unblindedReadNodule', NS):
      for roi in node.findall('n:roi', NS):
        pts = [
          (
            int(e.findtext('n:xCoord', namespaces=NS)),
            int(e.findtext('n:yCoord', namespaces=NS)),
          )
          for e in roi.findall('n:edgeMap', NS)
        ]
        if (
          len(pts) >= 3
          and roi.findtext('n:inclusion', namespaces=NS).strip() == 'TRUE'
        ):
          by_z.setdefault(
            float(roi.findtext('n:imageZposition', namespaces=NS)), []
          ).append(pts)
    readers.append(by_z)
  return readers


def _series_dirs():
  return sorted(
    os.path.dirname(p)
    for p in glob.glob(os.path.join(SAMPLE, '**', '*.xml'), recursive=True)
  )


# Preprocessing ----------------------------------------------------------------------------


def test_hu_to_unit():
  hu = np.array([-3024.0, -1350.0, -600.0, 0.0, 150.0, 2000.0])
  ref = np.clip((hu.astype(np.float64) + 1350.0) / 1500.0, 0.0, 1.0)
  out = preprocessing.hu_to_unit(hu)
  assert out.dtype == np.float32
  np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-7)


def test_resample_crop_linear_ramp():
  rows, cols = np.mgrid[:64, :80].astype(np.float64)
  image = 3.0 * rows - 2.0 * cols
  out = preprocessing.resample_crop(
    image, spacing_mm=(1.0, 0.8), center_rc=(30.0, 40.0), size=20, order=1
  )
  offs = (np.arange(20) - 9.5) * 0.5
  ref = 3.0 * (30.0 + offs[:, None] / 1.0) - 2.0 * (40.0 + offs[None, :] / 0.8)
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-4)
  same = preprocessing.resample_crop(
    image, spacing_mm=(0.5, 0.5), center_rc=(20.5, 30.5), size=10, order=1
  )
  np.testing.assert_allclose(same, image[16:26, 26:36], atol=1e-4)
  np.testing.assert_array_equal(
    preprocessing.center_crop(np.arange(36).reshape(6, 6), size=2),
    [[14, 15], [20, 21]],
  )


@needs_sample
def test_read_dicom_hu():
  path = sorted(glob.glob(os.path.join(_series_dirs()[0], '*.dcm')))[0]
  ds = pydicom.dcmread(path)
  ref = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(
    ds.RescaleIntercept
  )
  np.testing.assert_allclose(preprocessing.read_dicom_hu(path), ref)
  sl = preprocessing.read_dicom_slice(path)
  assert sl.z_mm == float(ds.ImagePositionPatient[2])
  assert sl.spacing_mm == tuple(float(v) for v in ds.PixelSpacing)


@needs_sample
def test_read_dicom_unit():
  path = sorted(glob.glob(os.path.join(_series_dirs()[0], '*.dcm')))[0]
  ds = pydicom.dcmread(path)
  hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(
    ds.RescaleIntercept
  )
  spacing = float(ds.PixelSpacing[0])
  out = preprocessing.read_dicom_unit(path)
  n = int(round(hu.shape[0] * spacing / 0.5))
  assert out.shape == (n, n) and out.dtype == np.float32
  # Output pixel (i, j) centre lies at ((i, j) + 0.5) * 0.5 mm: bilinear in source pixels.
  i, j = 300, 411
  r, c = (i + 0.5) * 0.5 / spacing - 0.5, (j + 0.5) * 0.5 / spacing - 0.5
  r0, c0 = int(np.floor(r)), int(np.floor(c))
  fr, fc = r - r0, c - c0
  ref_hu = (
    (1 - fr) * (1 - fc) * hu[r0, c0]
    + (1 - fr) * fc * hu[r0, c0 + 1]
    + fr * (1 - fc) * hu[r0 + 1, c0]
    + fr * fc * hu[r0 + 1, c0 + 1]
  )
  np.testing.assert_allclose(
    out[i, j], np.clip((ref_hu + 1350.0) / 1500.0, 0, 1), atol=1e-5
  )


# Parser pieces ----------------------------------------------------------------------------


def test_rasterise_inclusion_and_exclusion():
  square = (
    [(x, 2) for x in range(2, 13)]
    + [(12, y) for y in range(3, 13)]
    + [(x, 12) for x in range(11, 1, -1)]
    + [(2, y) for y in range(11, 2, -1)]
  )
  # LIDC edge maps list every boundary pixel.
  hole = [(6, 6), (7, 6), (8, 6), (8, 7), (8, 8), (7, 8), (6, 8), (6, 7)]
  inc = tcia.Roi(z_mm=0.0, sop_uid='a', inclusion=True, points=np.array(square))
  exc = tcia.Roi(z_mm=0.0, sop_uid='a', inclusion=False, points=np.array(hole))
  ref = np.zeros((16, 16), bool)
  ref[2:13, 2:13] = True
  np.testing.assert_array_equal(tcia.rasterise([inc], shape=(16, 16)), ref)
  ref_hole = ref.copy()
  ref_hole[7, 7] = (
    False  # Interior of the exclusion contour; its boundary stays.
  )
  np.testing.assert_array_equal(
    tcia.rasterise([inc, exc], shape=(16, 16)), ref_hole
  )
  np.testing.assert_array_equal(
    tcia.fill_contour(np.array(square), shape=(16, 16)),
    _even_odd_fill(square, (16, 16)),
  )


def _nodule(reader, cx, cy, z):
  pts = np.array(
    [(cx - 2, cy - 2), (cx + 2, cy - 2), (cx + 2, cy + 2), (cx - 2, cy + 2)]
  )
  return tcia.Nodule(
    reader=reader,
    nodule_id=f'{reader}-{cx}',
    rois=(tcia.Roi(z_mm=z, sop_uid='', inclusion=True, points=pts),),
  )


def test_group_lesions():
  readers = [
    [_nodule(0, 20, 20, 0.0), _nodule(0, 60, 60, 0.0)],
    [_nodule(1, 21, 21, 0.0)],  # overlaps reader 0's first nodule
    [_nodule(2, 24, 20, 2.5)],  # centroid within 5 mm of it
    [_nodule(3, 61, 90, 0.0)],
  ]  # far from everything
  lesions = tcia.group_lesions(readers, spacing_mm=(0.7, 0.7), shape=(128, 128))
  groups = sorted(sorted(n.nodule_id for n in les) for les in lesions)
  assert groups == [['0-20', '1-21', '2-24'], ['0-60'], ['3-61']]


def test_corrupt_xml_names_file(tmp_path):
  path = tmp_path / '1.xml'
  path.write_text('<LidcReadMessage><readingSession><unblindedReadNodule>')
  with pytest.raises(errors.CorruptFileError, match=str(path)):
    tcia.parse_reading_xml(str(path))


# Real sample ------------------------------------------------------------------------------


@pytest.fixture(scope='module')
def sample_build(tmp_path_factory):
  if not os.path.isdir(SAMPLE):
    pytest.skip(f'real TCIA sample not found at {SAMPLE}')
  out = str(tmp_path_factory.mktemp('tcia'))
  overrides = dict(val_fraction=0.0, test_fraction=0.5)
  report = build.build('lidc/tcia', out, SAMPLE, overrides=overrides, **QUIET)
  records = {}
  for split in report['num_examples']:
    source = tfds.data_source(report['dataset'], split=split, data_dir=out)
    records[split] = [source[i] for i in range(len(source))]
  return dict(out=out, report=report, records=records, overrides=overrides)


@needs_sample
def test_xml_parse_matches_independent_parse():
  for directory in _series_dirs():
    xml_path = glob.glob(os.path.join(directory, '*.xml'))[0]
    _, readers = tcia.parse_reading_xml(xml_path)
    ref = _xml_contours(xml_path)
    assert len(readers) == len(ref) == 4
    for nodules, by_z in zip(readers, ref):
      zs = {
        r.z_mm
        for n in nodules
        for r in n.rois
        if r.inclusion and len(r.points) >= 3
      }
      assert zs == set(by_z)


@needs_sample
def test_lesion_slice_count(sample_build):
  expected = 0
  for directory in _series_dirs():
    present = {
      float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2])
      for p in glob.glob(os.path.join(directory, '*.dcm'))
    }
    contoured = set().union(
      *[
        set(r)
        for r in _xml_contours(glob.glob(os.path.join(directory, '*.xml'))[0])
      ]
    )
    expected += len(contoured & present)
  got = sum(sample_build['report']['num_examples'].values())
  # 9 slices of 0001's nodule, 7 present slices of 0002's.
  assert got == expected == 16
  ids = [
    r['id'].decode() for recs in sample_build['records'].values() for r in recs
  ]
  assert len(set(ids)) == len(ids)
  assert {i.split('/')[2] for i in ids} == {
    'lesion00'
  }  # One contoured lesion per patient.


@needs_sample
def test_split_by_patient(sample_build):
  pids = {
    s: {r['patient_id'].decode() for r in recs}
    for s, recs in sample_build['records'].items()
  }
  assert set(pids) == {'train', 'test'}
  assert pids['train'] | pids['test'] == {'LIDC-IDRI-0001', 'LIDC-IDRI-0002'}
  assert not pids['train'] & pids['test']


@needs_sample
def test_features(sample_build):
  for recs in sample_build['records'].values():
    for r in recs:
      assert (
        r['image'].shape == (128, 128, 1) and r['image'].dtype == np.float32
      )
      assert r['masks'].shape == (4, 128, 128) and r['masks'].dtype == np.uint8
      assert 0.0 <= r['image'].min() and r['image'].max() <= 1.0
      np.testing.assert_array_equal(r['image'], r['image_180'][26:154, 26:154])
      np.testing.assert_array_equal(
        r['masks'], r['masks_180'][:, 26:154, 26:154]
      )
      assert r['masks'].any()


def _patient_records(sample_build, patient):
  recs = [
    r
    for rs in sample_build['records'].values()
    for r in rs
    if r['patient_id'].decode() == patient
  ]
  return sorted(recs, key=lambda r: float(r['id'].decode().rsplit('/z', 1)[1]))


@needs_sample
def test_readers_agree_on_large_nodule(sample_build):
  recs = _patient_records(sample_build, 'LIDC-IDRI-0001')
  # [4, slices, 180, 180].
  masks = np.stack([r['masks_180'] for r in recs], 1).astype(bool)
  for a, b in itertools.combinations(range(4), 2):
    iou = (masks[a] & masks[b]).sum() / (masks[a] | masks[b]).sum()
    assert iou > 0.5, (a, b, iou)
  # The nodule is bright (soft tissue) against the surrounding lung.
  image = np.stack([r['image_180'][..., 0] for r in recs])
  union = masks.any(0)
  ring = np.stack(
    [
      ndimage.binary_dilation(u, iterations=10)
      & ~ndimage.binary_dilation(u, iterations=3)
      for u in union
    ]
  )
  assert image[union].mean() > image[ring].mean() + 0.15


@needs_sample
def test_masks_lie_on_contours(sample_build):
  directory = [d for d in _series_dirs() if 'LIDC-IDRI-0001' in d][0]
  contours = _xml_contours(glob.glob(os.path.join(directory, '*.xml'))[0])
  header = pydicom.dcmread(
    glob.glob(os.path.join(directory, '*.dcm'))[0], stop_before_pixels=True
  )
  spacing = np.array([float(v) for v in header.PixelSpacing])
  shape = (int(header.Rows), int(header.Columns))
  # Independent crop centre: mean (row, col) of all readers' filled contours.
  fills = [
    _even_odd_fill(pts, shape)
    for by_z in contours
    for polys in by_z.values()
    for pts in polys
  ]
  centre = np.concatenate([np.argwhere(f) for f in fills]).mean(0)
  recs = {
    float(r['id'].decode().rsplit('/z', 1)[1]): r
    for r in _patient_records(sample_build, 'LIDC-IDRI-0001')
  }
  checked = 0
  for reader, by_z in enumerate(contours):
    for z, polys in by_z.items():
      mask = recs[z]['masks_180'][reader].astype(bool)
      near = ndimage.binary_dilation(mask, iterations=2)
      ref_area_mm2 = 0.0
      for pts in polys:
        rc = np.asarray(pts, np.float64)[:, ::-1]
        crop = np.round((rc - centre) * spacing / 0.5 + 89.5).astype(int)
        assert np.mean(near[crop[:, 0], crop[:, 1]]) > 0.95, (reader, z)
        ref_area_mm2 += _even_odd_fill(pts, shape).sum() * spacing.prod()
      assert (
        abs(mask.sum() * 0.25 - ref_area_mm2) < 0.15 * ref_area_mm2 + 5.0
      ), (reader, z)
      checked += 1
  assert checked >= 30


@needs_sample
def test_tcia_determinism_and_corrupt_dicom(sample_build, tmp_path):
  manual = str(tmp_path / 'sample')
  shutil.copytree(SAMPLE, manual)
  out = str(tmp_path / 'same')
  report = build.build(
    'lidc/tcia', out, manual, overrides=sample_build['overrides'], **QUIET
  )
  for split, recs in sample_build['records'].items():
    src = tfds.data_source(report['dataset'], split=split, data_dir=out)
    for i, r in enumerate(recs):
      for key in ('image_180', 'masks_180', 'id'):
        np.testing.assert_array_equal(src[i][key], r[key])
  bad = sorted(
    glob.glob(
      os.path.join(manual, '**', 'LIDC-IDRI-0001', '**', '-110.000000.dcm'),
      recursive=True,
    )
  )[0]
  with open(bad, 'wb') as f:
    f.write(b'DICM garbage')
  with pytest.raises(errors.CorruptFileError, match='-110.000000.dcm'):
    build.build(
      'lidc/tcia',
      str(tmp_path / 'o1'),
      manual,
      overrides=sample_build['overrides'],
      **QUIET,
    )
  report = build.build(
    'lidc/tcia',
    str(tmp_path / 'o2'),
    manual,
    skip_corrupt=True,
    overrides=sample_build['overrides'],
    **QUIET,
  )
  assert report['skipped_corrupt'] == [bad]
  assert (
    sum(report['num_examples'].values())
    == sum(sample_build['report']['num_examples'].values()) - 1
  )


def test_tcia_missing_series(tmp_path):
  with pytest.raises(errors.ManualDataError, match='No LIDC-IDRI CT series'):
    (tmp_path / 'm').mkdir()
    (tmp_path / 'm' / 'readme.txt').write_text('x')
    build.build('lidc/tcia', str(tmp_path / 'o'), str(tmp_path / 'm'), **QUIET)


@needs_sample
def test_xml_found_by_series_uid(tmp_path):
  manual = tmp_path / 'sample'
  shutil.copytree(SAMPLE, manual)
  xml_dir = manual / 'LIDC-XML-only' / 'tcia-lidc-xml' / '157'
  xml_dir.mkdir(parents=True)
  moved = {}
  for xml in glob.glob(
    str(manual / 'LIDC-IDRI' / '**' / '*.xml'), recursive=True
  ):
    # The series folder is named by its UID.
    uid = os.path.basename(os.path.dirname(xml))
    moved[uid] = str(xml_dir / f'{len(moved)}.xml')
    shutil.move(xml, moved[uid])
  series = tcia.find_series(str(manual))
  assert len(series) == 2
  for s in series:
    assert s.xml_path == moved[os.path.basename(s.directory)]
    assert s.patient_id in s.directory


# Split integrity, parallel build and the per-series cache ---------------------------------


@functools.lru_cache(maxsize=None)
def _load_simulate():
  spec = importlib.util.spec_from_file_location(
    'simulate_tcia_under_test',
    os.path.join(REPO, 'benchmarks', 'simulate_tcia.py'),
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _copy_patients(tmp_path, copies):
  """The sample plus plain copies {new folder: sample folder} inside LIDC-IDRI/."""
  manual = tmp_path / 'copied'
  shutil.copytree(SAMPLE, manual)
  for new, old in copies.items():
    shutil.copytree(manual / 'LIDC-IDRI' / old, manual / 'LIDC-IDRI' / new)
  return str(manual)


@needs_sample
def test_copied_patients_refused(tmp_path):
  """Copies under new folder names are the same scans: refused, naming both folders."""
  manual = _copy_patients(
    tmp_path,
    {'LIDC-IDRI-0003': 'LIDC-IDRI-0001', 'LIDC-IDRI-0004': 'LIDC-IDRI-0002'},
  )
  with pytest.raises(
    ValueError,  # The old code built this without a word.
    match=r'(?s)SeriesInstanceUID .*LIDC-IDRI-0001.*LIDC-IDRI-0003.*remove the copy',
  ) as e:
    build.build('lidc/tcia', str(tmp_path / 'o1'), manual, **QUIET)
  assert isinstance(e.value, errors.SplitLeakError)
  # All in one split: the same scan twice in train is refused too.
  manual = _copy_patients(
    tmp_path / 'one', {'LIDC-IDRI-0003': 'LIDC-IDRI-0001'}
  )
  with pytest.raises(errors.SplitLeakError, match='LIDC-IDRI-0003'):
    build.build(
      'lidc/tcia',
      str(tmp_path / 'o2'),
      manual,
      num_workers=0,
      overrides=dict(val_fraction=0.0, test_fraction=0.0),
      **QUIET,
    )
  assert not glob.glob(
    str(tmp_path / 'o*' / 'lidc' / 'tcia*' / '*' / '*array_record*')
  )


def _series(directory, patient, study, series, xml_uid=None):
  return tcia.Series(
    directory=directory,
    xml_path=f'{directory}/a.xml',
    dicom_paths=(),
    patient_id=patient,
    study_uid=study,
    series_uid=series,
    xml_series_uid=series if xml_uid is None else xml_uid,
  )


def test_check_series():
  # Two scans of one study: fine.
  tcia.check_series(
    [
      _series('/a', 'P1', 'S1', 'X1'),
      _series('/b', 'P1', 'S1', 'X2'),
      _series('/c', 'P2', 'S2', 'X3'),
    ]
  )
  with pytest.raises(
    errors.SplitLeakError,
    match=r'StudyInstanceUID S1 .* in /a .*P1.* in /b .*P2',
  ):
    tcia.check_series(
      [_series('/a', 'P1', 'S1', 'X1'), _series('/b', 'P2', 'S1', 'X2')]
    )
  with pytest.raises(
    errors.SplitLeakError, match=r'/b/a.xml annotates SeriesInstanceUid X9'
  ):
    tcia.check_series(
      [_series('/a', 'P1', 'S1', 'X1'), _series('/b', 'P2', 'S2', 'X2', 'X9')]
    )


@needs_sample
def test_patient_id_from_dicom_not_folder(tmp_path):
  """A patient renamed on disk keeps its DICOM PatientID (the key of the split)."""
  manual = tmp_path / 'renamed'
  shutil.copytree(SAMPLE, manual)
  os.rename(
    manual / 'LIDC-IDRI' / 'LIDC-IDRI-0002',
    manual / 'LIDC-IDRI' / 'LIDC-IDRI-0077',
  )
  ids = sorted(s.patient_id for s in tcia.find_series(str(manual)))
  assert ids == ['LIDC-IDRI-0001', 'LIDC-IDRI-0002']


@needs_sample
def test_simulated_patients_parallel_build_and_resume(sample_build, tmp_path):
  simulate = _load_simulate()
  manual = str(tmp_path / 'sim')
  simulate.simulate(manual, 4, first=3, sample_root=SAMPLE)
  series = tcia.find_series(manual)
  assert sorted(s.patient_id for s in series) == [
    f'LIDC-IDRI-000{i}' for i in range(3, 7)
  ]
  originals = {s.patient_id: s for s in tcia.find_series(SAMPLE)}
  for s in series:  # Every identifier differs from the sample's.
    for o in originals.values():
      assert not {s.study_uid, s.series_uid} & {o.study_uid, o.series_uid}
  tcia.check_series(series + list(originals.values()))

  out = str(tmp_path / 'out')
  # One split: one pool of 2.
  overrides = dict(val_fraction=0.0, test_fraction=0.0)
  report = build.build(
    'lidc/tcia', out, manual, num_workers=2, overrides=overrides, **QUIET
  )
  assert report['num_examples'] == {'train': 32}  # 9 + 7 per pair of copies.
  assert report['patients'] == {'train': 4, 'validation': 0, 'test': 0}
  assert (report['series_parsed'], report['series_reused']) == (4, 0)
  records = {}
  for split in report['num_examples']:
    src = tfds.data_source(report['dataset'], split=split, data_dir=out)
    records.update({src[i]['id'].decode(): src[i] for i in range(len(src))})
  # Patient 3 + 2k is a copy of 0001, 4 + 2k of 0002: the same pixels and masks.
  ref = {
    (r['patient_id'].decode(), r['id'].decode().rsplit('/', 1)[1]): r
    for recs in sample_build['records'].values()
    for r in recs
  }
  assert len(records) == 32
  for key, r in records.items():
    patient = r['patient_id'].decode()
    source = 'LIDC-IDRI-0001' if int(patient[-1]) % 2 else 'LIDC-IDRI-0002'
    o = ref[(source, key.rsplit('/', 1)[1])]
    np.testing.assert_array_equal(r['image_180'], o['image_180'])
    np.testing.assert_array_equal(r['masks_180'], o['masks_180'])

  # A re-run reuses every parsed series; a changed input file is parsed again.
  again = build.build(
    'lidc/tcia',
    out,
    manual,
    num_workers=0,
    overrides=overrides,
    overwrite=True,
    **QUIET,
  )
  assert (again['series_parsed'], again['series_reused']) == (0, 4)
  assert again['num_examples'] == report['num_examples']
  touched = sorted(
    glob.glob(
      os.path.join(manual, '**', 'LIDC-IDRI-0005', '**', '*.dcm'),
      recursive=True,
    )
  )[0]
  os.utime(touched, ns=(1, 1))
  again = build.build(
    'lidc/tcia',
    out,
    manual,
    num_workers=0,
    overrides=overrides,
    overwrite=True,
    **QUIET,
  )
  assert (again['series_parsed'], again['series_reused']) == (1, 3)


@needs_sample
def test_resume_after_failed_build(tmp_path):
  """A build stopped by a bad file keeps the series it finished; the re-run reuses them."""
  simulate = _load_simulate()
  manual = str(tmp_path / 'sim')
  simulate.simulate(manual, 3, first=3, sample_root=SAMPLE)
  bad = sorted(
    glob.glob(
      os.path.join(manual, '**', 'LIDC-IDRI-0005', '**', '*.dcm'),
      recursive=True,
    )
  )[0]
  with open(bad, 'rb') as f:
    good_bytes = f.read()
  with open(bad, 'wb') as f:
    f.write(b'DICM garbage')
  out = str(tmp_path / 'out')
  overrides = dict(val_fraction=0.0, test_fraction=0.0)
  with pytest.raises(errors.CorruptFileError, match=os.path.basename(bad)):
    build.build(
      'lidc/tcia', out, manual, num_workers=0, overrides=overrides, **QUIET
    )
  cached = glob.glob(
    os.path.join(out, 'downloads', 'tcia_series_cache', '*.pkl')
  )
  assert len(cached) == 2  # 0003 and 0004 came first in folder order.
  with open(bad, 'wb') as f:
    f.write(good_bytes)
  report = build.build(
    'lidc/tcia', out, manual, num_workers=0, overrides=overrides, **QUIET
  )
  assert (report['series_parsed'], report['series_reused']) == (1, 2)
  assert report['num_examples'] == {'train': 9 + 7 + 9}
