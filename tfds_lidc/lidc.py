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

"""`lidc`: LIDC-IDRI lesion crops with four readers' masks, from three input forms.

Configs (each also as `<name>_crop64`):
  knegt_pickle    LIDCv1, `data_lidc.pickle` (Knegt's Probabilistic U-Net preprocessing).
  deepmind_crops  LIDCv2, DeepMind's 180 x 180 PNG crops at 0.5 mm, centre-cropped to 128.
  tcia            raw TCIA LIDC-IDRI DICOM + XML, preprocessed here (see `tcia.py`).

Features: 'image' float32 [128, 128, 1] in [0, 1]; 'masks' uint8 [4, 128, 128] in {0, 1};
'id' and 'patient_id' strings; deepmind_crops and tcia add the stored 180 crops
'image_180' [180, 180, 1] and 'masks_180' [4, 180, 180].
crop64 variants: train keeps the 128 x 128 examples (the input pipeline draws a fresh
64 x 64 window every step); validation and test hold one 64 x 64 window per example,
its top-left corner (row, col) drawn once per example, in example order, as
`rng.integers(0, 65, size=2)` with `rng = np.random.default_rng((seed, split_index))`
(split_index 1 = validation, 2 = test) and stored as 'crop_offset' int32 [2]
((-1, -1) on train).
'image'/'masks' of crop64 configs therefore have dynamic shapes ([None, None, 1]).
No 180 features in crop64 configs.

Splits (train, validation, test; one without any input is left out) never share a
patient or scan, and no scan is in one split twice: the build refuses (errors.SplitLeakError,
naming both places) otherwise.
  knegt_pickle: ids (key part before the first '_') listed in `vali_ids.txt` /
    `test_ids.txt` beside the pickle (the paper's split); without those files a seeded
    split of the sorted unique ids: a permutation by `np.random.default_rng(seed)`,
    the first round(test_fraction * n) ids test, the next round(val_fraction * n)
    validation, the rest train. A listed id that matches no key, or an id in both
    lists, is an error (`allow_unmatched_ids=True` ignores unmatched ids); an entry's
    'series_uid' under two ids is a leak.
  deepmind_crops: the official train/val/test folders; a patient folder in two of them
    is a leak.
  tcia: the same seeded rule over the DICOM PatientIDs; a SeriesInstanceUID (or XML)
    in two folders, or a StudyInstanceUID under two PatientIDs, is a leak (`tcia.check_series`).
  Series are parsed in parallel processes (`num_workers`) into a per-series cache under
  the download dir (`<data_dir>/downloads/tcia_series_cache/`), which a re-run after
  an interruption reuses; TFDS rewrites the array_record files each time.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import itertools
import multiprocessing
import os
import pickle
import tarfile
import tempfile

from etils import epath
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from tfds_lidc import dataset_info
from tfds_lidc import errors
from tfds_lidc import paths
from tfds_lidc import preprocessing
from tfds_lidc import tcia

SIZE = 128
STORED = 180
CROP = 64
NUM_READERS = 4
SPLITS = ('train', 'validation', 'test')
_SPLIT_INDEX = {s: i for i, s in enumerate(SPLITS)}
DEEPMIND_SPLIT_DIRS = {'train': 'train', 'validation': 'val', 'test': 'test'}

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Put the files of the config you build into one folder and pass it as --manual_dir.

lidc/knegt_pickle[_crop64] (LIDCv1):
  1. Download `data_lidc.pickle` (Stefan Knegt's preprocessing of LIDC-IDRI used by the
     Probabilistic U-Net PyTorch port; see github.com/stefanknegt/Probabilistic-Unet-Pytorch,
     "LIDC data" link).
  2. Put it at MANUAL_DIR/data_lidc.pickle.
  3. For the paper's split also put its id lists at MANUAL_DIR/test_ids.txt and
     MANUAL_DIR/vali_ids.txt (one id per line). Without them a seeded split by id is used.

lidc/deepmind_crops[_crop64] (LIDCv2):
  1. Download DeepMind's LIDC crops (github.com/deepmind/phiseg... "lidc_crops":
     https://storage.googleapis.com/hpunet-data/lidc_crops/{train,val,test}.tar.gz).
  2. Put train.tar.gz, val.tar.gz and test.tar.gz in MANUAL_DIR, or their extracted folders
     MANUAL_DIR/{train,val,test}/ each holding images/<patient>/z-<z>_c<n>.png and
     gt/<patient>/z-<z>_c<n>_l<k>.png (k = 0..3).

lidc/tcia[_crop64] (raw TCIA LIDC-IDRI):
  1. Download the CT series of LIDC-IDRI with the NBIA Data Retriever
     (https://www.cancerimagingarchive.net/collection/lidc-idri/, "Classic Directory Name"
     layout: LIDC-IDRI/LIDC-IDRI-NNNN/<study uid>/<series uid>/*.dcm + the series' .xml).
  2. If your series folders lack the radiologists' .xml files, download the annotations
     (LIDC-XML-only.zip from the same page) and unzip them anywhere under MANUAL_DIR:
     each XML is matched to its series by SeriesInstanceUid.
  3. Point --manual_dir at the folder that contains LIDC-IDRI/ (or at LIDC-IDRI/ itself).
"""


