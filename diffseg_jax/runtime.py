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

"""Process start-up: JAX's multi-process runtime, and the errors shown to users without a traceback."""

import os
import sys
from typing import Mapping, Optional

from absl import logging
import jax

from diffseg_jax import errors
from diffseg_jax import huge_pages
from tfds_lidc import errors as tfds_errors
from tfds_lidc import paths

# Errors that carry their own fix in the message: main prints them and exits non-zero.
# (Missing data, checkpoints and manual files are FileNotFoundErrors.)
USER_ERRORS = (
  FileNotFoundError,
  errors.ConfigError,
  errors.DataError,
  errors.NonFiniteLossError,
  errors.WorkdirInUseError,
  tfds_errors.CorruptFileError,
  tfds_errors.PathBackendError,
)

# Config values that must be positive integers (0 or less fails late and obscurely).
_POSITIVE = (
  'batch_size',
  'log_every_steps',
  'checkpoint_every_steps',
  'validation.batch_size',
  'validation.num_images',
  'validation.num_samples',
  'eval.batch_size',
  'predict.num_samples',
  'sampler.num_steps',
  'sampling_batch',
)


# JAX's own variables for an explicit multi-process set-up (the flags take precedence).
ENV_COORDINATOR = 'JAX_COORDINATOR_ADDRESS'
ENV_NUM_PROCESSES = 'JAX_NUM_PROCESSES'
ENV_PROCESS_ID = 'JAX_PROCESS_ID'
# 'auto': call jax.distributed.initialize() and let JAX detect the cluster (TPU pod: launch/tpu_pod.sh
# sets it); 'off': never start the distributed runtime (e.g. one process inside a SLURM allocation).
ENV_DISTRIBUTED = 'DIFFSEG_DISTRIBUTED'
# The variables with which JAX recognises a SLURM step (srun); see jax/_src/clusters/slurm_cluster.py.
_SLURM_VARS = (
  'SLURM_JOB_ID',
  'SLURM_STEP_NODELIST',
  'SLURM_NTASKS',
  'SLURM_PROCID',
  'SLURM_LOCALID',
)


class _QuietLibraries:
  """Drops INFO lines from Orbax and TFDS internals so progress lines stay readable.

  Also drops Orbax's error reports (each with a traceback, one per writer thread) of a full or
  read-only disk: the exception reaches `main`, which reports it in one line. DIFFSEG_TRACEBACK=1
  keeps them.
  """

  _NOISY = ('/orbax/', '/tensorflow_datasets/')

  def filter(self, record) -> bool:
    # WARNING and above pass, except Orbax's reports of a disk fault.
    if record.levelno > 20:
      return not (
        record.exc_info
        and '/orbax/' in record.pathname
        and errors.find_io_fault(record.exc_info[1]) is not None
        and os.environ.get('DIFFSEG_TRACEBACK', '') not in ('1', 'true', 'yes')
      )
    return not any(part in record.pathname for part in self._NOISY)


def quiet_library_logs() -> None:
  logging.get_absl_handler().addFilter(_QuietLibraries())
  if not getattr(sys.unraisablehook, 'drops_closed_event_loop', False):
    sys.unraisablehook = _drop_closed_event_loop(sys.unraisablehook)


def _drop_closed_event_loop(previous):
  """Wraps `sys.unraisablehook` to drop "Event loop is closed" from TensorStore callbacks.

  When an Orbax save or restore fails, its asyncio loop closes while TensorStore still finishes
  the other reads/writes of that operation; their done-callbacks cannot reach the closed loop and
  each prints a traceback (about 20 after one failed checkpoint write) after the real error.
  Nothing waits for those results any more, so they are dropped; every other unraisable
  exception goes to `previous`.
  """

  def hook(unraisable):
    exc = unraisable.exc_value
    if isinstance(exc, RuntimeError) and str(exc) == 'Event loop is closed':
      return
    previous(unraisable)

  hook.drops_closed_event_loop = True
  return hook


