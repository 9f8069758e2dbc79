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

"""Tests of the lidc builder (knegt_pickle, deepmind_crops, crop64) from tiny fixtures."""

import glob
import json
import os
import pickle
import shutil
import subprocess
import sys
import tarfile

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from tfds_lidc import build
from tfds_lidc import errors
from tfds_lidc import lidc
from tfds_lidc import synthetic_lesions

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(__file__), '..', '..', 'shared')
SPLIT_IDS = os.path.join(SHARED, 'data', 'lidc_split_ids')
QUIET = dict(log=lambda *_: None)
SLICES = 3


def _ids():
  """Two test ids, two validation ids (from the paper's lists if present), three train ids."""
  if os.path.isdir(SPLIT_IDS):
    test = [
      line.strip()
      for line in open(os.path.join(SPLIT_IDS, 'test_ids.txt'))
      if line.strip()
    ][:2]
    val = [
      line.strip()
      for line in open(os.path.join(SPLIT_IDS, 'vali_ids.txt'))
      if line.strip()
    ][:2]
  else:
    test, val = (
      ['900000000000000000000000000001', '900000000000000000000000000002'],
      ['800000000000000000000000000001', '800000000000000000000000000002'],
    )
  return (
    test,
    val,
    [
      '100000000000000000000000000001',
      '100000000000000000000000000002',
      '100000000000000000000000000003',
    ],
  )


def _write_knegt(
  directory,
  *,
  with_ids=True,
  bad_key=None,
  extra_test_ids=(),
  extra_val_ids=(),
  series_of=None,
):
  rng = np.random.default_rng(0)
  test, val, train = _ids()
  data = {}
  for pid in test + val + train:
    for z in range(SLICES):
      data[f'{pid}_slice{z}'] = {
        'image': rng.uniform(size=(128, 128)).astype(np.float32),
        'masks': [
          (rng.uniform(size=(128, 128)) > 0.7).astype(np.uint8)
          for _ in range(4)
        ],
        'series_uid': (series_of or {}).get(pid, f'1.2.3.{pid}'),
      }
  if bad_key:
    data[bad_key] = {
      'image': np.zeros((100, 100), np.float32),
      'masks': [np.zeros((100, 100))] * 4,
    }
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, 'data_lidc.pickle'), 'wb') as f:
    pickle.dump(data, f)
  if with_ids:
    for name, ids in (
      ('test_ids.txt', test + list(extra_test_ids)),
      ('vali_ids.txt', val + list(extra_val_ids)),
    ):
      with open(os.path.join(directory, name), 'w') as f:
        f.write('\n'.join(ids) + '\n')
  return data


def _records(data_dir, name, split):
  source = tfds.data_source(name, split=split, data_dir=data_dir)
  return [source[i] for i in range(len(source))]


@pytest.fixture(scope='module')
def knegt(tmp_path_factory):
  manual = str(tmp_path_factory.mktemp('knegt_manual'))
  data = _write_knegt(manual)
  out = str(tmp_path_factory.mktemp('knegt_out'))
  report = build.build('lidc/knegt_pickle', out, manual, **QUIET)
  report64 = build.build('lidc/knegt_pickle_crop64', out, manual, **QUIET)
  return dict(
    manual=manual, data=data, out=out, report=report, report64=report64
  )


def test_knegt_paper_split(knegt):
  test, val, train = _ids()
  assert knegt['report']['num_examples'] == {
    'train': 3 * SLICES,
    'validation': 2 * SLICES,
    'test': 2 * SLICES,
  }
  assert knegt['report']['patients'] == {'train': 3, 'validation': 2, 'test': 2}
  assert knegt['report']['unmatched_ids'] == {}
  for split, ids in (('train', train), ('validation', val), ('test', test)):
    recs = _records(knegt['out'], 'lidc/knegt_pickle', split)
    assert {r['patient_id'].decode() for r in recs} == set(ids)
    for r in recs:
      ref = knegt['data'][r['id'].decode()]
      np.testing.assert_array_equal(r['image'][..., 0], ref['image'])
      np.testing.assert_array_equal(r['masks'], np.stack(ref['masks']))
      assert r['image'].dtype == np.float32 and r['masks'].dtype == np.uint8
      assert r['id'].decode().split('_')[0] == r['patient_id'].decode()
  assert 'tensorflow' not in sys.modules


