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

r"""Runs every benchmark script and gathers their JSON into one table.

  python benchmarks/run_all.py            # full runs  -> benchmarks/results/<name>.json
  python benchmarks/run_all.py --quick    # smoke runs -> benchmarks/results/quick/<name>.json (< 10 min, 2 cores)
  python benchmarks/run_all.py --only=metrics_throughput,peak_memory

Each script runs as a subprocess (its output goes to benchmarks/results[/quick]/<name>.log) with
its own time limit (under --quick all of them end by QUICK_TOTAL_S); a failing script is recorded
and the others still run. Writes
benchmarks/results/latest.json (machine, per-script status, seconds and results) and
benchmarks/results/latest.md (the same as a Markdown table, also printed). Quick runs write their
per-script JSON under quick/ so they never overwrite the full results that RESULTS.md cites.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time

from absl import app
from absl import flags

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, 'results')

# name: (full-run arguments, quick-run arguments, full limit s, quick limit s). Every script takes --out.
BENCHMARKS = {
  'step_throughput': ([], ['--quick', '--sizes=64'], 3600, 420),
  'metrics_throughput': (
    [],
    ['--images=64', '--repeats=1', '--ref_images=8'],
    1800,
    180,
  ),
  'loader_throughput': (
    [],
    ['--num_build=1000', '--steps=20', '--batch_sizes=8'],
    1800,
    120,
  ),
  'peak_memory': ([], ['--quick'], 1800, 180),
}
QUICK_TOTAL_S = (
  570  # --quick stops every script by then, so it ends within 10 minutes.
)
# Bookkeeping fields of the scripts' JSON that are not measurements.
NOT_MEASURED = {
  'cpu_count',
  'runs',
  'batch',
  'num_samples',
  'images',
  'size',
  'chunk',
  'repeats',
  'steps',
  'image_size',
  'num_build',
  'load_average_1min_at_start',
  'load_average_1min_at_end',
  'quick',
  'threads',
  'torch_threads',
  'ref_images',
  'sampler_steps',
}

_QUICK = flags.DEFINE_bool(
  'quick', False, 'Smoke-sized runs, < 10 min on 2 cores.'
)
_ONLY = flags.DEFINE_string(
  'only', '', 'Comma-separated subset of ' + ','.join(BENCHMARKS)
)


def _read(path: str) -> str:
  try:
    with open(path, encoding='utf-8') as f:
      return f.read()
  except OSError:
    return ''


def machine_info() -> dict:
  """CPU model, cores, JAX version and back end, load, git commit, date."""
  import jax  # pylint: disable=g-import-not-at-top

  cpu = next(
    (
      line.split(':', 1)[1].strip()
      for line in _read('/proc/cpuinfo').splitlines()
      if line.startswith('model name')
    ),
    platform.processor() or platform.machine(),
  )
  try:
    commit = subprocess.run(
      ['git', 'rev-parse', '--short', 'HEAD'],
      cwd=REPO,
      capture_output=True,
      text=True,
      check=False,
    ).stdout.strip()
    dirty = bool(
      subprocess.run(
        ['git', 'status', '--porcelain', '--untracked-files=no'],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
      ).stdout.strip()
    )
  except OSError:
    commit, dirty = '', False
  return {
    'cpu_model': cpu,
    'cpu_count': os.cpu_count(),
    'memory_gib': _mem_total_gib(),
    'load_average_1min': os.getloadavg()[0]
    if hasattr(os, 'getloadavg')
    else None,
    'jax_version': jax.__version__,
    'backend': jax.default_backend(),
    'device': str(jax.devices()[0].device_kind),
    'device_count': jax.device_count(),
    'python': platform.python_version(),
    'platform': platform.platform(),
    'git_commit': commit + ('+local changes' if dirty else ''),
    'date': time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime()),
  }


def _mem_total_gib():
  for line in _read('/proc/meminfo').splitlines():
    if line.startswith('MemTotal:'):
      return round(int(line.split()[1]) / 2**20, 1)
  return None


def run_benchmark(
  name: str, *, quick: bool, out_dir: str, limit_s: float | None = None
) -> dict:
  """Runs benchmarks/<name>.py; returns {status, seconds, json path, results (dict or None)}.

  The script is stopped after its own limit (BENCHMARKS) or `limit_s`, whichever is sooner.
  """
  full_args, quick_args, full_limit, quick_limit = BENCHMARKS[name]
  limit = quick_limit if quick else full_limit
  if limit_s is not None:
    limit = max(1, int(min(limit, limit_s)))
  out = os.path.join(out_dir, f'{name}.json')
  log_path = os.path.join(out_dir, f'{name}.log')
  if os.path.exists(out):
    os.remove(out)  # A stale file must not pass for this run's result.
  cmd = [sys.executable, os.path.join(HERE, f'{name}.py')] + (
    quick_args if quick else full_args
  )
  cmd.append(f'--out={out}')
  env = dict(os.environ)
  env['PYTHONPATH'] = REPO + (
    os.pathsep + env['PYTHONPATH'] if env.get('PYTHONPATH') else ''
  )
  start = time.perf_counter()
  with open(log_path, 'w', encoding='utf-8') as log:
    try:
      rc = subprocess.run(
        cmd,
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        check=False,
        timeout=limit,
      ).returncode
      status = 'ok' if rc == 0 else f'failed (rc {rc})'
    except subprocess.TimeoutExpired:
      status = f'timed out after {limit} s'
  seconds = time.perf_counter() - start
  results = None
  if os.path.exists(out):
    with open(out, encoding='utf-8') as f:
      results = json.load(f)
  elif status == 'ok':
    status = 'failed (no JSON written)'
  return {
    'status': status,
    'seconds': seconds,
    'command': ' '.join(cmd[1:]),
    'json': out,
    'log': log_path,
    'results': results,
  }


def measurements(results: dict | None) -> list[tuple[str, float]]:
  """(key, value) of the numeric measurements of one script's JSON (one nesting level flattened)."""
  out = []
  for key, value in (results or {}).items():
    if key in NOT_MEASURED:
      continue
    if isinstance(value, bool):
      continue
    if isinstance(value, (int, float)):
      out.append((key, float(value)))
    elif isinstance(value, dict):
      out += [
        (f'{key}.{k}', float(v))
        for k, v in value.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
      ]
  return out


