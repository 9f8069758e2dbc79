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

"""Errors whose message names the cause and the fix; `main` prints them without a traceback."""

import errno
import os
import re
from typing import Optional, Tuple


class ConfigError(ValueError):
  """A config value is invalid (the message names the key and the valid choices)."""


class NonFiniteLossError(FloatingPointError):
  """config.max_bad_steps consecutive updates were non-finite (skipped); checkpoints stay finite."""


# Exit status of a run stopped by SIGTERM after saving what it must (128 + SIGTERM, as a shell
# reports a job ended by SIGTERM): rerun the same command to resume.
EXIT_PREEMPTED = 143


class PreemptedError(BaseException):
  """A SIGTERM stopped the run after every process saved a checkpoint (or wrote nothing partial).

  A BaseException, like KeyboardInterrupt, so that no library's `except Exception` on the way out
  swallows it (JAX's compilation-cache writes log and continue). It is raised at the run's own
  check points, never from inside the signal handler.
  """


class DataError(ValueError):
  """An input file is unreadable or not what it should be (the message names the file)."""


class WorkdirInUseError(RuntimeError):
  """Another live run holds the lock of the folder this run would write."""


# errno -> (what happened, how to fix it); {flag} is the flag that chose the folder.
_IO_FAULTS = {
  errno.ENOSPC: (
    'no space left on device while writing',
    'free space or choose another {flag}',
  ),
  errno.EDQUOT: (
    'disk quota exceeded while writing',
    'free space or choose another {flag}',
  ),
  errno.EFBIG: (
    'file too large (file system or `ulimit -f` limit) while writing',
    'raise the limit or choose another {flag}',
  ),
  errno.EROFS: (
    'read-only file system while writing',
    'choose a writable {flag}',
  ),
  errno.EACCES: (
    'permission denied for',
    'fix its permissions or choose another {flag}',
  ),
  errno.EPERM: (
    'operation not permitted for',
    'fix its permissions or choose another {flag}',
  ),
  errno.ENOTDIR: (
    'a path component is a file, not a folder, in',
    'choose a folder for {flag}',
  ),
}


def find_io_fault(exc: BaseException) -> Optional[Tuple[int, Optional[str]]]:
  """(errno, file name or None) of a disk/permission fault behind `exc`, or None.

  Follows `__cause__`/`__context__` (Orbax and metric_writers re-raise errors of their writer threads) and
  also recognises the fault in the text of non-OSError exceptions (TensorStore reports write
  failures as ValueErrors quoting strerror).
  """
  chain, pending = [], [exc]
  while pending:
    e = pending.pop(0)
    if e is not None and all(e is not c for c in chain):
      chain.append(e)
      pending += [e.__cause__, e.__context__]
  for e in chain:
    if isinstance(e, OSError) and e.errno in _IO_FAULTS:
      return e.errno, e.filename
  for e in chain:
    text = str(e)
    # TensorStore: "... Failed to write N bytes to file 10: File too large [os_error_code='27']".
    match = re.search(r"os_error_code='?(\d+)", text)
    if match and int(match.group(1)) in _IO_FAULTS:
      return int(match.group(1)), None
    for code in _IO_FAULTS:
      if code not in (errno.EPERM, errno.ENOTDIR) and os.strerror(code) in text:
        return code, None
  return None


def io_fault_message(
  exc: BaseException, *, path: str, flag: str = '--workdir'
) -> Optional[str]:
  """One line naming the cause, the path and the fix of a disk fault behind `exc`, or None.

  Args:
    exc: the exception that ended the run.
    path: the folder being written, named when the error does not carry a file name (a failed
      `write` on an open file, a writer thread).
    flag: the command-line flag that picks that folder, for the fix.
  """
  fault = find_io_fault(exc)
  if fault is None:
    return None
  code, filename = fault
  what, fix = _IO_FAULTS[code]
  fix = fix.format(flag=flag)
  if filename is not None:
    filename = os.fsdecode(filename)
    root = os.path.abspath(path)
    # Not in the output folder.
    if os.path.commonpath([root, os.path.abspath(filename)]) != root:
      fix = (
        'free space on that disk'
        if code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
        else 'check that path and its permissions'
      )
  return f'{what} {filename or path}: {fix}.'