def test_crop64_windows(knegt):
  name = 'lidc/knegt_pickle_crop64'
  assert knegt['report64']['num_examples'] == knegt['report']['num_examples']
  train = _records(knegt['out'], name, 'train')
  assert all(r['image'].shape == (128, 128, 1) for r in train)
  assert all(tuple(r['crop_offset']) == (-1, -1) for r in train)
  for split_index, split in ((1, 'validation'), (2, 'test')):
    # The documented rule, seed 0.
    rng = np.random.default_rng((0, split_index))
    full = {
      r['id']: r for r in _records(knegt['out'], 'lidc/knegt_pickle', split)
    }
    for r in _records(knegt['out'], name, split):
      row, col = rng.integers(0, 65, size=2)
      assert tuple(r['crop_offset']) == (row, col)
      ref = full[r['id']]
      np.testing.assert_array_equal(
        r['image'], ref['image'][row : row + 64, col : col + 64]
      )
      np.testing.assert_array_equal(
        r['masks'], ref['masks'][:, row : row + 64, col : col + 64]
      )


def test_two_builds_identical_records(knegt, tmp_path):
  build.build(
    'lidc/knegt_pickle_crop64', str(tmp_path), knegt['manual'], **QUIET
  )
  a = sorted(
    glob.glob(
      os.path.join(
        knegt['out'], 'lidc', 'knegt_pickle_crop64', '*', '*array_record*'
      )
    )
  )
  b = sorted(
    glob.glob(
      os.path.join(
        str(tmp_path), 'lidc', 'knegt_pickle_crop64', '*', '*array_record*'
      )
    )
  )
  assert len(a) == 3 and [os.path.basename(p) for p in a] == [
    os.path.basename(p) for p in b
  ]
  for pa, pb in zip(a, b):
    with open(pa, 'rb') as fa, open(pb, 'rb') as fb:
      assert fa.read() == fb.read(), pa


def test_knegt_seeded_split_without_id_files(tmp_path):
  manual = str(tmp_path / 'manual')
  _write_knegt(manual, with_ids=False)
  report = build.build(
    'lidc/knegt_pickle', str(tmp_path / 'out'), manual, **QUIET
  )
  counts = report['num_examples']
  # 7 ids: round(0.2 * 7) = 1 test id and 1 validation id.
  assert counts == {'train': 5 * SLICES, 'validation': SLICES, 'test': SLICES}
  pids = {
    s: {
      r['patient_id']
      for r in _records(str(tmp_path / 'out'), 'lidc/knegt_pickle', s)
    }
    for s in counts
  }
  lidc.check_disjoint(pids)
  test, val, train = _ids()
  order = sorted(test + val + train)
  perm = [order[i] for i in np.random.default_rng(0).permutation(len(order))]
  assert pids['test'] == {perm[0].encode()} and pids['validation'] == {
    perm[1].encode()
  }


def test_check_disjoint():
  lidc.check_disjoint({'train': {'a', 'b'}, 'test': {'c'}})
  with pytest.raises(
    errors.SplitLeakError,
    match=r"Split leak: ids \['b'\] occur in both test and train",
  ):
    lidc.check_disjoint({'train': {'a', 'b'}, 'test': {'b'}})
  with pytest.raises(
    errors.SplitLeakError, match=r"'b' from /t/b and from /r/b\)\. Fix it"
  ):
    lidc.check_disjoint(
      {'train': {'a': '/r/a', 'b': '/r/b'}, 'test': {'b': '/t/b'}},
      fix='Fix it.',
    )


