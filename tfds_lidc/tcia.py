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

"""Raw TCIA LIDC-IDRI: DICOM series + radiologists' XML -> 4-reader lesion-slice examples.

No pylidc. Per CT series (a folder with the slices' .dcm files and the series' XML):
1. The XML (`LidcReadMessage`, namespace http://www.nih.gov) holds one `readingSession`
   per reader (in file order: readers 0..3); each `unblindedReadNodule` has `roi`s with
   `imageZposition`, `imageSOP_UID`, `inclusion` and `edgeMap` (xCoord = column,
   yCoord = row) boundary points. Nodules whose rois have fewer than 3 points
   (the < 3 mm nodules, marked by a centre point only) are not lesions here.
2. Readers' nodules are grouped into lesions: two nodules of different readers are
   linked when their filled contours overlap on a common slice or their centroids lie
   within GROUP_DISTANCE_MM; lesions are the connected components (a reader with two
   nodules in one lesion contributes their union).
3. Each reader's contour is rasterised per slice (boundary pixels included); rois with
   inclusion=FALSE remove their interior.
4. Every slice of a lesion that any reader contoured, and whose DICOM file is present,
   becomes one example: HU resampled to 0.5 mm pixels, a 180 x 180 crop centred on the
   lesion's centroid (over all readers and slices), windowed to [0, 1]
   (`preprocessing.hu_to_unit`); masks resampled bilinearly and thresholded at 0.5;
   the central 128 x 128 of both is the used size. Always 4 masks (missing reader = empty).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pickle
import re
import xml.etree.ElementTree as ET

from etils import epath
import numpy as np
from PIL import Image
from PIL import ImageDraw

from tfds_lidc import errors
from tfds_lidc import paths as path_lib
from tfds_lidc import preprocessing

NUM_READERS = 4
GROUP_DISTANCE_MM = 5.0
MIN_CONTOUR_POINTS = 3
Z_TOLERANCE_MM = 0.05
CROP_STORED = 180
CROP_USED = 128
# Bump when the examples of a series change, so cached parses are not reused.
CACHE_VERSION = 1


@dataclasses.dataclass(frozen=True)
class Roi:
  """One reader's contour on one slice; points [P, 2] as (x=col, y=row) pixel indices."""

  z_mm: float
  sop_uid: str
  inclusion: bool
  points: np.ndarray


@dataclasses.dataclass(frozen=True)
class Nodule:
  reader: int
  nodule_id: str
  rois: tuple[Roi, ...]


@dataclasses.dataclass(frozen=True)
class Series:
  """A CT series folder: its XML, its DICOM files and the scan's DICOM identifiers.

  patient_id, study_uid and series_uid come from the DICOM header (PatientID,
  StudyInstanceUID, SeriesInstanceUID) of the first readable slice, not from folder
  names; xml_series_uid is the XML's SeriesInstanceUid ('' if it has none).
  """

  directory: str
  xml_path: str
  dicom_paths: tuple[str, ...]
  patient_id: str
  study_uid: str = ''
  series_uid: str = ''
  xml_series_uid: str = ''


def _local(tag):
  return tag.rsplit('}', 1)[-1]


def _children(elem, name):
  return [c for c in elem if _local(c.tag) == name]


def _text(elem, name, default=''):
  for c in elem:
    if _local(c.tag) == name:
      return (c.text or '').strip()
  return default


def is_ct_reading_xml(path) -> bool:
  """True if the XML file's root element is a CT `LidcReadMessage`."""
  try:
    with epath.Path(path).open('rb') as f:
      for _, elem in ET.iterparse(f, events=('start',)):
        return _local(elem.tag) == 'LidcReadMessage'
  except ET.ParseError:
    return True  # Let parse_reading_xml report the corrupt file.
  return False


