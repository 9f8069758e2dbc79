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

"""benchmarks/trace_ops.py: op names of a trace are matched to what they compute."""

import os
import sys

import jax
from jax import lax
import jax.numpy as jnp

from tests.conftest import REPO

sys.path.insert(0, os.path.join(REPO, 'benchmarks'))
import trace_ops  # noqa: E402  # pylint: disable=g-import-not-at-top,wrong-import-position


def _conv_then_sum(x, k):
  y = lax.conv_general_dilated(
    x, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=('NHWC', 'HWIO', 'NHWC')
  )
  return jnp.sum(jnp.tanh(y), axis=(1, 2))


def test_trace_ops_are_named_and_described(tmp_path):
  x = jnp.ones((2, 8, 8, 3))
  k = jnp.ones((3, 3, 3, 4))
  compiled = jax.jit(_conv_then_sum).lower(x, k).compile()
  ops = trace_ops.describe_ops(compiled.as_text())
  kinds = {op['kind'] for op in ops.values()}
  assert 'convolution' in kinds, ops
  conv = next(op for op in ops.values() if op['kind'] == 'convolution')
  assert 'window={size=3x3' in conv['detail']
  with jax.profiler.trace(str(tmp_path), create_perfetto_trace=True):
    jax.block_until_ready(compiled(x, k))
  durations = trace_ops.trace_durations(str(tmp_path))
  timed = [name for name in durations if name in ops]
  assert any(ops[name]['kind'] == 'convolution' for name in timed), (
    sorted(durations),
    sorted(ops),
  )
