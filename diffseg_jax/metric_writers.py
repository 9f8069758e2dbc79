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

"""Metric writers (TensorBoard events, JSON lines, the log) and progress lines.

The writers have the method set of clu's `MetricWriter` (`write_scalars`,
`write_images`, `write_texts`, `write_histograms`, `write_hparams`, `flush`,
`close`), written here so that nothing depends on whether TensorFlow is
installed: TensorBoard events are written by tensorboardX, never by TF.

`logdir` may be local, a file:// URL or a cloud URL (gs://, s3://): files go through
`etils.epath`. Cloud object stores cannot append, so there the event file and metrics.jsonl are
kept in memory and each `flush` rewrites the whole object (a resumed run first reads the
metrics.jsonl already there).
"""

import abc
from collections.abc import Mapping, Sequence
import concurrent.futures
import io
import json
import time
from typing import Any

from absl import logging
import numpy as np

from tfds_lidc import paths


class MetricWriter(abc.ABC):
  """clu's MetricWriter interface; `step` is an int, values numpy-convertible.

  Subclasses implement `write_scalars` and whichever other kinds they store; the rest do nothing.
  """

  @abc.abstractmethod
  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    """Scalar values, e.g. {'train/loss': 0.1}."""

  def write_images(self, step: int, images: Mapping[str, Any]) -> None:
    """uint8 images [N, H, W, C] or [H, W, C]."""
    del step, images

  def write_texts(self, step: int, texts: Mapping[str, str]) -> None:
    del step, texts

  def write_histograms(
    self,
    step: int,
    arrays: Mapping[str, Any],
    num_buckets: Mapping[str, int] | None = None,
  ) -> None:
    del step, arrays, num_buckets

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    del hparams

  def flush(self) -> None:
    """Makes everything written so far durable; nothing to do for a writer that stores nothing."""
    return

  def close(self) -> None:
    """Flushes and releases the writer's files; nothing to do for a writer that holds none."""
    return


