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

"""One run at a time per output folder, and a write check before any long work.

`hold(directory)` creates `directory/.diffseg.lock` atomically (O_CREAT | O_EXCL) holding the run's
host, pid, process start time and command, and removes it on exit. A second run on the folder stops
at once with `errors.WorkdirInUseError` naming the first run's host and pid.

A lock is stale, and taken over with a warning, when
  * it was written on this host and its pid is gone, or now belongs to a process started at another
    time than the one recorded (the pid was reused);
  * it was written on another host and its file has not been touched for `stale_after_s` (10
    minutes by default): the holder touches it every `heartbeat_s` (60 s) while it runs, so a
    lock older than that belongs to a run that was killed or whose machine died;
  * it is unreadable (a run killed while writing it).
Host names must therefore differ between machines (or containers with their own pid space) that
share the folder. Take-over renames the stale file away first, so of two runs that find the same
stale lock only one proceeds. A run whose lock was taken away from it (its heartbeat stalled for
longer than `stale_after_s`, e.g. a suspended laptop) logs an error but does not stop.

`check_writable(directory)` creates, writes, syncs and deletes a probe file, so a read-only or full
disk is reported before hours of training or sampling rather than after.

Cloud folders (gs://, s3://: see `tfds_lidc.paths`) have no atomic create-if-absent, no pids of
this host and no mtime to refresh through etils.epath, so there `hold` takes no lock: it logs a
warning and the user must make sure that one run at a time writes the folder. `check_writable`
still writes and deletes a probe object there (catching missing credentials or permissions early).
"""

import contextlib
import json
import os
import socket
import sys
import threading
import time
from typing import Iterator, Optional

from absl import logging

from diffseg_jax import errors
from tfds_lidc import paths

LOCK_NAME = '.diffseg.lock'
HEARTBEAT_S = 60.0
STALE_AFTER_S = 600.0
_PROBE_BYTES = 64 * 1024


def check_writable(directory: str) -> None:
  """Creates `directory` if needed and writes, syncs and deletes a probe file in it.

  Raises:
    OSError: the folder cannot be created or written (ENOSPC, EROFS, EACCES, ...); `main` turns it
      into one line naming the folder.
  """
  if not paths.is_local(directory):
    folder = paths.resolve(directory)
    folder.mkdir(parents=True, exist_ok=True)
    probe = (
      folder / f'.diffseg_write_probe.{socket.gethostname()}.{os.getpid()}'
    )
    probe.write_bytes(b'\0' * _PROBE_BYTES)
    probe.unlink()
    return
  directory = os.fspath(paths.resolve(directory))
  os.makedirs(directory, exist_ok=True)
  probe = os.path.join(
    directory, f'.diffseg_write_probe.{socket.gethostname()}.{os.getpid()}'
  )
  try:
    fd = os.open(probe, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
    try:
      data = memoryview(b'\0' * _PROBE_BYTES)
      # A nearly full disk accepts part of a write; the next one fails.
      while data:
        data = data[os.write(fd, data) :]
      os.fsync(fd)
    finally:
      os.close(fd)
  finally:
    with contextlib.suppress(FileNotFoundError):
      os.remove(probe)


def _process_start_time(pid: int) -> Optional[str]:
  """The kernel's start time of `pid` (clock ticks since boot), or None where /proc is missing."""
  try:
    with open(f'/proc/{pid}/stat', encoding='ascii') as f:
      # Field 22; the command name (field 2) may hold spaces, so split after its closing ')'.
      return f.read().rsplit(')', 1)[1].split()[19]
  except (OSError, IndexError):
    return None


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # Exists, owned by another user.
    return True
  return True


def _describe(info: dict, path: str) -> str:
  started = info.get('started')
  when = (
    time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(started))
    if started
    else '?'
  )
  return (
    f'host {info.get("host", "?")}, pid {info.get("pid", "?")}, started {when}, '
    f'command: {info.get("command", "?")}; lock file {path}'
  )


def stale_reason(
  info: Optional[dict],
  *,
  mtime: float,
  now: float,
  host: str,
  stale_after_s: float = STALE_AFTER_S,
) -> Optional[str]:
  """Why the lock described by `info` (None: unreadable) is stale, or None if its run may live.

  Args:
    info: the lock file's JSON, or None when it could not be parsed.
    mtime: the lock file's modification time (the holder's last heartbeat).
    now: the current time.
    host: this machine's host name.
    stale_after_s: age after which a lock written on another host counts as abandoned.
  """
  age = now - mtime
  if info is None:
    # A run killed between creating and writing the file; give a live writer a moment.
    return 'it is unreadable' if age > 5.0 else None
  if info.get('host') == host:
    pid = int(info.get('pid', -1))
    if pid <= 0 or not _pid_alive(pid):
      return f'its process {pid} on this host is gone'
    recorded = info.get('start_ticks')
    current = _process_start_time(pid)
    if recorded and current and recorded != current:
      return f'pid {pid} now belongs to another process'
    return None
  if age > stale_after_s:
    return f'host {info.get("host")} has not refreshed it for {age:.0f} s (> {stale_after_s:.0f} s)'
  return None


