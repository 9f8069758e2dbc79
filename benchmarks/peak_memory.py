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

r"""Peak memory of short training runs: the real sharded train step of diffseg_jax.train.

For each case (the default U-Net at 128x128, batch 8; the quickstart U-Net at 32x32, batch 32)
a fresh subprocess builds the train state and the jitted step exactly as training does
(`create_train_state`, `make_train_step`, `jit_train_step`), records XLA's compiled memory
analysis of the step, runs --steps steps on random data and records
  * host RSS peak (`resource.getrusage(RUSAGE_SELF).ru_maxrss`) and its rise from after the
    imports (the CPU number: on CPU the device memory is host memory);
  * device `memory_stats()['peak_bytes_in_use']` where the back end reports it (GPU/TPU).

  python benchmarks/peak_memory.py [--cases=default_128_b8,quickstart_32_b32] [--steps=5] [--out=FILE]
  python benchmarks/peak_memory.py --quick   # the quickstart case only, 2 steps (about 1.5 min on 2 cores)

Writes benchmarks/results/peak_memory.json.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from typing import Sequence

from absl import app
from absl import flags

from diffseg_jax import huge_pages

RESULTS = os.path.join(
  os.path.dirname(os.path.abspath(__file__)), 'results', 'peak_memory.json'
)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CASES = {
  # name: (config module, image size, batch size)
  'default_128_b8': ('default', 128, 8),
  'quickstart_32_b32': ('quickstart', 32, 32),
}
MIB = 2.0**20


def rss_peak_bytes() -> int:
  """Peak resident set size of this process so far (Linux reports KiB, macOS bytes)."""
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return int(peak if sys.platform == 'darwin' else peak * 1024)


def build_config(module: str, *, batch_size: int, dtype: str = 'float32'):
  """configs/<module>.py with the given global batch and compute dtype."""
  if REPO not in sys.path:
    sys.path.insert(0, REPO)
  import importlib  # pylint: disable=g-import-not-at-top

  config = importlib.import_module(f'configs.{module}').get_config()
  config.unlock()
  config.batch_size = batch_size
  config.model.dtype = dtype
  config.mesh.data = 1
  config.lock()
  return config


def build_train_step(config, *, size: int):
  """(compiled step, state, batch) of the training step for [B, size, size, 1] inputs.

  The step is training's own (`train.build`) lowered and compiled for a random batch (image in
  [0, 1], 4 binary annotations) placed on the data axis of the config's mesh.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from diffseg_jax import parallel  # pylint: disable=g-import-not-at-top
  from diffseg_jax import train  # pylint: disable=g-import-not-at-top

  parts = train.build(config)
  state, step = parts.state, parts.train_step
  rng = np.random.default_rng(0)
  b = config.batch_size
  data = parallel.batch_sharding(parts.mesh)
  batch = {
    'image': jax.device_put(
      rng.uniform(size=(b, size, size, 1)).astype(np.float32), data
    ),
    'masks': jax.device_put(
      (rng.uniform(size=(b, 4, size, size)) > 0.7).astype(np.uint8), data
    ),
  }
  compiled = step.lower(state, batch).compile()
  return compiled, state, batch


def memory_analysis_dict(compiled) -> dict:
  """XLA's compiled memory analysis (bytes) as a dict; {} where the back end gives none."""
  try:
    analysis = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except  # Not every back end implements it.
    return {}
  if analysis is None:
    return {}
  fields = (
    'argument_size_in_bytes',
    'output_size_in_bytes',
    'alias_size_in_bytes',
    'temp_size_in_bytes',
    'generated_code_size_in_bytes',
  )
  out = {f: int(getattr(analysis, f)) for f in fields if hasattr(analysis, f)}
  if out:
    # Arguments + outputs + temporaries, outputs aliased to donated arguments counted once.
    out['total_bytes'] = (
      out.get('argument_size_in_bytes', 0)
      + out.get('output_size_in_bytes', 0)
      - out.get('alias_size_in_bytes', 0)
      + out.get('temp_size_in_bytes', 0)
    )
  return out


def device_peak_bytes() -> int | None:
  import jax  # pylint: disable=g-import-not-at-top

  stats = jax.local_devices()[0].memory_stats()
  return None if not stats else stats.get('peak_bytes_in_use')


def measure_case(name: str, *, steps: int) -> dict:
  """Runs one case in this process; returns its measurements."""
  module, size, batch_size = CASES[name]
  import jax  # pylint: disable=g-import-not-at-top

  # After the imports: the rise is the model, step and data.
  rss_start = rss_peak_bytes()
  config = build_config(module, batch_size=batch_size)
  start = time.perf_counter()
  compiled, state, batch = build_train_step(config, size=size)
  compile_s = time.perf_counter() - start
  rss_after_compile = rss_peak_bytes()
  times = []
  for _ in range(steps):
    t = time.perf_counter()
    state, step_metrics = compiled(state, batch)
    jax.block_until_ready(step_metrics)
    times.append(time.perf_counter() - t)
  num_params = sum(x.size for x in jax.tree.leaves(state['params']))
  rss_peak = rss_peak_bytes()
  device_peak = device_peak_bytes()
  return {
    'case': name,
    'config': f'configs/{module}.py',
    'image_size': size,
    'batch_size': batch_size,
    'params': int(num_params),
    'steps': steps,
    'build_and_compile_s': compile_s,
    'step_s_last': times[-1] if times else None,
    'rss_before_bytes': rss_start,
    'rss_peak_after_compile_bytes': rss_after_compile,
    'rss_peak_bytes': rss_peak,
    'rss_rise_bytes': rss_peak - rss_start,
    'device_peak_bytes_in_use': device_peak,
    'xla_memory_analysis': memory_analysis_dict(compiled),
    'backend': jax.default_backend(),
    'device': str(jax.devices()[0].device_kind),
  }