def _jsonable(value: Any) -> Any:
  if isinstance(value, Mapping):
    return {str(k): _jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  if hasattr(value, 'shape') and hasattr(value, 'dtype'):
    return np.asarray(value).tolist()
  return value


class _RewrittenFile:
  """A binary file on a store that cannot append: `flush` rewrites the whole object."""

  def __init__(self, path, initial: bytes = b''):
    self._path = paths.resolve(path)
    self._buffer = io.BytesIO()
    self._buffer.write(initial)
    self._written = None

  def write(self, data: bytes) -> None:
    self._buffer.write(data)

  def flush(self) -> None:
    data = self._buffer.getvalue()
    if data != self._written:
      self._path.write_bytes(data)
      self._written = data

  def close(self) -> None:
    self.flush()


class _RewrittenFileFactory:
  """tensorboardX's writer factory (for a URL scheme) writing event files through epath."""

  def open(self, path):
    return _RewrittenFile(path)

  def directory_check(self, path):
    paths.resolve(path).mkdir(parents=True, exist_ok=True)


class TensorBoardWriter(MetricWriter):
  """Scalars, images, texts, histograms and hparams as TensorBoard events."""

  def __init__(self, logdir: str):
    import tensorboardX  # pylint: disable=g-import-not-at-top
    from tensorboardX import record_writer  # pylint: disable=g-import-not-at-top

    logdir = paths.resolve(logdir)
    if not paths.is_local(logdir):
      # In place of tensorboardX's own gs:// and s3:// writers (google-cloud-storage, boto3).
      record_writer.register_writer_factory(
        paths.scheme(logdir), _RewrittenFileFactory()
      )
    self._writer = tensorboardX.SummaryWriter(logdir=str(logdir))

  def write_scalars(self, step, scalars):
    for key, value in scalars.items():
      self._writer.add_scalar(key, float(np.asarray(value)), int(step))

  def write_images(self, step, images):
    for key, value in images.items():
      value = np.asarray(value)
      if value.ndim == 3:
        value = value[None]
      self._writer.add_images(key, value, int(step), dataformats='NHWC')

  def write_texts(self, step, texts):
    for key, value in texts.items():
      self._writer.add_text(key, str(value), int(step))

  def write_histograms(self, step, arrays, num_buckets=None):
    del num_buckets
    for key, value in arrays.items():
      self._writer.add_histogram(key, np.asarray(value), int(step))

  def write_hparams(self, hparams):
    text = json.dumps(_jsonable(hparams), indent=2, sort_keys=True)
    self._writer.add_text('hparams', text, 0)

  def flush(self):
    self._writer.flush()

  def close(self):
    self._writer.close()


class JsonLinesWriter(MetricWriter):
  """One JSON object per `write_scalars` call: {"step", "time", key: value}."""

  def __init__(self, path: str):
    path = paths.resolve(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if paths.is_local(path):
      self._file = path.open('ab')
    else:
      self._file = _RewrittenFile(
        path, path.read_bytes() if path.exists() else b''
      )

  def _write_line(self, record) -> None:
    self._file.write((json.dumps(record) + '\n').encode('utf-8'))

  def write_scalars(self, step, scalars):
    record = {'step': int(step), 'time': time.time()}
    record.update({k: float(np.asarray(v)) for k, v in scalars.items()})
    self._write_line(record)

  def write_hparams(self, hparams):
    self._write_line({'hparams': _jsonable(hparams)})

  def flush(self):
    self._file.flush()

  def close(self):
    self._file.close()


class LoggingWriter(MetricWriter):
  """Scalars and hparams as absl log lines."""

  def write_scalars(self, step, scalars):
    values = ', '.join(
      f'{k}={float(np.asarray(v)):.6g}' for k, v in sorted(scalars.items())
    )
    logging.info('[%d] %s', int(step), values)

  def write_hparams(self, hparams):
    logging.info('Hyper-parameters: %s', json.dumps(_jsonable(hparams)))


class AsyncMultiWriter(MetricWriter):
  """Writes to several writers on one background thread, in call order.

  Arrays are copied to host numpy before queueing, so the caller may reuse its
  buffers; `flush` waits for every queued write, and an error raised by a
  writer surfaces at the next `flush` or `close`.
  """

  def __init__(self, writers: Sequence[MetricWriter]):
    self._writers = tuple(writers)
    self._pool = concurrent.futures.ThreadPoolExecutor(
      max_workers=1, thread_name_prefix='metric_writers'
    )
    self._pending: list[concurrent.futures.Future] = []

  def _submit(self, method: str, *args, **kwargs):
    def run():
      for writer in self._writers:
        getattr(writer, method)(*args, **kwargs)

    self._pending.append(self._pool.submit(run))
    self._pending = [f for f in self._pending if not f.done() or f.exception()]

  def write_scalars(self, step, scalars):
    self._submit(
      'write_scalars', int(step), {k: np.asarray(v) for k, v in scalars.items()}
    )

  def write_images(self, step, images):
    self._submit(
      'write_images', int(step), {k: np.asarray(v) for k, v in images.items()}
    )

  def write_texts(self, step, texts):
    self._submit('write_texts', int(step), dict(texts))

  def write_histograms(self, step, arrays, num_buckets=None):
    self._submit(
      'write_histograms',
      int(step),
      {k: np.asarray(v) for k, v in arrays.items()},
      num_buckets,
    )

  def write_hparams(self, hparams):
    self._submit('write_hparams', dict(hparams))

  def flush(self):
    self._submit('flush')
    pending, self._pending = self._pending, []
    for future in pending:
      future.result()

  def close(self):
    try:
      self.flush()
      self._submit('close')
      pending, self._pending = self._pending, []
      for future in pending:
        future.result()
    finally:
      self._pool.shutdown(wait=True)


def create_writer(logdir: str, *, just_logging: bool = False) -> MetricWriter:
  """The log, plus (unless `just_logging`) TensorBoard events and metrics.jsonl.

  Non-zero processes of a multi-process run pass just_logging=True. Writes run
  on a background thread so the training loop never waits on I/O.
  """
  writers = [LoggingWriter()]
  if not just_logging:
    writers += [
      TensorBoardWriter(logdir),
      JsonLinesWriter(paths.resolve(logdir) / 'metrics.jsonl'),
    ]
  return AsyncMultiWriter(writers)


class ReportProgress:
  """Logs `done / total <unit>, rate and ETA` every `every` units of work.

  `report(done)` is called after each piece of work (a train step, an
  evaluated batch). With a `writer`, the rate also goes to
  `<unit>_per_sec` scalars at step `done`.
  """

  def __init__(
    self,
    *,
    total: int,
    every: int,
    unit: str = 'steps',
    what: str = '',
    writer: MetricWriter | None = None,
    clock=time.monotonic,
  ):
    self._total = int(total)
    self._every = max(int(every), 1)
    self._unit = unit
    self._what = what
    self._writer = writer
    self._clock = clock
    self._last_time = None
    self._last_done = None
    self._next = None

  def __call__(self, done: int) -> str | None:
    """Returns the line it logged, or None."""
    now = self._clock()
    if self._last_time is None:
      # The first call times only from here: it usually includes compilation.
      self._last_time, self._last_done = now, done
      self._next = (done // self._every + 1) * self._every
      return None
    if done < self._next and done < self._total:
      return None
    self._next = (done // self._every + 1) * self._every
    elapsed = max(now - self._last_time, 1e-9)
    rate = (done - self._last_done) / elapsed
    self._last_time, self._last_done = now, done
    remaining = max(self._total - done, 0)
    eta = remaining / rate if rate > 0 else float('inf')
    line = (
      f'{self._what}{" " if self._what else ""}{done}/{self._total} '
      f'{self._unit} ({100.0 * done / max(self._total, 1):.0f}%), '
      f'{rate:.3g} {self._unit}/s, ETA {_duration(eta)}'
    )
    logging.info('%s', line)
    if self._writer is not None:
      self._writer.write_scalars(done, {f'{self._unit}_per_sec': rate})
    return line


def _duration(seconds: float) -> str:
  if not np.isfinite(seconds):
    return '?'
  seconds = int(round(seconds))
  hours, rest = divmod(seconds, 3600)
  minutes, seconds = divmod(rest, 60)
  if hours:
    return f'{hours}h{minutes:02d}m'
  if minutes:
    return f'{minutes}m{seconds:02d}s'
  return f'{seconds}s'
