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

"""Faults a user meets: a folder in use, a full or read-only disk, bad flags and configs.

Each ends with one line naming the cause and the fix and no traceback. Disk faults are simulated
honestly without root tricks: tests run as root, which ignores chmod, and no small file system can
be mounted. So (a) errors are injected (OSError with the errno) where the writer raises them, (b) a
path below a regular file gives a real ENOTDIR, and (c) RLIMIT_FSIZE with SIGXFSZ ignored makes
the kernel fail real writes with EFBIG ("file too large"), the same failure path as ENOSPC.
"""

import errno
import json
import logging
import os
import resource
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from diffseg_jax import checkpoint
from diffseg_jax import errors
from diffseg_jax import parallel
from diffseg_jax import runtime
from diffseg_jax import settings
from diffseg_jax import workdir_lock
from diffseg_jax.models import unet
from tests.conftest import config_flags
from tests.conftest import REPO
from tests.conftest import tiny_config


def _run(module, *args, env=None, preexec_fn=None, timeout=600):
  return subprocess.run(
    [sys.executable, '-m', module, *args],
    cwd=REPO,
    env=dict(os.environ, PYTHONPATH=REPO, **(env or {})),
    capture_output=True,
    text=True,
    timeout=timeout,
    preexec_fn=preexec_fn,
  )


def _assert_one_error_line(result, *needles):
  """Exit status 2, no traceback, and one ERROR line holding every needle, printed last."""
  err = result.stderr
  assert result.returncode == 2, err[-3000:]
  assert 'Traceback' not in err and 'Event loop is closed' not in err, err[
    -3000:
  ]
  lines = [line for line in err.splitlines() if line.startswith('ERROR: ')]
  assert len(lines) == 1, err[-3000:]
  assert err.rstrip().endswith(lines[0]), err[
    -3000:
  ]  # Nothing printed after it.
  for needle in needles:
    assert needle in lines[0], lines[0]
  return lines[0]


def _dead_pid() -> int:
  p = subprocess.Popen(['true'])
  p.wait()
  return p.pid


def _write_lock(directory, **info):
  path = os.path.join(directory, workdir_lock.LOCK_NAME)
  with open(path, 'w') as f:
    json.dump(
      {'started': time.time(), 'command': 'x', 'token': 'other', **info}, f
    )
  return path


# --- The workdir lock --------------------------------------------------------------------------


def test_second_hold_names_host_and_pid_of_the_first(tmp_path):
  with workdir_lock.hold(str(tmp_path)) as path:
    assert json.load(open(path))['pid'] == os.getpid()
    with pytest.raises(errors.WorkdirInUseError) as e:
      with workdir_lock.hold(str(tmp_path)):
        pass
    message = str(e.value)
    assert (
      f'host {socket.gethostname()}' in message
      and f'pid {os.getpid()}' in message
    )
    assert path in message
  assert not os.path.exists(path)  # Released.
  with workdir_lock.hold(str(tmp_path)):  # And free again.
    pass


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path, caplog):
  pid = _dead_pid()
  _write_lock(str(tmp_path), host=socket.gethostname(), pid=pid)
  with caplog.at_level(logging.WARNING):
    with workdir_lock.hold(str(tmp_path)) as path:
      assert json.load(open(path))['pid'] == os.getpid()
  assert any(
    f'process {pid} on this host is gone' in r.getMessage()
    for r in caplog.records
  )


def test_reused_pid_is_stale_but_a_live_process_is_not(tmp_path):
  ticks = workdir_lock._process_start_time(os.getpid())  # pylint: disable=protected-access
  live = dict(host=socket.gethostname(), pid=os.getpid(), start_ticks=ticks)
  # The pid now belongs to a process started at another time.
  info = dict(live, start_ticks='1')
  now = time.time()
  host = socket.gethostname()
  assert 'another process' in workdir_lock.stale_reason(
    info, mtime=now, now=now, host=host
  )
  assert (
    workdir_lock.stale_reason(live, mtime=now - 1e6, now=now, host=host) is None
  )