def distributed_settings(
  *,
  coordinator_address: Optional[str],
  num_processes: Optional[int],
  process_id: Optional[int],
  environ: Mapping[str, str],
) -> Optional[dict]:
  """Arguments for `jax.distributed.initialize`, or None to run as a single process.

  In order: flags, JAX's variables (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID), then
  JAX's cluster auto-detection (empty dict) for a SLURM step with several tasks, a TPU pod
  (TPU_WORKER_HOSTNAMES or MEGASCALE_COORDINATOR_ADDRESS) or DIFFSEG_DISTRIBUTED=auto. Settings left
  None are detected by JAX from the cluster. DIFFSEG_DISTRIBUTED=off turns all of it off.

  Raises:
    ValueError: DIFFSEG_DISTRIBUTED has another value, or explicit settings are incomplete outside
      a cluster JAX can detect.
  """
  mode = environ.get(ENV_DISTRIBUTED, '').strip().lower()
  if mode not in ('', 'auto', 'off'):
    raise ValueError(
      f"{ENV_DISTRIBUTED}={environ[ENV_DISTRIBUTED]!r}: use 'auto', 'off' or leave it unset."
    )
  if mode == 'off':
    return None
  settings = {
    'coordinator_address': coordinator_address
    or environ.get(ENV_COORDINATOR)
    or None,
    'num_processes': num_processes
    if num_processes is not None
    else _int(environ, ENV_NUM_PROCESSES),
    'process_id': process_id
    if process_id is not None
    else _int(environ, ENV_PROCESS_ID),
  }
  slurm = (
    all(v in environ for v in _SLURM_VARS) and int(environ['SLURM_NTASKS']) > 1
  )
  tpu_pod = ',' in environ.get('TPU_WORKER_HOSTNAMES', '') or bool(
    environ.get('MEGASCALE_COORDINATOR_ADDRESS')
  )
  cluster = slurm or tpu_pod or mode == 'auto'
  given = {k: v for k, v in settings.items() if v is not None}
  if not given:
    return {} if cluster else None
  if not cluster and len(given) < len(settings):
    missing = [
      f'--{k} (or {e})'
      for (k, v), e in zip(
        settings.items(), (ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID)
      )
      if v is None
    ]
    raise ValueError(
      f'Multi-process settings {given} are incomplete and no SLURM step or TPU pod was detected: '
      f'also give {", ".join(missing)}, or set {ENV_DISTRIBUTED}=auto inside a cluster JAX knows.'
    )
  return given


def initialize(
  *,
  coordinator_address: Optional[str] = None,
  num_processes: Optional[int] = None,
  process_id: Optional[int] = None,
  cpu_collectives: Optional[str] = None,
) -> None:
  """Starts `jax.distributed` when flags, JAX's env variables, SLURM or a TPU pod ask for it.

  See `distributed_settings` for the precedence. One process with no such settings runs without the
  distributed runtime. `cpu_collectives` (or DIFFSEG_CPU_COLLECTIVES), e.g. 'gloo', picks the CPU
  back end's cross-process collectives.

  Raises:
    errors.ConfigError: contradictory or incomplete multi-process settings.
  """
  quiet_library_logs()
  cpu_collectives = cpu_collectives or os.environ.get('DIFFSEG_CPU_COLLECTIVES')
  if cpu_collectives:
    jax.config.update('jax_cpu_collectives_implementation', cpu_collectives)
  try:
    settings = distributed_settings(
      coordinator_address=coordinator_address,
      num_processes=num_processes,
      process_id=process_id,
      environ=os.environ,
    )
  except ValueError as e:
    raise errors.ConfigError(str(e)) from e
  if settings is not None:
    # JAX's preemption sync manager catches SIGTERM on any process and lets all agree on the step
    # to save (Orbax's CheckpointManager.reached_preemption); on by default, required here.
    jax.config.update('jax_enable_preemption_service', True)
    logging.info(
      'Starting jax.distributed with %s.',
      settings or 'auto-detected cluster settings',
    )
    jax.distributed.initialize(**settings)
  logging.info(
    'JAX process %d of %d; %d local / %d global %s devices.',
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
    jax.devices()[0].platform,
  )
  logging.info('%s', huge_pages.describe())