def test_knegt_unmatched_ids_refused(tmp_path, capsys):
  manual = str(tmp_path / 'manual')
  _write_knegt(manual, extra_test_ids=['999'], extra_val_ids=['555', '556'])
  with pytest.raises(
    errors.ManualDataError,
    match=r"(?s)test_ids\.txt: \['999'\].*vali_ids\.txt: \['555', '556'\]"
    r'.*--allow_unmatched_ids',
  ):
    build.build('lidc/knegt_pickle', str(tmp_path / 'a'), manual, **QUIET)
  out = str(tmp_path / 'b')
  assert (
    build.main(
      [
        '--dataset=lidc/knegt_pickle',
        f'--data_dir={out}',
        f'--manual_dir={manual}',
        '--allow_unmatched_ids',
      ]
    )
    == 0
  )
  with open(
    os.path.join(out, 'lidc', 'knegt_pickle', '1.0.0', build.REPORT_NAME)
  ) as f:
    report = json.load(f)
  assert report['num_examples'] == {
    'train': 3 * SLICES,
    'validation': 2 * SLICES,
    'test': 2 * SLICES,
  }
  assert sorted(sum(report['unmatched_ids'].values(), [])) == [
    '555',
    '556',
    '999',
  ]
  # Nothing matches: refused (it used to put every example in train).
  none = str(tmp_path / 'none')
  _write_knegt(none, with_ids=False)
  for name in ('test_ids.txt', 'vali_ids.txt'):
    with open(os.path.join(none, name), 'w') as f:
      f.write('123\n' if name == 'test_ids.txt' else '456\n')
  assert (
    build.main(
      [
        '--dataset=lidc/knegt_pickle',
        f'--data_dir={tmp_path / "c"}',
        f'--manual_dir={none}',
      ]
    )
    == 1
  )
  assert 'match no key' in capsys.readouterr().err


def test_knegt_id_in_both_lists(tmp_path):
  manual = str(tmp_path / 'manual')
  test, _, _ = _ids()
  _write_knegt(manual, extra_val_ids=[test[1]])
  with pytest.raises(
    errors.SplitLeakError,
    match=f"both .*test_ids.txt and .*vali_ids.txt: \\['{test[1]}'\\]",
  ):
    build.build('lidc/knegt_pickle', str(tmp_path / 'a'), manual, **QUIET)
  with pytest.raises(errors.SplitLeakError):
    build.build(
      'lidc/knegt_pickle',
      str(tmp_path / 'b'),
      manual,
      allow_unmatched_ids=True,
      **QUIET,
    )


def test_knegt_series_under_two_ids(tmp_path):
  """One scan (series_uid) under two ids could land in two splits: refused."""
  manual = str(tmp_path / 'manual')
  test, val, _ = _ids()
  _write_knegt(manual, series_of={test[0]: '1.2.3.same', val[0]: '1.2.3.same'})
  with pytest.raises(
    errors.SplitLeakError,
    match=r'series_uid 1\.2\.3\.same of .*data_lidc\.pickle '
    r"is under two ids, in keys '\d+_slice0' and",
  ) as e:
    build.build('lidc/knegt_pickle', str(tmp_path / 'a'), manual, **QUIET)
  assert f"'{test[0]}_slice" in str(e.value) and f"'{val[0]}_slice" in str(
    e.value
  )


def test_cli_flags(tmp_path, capsys):
  """absl flags: the README's command line, --override lists, errors as one line."""
  out = str(tmp_path / 'syn')
  assert (
    build.main(
      [
        '--dataset=synthetic_lesions/32',
        f'--data_dir={out}',
        '--override=num_train=4,num_validation=2,num_test=2',
      ]
    )
    == 0
  )
  with open(
    os.path.join(
      out,
      'synthetic_lesions',
      '32_num_test2_num_train4_num_validation2',
      str(synthetic_lesions.SyntheticLesions.VERSION),
      build.REPORT_NAME,
    )
  ) as f:
    assert json.load(f)['num_examples'] == {
      'train': 4,
      'validation': 2,
      'test': 2,
    }
  capsys.readouterr()
  # The flags above are reset.
  assert build.main(['--dataset=synthetic_lesions/32']) == 1
  assert '--data_dir required' in capsys.readouterr().err
  assert (
    build.main(
      ['--dataset=synthetic_lesions/32', '--data_dir=x', '--no_such_flag']
    )
    == 1
  )
  assert 'no_such_flag' in capsys.readouterr().err
  assert (
    build.main(
      [
        '--dataset=synthetic_lesions/32',
        f'--data_dir={out}',
        '--override=num_train',
      ]
    )
    == 1
  )
  assert 'key=value' in capsys.readouterr().err
  result = subprocess.run(
    [sys.executable, '-m', 'tfds_lidc.build', '--help'],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=120,
    check=False,
  )
  for flag in (
    '--dataset',
    '--data_dir',
    '--manual_dir',
    '--[no]skip_corrupt',
    '--[no]overwrite',
    '--override',
    '--[no]allow_unmatched_ids',
    '--num_workers',
  ):
    assert flag in result.stdout, flag
  assert 'python -m tfds_lidc.build --dataset=' in result.stdout