def test_other_host_lock_is_stale_only_without_heartbeat(tmp_path):
  path = _write_lock(str(tmp_path), host='elsewhere.example', pid=1)
  with pytest.raises(
    errors.WorkdirInUseError, match='host elsewhere.example, pid 1'
  ):
    with workdir_lock.hold(str(tmp_path), stale_after_s=600):
      pass
  old = time.time() - 601
  os.utime(path, (old, old))
  with workdir_lock.hold(str(tmp_path), stale_after_s=600) as mine:
    assert json.load(open(mine))['host'] == socket.gethostname()


def test_unreadable_old_lock_is_taken_over(tmp_path):
  path = os.path.join(tmp_path, workdir_lock.LOCK_NAME)
  with open(path, 'w') as f:
    f.write('{"host": "x", "pi')  # A run killed while writing it.
  old = time.time() - 60
  os.utime(path, (old, old))
  with workdir_lock.hold(str(tmp_path)):
    assert json.load(open(path))['pid'] == os.getpid()


def test_heartbeat_touches_the_lock_and_release_keeps_a_foreign_lock(tmp_path):
  with workdir_lock.hold(str(tmp_path), heartbeat_s=0.05) as path:
    old = time.time() - 1000
    os.utime(path, (old, old))
    time.sleep(0.5)
    assert time.time() - os.stat(path).st_mtime < 100
    # Taken over meanwhile.
    _write_lock(str(tmp_path), host='elsewhere.example', pid=1)
  # Not removed by the old holder.
  assert json.load(open(path))['host'] == 'elsewhere.example'


def test_disabled_hold_neither_takes_nor_waits(tmp_path):
  with workdir_lock.hold(str(tmp_path)):
    # Processes 1.. of a run.
    with workdir_lock.hold(str(tmp_path), enabled=False) as path:
      assert path is None


def test_second_run_on_a_workdir_in_use_stops_at_once(tiny_synthetic, tmp_path):
  """Today the second run trains into the same workdir (metrics.jsonl interleaved)."""
  with workdir_lock.hold(str(tmp_path)):
    start = time.time()
    result = _run(
      'diffseg_jax.main',
      f'--workdir={tmp_path}',
      *config_flags(tiny_synthetic),
      timeout=300,
    )
    seconds = time.time() - start
  _assert_one_error_line(
    result,
    'in use by another run',
    f'pid {os.getpid()}',
    f'host {socket.gethostname()}',
  )
  assert not os.path.exists(tmp_path / 'metrics.jsonl')
  assert not os.path.exists(tmp_path / 'checkpoints')
  assert seconds < 120, seconds


def test_stale_lock_of_a_killed_run_is_taken_over_by_the_next(
  tiny_synthetic, tmp_path
):
  eval_dir = tmp_path / 'eval' / 'test'
  eval_dir.mkdir(parents=True)
  pid = _dead_pid()
  _write_lock(str(eval_dir), host=socket.gethostname(), pid=pid)
  result = _run(
    'diffseg_jax.main',
    f'--workdir={tmp_path}',
    *config_flags(tiny_synthetic),
    '--mode=evaluate',
    timeout=300,
  )
  assert (
    f'Taking over the stale lock {eval_dir / workdir_lock.LOCK_NAME}'
    in result.stderr
  )
  assert f'process {pid} on this host is gone' in result.stderr
  # It went on to look for the checkpoint.
  _assert_one_error_line(result, 'train first')
  # Released at the end.
  assert not (eval_dir / workdir_lock.LOCK_NAME).exists()


def test_all_processes_stop_when_process_0_finds_the_workdir_in_use(
  tiny_synthetic, tmp_path
):
  """Process 0 alone takes the lock; the others learn its outcome instead of hanging."""
  from tests.test_multiprocess import _free_port  # pylint: disable=g-import-not-at-top

  address = f'127.0.0.1:{_free_port()}'
  command = [
    sys.executable,
    '-m',
    'diffseg_jax.main',
    f'--workdir={tmp_path}',
    *config_flags(tiny_synthetic),
    f'--coordinator_address={address}',
    '--num_processes=2',
    '--cpu_collectives=gloo',
  ]
  env = dict(os.environ, PYTHONPATH=REPO)
  with workdir_lock.hold(str(tmp_path)):
    procs = [
      subprocess.Popen(
        command + [f'--process_id={i}'],
        cwd=REPO,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
      )
      for i in range(2)
    ]
    try:
      outputs = [p.communicate(timeout=300) for p in procs]
    finally:
      for p in procs:
        p.kill()
  assert [p.returncode for p in procs] == [2, 2], outputs
  assert f'pid {os.getpid()}' in outputs[0][1]
  assert 'Process 0 could not write or lock' in outputs[1][1]