def render(summary: dict) -> str:
  m = summary['machine']
  lines = [
    f'# Benchmarks ({"quick" if summary["quick"] else "full"} run)',
    '',
    f'{m["date"]}; {m["cpu_model"]}, {m["cpu_count"]} cores, {m["memory_gib"]} GiB, load '
    f'{m["load_average_1min"]:.1f} at start; jax {m["jax_version"]} on {m["backend"]} '
    f'({m["device"]}); commit {m["git_commit"]}; total {summary["seconds"]:.0f} s.',
    '',
    '| benchmark | status | s | measure | value |',
    '|---|---|---|---|---|',
  ]
  for name, r in summary['benchmarks'].items():
    rows = measurements(r['results'])
    head = f'| {name} | {r["status"]} | {r["seconds"]:.0f} |'
    if not rows:
      lines.append(head + ' - | - |')
    for i, (key, value) in enumerate(rows):
      prefix = head if i == 0 else '| | | |'
      lines.append(f'{prefix} {key} | {_number(value)} |')
  ratios = same_run_ratios(summary)
  if ratios:
    lines += [
      '',
      'Same-run ratios (ours / peer, both timed in the same run of the same script):',
      '',
      '| benchmark | ratio | value |',
      '|---|---|---|',
    ]
    lines += [
      f'| {name} | {key} | {value:.3g} |' for name, key, value in ratios
    ]
  return '\n'.join(lines)


def same_run_ratios(summary: dict) -> list[tuple[str, str, float]]:
  """(script, key, value) of every ours-vs-peer ratio the scripts measured in their own run."""
  return [
    (name, key, value)
    for name, r in summary['benchmarks'].items()
    for key, value in measurements(r['results'])
    if '_vs_torch' in key or key.startswith('speedup_vs_numpy')
  ]


def _number(value: float) -> str:
  if value == int(value) and abs(value) >= 1000:
    return f'{int(value):,}'
  return f'{value:.4g}'


def main(argv) -> int:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments {argv[1:]}.')
  names = [n for n in _ONLY.value.split(',') if n] or list(BENCHMARKS)
  unknown = sorted(set(names) - set(BENCHMARKS))
  if unknown:
    print(
      f'ERROR: --only: unknown {unknown}; known: {list(BENCHMARKS)}',
      file=sys.stderr,
    )
    return 2
  out_dir = os.path.join(RESULTS, 'quick') if _QUICK.value else RESULTS
  os.makedirs(out_dir, exist_ok=True)
  start = time.perf_counter()
  summary = {'quick': _QUICK.value, 'machine': machine_info(), 'benchmarks': {}}
  for name in names:
    print(f'running {name} ...', flush=True)
    left = (
      QUICK_TOTAL_S - (time.perf_counter() - start) if _QUICK.value else None
    )
    summary['benchmarks'][name] = run_benchmark(
      name, quick=_QUICK.value, out_dir=out_dir, limit_s=left
    )
    r = summary['benchmarks'][name]
    print(
      f'  {r["status"]} in {r["seconds"]:.0f} s (log {r["log"]})', flush=True
    )
  summary['seconds'] = time.perf_counter() - start
  summary['load_average_1min_at_end'] = (
    os.getloadavg()[0] if hasattr(os, 'getloadavg') else None
  )
  with open(os.path.join(RESULTS, 'latest.json'), 'w', encoding='utf-8') as f:
    json.dump(summary, f, indent=1)
  table = render(summary)
  with open(os.path.join(RESULTS, 'latest.md'), 'w', encoding='utf-8') as f:
    f.write(table + '\n')
  print(table)
  return (
    0 if all(r['status'] == 'ok' for r in summary['benchmarks'].values()) else 1
  )


if __name__ == '__main__':
  app.run(main)