def test_manual_dir_that_is_a_file_is_one_error_line(tmp_path):
  pickle_file = tmp_path / 'data_lidc.pickle'
  pickle_file.write_bytes(b'not a folder')
  result = subprocess.run(
    [
      sys.executable,
      '-m',
      'tfds_lidc.build',
      '--dataset=lidc/knegt_pickle',
      f'--data_dir={tmp_path / "out"}',
      f'--manual_dir={pickle_file}',
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=120,
    check=False,
  )
  assert result.returncode != 0
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith('ERROR: ') and str(pickle_file) in last, result.stderr
  assert 'is a file, not a folder' in last
  assert 'Traceback' not in result.stderr


def test_missing_manual_dir(tmp_path):
  with pytest.raises(errors.ManualDataError, match='data_lidc.pickle'):
    build.build('lidc/knegt_pickle', str(tmp_path / 'out'), None, **QUIET)
  empty = tmp_path / 'empty'
  empty.mkdir()
  with pytest.raises(
    errors.ManualDataError, match='MANUAL_DIR/data_lidc.pickle'
  ):
    build.build('lidc/knegt_pickle', str(tmp_path / 'out'), str(empty), **QUIET)
  (empty / 'vali_ids.txt').write_text('1\n')
  with pytest.raises(
    errors.ManualDataError, match=r'Missing .*empty/data_lidc\.pickle'
  ):
    build.build('lidc/knegt_pickle', str(tmp_path / 'out'), str(empty), **QUIET)
  with pytest.raises(errors.ManualDataError, match=r'Missing .*empty/train/'):
    build.build(
      'lidc/deepmind_crops', str(tmp_path / 'out'), str(empty), **QUIET
    )


def test_corrupt_pickle_entry(tmp_path, capsys):
  manual = str(tmp_path / 'manual')
  _write_knegt(manual, bad_key='100000000000000000000000000009_slice0')
  with pytest.raises(
    errors.CorruptFileError, match='100000000000000000000000000009_slice0'
  ):
    build.build('lidc/knegt_pickle', str(tmp_path / 'a'), manual, **QUIET)
  out = str(tmp_path / 'b')
  assert (
    build.main(
      [
        '--dataset=lidc/knegt_pickle',
        f'--data_dir={out}',
        f'--manual_dir={manual}',
        '--skip_corrupt',
      ]
    )
    == 0
  )
  with open(
    os.path.join(out, 'lidc', 'knegt_pickle', '1.0.0', build.REPORT_NAME)
  ) as f:
    report = json.load(f)
  assert report['num_examples']['train'] == 3 * SLICES
  assert len(report['skipped_corrupt']) == 1
  assert report['skipped_corrupt'][0].endswith(
    'data_lidc.pickle:100000000000000000000000000009_slice0'
  )
  with open(os.path.join(manual, 'data_lidc.pickle'), 'wb') as f:
    f.write(b'not a pickle')
  assert (
    build.main(
      [
        '--dataset=lidc/knegt_pickle',
        f'--data_dir={tmp_path / "c"}',
        f'--manual_dir={manual}',
      ]
    )
    == 1
  )
  assert 'Cannot unpickle' in capsys.readouterr().err


# LIDCv2 ------------------------------------------------------------------------------------

DEEPMIND = {
  'train': ['LIDC-IDRI-0003', 'LIDC-IDRI-0004'],
  'val': ['LIDC-IDRI-0005'],
  'test': ['LIDC-IDRI-0006'],
}


def _write_deepmind(root, *, layout=DEEPMIND, tar_val=False):
  rng = np.random.default_rng(1)
  for folder, patients in layout.items():
    for patient in patients:
      os.makedirs(os.path.join(root, folder, 'images', patient), exist_ok=True)
      os.makedirs(os.path.join(root, folder, 'gt', patient), exist_ok=True)
      for stem in ('z-105.0_c0', 'z-107.5_c0'):
        img = rng.integers(0, 256, size=(180, 180), dtype=np.uint8)
        Image.fromarray(img).save(
          os.path.join(root, folder, 'images', patient, stem + '.png')
        )
        for k in range(4):
          m = (rng.uniform(size=(180, 180)) > 0.8).astype(np.uint8) * 255
          Image.fromarray(m).save(
            os.path.join(root, folder, 'gt', patient, f'{stem}_l{k}.png')
          )
  if tar_val:
    with tarfile.open(os.path.join(root, 'val.tar.gz'), 'w:gz') as tar:
      tar.add(os.path.join(root, 'val'), arcname='val')
    shutil.rmtree(os.path.join(root, 'val'))


def test_deepmind_crops(tmp_path):
  manual = str(tmp_path / 'manual')
  _write_deepmind(manual, tar_val=True)
  out = str(tmp_path / 'out')
  report = build.build('lidc/deepmind_crops', out, manual, **QUIET)
  assert report['num_examples'] == {'train': 4, 'validation': 2, 'test': 2}
  for split, folder in lidc.DEEPMIND_SPLIT_DIRS.items():
    recs = _records(out, 'lidc/deepmind_crops', split)
    assert {r['patient_id'].decode() for r in recs} == set(DEEPMIND[folder])
    for r in recs:
      patient, stem = r['id'].decode().split('/')
      src = os.path.join(manual, folder, 'images', patient, stem + '.png')
      if folder == 'val':
        src = glob.glob(
          os.path.join(
            out,
            'downloads',
            'extracted',
            '*',
            'val',
            'images',
            patient,
            stem + '.png',
          )
        )[0]
      img = np.asarray(Image.open(src), np.float64) / 255.0
      np.testing.assert_allclose(r['image_180'][..., 0], img, rtol=1e-6)
      np.testing.assert_allclose(
        r['image'][..., 0], img[26:154, 26:154], rtol=1e-6
      )
      gt0 = (
        np.asarray(Image.open(src.replace('/images/', '/gt/')[:-4] + '_l0.png'))
        > 127
      )
      np.testing.assert_array_equal(r['masks'][0], gt0[26:154, 26:154])
      assert r['masks'].shape == (4, 128, 128) and r['masks_180'].shape == (
        4,
        180,
        180,
      )


def test_deepmind_leak_and_corrupt_png(tmp_path):
  leak = dict(DEEPMIND, test=['LIDC-IDRI-0003'])
  _write_deepmind(str(tmp_path / 'leak'), layout=leak)
  with pytest.raises(
    errors.SplitLeakError,
    match=r"Split leak: ids \['LIDC-IDRI-0003'\] occur in both test and train "
    r"\('LIDC-IDRI-0003' from .*leak/test/images/LIDC-IDRI-0003 and from "
    r'.*leak/train/images/LIDC-IDRI-0003\)',
  ):
    build.build(
      'lidc/deepmind_crops',
      str(tmp_path / 'o1'),
      str(tmp_path / 'leak'),
      **QUIET,
    )
  manual = str(tmp_path / 'manual')
  _write_deepmind(manual)
  bad = os.path.join(
    manual, 'test', 'images', 'LIDC-IDRI-0006', 'z-105.0_c0.png'
  )
  with open(bad, 'wb') as f:
    f.write(b'\x89PNG broken')
  with pytest.raises(errors.CorruptFileError, match='z-105.0_c0.png'):
    build.build(
      'lidc/deepmind_crops_crop64', str(tmp_path / 'o2'), manual, **QUIET
    )
  report = build.build(
    'lidc/deepmind_crops_crop64',
    str(tmp_path / 'o3'),
    manual,
    skip_corrupt=True,
    **QUIET,
  )
  assert report['skipped_corrupt'] == [bad]
  assert report['num_examples'] == {'train': 4, 'validation': 2, 'test': 1}
  rec = _records(str(tmp_path / 'o3'), 'lidc/deepmind_crops_crop64', 'test')[0]
  assert rec['image'].shape == (64, 64, 1) and 'image_180' not in rec