def parse_reading_xml(path) -> tuple[str, list[list[Nodule]]]:
  """Parses a LIDC CT XML into (series uid, per reader: contoured nodules).

  Raises:
    errors.CorruptFileError: unreadable XML or malformed coordinates.
  """
  try:
    with epath.Path(path).open('rb') as f:
      root = ET.parse(f).getroot()
    header = _children(root, 'ResponseHeader')
    series_uid = _text(header[0], 'SeriesInstanceUid') if header else ''
    readers = []
    for reader, session in enumerate(_children(root, 'readingSession')):
      nodules = []
      for node in _children(session, 'unblindedReadNodule'):
        rois = []
        for roi in _children(node, 'roi'):
          points = np.array(
            [
              [int(float(_text(e, 'xCoord'))), int(float(_text(e, 'yCoord')))]
              for e in _children(roi, 'edgeMap')
            ],
            np.int64,
          ).reshape(-1, 2)
          rois.append(
            Roi(
              z_mm=float(_text(roi, 'imageZposition')),
              sop_uid=_text(roi, 'imageSOP_UID'),
              inclusion=_text(roi, 'inclusion', 'TRUE').upper() == 'TRUE',
              points=points,
            )
          )
        if any(len(r.points) >= MIN_CONTOUR_POINTS for r in rois):
          nodules.append(
            Nodule(
              reader=reader, nodule_id=_text(node, 'noduleID'), rois=tuple(rois)
            )
          )
      readers.append(nodules)
  except (ET.ParseError, ValueError, IndexError) as e:
    raise errors.CorruptFileError(
      f'Cannot parse LIDC annotation XML {path}: {type(e).__name__}: {e}. Re-download it '
      'from TCIA or pass --skip_corrupt to build without this series.'
    ) from e
  return series_uid, readers


def fill_contour(points, *, shape):
  """Filled polygon of boundary points (x=col, y=row), boundary included: bool [rows, cols]."""
  img = Image.new('1', (shape[1], shape[0]), 0)
  pts = [tuple(map(int, p)) for p in points]
  if len(pts) >= 3:
    ImageDraw.Draw(img).polygon(pts, fill=1, outline=1)
  else:
    for p in pts:
      img.putpixel(p, 1)
  return np.array(img, dtype=bool)


def rasterise(rois, *, shape):
  """One reader's mask on one slice: union of inclusion rois minus exclusion interiors."""
  mask = np.zeros(shape, bool)
  for roi in rois:
    if roi.inclusion:
      mask |= fill_contour(roi.points, shape=shape)
  for roi in rois:
    if not roi.inclusion:
      filled = fill_contour(roi.points, shape=shape)
      outline = np.zeros(shape, bool)
      outline[roi.points[:, 1], roi.points[:, 0]] = True
      mask &= ~(filled & ~outline)
  return mask


def _centroid_mm(nodule, *, spacing_mm):
  pts = np.concatenate([r.points for r in nodule.rois])
  z = np.concatenate([np.full(len(r.points), r.z_mm) for r in nodule.rois])
  return np.array(
    [
      pts[:, 1].mean() * spacing_mm[0],
      pts[:, 0].mean() * spacing_mm[1],
      z.mean(),
    ]
  )


def _overlap(a, b, *, shape):
  for ra in a.rois:
    for rb in b.rois:
      if (
        ra.inclusion
        and rb.inclusion
        and abs(ra.z_mm - rb.z_mm) < Z_TOLERANCE_MM
      ):
        if np.any(
          fill_contour(ra.points, shape=shape)
          & fill_contour(rb.points, shape=shape)
        ):
          return True
  return False


def group_lesions(readers, *, spacing_mm, shape, distance_mm=GROUP_DISTANCE_MM):
  """Groups readers' nodules into lesions.

  Args:
    readers: per reader, a list of Nodule.
    spacing_mm: (row, col) pixel spacing.
    shape: (rows, cols) of the slices.
    distance_mm: centroid distance below which nodules of different readers are linked.

  Returns:
    list of lesions, each a list of Nodule, ordered by centroid (z, row, col).
  """
  nodules = [n for nodules in readers for n in nodules]
  parent = list(range(len(nodules)))

  def find(i):
    while parent[i] != i:
      parent[i] = parent[parent[i]]
      i = parent[i]
    return i

  cents = [_centroid_mm(n, spacing_mm=spacing_mm) for n in nodules]
  for i in range(len(nodules)):
    for j in range(i + 1, len(nodules)):
      if nodules[i].reader == nodules[j].reader:
        continue
      close = np.linalg.norm(cents[i] - cents[j]) <= distance_mm
      if close or _overlap(nodules[i], nodules[j], shape=shape):
        parent[find(i)] = find(j)
  groups = {}
  for i in range(len(nodules)):
    groups.setdefault(find(i), []).append(i)
  lesions = [[nodules[i] for i in idx] for idx in groups.values()]
  key = lambda les: tuple(
    np.mean([_centroid_mm(n, spacing_mm=spacing_mm) for n in les], 0)[[2, 0, 1]]
  )
  return sorted(lesions, key=key)