@dataclasses.dataclass
class LidcConfig(tfds.core.BuilderConfig):
  """source: 'knegt_pickle' | 'deepmind_crops' | 'tcia'; crop64: 64 x 64 val/test windows."""

  source: str = 'knegt_pickle'
  crop64: bool = False
  seed: int = 0
  val_fraction: float = 0.2
  test_fraction: float = 0.2


def _configs():
  out = []
  for source, val, test in (
    ('knegt_pickle', 0.2, 0.2),
    ('deepmind_crops', 0.0, 0.0),
    ('tcia', 0.15, 0.15),
  ):
    for crop64 in (False, True):
      out.append(
        LidcConfig(
          name=source + ('_crop64' if crop64 else ''),
          source=source,
          crop64=crop64,
          val_fraction=val,
          test_fraction=test,
        )
      )
  return out


def check_disjoint(split_ids: dict, *, fix: str = '') -> None:
  """Raises errors.SplitLeakError if any patient/scan id occurs in two splits.

  Args:
    split_ids: split -> ids, either a set or a dict id -> the path it came from (the
      message then names both paths of the first shared id).
    fix: what the user should do, appended to the message.
  """
  names = sorted(split_ids)
  for i, a in enumerate(names):
    for b in names[i + 1 :]:
      common = sorted(set(split_ids[a]) & set(split_ids[b]))
      if common:
        where = ''
        if isinstance(split_ids[a], dict) and isinstance(split_ids[b], dict):
          first = common[0]
          where = f' ({first!r} from {split_ids[a][first]} and from {split_ids[b][first]})'
        raise errors.SplitLeakError(
          f'Split leak: ids {common[:10]} occur in both {a} and {b}{where}. '
          f'{fix or "Each patient must be in one split only."}'
        )


def seeded_split(ids, *, seed, val_fraction, test_fraction) -> dict:
  """Assigns sorted unique ids to splits by a seeded permutation; returns split -> set."""
  ids = sorted(set(ids))
  order = [ids[i] for i in np.random.default_rng(seed).permutation(len(ids))]
  n_test = int(round(test_fraction * len(ids)))
  n_val = int(round(val_fraction * len(ids)))
  return {
    'test': set(order[:n_test]),
    'validation': set(order[n_test : n_test + n_val]),
    'train': set(order[n_test + n_val :]),
  }


def _require(path, what):
  if not epath.Path(path).exists():
    raise errors.ManualDataError(
      f'Missing {path}: {what}\n\nSee the instructions:\n{MANUAL_DOWNLOAD_INSTRUCTIONS}'
    )
  return path


def _check_example(ex, *, where, size):
  image, masks = ex['image'], ex['masks']
  if image.shape != (size, size, 1) or masks.shape != (NUM_READERS, size, size):
    raise errors.CorruptFileError(
      f'{where}: expected image [{size},{size},1] and masks [4,{size},{size}], got '
      f'{image.shape} and {masks.shape}.'
    )
  if (
    not np.all(np.isfinite(image))
    or image.min() < -1e-3
    or image.max() > 1 + 1e-3
  ):
    raise errors.CorruptFileError(
      f'{where}: image values must be finite and in [0, 1].'
    )


