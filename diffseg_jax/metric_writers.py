"""clu metric writers without TensorFlow: TensorBoard (tensorboardX) and JSON lines.

`clu.metric_writers/__init__.py` imports its TensorFlow summary writer eagerly. Before importing clu we
register `clu.metric_writers.summary_writer` as a module whose `SummaryWriter` is our tensorboardX
writer, so clu's interface, logging, multi and async writers and `periodic_actions` all work without TF.
"""

import importlib.util
import json
import os
import sys
import time
import types
from typing import Any, Mapping

import numpy as np


def _install_tf_free_summary_writer() -> None:
  name = "clu.metric_writers.summary_writer"
  if name in sys.modules or importlib.util.find_spec("tensorflow") is not None:
    return
  module = types.ModuleType(name)
  module.__doc__ = "tensorboardX stand-in installed by diffseg_jax.metric_writers (no TensorFlow)."

  def module_getattr(attr):
    # Called by clu's package __init__ after it has imported `interface`.
    if attr != "SummaryWriter":
      raise AttributeError(attr)
    cls = _make_tensorboard_writer_class(sys.modules["clu.metric_writers.interface"].MetricWriter)
    module.SummaryWriter = cls
    return cls

  module.__getattr__ = module_getattr
  sys.modules[name] = module


def _make_tensorboard_writer_class(base):
  """Returns a clu MetricWriter subclass writing TensorBoard events with tensorboardX."""

  class TensorBoardWriter(base):
    """Scalars, images, histograms, texts and hparams as TensorBoard events."""

    def __init__(self, logdir: str):
      import tensorboardX  # pylint: disable=g-import-not-at-top

      self._writer = tensorboardX.SummaryWriter(logdir=logdir)

    def write_summaries(self, step, values, metadata=None):
      for key, value in values.items():
        self._writer.add_scalar(key, float(np.asarray(value)), int(step))

    def write_scalars(self, step, scalars):
      for key, value in scalars.items():
        self._writer.add_scalar(key, float(np.asarray(value)), int(step))

    def write_images(self, step, images):
      for key, value in images.items():
        value = np.asarray(value)
        if value.ndim == 3:
          value = value[None]
        self._writer.add_images(key, value, int(step), dataformats="NHWC")

    def write_videos(self, step, videos):
      del step, videos  # Not produced by this project.

    def write_audios(self, step, audios, *, sample_rate):
      del step, audios, sample_rate  # Not produced by this project.

    def write_texts(self, step, texts):
      for key, value in texts.items():
        self._writer.add_text(key, str(value), int(step))

    def write_histograms(self, step, arrays, num_buckets=None):
      del num_buckets
      for key, value in arrays.items():
        self._writer.add_histogram(key, np.asarray(value), int(step))

    def write_hparams(self, hparams):
      self._writer.add_text("hparams", json.dumps(_jsonable(hparams), indent=2, sort_keys=True), 0)

    def flush(self):
      self._writer.flush()

    def close(self):
      self._writer.close()

  return TensorBoardWriter


_install_tf_free_summary_writer()

# pylint: disable=g-import-not-at-top,wrong-import-position
from clu import metric_writers
from clu import periodic_actions
from clu.metric_writers import interface
# pylint: enable=g-import-not-at-top,wrong-import-position

TensorBoardWriter = sys.modules["clu.metric_writers.summary_writer"].SummaryWriter
ReportProgress = periodic_actions.ReportProgress


def _jsonable(value: Any) -> Any:
  if isinstance(value, Mapping):
    return {str(k): _jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  if isinstance(value, (np.generic, np.ndarray)):
    return np.asarray(value).tolist()
  if hasattr(value, "shape") and hasattr(value, "dtype"):
    return np.asarray(value).tolist()
  return value


class JsonLinesWriter(interface.MetricWriter):
  """Appends one JSON object per `write_scalars` call: {"step": ..., "time": ..., key: value}."""

  def __init__(self, path: str):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    self._file = open(path, "a", encoding="utf-8")

  def write_summaries(self, step, values, metadata=None):
    self.write_scalars(step, values)

  def write_scalars(self, step, scalars):
    record = {"step": int(step), "time": time.time()}
    record.update({k: float(np.asarray(v)) for k, v in scalars.items()})
    self._file.write(json.dumps(record) + "\n")

  def write_images(self, step, images):
    del step, images

  def write_videos(self, step, videos):
    del step, videos

  def write_audios(self, step, audios, *, sample_rate):
    del step, audios, sample_rate

  def write_texts(self, step, texts):
    del step, texts

  def write_histograms(self, step, arrays, num_buckets=None):
    del step, arrays, num_buckets

  def write_hparams(self, hparams):
    self._file.write(json.dumps({"hparams": _jsonable(hparams)}) + "\n")

  def flush(self):
    self._file.flush()

  def close(self):
    self._file.close()


def create_writer(logdir: str, *, just_logging: bool = False) -> interface.MetricWriter:
  """Console logging plus, unless `just_logging` (non-zero processes), TensorBoard and metrics.jsonl.

  Writes happen on a background thread (clu's AsyncMultiWriter) so the training loop never waits on I/O.
  """
  if just_logging:
    return metric_writers.AsyncMultiWriter([metric_writers.LoggingWriter()])
  return metric_writers.AsyncMultiWriter([
      metric_writers.LoggingWriter(),
      TensorBoardWriter(logdir),
      JsonLinesWriter(os.path.join(logdir, "metrics.jsonl")),
  ])
