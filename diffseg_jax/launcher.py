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

"""How `main` runs a mode: flags, output folders, and errors in one line.

`parse_flags` parses the flags `main` defines, reporting a bad flag or config
override in one line; `launch` checks the config, starts JAX's runtime, write-checks
and locks the folders the mode writes (`workdir_lock`) and runs the mode; an error
the user can fix ends the process through `fail` with one line `ERROR: ...` and
exit status 2 (--verbose or DIFFSEG_TRACEBACK=1 adds the traceback).
"""

import contextlib
import os
import signal
import sys
import traceback
from typing import Optional

from absl import app
from absl import flags
from absl import logging

from diffseg_jax import errors
from diffseg_jax import workdir_lock
from tfds_lidc import errors as tfds_errors
from tfds_lidc import paths

FLAGS = flags.FLAGS

ENV_TRACEBACK = 'DIFFSEG_TRACEBACK'
EXIT_USER_ERROR = 2


def _verbose(argv=None) -> bool:
  if os.environ.get(ENV_TRACEBACK, '').strip().lower() in ('1', 'true', 'yes'):
    return True
  if argv is not None:  # Flags are not parsed yet.
    return any(
      a in ('--verbose', '--verbose=true', '--verbose=1') for a in argv[1:]
    )
  return bool(FLAGS.is_parsed() and 'verbose' in FLAGS and FLAGS.verbose)


def fail(
  message: str, *, code: int = EXIT_USER_ERROR, hard: bool = False
) -> None:
  """Prints `ERROR: message` (and, verbose, the traceback being handled) and exits with `code`.

  `hard` ends the process with os._exit after flushing: background writers (Orbax's checkpoint
  threads, the metric writer's thread) that keep failing on a full disk cannot print anything after the
  message, nor crash noisily during interpreter shutdown. Checkpoints committed before are on disk
  (Orbax commits by renaming a finished folder), so nothing committed is lost.
  """
  if _verbose():
    traceback.print_exc()
  logging.error('%s', message)
  print(f'ERROR: {message}', file=sys.stderr)
  if hard:
    logging.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # pylint: disable=protected-access
  sys.exit(code)


def stop_preempted(message: str) -> None:
  """Prints `PREEMPTED: message` and exits with errors.EXIT_PREEMPTED."""
  logging.warning('%s', message)
  print(f'PREEMPTED: {message}', file=sys.stderr)
  sys.exit(errors.EXIT_PREEMPTED)


class _Stop:
  """What `sigterm_stops` yields: `check()` raises once a SIGTERM has arrived."""

  def __init__(self, message: str):
    self.message = message
    self.signalled = False

  def check(self) -> None:
    if self.signalled:
      raise errors.PreemptedError(self.message)


@contextlib.contextmanager
def sigterm_stops(message: str):
  """Within the block a SIGTERM marks the yielded `_Stop`; its `check()` then raises PreemptedError.

  The handler only sets a flag: Python runs a signal handler wherever the main thread happens to
  be, and an exception raised there once broke a `threading.Condition` inside array_record's
  thread pool ("release unlocked lock", exit 1 instead of 143). The caller's `check()` points (after
  every evaluation batch) are where it stops.
  Replaces JAX's preemption notifier (multi-process runs) in this process: only training needs it.
  """
  stop = _Stop(message)

  def handler(signum, frame):
    del signum, frame
    stop.signalled = True

  previous = signal.signal(signal.SIGTERM, handler)
  try:
    yield stop
  finally:
    if previous is not None:  # None: a handler installed outside Python.
      signal.signal(signal.SIGTERM, previous)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with a bad flag or config override reported in one line."""
  renamed = renamed_key_errors(argv[1:])
  if renamed:
    for message in renamed:
      print(f'ERROR: {message}', file=sys.stderr)
    sys.exit(EXIT_USER_ERROR)
  try:
    args = FLAGS(argv)
    if FLAGS['config'].present:
      FLAGS.config.keys()  # ml_collections raises a config file's load error at first use.
    return args
  except Exception as e:  # pylint: disable=broad-except
    from diffseg_jax import runtime  # pylint: disable=g-import-not-at-top

    if _verbose(argv):
      traceback.print_exc()
    print(f'ERROR: {runtime.flag_error_message(e, argv)}', file=sys.stderr)
    sys.exit(EXIT_USER_ERROR)


def _all_agree(ok: bool) -> bool:
  """Process 0's `ok` on every process, so all stop when process 0 cannot lock or write."""
  import jax  # pylint: disable=g-import-not-at-top

  if jax.process_count() == 1:
    return ok
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  return bool(multihost_utils.broadcast_one_to_all(np.int32(ok)))