class Lidc(tfds.core.GeneratorBasedBuilder):
  """LIDC-IDRI lesion crops with four readers' masks (manual download)."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  BUILDER_CONFIGS = _configs()
  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS

  def __init__(
    self,
    *,
    skip_corrupt: bool = False,
    allow_unmatched_ids: bool = False,
    num_workers: int | None = None,
    **kwargs,
  ):
    """Builder options that do not change the data set's content or name.

    Args:
      skip_corrupt: skip unreadable inputs and list them in `self.skipped_files`.
      allow_unmatched_ids: knegt_pickle: ignore ids of test_ids.txt / vali_ids.txt that
        match no pickle key (listed in `self.notes`) instead of failing.
      num_workers: tcia: processes parsing series in parallel (default: all CPUs;
        0 or 1 parses in this process).
      **kwargs: for tfds.core.GeneratorBasedBuilder.
    """
    super().__init__(**kwargs)
    self.skip_corrupt = skip_corrupt
    self.allow_unmatched_ids = allow_unmatched_ids
    self.num_workers = (
      (os.cpu_count() or 1) if num_workers is None else num_workers
    )
    self.skipped_files = []
    self.notes = {}  # Extra build report entries.

  def _info(self):
    c = self.builder_config
    zlib = tfds.features.Encoding.ZLIB
    if c.crop64:
      features = {
        'image': tfds.features.Tensor(
          shape=(None, None, 1),
          dtype=np.float32,
          encoding=tfds.features.Encoding.BYTES,
        ),
        'masks': tfds.features.Tensor(
          shape=(NUM_READERS, None, None), dtype=np.uint8, encoding=zlib
        ),
        'crop_offset': tfds.features.Tensor(shape=(2,), dtype=np.int32),
      }
    else:
      features = {
        'image': tfds.features.Tensor(shape=(SIZE, SIZE, 1), dtype=np.float32),
        'masks': tfds.features.Tensor(
          shape=(NUM_READERS, SIZE, SIZE), dtype=np.uint8, encoding=zlib
        ),
      }
      if c.source != 'knegt_pickle':
        features['image_180'] = tfds.features.Tensor(
          shape=(STORED, STORED, 1), dtype=np.float32
        )
        features['masks_180'] = tfds.features.Tensor(
          shape=(NUM_READERS, STORED, STORED), dtype=np.uint8, encoding=zlib
        )
    features['id'] = tfds.features.Text()
    features['patient_id'] = tfds.features.Text()
    return dataset_info.LocalDatasetInfo(
      builder=self,
      description=__doc__,
      disable_shuffling=True,
      features=tfds.features.FeaturesDict(features),
    )

  def _manual_dir(self, dl_manager):
    try:
      path = dl_manager.manual_dir
    except (AssertionError, ValueError) as e:
      raise errors.ManualDataError(
        f'lidc/{self.builder_config.name} needs your LIDC files in --manual_dir ({e}).\n\n'
        f'{MANUAL_DOWNLOAD_INSTRUCTIONS}'
      ) from e
    return os.fspath(path)

  def _guard(self, fn, *args, where):
    """Runs fn(*args); on CorruptFileError skips (returns None) if skip_corrupt, else raises."""
    try:
      return fn(*args)
    except errors.CorruptFileError:
      if not self.skip_corrupt:
        raise
      self.skipped_files.append(str(where))
      return None

  def _split_generators(self, dl_manager):
    manual_dir = self._manual_dir(dl_manager)
    source = self.builder_config.source
    if source == 'knegt_pickle':
      per_split = self._knegt_items(manual_dir)
    elif source == 'deepmind_crops':
      per_split = self._deepmind_items(manual_dir, dl_manager)
    elif source == 'tcia':
      per_split = self._tcia_items(manual_dir, dl_manager)
    else:
      raise ValueError(f'Unknown LIDC source {source!r}.')
    # Items are (patient id, where it came from, payload).
    fix = {
      'deepmind_crops': 'Keep each patient folder in one of train/, val/, test/.',
      'knegt_pickle': 'Keep each id in one of test_ids.txt, vali_ids.txt.',
    }.get(source, 'Each patient must be in one split only.')
    check_disjoint(
      {s: {p: w for p, w, _ in items} for s, items in per_split.items()},
      fix=fix,
    )
    self.notes['patients'] = {
      s: len({p for p, _, _ in items}) for s, items in per_split.items()
    }
    # TFDS cannot write empty splits; a split without inputs is left out.
    return {
      s: self._generate_examples(split=s, items=items)
      for s, items in per_split.items()
      if items
    }

  def _generate_examples(self, *, split, items):
    c = self.builder_config
    if c.source == 'tcia':
      examples = self._tcia_examples([series for _, _, series in items])
    else:
      examples = (ex for _, _, make in items for ex in make())
    if not c.crop64:
      yield from examples
      return
    rng = np.random.default_rng((c.seed, _SPLIT_INDEX[split]))
    for key, ex in examples:
      ex = {k: v for k, v in ex.items() if not k.endswith('_180')}
      if split == 'train':
        ex['crop_offset'] = np.array([-1, -1], np.int32)
      else:
        r, col = rng.integers(0, SIZE - CROP + 1, size=2)
        ex['image'] = ex['image'][r : r + CROP, col : col + CROP]
        ex['masks'] = ex['masks'][:, r : r + CROP, col : col + CROP]
        ex['crop_offset'] = np.array([r, col], np.int32)
      yield key, ex

  # LIDCv1 -------------------------------------------------------------------------------

  def _knegt_items(self, manual_dir):
    path = _require(
      os.path.join(manual_dir, 'data_lidc.pickle'),
      'LIDCv1 pickle (put data_lidc.pickle in --manual_dir).',
    )
    data = self._guard(_load_pickle, path, where=path)
    if data is None:
      raise errors.ManualDataError(
        f'{path} is corrupt and was skipped; nothing to build.'
      )
    test_file, val_file = (
      os.path.join(manual_dir, f) for f in ('test_ids.txt', 'vali_ids.txt')
    )
    ids_of = {key: str(key).split('_')[0] for key in data}
    _check_knegt_series(data, ids_of, path)
    if epath.Path(test_file).exists() or epath.Path(val_file).exists():
      _require(
        test_file, 'the paper split needs both test_ids.txt and vali_ids.txt.'
      )
      _require(
        val_file, 'the paper split needs both test_ids.txt and vali_ids.txt.'
      )
      test_ids, val_ids = _read_ids(test_file), _read_ids(val_file)
      both = sorted(test_ids & val_ids)
      if both:
        raise errors.SplitLeakError(
          f'{len(both)} ids are listed in both {test_file} and {val_file}: {both[:10]}. '
          'Remove each from one of the two files.'
        )
      known = set(ids_of.values())
      unmatched = {
        f: sorted(ids - known)
        for f, ids in ((test_file, test_ids), (val_file, val_ids))
      }
      unmatched = {f: ids for f, ids in unmatched.items() if ids}
      if unmatched and not self.allow_unmatched_ids:
        listed = '; '.join(
          f'{len(ids)} in {f}: {ids[:10]}' for f, ids in unmatched.items()
        )
        raise errors.ManualDataError(
          f'Split id lists name ids that match no key of {path} ({listed}). Keys are '
          '"<id>_<slice>"; check that the lists belong to this pickle, or pass '
          '--allow_unmatched_ids to ignore these ids.'
        )
      self.notes['unmatched_ids'] = unmatched
      assign = {'test': test_ids & known, 'validation': val_ids & known}
      assign['train'] = known - test_ids - val_ids
    else:
      c = self.builder_config
      assign = seeded_split(
        ids_of.values(),
        seed=c.seed,
        val_fraction=c.val_fraction,
        test_fraction=c.test_fraction,
      )
    split_of = {i: s for s, ids in assign.items() for i in ids}
    per_split = {s: [] for s in SPLITS}
    for key in sorted(data, key=str):
      pid = ids_of[key]
      per_split[split_of[pid]].append(
        (pid, f'{path}:{key}', self._knegt_maker(data, key, pid, path))
      )
    return per_split

  def _knegt_maker(self, data, key, pid, path):
    def make():
      ex = self._guard(
        _knegt_example, data[key], key, pid, path, where=f'{path}:{key}'
      )
      return [] if ex is None else [(str(key), ex)]

    return make

  # LIDCv2 -------------------------------------------------------------------------------

  def _deepmind_items(self, manual_dir, dl_manager):
    roots = {}
    for split, folder in DEEPMIND_SPLIT_DIRS.items():
      root = os.path.join(manual_dir, folder)
      if not epath.Path(root).is_dir():
        tarball = next(
          (
            os.path.join(manual_dir, folder + ext)
            for ext in ('.tar.gz', '.tgz', '.tar')
            if epath.Path(manual_dir, folder + ext).exists()
          ),
          None,
        )
        if tarball is None:
          raise errors.ManualDataError(
            f'Missing {root}/ (or {root}.tar.gz): the LIDCv2 {folder} split with images/ and gt/.'
            f'\n\nSee the instructions:\n{MANUAL_DOWNLOAD_INSTRUCTIONS}'
          )
        root = self._extract(
          tarball, folder, os.fspath(dl_manager.download_dir)
        )
      _require(
        os.path.join(root, 'images'),
        f'LIDCv2 {folder} split needs images/ and gt/.',
      )
      _require(
        os.path.join(root, 'gt'),
        f'LIDCv2 {folder} split needs images/ and gt/.',
      )
      roots[split] = root
    per_split = {}
    for split, root in roots.items():
      items = []
      image_root = epath.Path(root, 'images')
      for patient in sorted(p.name for p in image_root.iterdir()):
        pdir = os.path.join(image_root, patient)
        if not epath.Path(pdir).is_dir():
          continue
        names = (f.name for f in epath.Path(pdir).iterdir())
        for name in sorted(f for f in names if f.endswith('.png')):
          items.append(
            (patient, pdir, self._deepmind_maker(root, patient, name))
          )
      per_split[split] = items
    return per_split

  def _extract(self, tarball, folder, download_dir):
    # tarfile extracts to local folders only: with a cloud data_dir, into the local temp folder.
    if not paths.is_local(download_dir):
      download_dir = os.path.join(tempfile.gettempdir(), 'tfds_lidc_downloads')
    out = os.path.join(download_dir, 'extracted', f'deepmind_crops_{folder}')
    done = os.path.join(out, '.done')
    if not os.path.exists(done):
      try:
        with (
          epath.Path(tarball).open('rb') as f,
          tarfile.open(fileobj=f) as tar,
        ):
          tar.extractall(out, filter='data')
      except (tarfile.TarError, OSError, EOFError) as e:
        raise errors.CorruptFileError(
          f'Cannot extract {tarball}: {e}. Re-download it.'
        ) from e
      open(done, 'w').close()
    for candidate in (os.path.join(out, folder), out):
      if os.path.isdir(os.path.join(candidate, 'images')):
        return candidate
    raise errors.ManualDataError(f'{tarball} holds no {folder}/images/ folder.')

  def _deepmind_maker(self, root, patient, name):
    def make():
      image_path = os.path.join(root, 'images', patient, name)
      ex = self._guard(_deepmind_example, root, patient, name, where=image_path)
      return [] if ex is None else [(f'{patient}/{name[:-4]}', ex)]

    return make

  # Raw TCIA -----------------------------------------------------------------------------

  def _tcia_items(self, manual_dir, dl_manager):
    ignored = []
    series = tcia.find_series(manual_dir, ignored=ignored)
    self.notes['ignored_series_folders'] = ignored
    if not series:
      raise errors.ManualDataError(
        f'No LIDC-IDRI CT series (a folder with .dcm files and its LidcReadMessage .xml) '
        f'under {manual_dir}.\n\nSee the instructions:\n{MANUAL_DOWNLOAD_INSTRUCTIONS}'
      )
    tcia.check_series(series)
    self._tcia_cache_dir = os.path.join(
      os.fspath(dl_manager.download_dir), 'tcia_series_cache'
    )
    self.notes['tcia_cache_dir'] = self._tcia_cache_dir
    self.notes['series_parsed'] = self.notes['series_reused'] = 0
    c = self.builder_config
    assign = seeded_split(
      [s.patient_id for s in series],
      seed=c.seed,
      val_fraction=c.val_fraction,
      test_fraction=c.test_fraction,
    )
    split_of = {p: s for s, ps in assign.items() for p in ps}
    per_split = {s: [] for s in SPLITS}
    for s in series:
      per_split[split_of[s.patient_id]].append((s.patient_id, s.directory, s))
    return per_split

  def _tcia_examples(self, series):
    """Yields the examples of the series in order, parsed by a pool of processes.

    At most 2 * num_workers series are in flight, and the examples travel through
    the per-series cache files, so memory stays bounded by a few series.
    """
    task = functools.partial(
      tcia.parse_series_cached,
      cache_dir=self._tcia_cache_dir,
      skip_corrupt=self.skip_corrupt,
    )
    workers = min(self.num_workers, len(series))
    if workers <= 1:
      for s in series:
        yield from self._tcia_collect(task(s))
      return
    # spawn: the parent may hold threads (TFDS, absl) that fork would copy mid-state.
    with multiprocessing.get_context('spawn').Pool(workers) as pool:
      todo = iter(series)
      pending = collections.deque(
        pool.apply_async(task, (s,))
        for s in itertools.islice(todo, 2 * workers)
      )
      while pending:
        result = pending.popleft().get()
        for s in itertools.islice(todo, 1):
          pending.append(pool.apply_async(task, (s,)))
        yield from self._tcia_collect(result)

  def _tcia_collect(self, result):
    path, skipped, reused = result
    self.skipped_files.extend(skipped)
    self.notes['series_reused' if reused else 'series_parsed'] += 1
    yield from tcia.load_cached_examples(path)


def _load_pickle(path):
  try:
    with epath.Path(path).open('rb') as f:
      try:
        data = pickle.load(f)
      except UnicodeDecodeError:
        f.seek(0)
        data = pickle.load(f, encoding='latin1')
  # Unpickling raises many exception types on damaged files.
  except Exception as e:
    raise errors.CorruptFileError(
      f'Cannot unpickle {path}: {type(e).__name__}: {e}. Re-download data_lidc.pickle.'
    ) from e
  if not isinstance(data, dict) or not data:
    raise errors.CorruptFileError(
      f'{path} must hold a non-empty dict key -> example.'
    )
  return data


def _check_knegt_series(data, ids_of, path):
  """Refuses a pickle whose entries of one 'series_uid' carry two ids (a copied scan)."""
  first = {}
  for key in sorted(data, key=str):
    value = data[key]
    uid = value.get('series_uid') if isinstance(value, dict) else None
    if uid is None:
      continue
    other = first.setdefault(str(uid), key)
    if ids_of[other] != ids_of[key]:
      raise errors.SplitLeakError(
        f'Split leak: series_uid {uid} of {path} is under two ids, in keys {other!r} and '
        f'{key!r}; the scan could land in two splits. Remove the duplicate entries.'
      )


def _read_ids(path):
  lines = epath.Path(path).read_text().splitlines()
  return {line.strip() for line in lines if line.strip()}


def _knegt_example(value, key, pid, path):
  where = f'{path}, key {key!r}'
  try:
    image = np.asarray(value['image'], np.float32)
    masks = np.stack([np.asarray(m) for m in value['masks']])
  except (KeyError, TypeError, ValueError) as e:
    raise errors.CorruptFileError(
      f'{where}: needs "image" and 4 "masks" ({e}).'
    ) from e
  ex = dict(
    image=image.reshape(image.shape + (1,) * (image.ndim == 2)),
    masks=(masks > 0.5).astype(np.uint8),
    id=str(key),
    patient_id=pid,
  )
  _check_example(ex, where=where, size=SIZE)
  # Within the checked 1e-3 tolerance.
  ex['image'] = np.clip(ex['image'], 0.0, 1.0)
  return ex


def _read_png(path):
  try:
    with epath.Path(path).open('rb') as f, Image.open(f) as img:
      return np.array(img.convert('L'))
  except (OSError, SyntaxError, ValueError) as e:
    raise errors.CorruptFileError(
      f'Cannot read PNG {path}: {e}. Re-download it or pass --skip_corrupt.'
    ) from e


def _deepmind_example(root, patient, name):
  stem = name[:-4]
  image_path = os.path.join(root, 'images', patient, name)
  image = _read_png(image_path).astype(np.float32) / 255.0
  masks = []
  for k in range(NUM_READERS):
    gt = os.path.join(root, 'gt', patient, f'{stem}_l{k}.png')
    if not epath.Path(gt).exists():
      raise errors.CorruptFileError(
        f'Missing mask {gt} for image {image_path}.'
      )
    masks.append(_read_png(gt) > 127)
  masks = np.stack(masks).astype(np.uint8)
  ex180 = dict(image=image[..., None], masks=masks)
  _check_example(ex180, where=image_path, size=STORED)
  return dict(
    image=preprocessing.center_crop(ex180['image'], size=SIZE, axes=(0, 1)),
    masks=preprocessing.center_crop(masks, size=SIZE),
    image_180=ex180['image'],
    masks_180=masks,
    id=f'{patient}/{stem}',
    patient_id=patient,
  )
