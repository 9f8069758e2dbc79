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

r"""Train, evaluate or predict with a diffusion segmentation model.

  python -m diffseg_jax.main --config=configs/quickstart.py --workdir=/tmp/quickstart
  python -m diffseg_jax.main --config=configs/x_pred.py --workdir=DIR --mode=evaluate
  python -m diffseg_jax.main --config=configs/x_pred.py --workdir=DIR --mode=predict --input=scan.dcm \
      --center=ROW,COL

Several processes (TPU pod, SLURM, local): pass --coordinator_address/--num_processes/--process_id,
or set JAX's environment variables (see launch/); each process runs this same command.

Errors the user can fix (bad flags or config values, missing data, a folder in use by another run, a
full or read-only disk) end the run with one line `ERROR: ...` naming the cause and the fix, and exit
status 2; --verbose or DIFFSEG_TRACEBACK=1 adds the traceback. Each run holds a lock on the folder it
writes (train: the workdir; evaluate: WORKDIR/eval/NAME; predict: the output folder), see
`workdir_lock`, and checks that it can write there before any long work.

A SIGTERM (preemption notice) to any process of a training run makes every process save the same
step and stop; a SIGTERM during evaluation stops it (nothing already written is touched). Either
prints one line `PREEMPTED: ...` and exits with status 143 (errors.EXIT_PREEMPTED); the same command
resumes.
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
from ml_collections import config_flags

from diffseg_jax import errors
from diffseg_jax import workdir_lock

flags.DEFINE_string(
  'workdir', None, 'Directory for checkpoints, logs, pictures and results.'
)
flags.DEFINE_enum(
  'mode', 'train', ['train', 'evaluate', 'predict'], 'What to run.'
)
flags.DEFINE_string(
  'input',
  None,
  '--mode=predict: a PNG, NPY or DICOM file, or a folder of them.',
)
flags.DEFINE_string(
  'output', None, '--mode=predict: output folder (default WORKDIR/predict).'
)
flags.DEFINE_string(
  'center',
  None,
  '--mode=predict: ROW,COL (input pixels) of the window to segment '
  "in inputs larger than the model's training window.",
)
flags.DEFINE_string(
  'coordinator_address', None, 'host:port of process 0 (multi-process runs).'
)
flags.DEFINE_integer(
  'num_processes', None, 'Number of processes (multi-process runs).'
)
flags.DEFINE_integer(
  'process_id', None, "This process's index (multi-process runs)."
)
flags.DEFINE_string(
  'cpu_collectives', None, "'gloo' for multi-process CPU runs."
)
flags.DEFINE_bool(
  'verbose',
  False,
  'Print the traceback of errors too (or set DIFFSEG_TRACEBACK=1).',
)
config_flags.DEFINE_config_file(
  'config', None, 'ml_collections config file.', lock_config=True
)
flags.mark_flags_as_required(['config', 'workdir'])
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
  return bool(FLAGS.is_parsed() and FLAGS.verbose)


def fail(
  message: str, *, code: int = EXIT_USER_ERROR, hard: bool = False
) -> None:
  """Prints `ERROR: message` (and, verbose, the traceback being handled) and exits with `code`.

  `hard` ends the process with os._exit after flushing: background writers (Orbax's checkpoint
  threads, clu's metric writer) that keep failing on a full disk cannot print anything after the
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


@contextlib.contextmanager
def sigterm_stops(message: str):
  """Within the block a SIGTERM raises errors.PreemptedError(message) in the main thread.

  Replaces JAX's preemption notifier (multi-process runs) in this process: only training needs it.
  """

  def handler(signum, frame):
    del signum, frame
    raise errors.PreemptedError(message)

  previous = signal.signal(signal.SIGTERM, handler)
  try:
    yield
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
      ):
        evaluation.evaluate_checkpoint(config, workdir)
    if mode == 'predict':
      from diffseg_jax import predict

      predict.predict(
        config, workdir, input_path, output_dir=output, center=center
      )


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  from diffseg_jax import runtime  # pylint: disable=g-import-not-at-top

  config = FLAGS.config
  # The folder being written, for errors that carry no file name (a failed write on an open file).
  current = {
    'path': os.path.abspath(os.path.expanduser(FLAGS.workdir)),
    'flag': '--workdir',
  }
  try:
    runtime.check_config(config)
    runtime.initialize(
      coordinator_address=FLAGS.coordinator_address,
      num_processes=FLAGS.num_processes,
      process_id=FLAGS.process_id,
      cpu_collectives=FLAGS.cpu_collectives,
    )
    run(
      config,
      mode=FLAGS.mode,
      workdir=FLAGS.workdir,
      input_path=FLAGS.input,
      output=FLAGS.output,
      center=FLAGS.center,
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


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