# --- Full and read-only disks ------------------------------------------------------------------


@pytest.mark.parametrize(
  'code,words',
  [
    (errno.ENOSPC, 'no space left on device while writing'),
    (errno.EDQUOT, 'disk quota exceeded'),
    (errno.EROFS, 'read-only file system while writing'),
    (errno.EACCES, 'permission denied for'),
  ],
)
def test_write_check_reports_injected_disk_faults(
  tmp_path, monkeypatch, code, words
):
  def failing_write(fd, data):
    # As os.write raises it: no file name.
    raise OSError(code, os.strerror(code))

  monkeypatch.setattr(workdir_lock.os, 'write', failing_write)
  with pytest.raises(OSError) as e:
    workdir_lock.check_writable(str(tmp_path / 'out'))
  assert os.listdir(tmp_path / 'out') == []  # The probe is removed.
  message = runtime.user_error_message(
    e.value, path=str(tmp_path / 'out'), flag='--output'
  )
  assert (
    message.startswith(words)
    and str(tmp_path / 'out') in message
    and '--output' in message
  )


def test_write_check_below_a_regular_file(tmp_path):
  (tmp_path / 'file').write_text('x')
  with pytest.raises(OSError) as e:
    workdir_lock.check_writable(str(tmp_path / 'file' / 'out'))
  message = runtime.user_error_message(
    e.value, path=str(tmp_path / 'file' / 'out'), flag='--output'
  )
  assert 'is a file, not a folder' in message and '--output' in message


def test_disk_faults_are_found_behind_writer_threads():
  # Orbax re-raises its threads' TensorStore errors as ValueErrors quoting the OS error.
  tensorstore = ValueError(
    'OUT_OF_RANGE: Error writing "p/0" in OCDBT database at local file '
    '"/w/checkpoints/2.orbax-checkpoint-tmp/": Failed to write 29108 bytes '
    "to file 10: No space left on device [os_error_code='28']"
  )
  try:
    try:
      raise tensorstore
    except ValueError as inner:
      raise RuntimeError('Save Finalize thread failed') from inner
  except RuntimeError as outer:
    wrapped = outer
  assert runtime.user_error_message(wrapped, path='/w', flag='--workdir') == (
    'no space left on device while writing /w: free space or choose another --workdir.'
  )
  with_name = OSError(errno.EROFS, 'Read-only file system', '/w/metrics.jsonl')
  assert runtime.user_error_message(with_name, path='/w', flag='--workdir') == (
    'read-only file system while writing /w/metrics.jsonl: choose a writable --workdir.'
  )
  # Outside the output folder the fix is not "choose another --workdir".
  data = PermissionError(errno.EACCES, 'Permission denied', '/data/x.json')
  assert 'check that path' in runtime.user_error_message(
    data, path='/w', flag='--workdir'
  )
  # User errors keep their message; anything else is a bug and keeps its traceback.
  assert (
    runtime.user_error_message(errors.ConfigError('bad'), path='/w', flag='--w')
    == 'bad'
  )
  assert (
    runtime.user_error_message(ValueError('bug'), path='/w', flag='--w') is None
  )


def test_metric_writer_thread_on_a_full_device_is_one_line(tmp_path):
  """A real ENOSPC from the kernel: metrics.jsonl is /dev/full, written by the metric writer's thread."""
  from diffseg_jax import metric_writers  # pylint: disable=g-import-not-at-top

  if not os.path.exists('/dev/full'):
    pytest.skip('no /dev/full')
  os.symlink('/dev/full', tmp_path / 'metrics.jsonl')
  writer = metric_writers.create_writer(str(tmp_path))
  with pytest.raises(OSError) as e:
    for step in range(3):
      writer.write_scalars(step, {'loss': 1.0})
    writer.flush()
    writer.close()
  assert runtime.user_error_message(
    e.value, path=str(tmp_path), flag='--workdir'
  ) == (
    f'no space left on device while writing {tmp_path}: free space or choose another --workdir.'
  )


