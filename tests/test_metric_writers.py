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

"""Metric writers: the TensorBoard events read back without TensorFlow, JSON lines, progress lines."""

import io
import json
import os
import struct
import sys

import numpy as np
from PIL import Image
from tensorboardX.proto import event_pb2

from diffseg_jax import metric_writers


def _read_events(logdir):
  """Every Event in the event files of `logdir` (TFRecord framing: length, crc, data, crc)."""
  events = []
  for name in sorted(os.listdir(logdir)):
    if not name.startswith('events.out.tfevents'):
      continue
    with open(os.path.join(logdir, name), 'rb') as f:
      data = f.read()
    offset = 0
    while offset < len(data):
      (length,) = struct.unpack('<Q', data[offset : offset + 8])
      offset += 12
      event = event_pb2.Event()
      event.ParseFromString(data[offset : offset + length])
      events.append(event)
      offset += length + 4
  return events


def _values(events):
  return [(e.step, v) for e in events for v in e.summary.value]


def test_tensorboard_events_read_back(tmp_path):
  writer = metric_writers.create_writer(str(tmp_path))
  writer.write_scalars(3, {'train/loss': np.float32(0.25), 'train/lr': 1e-4})
  picture = np.zeros((5, 7, 3), np.uint8)
  picture[1, 2] = (255, 0, 0)
  writer.write_images(3, {'val/grid': picture[None]})
  writer.write_texts(4, {'note': 'hello'})
  writer.write_hparams({'model': {'base_channels': 16}})
  writer.close()

  values = _values(_read_events(str(tmp_path)))
  scalars = {
    (step, v.tag): v.simple_value
    for step, v in values
    if v.HasField('simple_value')
  }
  assert scalars[(3, 'train/loss')] == 0.25
  assert np.isclose(scalars[(3, 'train/lr')], 1e-4)
  images = [(step, v) for step, v in values if v.HasField('image')]
  assert [(step, v.tag) for step, v in images] == [(3, 'val/grid')]
  decoded = np.asarray(
    Image.open(io.BytesIO(images[0][1].image.encoded_image_string)).convert(
      'RGB'
    )
  )
  np.testing.assert_array_equal(decoded, picture)
  texts = {
    v.tag: v.tensor.string_val[0].decode()
    for _, v in values
    if v.tag.endswith('text_summary')
  }
  assert texts['note/text_summary'] == 'hello'
  assert json.loads(texts['hparams/text_summary']) == {
    'model': {'base_channels': 16}
  }

  records = [json.loads(line) for line in open(tmp_path / 'metrics.jsonl')]
  assert records[0]['step'] == 3 and records[0]['train/loss'] == 0.25
  assert records[1] == {'hparams': {'model': {'base_channels': 16}}}


def test_writers_do_not_touch_tensorflow_or_sys_modules():
  assert 'tensorflow' not in sys.modules
  assert not any(name.startswith('clu') for name in sys.modules)


def test_just_logging_writes_no_files(tmp_path):
  writer = metric_writers.create_writer(str(tmp_path), just_logging=True)
  writer.write_scalars(1, {'x': 1.0})
  writer.close()
  assert os.listdir(tmp_path) == []


def test_writer_errors_surface_at_flush(tmp_path):
  class Broken(metric_writers.MetricWriter):
    def write_scalars(self, step, scalars):
      raise OSError('disk full')

  writer = metric_writers.AsyncMultiWriter([Broken()])
  writer.write_scalars(1, {'x': 1.0})
  try:
    writer.flush()
  except OSError as e:
    assert 'disk full' in str(e)
  else:
    raise AssertionError("the writer's error was lost")


def test_report_progress_lines_rate_and_eta():
  now = [0.0]
  written = []

  class Recorder(metric_writers.MetricWriter):
    def write_scalars(self, step, scalars):
      written.append((step, dict(scalars)))

  report = metric_writers.ReportProgress(
    total=100,
    every=10,
    unit='images',
    what='evaluate test:',
    writer=Recorder(),
    clock=lambda: now[0],
  )
  assert report(10) is None  # First call: starts the clock (compilation).
  now[0] = 2.0
  assert report(15) is None
  line = report(20)
  assert line == 'evaluate test: 20/100 images (20%), 5 images/s, ETA 16s'
  assert written == [(20, {'images_per_sec': 5.0})]
  now[0] = 4.0
  assert report(100).startswith(
    'evaluate test: 100/100 images (100%), 40 images/s, ETA 0s'
  )


def test_evaluation_reports_images_done_per_batch():
  from diffseg_jax import evaluation  # pylint: disable=g-import-not-at-top

  now = [0.0]
  lines = []
  progress = metric_writers.ReportProgress(
    total=10,
    every=4,
    unit='images',
    what='evaluate test:',
    clock=lambda: now[0],
  )
  batches = [
    {'image': np.zeros((4, 2, 2, 1)), 'valid': np.array([True] * 4)},
    {'image': np.zeros((4, 2, 2, 1)), 'valid': np.array([True] * 4)},
    {
      'image': np.zeros((4, 2, 2, 1)),
      'valid': np.array([True, True, False, False]),
    },
  ]
  for batch in evaluation._with_progress(
    iter(batches), lambda done: lines.append(progress(done)), 10
  ):
    now[0] += 2.0
    del batch
  # The first batch starts the clock; then 4 images per 2 s, and the padding is not counted.
  assert lines == [
    None,
    'evaluate test: 8/10 images (80%), 2 images/s, ETA 1s',
    'evaluate test: 10/10 images (100%), 1 images/s, ETA 0s',
  ]