class _Heartbeat(threading.Thread):
  """Touches the lock file every `period` seconds so other hosts can tell the run is alive."""

  def __init__(self, path: str, token: str, period: float):
    super().__init__(name='diffseg-lock-heartbeat', daemon=True)
    self._path, self._token, self._period = path, token, period
    self._stop_event = threading.Event()

  def run(self):
    while not self._stop_event.wait(self._period):
      try:
        mine = (_read(self._path)[0] or {}).get('token') == self._token
      except OSError:
        mine = False
      if not mine:
        logging.error(
          'The lock %s was taken over by another run while this one runs; the two '
          'runs now write the same folder.',
          self._path,
        )
        return
      with contextlib.suppress(OSError):
        os.utime(self._path)

  def stop(self):
    self._stop_event.set()


def _read(path: str):
  """(parsed JSON or None, os.stat result) of a lock file; FileNotFoundError if it is gone."""
  stat = os.stat(path)
  try:
    with open(path, encoding='utf-8') as f:
      return json.load(f), stat
  except FileNotFoundError:
    raise
  except (OSError, ValueError):
    return None, stat


@contextlib.contextmanager
def hold(
  directory: str,
  *,
  enabled: bool = True,
  heartbeat_s: float = HEARTBEAT_S,
  stale_after_s: float = STALE_AFTER_S,
) -> Iterator[Optional[str]]:
  """Holds `directory`'s lock (creating the folder) for the `with` body; yields the lock's path.

  Args:
    directory: the folder this run writes.
    enabled: False on the processes of a multi-process run other than process 0: they neither
      take nor wait for the lock (yields None).
    heartbeat_s: how often the lock file is touched.
    stale_after_s: see the module docstring.

  Raises:
    errors.WorkdirInUseError: a live run holds the lock.
    OSError: the folder cannot be created or the lock written (full disk, read-only, ...).
  """
  if not enabled:
    yield None
    return
  if not paths.is_local(directory):
    logging.warning(
      'No lock on %s: cloud folders cannot be locked; make sure no other run writes '
      'there at the same time.',
      directory,
    )
    yield None
    return
  directory = os.fspath(paths.resolve(directory))
  os.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, LOCK_NAME)
  host = socket.gethostname()
  token = f'{host}:{os.getpid()}:{time.time_ns()}'
  info = {
    'host': host,
    'pid': os.getpid(),
    'start_ticks': _process_start_time(os.getpid()),
    'started': time.time(),
    'command': ' '.join(sys.argv),
    'token': token,
  }
  _acquire(path, info, host=host, stale_after_s=stale_after_s)
  heartbeat = _Heartbeat(path, token, heartbeat_s)
  heartbeat.start()
  try:
    yield path
  finally:
    heartbeat.stop()
    try:
      if (_read(path)[0] or {}).get('token') == token:
        os.remove(path)
    except OSError:
      pass


def _acquire(path: str, info: dict, *, host: str, stale_after_s: float) -> None:
  for _ in range(10):
    try:
      fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      pass
    else:
      try:
        with os.fdopen(fd, 'w', encoding='utf-8') as f:
          json.dump(info, f)
          f.flush()
          os.fsync(f.fileno())
      except BaseException:
        with contextlib.suppress(OSError):
          os.remove(path)
        raise
      return
    try:
      holder, stat = _read(path)
    except FileNotFoundError:
      continue  # Released meanwhile: try again.
    reason = stale_reason(
      holder,
      mtime=stat.st_mtime,
      now=time.time(),
      host=host,
      stale_after_s=stale_after_s,
    )
    if reason is None:
      raise errors.WorkdirInUseError(
        f'{os.path.dirname(path)} is in use by another run ({_describe(holder or {}, path)}). '
        'Wait for it to finish or stop it, or choose another folder; if that run is gone, '
        f'delete {path}.'
      )
    stale = f'{path}.stale.{info["token"].replace(":", "_")}'
    try:
      # Only one of several runs taking over the same lock succeeds.
      os.rename(path, stale)
    except FileNotFoundError:
      continue
    if os.stat(stale).st_ino != stat.st_ino:
      # Another run replaced the stale lock with its own between our read and rename: give it
      # back (link fails only if yet another run has created one since) and look again.
      with contextlib.suppress(OSError):
        os.link(stale, path)
      os.remove(stale)
      continue
    logging.warning(
      'Taking over the stale lock %s: %s (%s).',
      path,
      reason,
      _describe(holder or {}, path),
    )
    with contextlib.suppress(OSError):
      os.remove(stale)
  raise errors.WorkdirInUseError(
    f'Could not take the lock {path}: other runs keep taking it.'
  )