def xml_series_uid(path) -> str:
  """SeriesInstanceUid from a LIDC XML's ResponseHeader ('' if absent or unreadable)."""
  try:
    with epath.Path(path).open('rb') as f:
      for _, elem in ET.iterparse(f, events=('end',)):
        if _local(elem.tag) == 'SeriesInstanceUid':
          return (elem.text or '').strip()
        if _local(elem.tag) == 'ResponseHeader':
          break
  except ET.ParseError:
    pass
  return ''


def _first_readable_header(paths):
  for path in paths:
    try:
      return preprocessing.read_dicom_header(path)
    except errors.CorruptFileError:
      continue
  return None


def find_series(root, *, ignored=None) -> list[Series]:
  """Finds the annotated CT series under root.

  A series is a folder of .dcm files plus its CT `LidcReadMessage` XML: the XML in the
  same folder, or anywhere under root with the series' SeriesInstanceUid (so TCIA's
  separate LIDC-XML-only download can be unpacked beside the DICOM tree). The
  identifiers come from the first readable DICOM header: the patient id is its
  PatientID (the `LIDC-IDRI-NNNN` folder name only when the header has none).

  Args:
    root: folder to search.
    ignored: list that collects the folders left out (with the reason): folders of
      .dcm files without a matching XML or without one readable DICOM header.

  Returns:
    the series, in sorted folder order.
  """
  ignored = [] if ignored is None else ignored
  dicom_dirs, xml_by_uid = [], {}
  for directory, dirs, files in path_lib.walk(root):
    dirs.sort()
    dcms = sorted(f for f in files if f.lower().endswith('.dcm'))
    xmls = [
      os.path.join(directory, f)
      for f in sorted(files)
      if f.lower().endswith('.xml')
    ]
    xmls = [p for p in xmls if is_ct_reading_xml(p)]
    for p in xmls:
      xml_by_uid.setdefault(xml_series_uid(p), p)
    if dcms:
      dicom_dirs.append(
        (directory, tuple(os.path.join(directory, f) for f in dcms), xmls)
      )
  out = []
  for directory, dicom_paths, local_xmls in dicom_dirs:
    header = _first_readable_header(dicom_paths)
    if header is None:
      ignored.append(f'{directory}: no readable DICOM file')
      continue
    if local_xmls:
      xml_path = local_xmls[0]
    else:
      xml_path = (
        xml_by_uid.get(header.series_uid) if header.series_uid else None
      )
      if xml_path is None:
        ignored.append(
          f'{directory}: no LIDC XML with SeriesInstanceUid {header.series_uid}'
        )
        continue
    match = re.search(r'LIDC-IDRI-\d{4}', directory)
    patient = header.patient_id or (
      match.group(0) if match else os.path.basename(directory)
    )
    out.append(
      Series(
        directory=directory,
        xml_path=xml_path,
        dicom_paths=dicom_paths,
        patient_id=patient,
        study_uid=header.study_uid,
        series_uid=header.series_uid or directory,
        xml_series_uid=xml_series_uid(xml_path),
      )
    )
  return out