def _run_child(name: str, steps: int) -> dict:
  """Measures a case in a fresh interpreter, so that ru_maxrss is that case's own peak."""
  cmd = [
    sys.executable,
    os.path.abspath(__file__),
    f'--child={name}',
    f'--steps={steps}',
  ]
  proc = subprocess.run(
    cmd, cwd=REPO, capture_output=True, text=True, check=False
  )
  lines = [
    line for line in proc.stdout.splitlines() if line.startswith('RESULT ')
  ]
  if proc.returncode != 0 or not lines:
    return {
      'case': name,
      'error': f'rc {proc.returncode}: {proc.stderr.strip()[-2000:]}',
    }
  return json.loads(lines[-1][len('RESULT ') :])


def render(results: list[dict]) -> str:
  lines = [
    '| case | params | host RSS peak (MiB) | RSS rise (MiB) | device peak (MiB) | '
    'XLA args+out+temp (MiB) | XLA temp (MiB) | compile (s) | step (s) |',
    '|---|---|---|---|---|---|---|---|---|',
  ]

  def mib(v):
    return '-' if v is None else f'{v / MIB:.0f}'

  for r in results:
    if 'error' in r:
      lines.append(
        f'| {r["case"]} | error: {r["error"].splitlines()[-1][:120]} |||||||| '
      )
      continue
    xla = r['xla_memory_analysis']
    lines.append(
      f'| {r["case"]} | {r["params"]:,} | {mib(r["rss_peak_bytes"])} | {mib(r["rss_rise_bytes"])} | '
      f'{mib(r["device_peak_bytes_in_use"])} | {mib(xla.get("total_bytes"))} | '
      f'{mib(xla.get("temp_size_in_bytes"))} | {r["build_and_compile_s"]:.1f} | '
      f'{r["step_s_last"]:.2f} |'
    )
  return '\n'.join(lines)


def _define_flags(flag_values: flags.FlagValues) -> None:
  """The command line's flags (only __main__ registers them: importing defines none)."""
  flags.DEFINE_bool(
    'quick',
    False,
    'Only the quickstart case (unless --cases is given), 2 steps.',
    flag_values=flag_values,
  )
  flags.DEFINE_integer(
    'steps', 5, 'Train steps per case.', flag_values=flag_values
  )
  flags.DEFINE_string(
    'cases',
    '',
    f'Comma-separated cases (default: all); known: {",".join(CASES)}.',
    flag_values=flag_values,
  )
  flags.DEFINE_string(
    'out', RESULTS, 'Output JSON file.', flag_values=flag_values
  )
  flags.DEFINE_string(
    'child',
    '',
    'Internal: measure this one case here and print its RESULT line.',
    flag_values=flag_values,
  )


def main(argv: Sequence[str]) -> int:
  """Measures the cases; returns the exit status (1 if a case failed, 2 on bad input).

  Args:
    argv: as `app.run` passes it (program name first, flags already parsed into
      flags.FLAGS), or a list of flags such as ['--quick'] that is parsed here
      (flags it leaves out take their defaults).
  """
  args = flags.FLAGS
  if not argv or argv[0].startswith('-'):
    args = flags.FlagValues()
    _define_flags(args)
    try:
      argv = args(['peak_memory.py'] + list(argv))
    except flags.Error as e:
      print(f'ERROR: {e}', file=sys.stderr)
      return 2
  if len(argv) > 1:
    print(
      f'ERROR: unexpected arguments {argv[1:]}; flags are --name=value.',
      file=sys.stderr,
    )
    return 2
  steps = 2 if args.quick else args.steps
  if args.child:
    print(
      'RESULT ' + json.dumps(measure_case(args.child, steps=steps)), flush=True
    )
    return 0
  default_cases = ['quickstart_32_b32'] if args.quick else list(CASES)
  names = [c for c in args.cases.split(',') if c] or default_cases
  unknown = sorted(set(names) - set(CASES))
  if unknown:
    print(
      f'ERROR: --cases: unknown {unknown}; known: {sorted(CASES)}',
      file=sys.stderr,
    )
    return 2
  results = [_run_child(name, steps) for name in names]
  import jax  # pylint: disable=g-import-not-at-top
  import side_by_side  # pylint: disable=g-import-not-at-top

  out = {
    'cases': {r['case']: r for r in results},
    'steps': steps,
    'quick': args.quick,
    'jax_version': jax.__version__,
    'backend': jax.default_backend(),
    'cpu_model': side_by_side.cpu_model(),
    'cpu_count': os.cpu_count(),
    'host_malloc': huge_pages.describe(),
    'platform': platform.platform(),
    'date': time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()),
  }
  for r in results:
    if 'error' not in r:
      out[f'rss_peak_mib_{r["case"]}'] = r['rss_peak_bytes'] / MIB
      if r['xla_memory_analysis']:
        out[f'xla_total_mib_{r["case"]}'] = (
          r['xla_memory_analysis']['total_bytes'] / MIB
        )
      if r['device_peak_bytes_in_use'] is not None:
        out[f'device_peak_mib_{r["case"]}'] = (
          r['device_peak_bytes_in_use'] / MIB
        )
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, 'w', encoding='utf-8') as f:
    json.dump(out, f, indent=1)
  print(render(results))
  print(f'wrote {args.out}')
  return 1 if any('error' in r for r in results) else 0


if __name__ == '__main__':
  huge_pages.reexec_with_huge_pages()  # as diffseg_jax.main does; the cases inherit it
  _define_flags(flags.FLAGS)
  app.run(main)