def test_orbax_reports_of_disk_faults_are_dropped_from_the_log():
  quiet = runtime._QuietLibraries()  # pylint: disable=protected-access

  def record(path, exc):
    return logging.LogRecord(
      'absl',
      logging.ERROR,
      path,
      1,
      'thread failed',
      None,
      (type(exc), exc, None),
    )

  full = ValueError(
    "Failed to write: No space left on device [os_error_code='28']"
  )
  assert not quiet.filter(
    record('/site-packages/orbax/checkpoint/future.py', full)
  )
  assert quiet.filter(
    record('/site-packages/orbax/checkpoint/future.py', ValueError('other'))
  )
  assert quiet.filter(record('/work/diffseg_jax/train.py', full))


def test_closed_event_loop_callbacks_are_dropped(monkeypatch):
  """TensorStore reports its callbacks' errors through sys.unraisablehook."""
  import tensorstore as ts  # pylint: disable=g-import-not-at-top

  seen = []
  monkeypatch.setattr(
    sys, 'unraisablehook', lambda u: seen.append(str(u.exc_value))
  )
  runtime.quiet_library_logs()

  def callback(message):
    def raise_(unused_future):
      raise RuntimeError(message)

    return raise_

  for message in ('Event loop is closed', 'something else'):
    promise, future = ts.Promise.new()
    future.add_done_callback(callback(message))
    promise.set_result(1)
  assert seen == ['something else']


# Under a file size limit the shared compilation cache would get truncated entries.
_NO_COMPILATION_CACHE = {'JAX_ENABLE_COMPILATION_CACHE': 'false'}


def _limit_file_size(limit):
  def preexec():
    # Writes past the limit fail with EFBIG.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

  return preexec


def test_output_folders_are_checked_before_any_work(tiny_synthetic, tmp_path):
  """Before: predict/evaluate found out after loading and sampling (here: 'train first')."""
  (tmp_path / 'file').write_text('x')
  image = tmp_path / 'a.npy'
  np.save(image, np.zeros((32, 32), np.float32))
  result = _run(
    'diffseg_jax.main',
    f'--workdir={tmp_path / "w"}',
    *config_flags(tiny_synthetic),
    '--mode=predict',
    f'--input={image}',
    f'--output={tmp_path / "file" / "out"}',
    timeout=300,
  )
  _assert_one_error_line(result, str(tmp_path / 'file' / 'out'), '--output')
  # A write limit smaller than the probe: the kernel refuses the write (EFBIG) as a full disk would.
  result = _run(
    'diffseg_jax.main',
    f'--workdir={tmp_path / "w"}',
    *config_flags(tiny_synthetic),
    '--mode=evaluate',
    env=_NO_COMPILATION_CACHE,
    preexec_fn=_limit_file_size(4096),
    timeout=300,
  )
  _assert_one_error_line(
    result, 'file too large', str(tmp_path / 'w' / 'eval' / 'test')
  )


@pytest.mark.slow
def test_disk_filling_up_during_training_ends_in_one_line(
  tiny_synthetic, tmp_path
):
  """The checkpoint write fails in Orbax's threads (EFBIG); before: hundreds of traceback lines."""
  # The checkpoint's largest files hold about 280 KB; the 64 KiB write probe passes.
  result = _run(
    'diffseg_jax.main',
    f'--workdir={tmp_path}',
    *config_flags(tiny_synthetic, num_train_steps=2, async_checkpointing=True),
    env=_NO_COMPILATION_CACHE,
    preexec_fn=_limit_file_size(100_000),
    timeout=600,
  )
  _assert_one_error_line(result, 'file too large', str(tmp_path), '--workdir')
  assert len(result.stderr.splitlines()) < 20, result.stderr[-3000:]


# --- Config and command-line errors ------------------------------------------------------------


def test_mistyped_config_key_is_one_line_with_the_suggestion(
  tiny_synthetic, tmp_path
):
  result = _run(
    'diffseg_jax.main',
    f'--workdir={tmp_path}',
    *config_flags(tiny_synthetic),
    '--config.optim.learnig_rate=0.1',
    timeout=300,
  )
  _assert_one_error_line(
    result, '--config.optim.learnig_rate', 'Did you mean "learning_rate"'
  )
  assert len(result.stderr.splitlines()) == 1
  result = _run(
    'diffseg_jax.main',
    f'--workdir={tmp_path}',
    f'--config={tmp_path / "nope.py"}',
    timeout=300,
  )
  _assert_one_error_line(result, '--config', 'nope.py', 'No such file')


