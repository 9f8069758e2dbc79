"""Process start-up: JAX's multi-process runtime, and the errors shown to users without a traceback."""

import os
from typing import Optional

from absl import logging
import jax

from diffseg_jax import errors
from tfds_lidc import errors as tfds_errors

# Errors that carry their own fix in the message: main prints them and exits non-zero.
# (Missing data, checkpoints and manual files are FileNotFoundErrors.)
USER_ERRORS = (FileNotFoundError, errors.ConfigError, errors.DataError, errors.NonFiniteLossError,
               tfds_errors.CorruptFileError)

_ENV_VARS = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


class _QuietLibraries:
  """Drops INFO lines from Orbax and TFDS internals so progress lines stay readable."""

  _NOISY = ("/orbax/", "/tensorflow_datasets/")

  def filter(self, record) -> bool:
    if record.levelno > 20:  # WARNING and above always pass.
      return True
    return not any(part in record.pathname for part in self._NOISY)


def quiet_library_logs() -> None:
  logging.get_absl_handler().addFilter(_QuietLibraries())


def initialize(*, coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None, cpu_collectives: Optional[str] = None) -> None:
  """Starts `jax.distributed` when flags, JAX's env variables, SLURM or a TPU pod ask for it.

  One process with no such settings runs without the distributed runtime.
  """
  quiet_library_logs()
  cpu_collectives = cpu_collectives or os.environ.get("DIFFSEG_CPU_COLLECTIVES")
  if cpu_collectives:
    jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
  explicit = coordinator_address is not None or any(v in os.environ for v in _ENV_VARS)
  slurm = int(os.environ.get("SLURM_NTASKS", "1")) > 1
  tpu_pod = int(os.environ.get("TPU_WORKER_HOSTNAMES", "").count(",")) > 0
  if explicit or slurm or tpu_pod:
    jax.distributed.initialize(
        coordinator_address=coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS"),
        num_processes=num_processes if num_processes is not None else _env_int("JAX_NUM_PROCESSES"),
        process_id=process_id if process_id is not None else _env_int("JAX_PROCESS_ID"))
  logging.info("JAX process %d of %d; %d local / %d global %s devices.", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count(),
               jax.devices()[0].platform)


def _env_int(name):
  value = os.environ.get(name)
  return int(value) if value is not None else None