def run(
  config,
  *,
  mode: str,
  workdir: str,
  input_path: Optional[str],
  output: Optional[str],
  current: dict,
  center: Optional[str] = None,
) -> None:
  """Write-checks and locks the output folders, then runs `mode`.

  `current` gets the folder being written ('path') and its flag ('flag'), for error messages.
  """
  import jax  # pylint: disable=g-import-not-at-top

  from diffseg_jax import runtime  # pylint: disable=g-import-not-at-top

  if mode == 'predict' and not input_path:
    raise app.UsageError(
      '--mode=predict needs --input=PATH (a PNG, NPY or DICOM file or a folder).'
    )
  is_main = jax.process_index() == 0
  folders = runtime.output_folders(
    config, mode=mode, workdir=workdir, output=output
  )
  with contextlib.ExitStack() as stack:
    try:
      for folder, flag in folders:
        current.update(path=folder, flag=flag)
        if is_main:
          workdir_lock.check_writable(folder)
        stack.enter_context(workdir_lock.hold(folder, enabled=is_main))
    except Exception:
      _all_agree(False)
      raise
    if not _all_agree(True):
      raise errors.WorkdirInUseError(
        'Process 0 could not write or lock the output folder (see its error); this process stops.'
      )
    current.update(path=folders[0][0], flag=folders[0][1])
    # pylint: disable=g-import-not-at-top
    if mode == 'train':
      from diffseg_jax import train

      train.train_and_evaluate(config, workdir)
    if mode == 'evaluate' or (
      mode == 'train' and config.evaluate_after_training
    ):
      from diffseg_jax import evaluation

      eval_dir = runtime.output_folders(
        config, mode='evaluate', workdir=workdir, output=None
      )[0][0]
      with sigterm_stops(
        f'SIGTERM during evaluation: stopped before it finished; checkpoints and earlier '
        f'results are untouched; rerun the same command to evaluate into {eval_dir}.'
      ) as stop:
        evaluation.evaluate_checkpoint(config, workdir, check_stop=stop.check)
    if mode == 'predict':
      from diffseg_jax import predict

      predict.predict(
        config, workdir, input_path, output_dir=output, center=center
      )


def launch(
  config,
  *,
  mode: str,
  workdir: str,
  input_path: Optional[str] = None,
  output: Optional[str] = None,
  center: Optional[str] = None,
  coordinator_address: Optional[str] = None,
  num_processes: Optional[int] = None,
  process_id: Optional[int] = None,
  cpu_collectives: Optional[str] = None,
) -> None:
  """Checks `config`, starts JAX's runtime and `run`s `mode`; a user's error ends it in one line."""
  from diffseg_jax import runtime  # pylint: disable=g-import-not-at-top

  # The folder being written, for errors that carry no file name (a failed write on an open file).
  current = {'path': workdir, 'flag': '--workdir'}
  with contextlib.suppress(tfds_errors.PathBackendError):
    current['path'] = str(paths.resolve(workdir))
  try:
    runtime.check_config(config)
    runtime.initialize(
      coordinator_address=coordinator_address,
      num_processes=num_processes,
      process_id=process_id,
      cpu_collectives=cpu_collectives,
    )
    run(
      config,
      mode=mode,
      workdir=workdir,
      input_path=input_path,
      output=output,
      center=center,
      current=current,
    )
  except errors.PreemptedError as e:
    stop_preempted(str(e))
  except Exception as e:  # pylint: disable=broad-except
    message = runtime.user_error_message(e, **current)
    if message is None:
      raise
    fail(message, hard=errors.find_io_fault(e) is not None)


def renamed_key_errors(argv) -> list[str]:
  """One message per `--config.KEY=...` override of a key that was renamed or removed."""
  from configs import default  # pylint: disable=g-import-not-at-top

  out = []
  for arg in argv:
    key = arg.partition('=')[0].removeprefix('--config.')
    if arg.startswith('--config.') and key in default.RENAMED_KEYS:
      new = default.RENAMED_KEYS[key]
      out.append(
        f'--config.{key} was removed'
        + (f'; use --config.{new}.' if new else '.')
      )
  return out