def _int(environ: Mapping[str, str], name: str) -> Optional[int]:
  value = environ.get(name)
  if value is None or value == '':
    return None
  try:
    return int(value)
  except ValueError:
    raise ValueError(f'{name}={value!r} is not an integer.') from None


def flag_error_message(e: Exception, argv: list[str]) -> str:
  """One line for an error raised while parsing `argv`: the offending flag, the cause, the fix."""
  text = str(e)
  if isinstance(e, (AttributeError, KeyError)):
    # ml_collections quotes the KeyError text (with a "Did you mean" line) inside the message.
    text = text.strip('\'"').replace('\\n', '\n').replace("\\'", "'")
    key, _, hint = text.partition('\n')
    key = key.strip('\'"')
    flag = next(
      (
        a.split('=')[0]
        for a in argv[1:]
        if a.startswith('--config.')
        and a.split('=')[0].rsplit('.', 1)[-1] == key
      ),
      None,
    )
    where = f'{flag}: ' if flag else ''
    fix = hint.strip() or 'Check the spelling against the config file.'
    return f'{where}the config has no key {key!r}. {fix}'
  text = ' '.join(text.split())
  if isinstance(e, OSError) and 'config file' in text:
    return f'--config: {text}'
  return (
    f'{text} (see --helpfull for the flags; add --verbose for the traceback)'
  )


def check_config(config) -> None:
  """Rejects config values that would fail late or obscurely (after compiling, mid-run)."""
  for key in _POSITIVE:
    node = config
    for part in key.split('.'):
      node = (
        node.get(part) if node is not None and hasattr(node, 'get') else None
      )
    if node is None:
      continue
    if isinstance(node, bool) or not isinstance(node, int) or node < 1:
      raise errors.ConfigError(
        f'config.{key}={node!r} must be a positive integer: set '
        f'--config.{key}=N with N >= 1.'
      )
  data_dir = config.get('dataset', {}).get('data_dir')
  if data_dir:
    paths.resolve(data_dir, what='config.dataset.data_dir')
  samples = tuple(config.get('eval', {}).get('num_samples_list', (1,)) or ())
  if not samples or any(not isinstance(n, int) or n < 1 for n in samples):
    raise errors.ConfigError(
      f'config.eval.num_samples_list={samples!r} must be a non-empty list of '
      "positive integers, e.g. --config.eval.num_samples_list='(4,16)'."
    )


def output_folders(
  config, *, mode: str, workdir: str, output: Optional[str]
) -> list[tuple[str, str]]:
  """(folder, flag choosing it) for every folder `mode` writes: each is locked and write-checked.

  Folders are absolute local paths or cloud URLs (file:// URLs become local paths).

  Raises:
    tfds_lidc.errors.PathBackendError: a cloud URL without its file-system package.
  """
  root = paths.resolve(workdir, what='--workdir')
  eval_dir = root / 'eval' / (config.eval.output_name or config.eval.split)
  if mode == 'train':
    return [(str(root), '--workdir')] + (
      [(str(eval_dir), '--workdir')] if config.evaluate_after_training else []
    )
  if mode == 'evaluate':
    return [(str(eval_dir), '--workdir')]
  if output:
    return [(str(paths.resolve(output, what='--output')), '--output')]
  return [(str(root / 'predict'), '--output')]


def user_error_message(
  e: BaseException, *, path: str, flag: str
) -> Optional[str]:
  """The one line for an error the user can fix, or None for a bug (shown with its traceback)."""
  fault = errors.io_fault_message(e, path=path, flag=flag)
  if isinstance(e, USER_ERRORS) and not (fault and isinstance(e, OSError)):
    return str(e)
  return fault
