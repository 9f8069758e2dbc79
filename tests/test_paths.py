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


"""Workdir, data_dir, --output and manual_dir as local paths, file:// URLs and cloud URLs."""

import importlib.util
import json
import os
import struct
import subprocess
import sys

from etils import epath
from etils.epath import backend as epath_backend
from fsspec.implementations.memory import MemoryFileSystem
import numpy as np
from PIL import Image
import pytest

from diffseg_jax import checkpoint
from diffseg_jax import evaluation
from diffseg_jax import metric_writers
from diffseg_jax import parallel
from diffseg_jax import predict
from diffseg_jax import runtime
from diffseg_jax import settings
from diffseg_jax import train
from diffseg_jax import visualize
from diffseg_jax import workdir_lock
from tests import test_tcia
from tests import test_tfds_lidc
from tests.conftest import config_flags
from tests.conftest import REPO
from tests.conftest import tiny_config
from tfds_lidc import build
from tfds_lidc import errors as tfds_errors
from tfds_lidc import paths
from tfds_lidc import tcia

_HAVE_GCS = any(
  importlib.util.find_spec(m) is not None for m in ('gcsfs', 'tensorflow')
)
needs_no_gcsfs = pytest.mark.skipif(
  _HAVE_GCS, reason='gcsfs or tensorflow is installed: gs:// is readable here'
)