def test_zero_batch_size_fails_before_any_work_and_verbose_shows_the_traceback(
  tiny_synthetic, tmp_path
):
  flags = [
    f'--workdir={tmp_path}',
    *config_flags(tiny_synthetic),
    '--config.batch_size=0',
  ]
  _assert_one_error_line(
    _run('diffseg_jax.main', *flags, timeout=300),
    'config.batch_size=0',
    'positive integer',
  )
  assert not os.path.exists(tmp_path / 'checkpoints')
  verbose = _run(
    'diffseg_jax.main', *flags, env={'DIFFSEG_TRACEBACK': '1'}, timeout=300
  )
  assert verbose.returncode == 2 and 'Traceback' in verbose.stderr


def test_check_config_names_the_key(tiny_synthetic):
  for key in ('batch_size', 'eval.batch_size', 'checkpoint_every_steps'):
    with pytest.raises(errors.ConfigError, match=f'config.{key}=0'):
      runtime.check_config(tiny_config(tiny_synthetic, **{key: 0}))
  with pytest.raises(errors.ConfigError, match='num_samples_list'):
    runtime.check_config(
      tiny_config(tiny_synthetic, **{'eval.num_samples_list': ()})
    )
  runtime.check_config(tiny_config(tiny_synthetic))


def test_unknown_data_set_is_not_called_unbuilt(tmp_path):
  from diffseg_jax import input_pipeline  # pylint: disable=g-import-not-at-top

  with pytest.raises(
    errors.ConfigError, match="Unknown data set 'nosuch/32'"
  ) as e:
    input_pipeline.load_source(
      name='nosuch/32', split='train', data_dir=str(tmp_path)
    )
  assert 'tfds_lidc.build' not in str(e.value)
  with pytest.raises(
    errors.ConfigError, match="Unknown config '99' of data set 'lidc'"
  ):
    input_pipeline.load_source(
      name='lidc/99', split='train', data_dir=str(tmp_path)
    )
  # Known names: how to build them.
  with pytest.raises(FileNotFoundError, match='not built'):
    input_pipeline.load_source(
      name='lidc/knegt_pickle', split='train', data_dir=str(tmp_path)
    )


def test_checkpoint_of_another_width_is_one_line_without_event_loop_noise(
  tiny_synthetic, tmp_path, capfd
):
  config = tiny_config(tiny_synthetic)
  checkpoint.save_params(
    str(tmp_path / 'checkpoints'),
    unet.init_params(settings.unet_config(config), jax.random.PRNGKey(0)),
  )
  config.model.base_channels = 8
  with pytest.raises(errors.ConfigError) as e:
    checkpoint.load_params(
      str(tmp_path), settings.unet_config(config), parallel.make_mesh(1)
    )
  message = str(e.value)
  assert '\n' not in message
  assert 'parameter shapes differ' in message and 'base_channels' in message
  assert 'input_blocks/0/0/kernel (3, 3, 2, 16) vs (3, 3, 2, 8)' in message
  # TensorStore callbacks printed their noise shortly after the failure.
  time.sleep(1.0)
  assert 'Event loop is closed' not in capfd.readouterr().err


def test_convert_missing_file_and_wrong_names_are_one_line(tmp_path):
  config = (
    '--config=' + os.path.join(REPO, 'configs', 'quickstart.py') + ':smoke'
  )
  result = _run(
    'diffseg_jax.convert',
    f'--torch_checkpoint={tmp_path / "missing.pt"}',
    config,
    f'--out={tmp_path / "out"}',
    timeout=300,
  )
  _assert_one_error_line(result, 'missing.pt does not exist')
  assert 'PyTorch' not in result.stderr
  np.savez(
    tmp_path / 'wrong.npz',
    **{'conv.weight': np.zeros((4, 2, 3, 3), np.float32)},
  )
  result = _run(
    'diffseg_jax.convert',
    f'--npz={tmp_path / "wrong.npz"}',
    config,
    f'--out={tmp_path / "out"}',
    timeout=300,
  )
  _assert_one_error_line(result, 'input_blocks.0.0.weight', '--npz_prefix')
