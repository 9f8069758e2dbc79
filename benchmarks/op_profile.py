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

r"""Where the time of the default U-Net goes: a per-op profile from a JAX trace.

Runs the network's forward pass (what sampling calls) or forward + backward
(the bulk of a train step) once under `jax.profiler.trace` with a Perfetto
trace, sums the duration of every compiled op (XLA fusion or library call) and
names what each one computes from the compiled HLO (convolution window and
shapes, dot, reduce, elementwise). Prints the totals per kind and the top ops;
writes JSON.

  python benchmarks/op_profile.py --mode=grad --batch=8
  python benchmarks/op_profile.py --mode=fwd --batch=32
  python benchmarks/op_profile.py --config=quickstart --size=32 --batch=32

Durations are summed over ops; ops that run concurrently on different threads
both count, so the total can exceed the wall time. XLA:CPU runs its own (Eigen)
convolutions asynchronously and the trace records only their launch (tens of
microseconds each): their time is in `not_attributed_ms` (wall minus summed
ops), not under 'convolution'; the script counts such launch-only
convolutions and says so.
"""

from __future__ import annotations

import collections
import json
import os
import statistics
import sys
import tempfile
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp

from diffseg_jax import huge_pages

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peak_memory  # pylint: disable=g-import-not-at-top,wrong-import-position
import side_by_side  # pylint: disable=g-import-not-at-top,wrong-import-position
import trace_ops  # pylint: disable=g-import-not-at-top,wrong-import-position

# A convolution traced shorter than this (ms) recorded only its launch.
LAUNCH_ONLY_MS = 0.2

_CONFIG = flags.DEFINE_string(
  'config',
  'default',
  "The network of configs/<name>.py (default: the paper's).",
)
_MODE = flags.DEFINE_enum(
  'mode', 'grad', ['fwd', 'grad'], 'Forward only, or forward + backward.'
)
_BATCH = flags.DEFINE_integer('batch', 8, 'Network batch.')
_SIZE = flags.DEFINE_integer('size', 128, 'Image side.')
_CONV_IMPL = flags.DEFINE_enum(
  'conv_impl', 'auto', ['auto', 'xla', 'cpu_fast'], 'UNetConfig.conv_impl.'
)
_TOP = flags.DEFINE_integer('top', 25, 'Ops listed.')
_OUT = flags.DEFINE_string(
  'out',
  None,
  'Output JSON (default benchmarks/results/op_profile_<config>_<mode>_<batch>.json).',
)


def main(argv):
  del argv
  from flax import nnx  # pylint: disable=g-import-not-at-top

  from diffseg_jax import settings as settings_lib  # pylint: disable=g-import-not-at-top
  from diffseg_jax.models import unet  # pylint: disable=g-import-not-at-top

  batch, size, mode = _BATCH.value, _SIZE.value, _MODE.value
  cfg = peak_memory.build_config(_CONFIG.value, batch_size=batch)
  cfg.unlock()
  cfg.model.conv_impl = _CONV_IMPL.value
  settings = settings_lib.resolve(cfg)
  graphdef, _ = unet.abstract_model(settings.unet)
  params = jax.jit(lambda: unet.init_params(settings.unet, jax.random.key(0)))()

  def forward(params, z, t, image):
    return nnx.merge(graphdef, nnx.State(params))(z, t, image)

  if mode == 'fwd':
    fn = jax.jit(forward)
  else:
    fn = jax.jit(jax.grad(lambda p, *a: jnp.mean(jnp.square(forward(p, *a)))))
  args = (
    params,
    jax.random.normal(jax.random.key(1), (batch, size, size, 1)),
    jnp.full((batch,), 0.5),
    jax.random.uniform(jax.random.key(2), (batch, size, size, 1)),
  )
  compiled = fn.lower(*args).compile(
    compiler_options=settings.unet.compiler_options()
  )
  jax.block_until_ready(compiled(*args))
  seconds = []
  for _ in range(3):
    start = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    seconds.append(time.perf_counter() - start)
  with tempfile.TemporaryDirectory() as trace_dir:
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
      jax.block_until_ready(compiled(*args))
    durations = trace_ops.trace_durations(trace_dir)
  ops = trace_ops.describe_ops(compiled.as_text())
  timed = sorted(
    ((ms, name) for name, ms in durations.items() if name in ops), reverse=True
  )
  by_kind = collections.Counter()
  for ms, name in timed:
    by_kind[ops[name]['kind']] += ms
  op_total = sum(by_kind.values())
  wall = statistics.median(seconds)
  launch_only = sorted(
    name
    for ms, name in timed
    if ops[name]['kind'] == 'convolution' and ms < LAUNCH_ONLY_MS
  )
  print(
    f'{mode}, batch {batch}, {size}x{size}: {wall * 1e3:.0f} ms wall (median of 3); '
    f'{op_total:.0f} ms summed over ops; {wall * 1e3 - op_total:.0f} ms not attributed'
  )
  if launch_only:
    print(
      f'  {len(launch_only)} convolutions took < {LAUNCH_ONLY_MS} ms each in the trace: '
      'XLA:CPU ran them asynchronously and the trace holds only their launch; '
      'their time is in the part not attributed, not under convolution.'
    )
  for kind, ms in by_kind.most_common():
    print(f'  {kind:12s} {ms:8.1f} ms  {100 * ms / op_total:5.1f} %')
  print(f'top {_TOP.value} ops:')
  for ms, name in timed[: _TOP.value]:
    op = ops[name]
    print(f'  {ms:7.1f} ms  {op["kind"]:11s} {op["shape"]:26s} {op["detail"]}')
  out = _OUT.value or os.path.join(
    os.path.dirname(os.path.abspath(__file__)),
    'results',
    f'op_profile_{_CONFIG.value}_{mode}_{batch}.json',
  )
  with open(out, 'w') as f:
    json.dump(
      {
        'cpu_model': side_by_side.cpu_model(),
        'host_malloc': huge_pages.describe(),
        'threads': side_by_side.cpu_threads(),
        'jax_version': jax.__version__,
        'backend': jax.default_backend(),
        'config': _CONFIG.value,
        'mode': mode,
        'batch': batch,
        'size': size,
        'conv_impl': _CONV_IMPL.value,
        'wall_ms_median': wall * 1e3,
        'summed_op_ms': op_total,
        'not_attributed_ms': wall * 1e3 - op_total,
        'launch_only_convolutions': len(launch_only),
        'by_kind_ms': dict(by_kind),
        'top_ops': [dict(ops[n], name=n, ms=ms) for ms, n in timed[:100]],
      },
      f,
      indent=1,
    )
  print(f'wrote {out}')


if __name__ == '__main__':
  huge_pages.reexec_with_huge_pages()  # as diffseg_jax.main does
  app.run(main)