def test_resolve_local_and_file_urls(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  monkeypatch.setenv('HOME', str(tmp_path / 'home'))
  assert str(paths.resolve('run')) == str(tmp_path / 'run')
  assert str(paths.resolve('~/run')) == str(tmp_path / 'home' / 'run')
  assert str(paths.resolve('file:///data/a%20b')) == '/data/a b'
  assert str(paths.resolve('file://localhost/data/x')) == '/data/x'
  assert paths.is_local('file:///x') and paths.is_local('/x')
  assert not paths.is_local('gs://bucket/x')
  assert paths.scheme('GS://b') == 'gs' and paths.scheme('/a://b') is None


def test_resolve_rejects_bad_urls():
  with pytest.raises(tfds_errors.PathBackendError, match='file:///absolute'):
    paths.resolve('file://server/x', what='--workdir')
  with pytest.raises(
    tfds_errors.PathBackendError, match=r'^--output http://h/x: http:// paths'
  ):
    paths.resolve('http://h/x', what='--output')


def test_cloud_url_without_its_package_names_path_and_pip(monkeypatch):
  monkeypatch.setattr(paths, '_importable', lambda module: False)
  with pytest.raises(tfds_errors.PathBackendError) as e:
    paths.resolve('gs://bucket/run', what='--workdir')
  message = str(e.value)
  assert '\n' not in message
  assert message.startswith('--workdir gs://bucket/run:')
  assert 'pip install gcsfs' in message
  with pytest.raises(tfds_errors.PathBackendError, match='pip install s3fs'):
    paths.resolve('s3://bucket/data')
  monkeypatch.setattr(paths, '_importable', lambda module: module == 'gcsfs')
  resolved = paths.resolve('gs://bucket/run')
  assert isinstance(resolved, epath.Path)
  assert str(resolved / 'checkpoints') == 'gs://bucket/run/checkpoints'


def test_output_folders_of_file_and_cloud_urls(tiny_synthetic, monkeypatch):
  config = tiny_config(tiny_synthetic, evaluate_after_training=True)
  folders = runtime.output_folders(
    config, mode='train', workdir='file:///tmp/x/run', output=None
  )
  assert folders == [
    ('/tmp/x/run', '--workdir'),
    ('/tmp/x/run/eval/test', '--workdir'),
  ]
  monkeypatch.setattr(paths, '_importable', lambda module: True)
  folders = runtime.output_folders(
    config, mode='predict', workdir='gs://b/run', output=None
  )
  assert folders == [('gs://b/run/predict', '--output')]
  assert runtime.output_folders(
    config, mode='predict', workdir='gs://b/run', output='file:///tmp/p'
  ) == [('/tmp/p', '--output')]


def test_cloud_folder_is_not_locked_but_warned(monkeypatch):
  monkeypatch.setattr(paths, '_importable', lambda module: True)
  warnings = []
  monkeypatch.setattr(
    workdir_lock.logging, 'warning', lambda *a: warnings.append(a[0] % a[1:])
  )
  with workdir_lock.hold('gs://bucket/run') as lock:
    assert lock is None
  assert len(warnings) == 1 and 'No lock on gs://bucket/run' in warnings[0]


def test_file_url_folder_is_locked(tmp_path):
  with workdir_lock.hold(f'file://{tmp_path}/run') as lock:
    assert lock == str(tmp_path / 'run' / workdir_lock.LOCK_NAME)
    assert os.path.exists(lock)
  workdir_lock.check_writable(f'file://{tmp_path}/probe')
  assert os.listdir(tmp_path / 'probe') == []


def _read_events(path):
  """Event protos of a TensorBoard event file (TFRecord framing)."""
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top

  data, events, offset = epath.Path(path).read_bytes(), [], 0
  while offset < len(data):
    (length,) = struct.unpack('<Q', data[offset : offset + 8])
    offset += 12
    event = event_pb2.Event()
    event.ParseFromString(data[offset : offset + length])
    events.append(event)
    offset += length + 4
  return events


def test_train_evaluate_predict_on_file_urls(tiny_synthetic, tmp_path):
  """Every file of a run goes to the file:// workdir, data read from a file:// data_dir."""
  workdir = f'file://{tmp_path}/run'
  local = tmp_path / 'run'
  config = tiny_config(tiny_synthetic, num_train_steps=2)
  config.dataset.data_dir = f'file://{tiny_synthetic.data_dir}'
  config.eval.num_samples_list = (4,)
  config.eval.num_examples = 2
  train.train_and_evaluate(config, workdir)
  results = evaluation.evaluate_checkpoint(config, workdir)

  assert not (tmp_path / 'file:').exists()
  assert json.loads((local / 'config.json').read_text())['num_train_steps'] == 2
  # The checkpoint restores through a plain local path.
  _, _, step = checkpoint.load_params(
    str(local),
    settings.resolve(config).unet,
    parallel.make_mesh(config.mesh.data),
  )
  assert step == 2
  lines = (local / 'metrics.jsonl').read_text().splitlines()
  assert any('train/loss' in json.loads(line) for line in lines)
  event_files = sorted(local.glob('events.out.tfevents.*'))
  assert event_files
  tags = {v.tag for e in _read_events(event_files[0]) for v in e.summary.value}
  assert 'train/loss' in tags
  metrics = json.loads((local / 'eval' / 'test' / 'metrics.json').read_text())
  assert metrics['num_images'] == 2 and 'ged_4' in results
  assert (local / 'eval' / 'test' / 'per_image.jsonl').read_text().count(
    '\n'
  ) == 2
  with Image.open(local / 'eval' / 'test' / 'grid.png') as im:
    assert im.size[0] > 0

  inputs = tmp_path / 'inputs'
  inputs.mkdir()
  np.save(inputs / 'a.npy', np.full((32, 32), 0.5, np.float32))
  stems = predict.predict(
    config,
    workdir,
    f'file://{inputs}',
    output_dir=f'file://{tmp_path}/pred',
  )
  assert stems == [str(tmp_path / 'pred' / 'a')]
  for suffix in ('mean.png', 'variance.png', 'grid.png', 'samples.npy'):
    assert (tmp_path / 'pred' / f'a_{suffix}').stat().st_size > 0


def _run(module, *args):
  return subprocess.run(
    [sys.executable, '-m', module, *args],
    cwd=REPO,
    env=dict(os.environ, PYTHONPATH=REPO),
    capture_output=True,
    text=True,
    timeout=300,
  )


@needs_no_gcsfs
def test_cli_gs_paths_without_gcsfs_fail_in_one_line(tiny_synthetic, tmp_path):
  result = _run(
    'diffseg_jax.main',
    '--workdir=gs://bucket/run',
    *config_flags(tiny_synthetic),
  )
  assert result.returncode == 2, result.stderr[-2000:]
  errors = [
    line for line in result.stderr.splitlines() if line.startswith('ERROR:')
  ]
  assert errors == [
    'ERROR: --workdir gs://bucket/run: reading and writing gs:// paths needs the '
    'gcsfs package, which is not installed: pip install gcsfs (or pip install '
    "'etils[epath-gcs]')."
  ]
  result = _run(
    'diffseg_jax.main',
    f'--workdir={tmp_path}/run',
    *config_flags(tiny_synthetic, **{'dataset.data_dir': 'gs://bucket/tfds'}),
  )
  assert result.returncode == 2
  assert (
    'ERROR: config.dataset.data_dir gs://bucket/tfds: reading and writing gs://'
    in result.stderr
  )
  assert not (tmp_path / 'run').exists()
  result = _run(
    'tfds_lidc.build',
    '--dataset=lidc/knegt_pickle',
    f'--data_dir={tmp_path}/tfds',
    '--manual_dir=gs://bucket/lidc',
  )
  assert result.returncode == 1
  assert (
    result.stderr.strip()
    .splitlines()[-1]
    .startswith(
      'ERROR: --manual_dir gs://bucket/lidc: reading and writing gs:// paths'
    )
  )


# A stand-in for Google Cloud Storage: fsspec's in-memory file system under the gs:// scheme, with
# what matters here of an object store (no appending, no local file behind a path). It checks the
# project's own reads and writes; Orbax (TensorStore) and array_record read gs:// with their own
# clients, which this stand-in cannot replace.


class _FakeGcs(MemoryFileSystem):
  protocol = ('gs', 'gcs')
  store = {}
  pseudo_dirs = ['']

  def __init__(self, *args, finalize_on_close=False, **kwargs):
    del finalize_on_close
    super().__init__(*args, **kwargs)

  @classmethod
  def _strip_protocol(cls, path):
    path = str(path).removeprefix('gs://').removeprefix('gcs://')
    path = path.strip('/')
    return '/' + path if path else ''

  def _open(self, path, mode='rb', **kwargs):
    if 'a' in mode:
      raise ValueError(f'{path}: objects cannot be appended to')
    return super()._open(path, mode, **kwargs)


@pytest.fixture
def fake_gcs(monkeypatch, tmp_path):
  """gs:// served from memory (cwd moved to an empty folder, to catch local writes)."""
  if importlib.util.find_spec('tensorflow') is not None:
    pytest.skip(
      'etils.epath reads gs:// through TensorFlow when it is installed'
    )
  monkeypatch.setattr(paths, '_importable', lambda module: True)
  registry = sys.modules['fsspec.registry']._registry  # pylint: disable=protected-access
  for name in ('gs', 'gcs'):
    monkeypatch.setitem(registry, name, _FakeGcs)
  epath_backend.fsspec_backend._get_filesystem.cache_clear()
  _FakeGcs.store.clear()
  _FakeGcs.pseudo_dirs[:] = ['']
  _FakeGcs.clear_instance_cache()
  monkeypatch.chdir(tmp_path)
  yield epath.Path('gs://bucket')
  epath_backend.fsspec_backend._get_filesystem.cache_clear()
  _FakeGcs.clear_instance_cache()
  assert os.listdir(tmp_path) == [], 'something was written locally'


def test_metric_writers_on_an_object_store(fake_gcs):
  for step in (1, 2):  # The second writer is a resumed run.
    writer = metric_writers.create_writer(str(fake_gcs / 'run'))
    writer.write_scalars(step, {'train/loss': 0.5 * step})
    writer.flush()
    writer.write_scalars(step + 10, {'train/loss': 1.0})
    writer.close()
  lines = (fake_gcs / 'run' / 'metrics.jsonl').read_text().splitlines()
  assert [json.loads(line)['step'] for line in lines] == [1, 11, 2, 12]
  # Event files are named by the second they were opened in: both runs may write the same one.
  steps = [
    e.step
    for f in (fake_gcs / 'run').glob('events.out.tfevents.*')
    for e in _read_events(f)
    for v in e.summary.value
    if v.tag == 'train/loss'
  ]
  assert {2, 12} <= set(steps) and len(steps) in (2, 4)


def test_results_pictures_and_predictions_on_an_object_store(fake_gcs):
  workdir_lock.check_writable(str(fake_gcs / 'run'))
  out = fake_gcs / 'run' / 'eval' / 'test'
  evaluation._write_results(  # pylint: disable=protected-access
    str(out),
    split_name='test',
    num_samples=[4],
    summary={'ged_4': {'mean': 0.5, 'sem': 0.1, 'n': 2}},
    per_image=[{'id': 'a'}, {'id': 'b'}],
    markdown='| x |\n',
    provenance={'checkpoint_step': 12, 'train_seconds': 3.5},
  )
  written = json.loads((out / 'metrics.json').read_text())
  assert written['num_images'] == 2
  assert (written['checkpoint_step'], written['train_seconds']) == (12, 3.5)
  assert (out / 'per_image.jsonl').read_text().count('\n') == 2
  rng = np.random.default_rng(0)
  picture = visualize.save_grid(
    str(out / 'grid.png'),
    image=rng.uniform(size=(1, 8, 8)),
    annotations=np.zeros((1, 1, 8, 8), bool),
    samples=rng.uniform(size=(1, 2, 8, 8)) > 0.5,
  )
  with (out / 'grid.png').open('rb') as f, Image.open(f) as im:
    np.testing.assert_array_equal(np.asarray(im), picture)

  inputs = fake_gcs / 'inputs'
  inputs.mkdir(parents=True)
  with (inputs / 'a.npy').open('wb') as f:
    np.save(f, np.full((8, 8), 0.25, np.float32))
  (inputs / 'notes.txt').write_text('not an input')
  files = predict.list_inputs(str(inputs))
  assert files == ['gs://bucket/inputs/a.npy']
  np.testing.assert_array_equal(predict.read_window(files[0], size=8), 0.25)


def test_lidc_manual_dir_on_an_object_store(fake_gcs, tmp_path_factory):
  local = tmp_path_factory.mktemp('knegt_manual')
  test_tfds_lidc._write_knegt(str(local))  # pylint: disable=protected-access
  for f in local.iterdir():
    (fake_gcs / 'lidc' / f.name).write_bytes(f.read_bytes())
  out = str(tmp_path_factory.mktemp('tfds'))
  report = build.build(
    'lidc/knegt_pickle', out, 'gs://bucket/lidc', log=lambda *a: None
  )
  assert report['patients'] == {'train': 3, 'validation': 2, 'test': 2}


def test_tcia_series_on_an_object_store(fake_gcs):
  if not os.path.isdir(test_tcia.SAMPLE):
    pytest.skip(f'{test_tcia.SAMPLE} is not present')
  for directory, _, files in os.walk(test_tcia.SAMPLE):
    for f in files:
      relative = os.path.relpath(os.path.join(directory, f), test_tcia.SAMPLE)
      remote = fake_gcs / 'tcia' / relative
      remote.parent.mkdir(parents=True, exist_ok=True)
      remote.write_bytes(epath.Path(directory, f).read_bytes())
  series = tcia.find_series('gs://bucket/tcia')
  assert len(series) == 2
  assert all(s.xml_path.startswith('gs://bucket/tcia/') for s in series)
  local = {s.series_uid: s for s in tcia.find_series(test_tcia.SAMPLE)}
  remote = series[0]
  assert remote.patient_id == local[remote.series_uid].patient_id
  cache, _, reused = tcia.parse_series_cached(
    remote, cache_dir='gs://bucket/cache'
  )
  assert cache.startswith('gs://bucket/cache/') and not reused
  got = tcia.load_cached_examples(cache)
  want = list(tcia.lesion_slices(local[remote.series_uid]))
  assert [k for k, _ in got] == [k for k, _ in want] and got
  np.testing.assert_array_equal(got[0][1]['masks'], want[0][1]['masks'])
  assert tcia.parse_series_cached(remote, cache_dir='gs://bucket/cache')[2]