def check_series(series) -> None:
  """Refuses copies: every scan and annotation once, every study under one patient.

  Raises:
    errors.SplitLeakError naming both folders when two series folders hold the same
    DICOM SeriesInstanceUID, share one XML, or one StudyInstanceUID appears under two
    DICOM PatientIDs; and when a series' XML names another SeriesInstanceUid.
  """
  fix = (
    'Each scan must be in --manual_dir once: remove the copy (or give it its own '
    'DICOM and XML UIDs).'
  )
  seen = {}
  for s in series:
    if s.xml_series_uid and s.series_uid and s.xml_series_uid != s.series_uid:
      raise errors.SplitLeakError(
        f'{s.xml_path} annotates SeriesInstanceUid {s.xml_series_uid}, but the DICOM files of '
        f"{s.directory} are series {s.series_uid}. Put each series' XML beside its own "
        'DICOM files (or remove the stray XML).'
      )
    for kind, key, text in (
      (
        'series',
        s.series_uid,
        f'the scan with SeriesInstanceUID {s.series_uid}',
      ),
      ('xml', s.xml_path, f'the annotation file {s.xml_path}'),
      ('study', s.study_uid, f'StudyInstanceUID {s.study_uid}'),
    ):
      if not key:
        continue
      first = seen.setdefault((kind, key), s)
      if first is s:
        continue
      if kind == 'study' and first.patient_id == s.patient_id:
        continue
      raise errors.SplitLeakError(
        f'Split leak: {text} occurs twice, in {first.directory} (PatientID '
        f'{first.patient_id}) and in {s.directory} (PatientID {s.patient_id}); one copy could '
        f'land in another split or twice in one. {fix}'
      )


def _foreign_slice(series, header):
  def fail(path):
    raise errors.CorruptFileError(
      f'{path} belongs to SeriesInstanceUID {header.series_uid}, not to the series '
      f'{series.series_uid} of the other files in {series.directory}. Move it to its own '
      'series folder or pass --skip_corrupt to build without it.'
    )

  return fail


def lesion_slices(series: Series, *, skip_corrupt=False, skipped=None):
  """Yields (key, example) for every contoured, present slice of every lesion of a series.

  Args:
    series: from `find_series`.
    skip_corrupt: skip unreadable DICOM slices / XML (appending their paths to `skipped`)
      instead of raising errors.CorruptFileError.
    skipped: list that collects skipped file paths.

  Yields:
    key str and dict: image [128, 128, 1] float32, masks [4, 128, 128] uint8,
    image_180 [180, 180, 1] float32, masks_180 [4, 180, 180] uint8, id, patient_id.
  """
  skipped = [] if skipped is None else skipped

  def guard(fn, path):
    try:
      return fn(path)
    except errors.CorruptFileError:
      if not skip_corrupt:
        raise
      skipped.append(str(path))
      return None

  parsed = guard(parse_reading_xml, series.xml_path)
  if parsed is None:
    return
  series_uid, readers = parsed
  if len(readers) > NUM_READERS:
    readers = readers[:NUM_READERS]
  paths = {}  # SOP UID -> (path, header)
  for path in series.dicom_paths:
    header = guard(preprocessing.read_dicom_header, path)
    if (
      header is not None
      and series.series_uid
      and header.series_uid != series.series_uid
    ):
      header = guard(_foreign_slice(series, header), path)
    if header is not None:
      paths[header.sop_uid] = (path, header)
  if not paths:
    return
  first = next(iter(paths.values()))[1]
  spacing, shape = first.spacing_mm, first.shape
  by_z = {round(h.z_mm, 2): (p, h) for p, h in paths.values()}
  z_of = {p: h.z_mm for p, h in paths.values()}
  series_uid = series_uid or first.series_uid

  for lesion_index, lesion in enumerate(
    group_lesions(readers, spacing_mm=spacing, shape=shape)
  ):
    rois_by_slice = {}
    for nodule in lesion:
      for roi in nodule.rois:
        entry = paths.get(roi.sop_uid) or by_z.get(round(roi.z_mm, 2))
        if entry is None:
          continue  # The slice's DICOM is not present: no example.
        rois_by_slice.setdefault(entry[0], {}).setdefault(
          nodule.reader, []
        ).append(roi)
    if not rois_by_slice:
      continue
    masks = {
      path: np.stack(
        [rasterise(rois.get(k, []), shape=shape) for k in range(NUM_READERS)]
      )
      for path, rois in rois_by_slice.items()
    }
    coords = np.concatenate([np.argwhere(m.any(0)) for m in masks.values()])
    if not len(coords):
      continue
    centre = coords.mean(0)
    for path in sorted(masks, key=z_of.get):
      if not masks[path].any():
        continue
      ct = guard(preprocessing.read_dicom_slice, path)
      if ct is None:
        continue
      if ct.hu.shape != shape:
        raise errors.CorruptFileError(
          f'{path}: slice shape {ct.hu.shape} differs from the '
          f'series shape {shape}.'
        )
      hu = preprocessing.resample_crop(
        ct.hu,
        spacing_mm=ct.spacing_mm,
        center_rc=centre,
        size=CROP_STORED,
        order=1,
        cval=preprocessing.AIR_HU,
      )
      m180 = (
        np.stack(
          [
            preprocessing.resample_crop(
              m.astype(np.float32),
              spacing_mm=ct.spacing_mm,
              center_rc=centre,
              size=CROP_STORED,
              order=1,
            )
            for m in masks[path]
          ]
        )
        > 0.5
      )
      image_180 = preprocessing.hu_to_unit(hu)[..., None]
      ex_id = f'{series.patient_id}/{series_uid}/lesion{lesion_index:02d}/z{ct.z_mm:+.2f}'
      yield (
        ex_id,
        dict(
          image=preprocessing.center_crop(
            image_180, size=CROP_USED, axes=(0, 1)
          ),
          masks=preprocessing.center_crop(m180, size=CROP_USED).astype(
            np.uint8
          ),
          image_180=image_180,
          masks_180=m180.astype(np.uint8),
          id=ex_id,
          patient_id=series.patient_id,
        ),
      )


