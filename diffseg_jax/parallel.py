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

"""The device mesh and how arrays are laid out on it (one data-parallel axis)."""

import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from diffseg_jax import errors

DATA_AXIS = 'data'
# Parameters with fewer elements stay replicated under 'fsdp'.
FSDP_MIN_SIZE = 2**14
PARAM_SHARDINGS = ('replicated', 'fsdp')


def make_mesh(num_devices: int) -> jax.sharding.Mesh:
  """A 1-D data-parallel mesh over `num_devices` devices (-1: all devices of all hosts)."""
  n = jax.device_count() if num_devices == -1 else num_devices
  if n < 1 or n > jax.device_count():
    raise errors.ConfigError(
      f'config.mesh.data={num_devices} but {jax.device_count()} devices exist.'
    )
  return jax.make_mesh(
    (n,),
    (DATA_AXIS,),
    axis_types=(jax.sharding.AxisType.Auto,),
    devices=jax.devices()[:n],
  )


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  """Arrays split along their first (batch) axis over the data axis."""
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def param_sharding(mesh, abstract_params, mode: str):
  """Replicated, or 'fsdp': each large parameter sharded over the data axis along its last divisible dim."""
  if mode == 'replicated':
    return jax.tree.map(lambda _: replicated(mesh), abstract_params)
  if mode != 'fsdp':
    raise errors.ConfigError(
      f'config.mesh.param_sharding={mode!r} is not one of {list(PARAM_SHARDINGS)}.'
    )
  n = mesh.shape[DATA_AXIS]

  def rule(x):
    if x.size < FSDP_MIN_SIZE:
      return replicated(mesh)
    for axis in reversed(range(x.ndim)):
      if x.shape[axis] % n == 0:
        spec = [None] * x.ndim
        spec[axis] = DATA_AXIS
        return NamedSharding(mesh, P(*spec))
    return replicated(mesh)

  return jax.tree.map(rule, abstract_params)