def _signature(series):
  """(path, size, mtime) of a series' XML and DICOM files: a cached parse is valid while equal."""
  out = []
  for path in (series.xml_path,) + tuple(series.dicom_paths):
    if path_lib.is_local(path):
      st = os.stat(path)
      out.append((path, st.st_size, st.st_mtime_ns))
    else:  # Cloud stores give whole seconds.
      st = epath.Path(path).stat()
      out.append((path, st.length, st.mtime))
  return out


def cache_path(series, cache_dir):
  key = hashlib.sha1(
    f'{series.series_uid}\n{series.directory}'.encode()
  ).hexdigest()
  return os.path.join(cache_dir, f'{key}.pkl')


def _read_cache_header(path):
  try:
    with epath.Path(path).open('rb') as f:
      return pickle.load(f)
  except Exception:  # A partial or foreign file is a cache miss.
    return None


def parse_series_cached(series, *, cache_dir, skip_corrupt=False):
  """Parses one series into a cache file, or reuses the file of an earlier run.

  The file holds a header (cache version, series, input signature, skipped files)
  followed by the `lesion_slices` examples; it is reused while the version and the
  XML/DICOM files' paths, sizes and mtimes are unchanged (and, without skip_corrupt,
  only if that parse skipped nothing). Written atomically, so an interrupted build
  leaves whole files only. Runs in pool workers: module-level and picklable.

  Args:
    series: from `find_series`.
    cache_dir: folder of the cache files (created).
    skip_corrupt: as in `lesion_slices`.

  Returns:
    (cache file path, skipped file paths, whether the cache was reused).
  """
  path = cache_path(series, cache_dir)
  signature = _signature(series)
  header = _read_cache_header(path) if epath.Path(path).exists() else None
  if (
    header is not None
    and header.get('version') == CACHE_VERSION
    and header.get('signature') == signature
    and (skip_corrupt or not header.get('skipped'))
  ):
    return path, list(header['skipped']), True
  skipped = []
  examples = list(
    lesion_slices(series, skip_corrupt=skip_corrupt, skipped=skipped)
  )
  epath.Path(cache_dir).mkdir(parents=True, exist_ok=True)
  tmp = epath.Path(f'{path}.tmp{os.getpid()}')
  with tmp.open('wb') as f:
    pickle.dump(
      dict(
        version=CACHE_VERSION,
        directory=series.directory,
        signature=signature,
        skipped=skipped,
      ),
      f,
    )
    pickle.dump(examples, f, protocol=pickle.HIGHEST_PROTOCOL)
  tmp.replace(path)
  return path, skipped, False


def load_cached_examples(path):
  """The (key, example) list of a `parse_series_cached` file."""
  with epath.Path(path).open('rb') as f:
    pickle.load(f)
    return pickle.load(f)
