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

r"""Accelerator check (GPU/TPU): train-step and sampler throughput of the default U-Net.

Run through benchmarks/accelerator_check.sh (no network needed). Measures, in this order, skipping
what no longer fits the time budget:
  * the device's bf16 (and fp32) matmul peak: a jitted n x n `jnp.dot`;
  * the training step of diffseg_jax.train (augmentation, diffusion loss, AdamW, EMA) at 128x128
    for batch 8, 64 and 256 in fp32 and bf16 (config.model.dtype): images/s, ms/step, achieved
    TFLOP/s from XLA's cost analysis and its fraction of the measured bf16 peak, compile time;
  * the PyTorch reference's train step (benchmarks/torch_reference.py: the same network, fp16
    autocast with a GradScaler as the authors train) at the same batches, in the same run;
  * the 10-step DDPM sampler for 16 samples x 64 images: ours (diffseg_jax.sampling.Sampler) in
    bf16 (and fp32 if time is left) against the PyTorch reference in fp16 autocast.
`ratios` in the JSON divides numbers of this run only (ours / PyTorch). TFLOP/s of a PyTorch row
uses the FLOP count XLA gives for our step of the same batch (the same network).
Version notes: written against jax 0.10.2 (CPU) and meant for jax 0.11 (CUDA 13); it uses
`compiled.cost_analysis()` as a dict or a one-element list (both forms exist across versions),
`jax.make_mesh(..., axis_types=...)` and `jax.make_array_from_process_local_data`; the U-Net needs a
flax with `nnx.List` (0.12 or later); PyTorch needs `torch.amp.GradScaler(device)` (2.3 or later).
A configuration that fails (e.g. out of memory) is reported as such and the check goes on. The JSON
is rewritten after every measurement, so a killed run leaves its partial results; the table is
printed last.

  python benchmarks/accelerator_check.py [--budget_s=400] [--out=FILE.json]
  python benchmarks/accelerator_check.py --dry    # tiny network and sizes: checks the script on CPU
"""

from __future__ import annotations

import gc
import json
import os
import platform
import statistics
import sys
import time
import traceback

from absl import app
from absl import flags

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top,wrong-import-position
import side_by_side  # pylint: disable=g-import-not-at-top,wrong-import-position

_DRY = flags.DEFINE_bool(
  'dry', False, 'Tiny network and sizes (CPU self-check).'
)
_BUDGET_S = flags.DEFINE_float(
  'budget_s',
  400.0,
  'Start no measurement that would likely end after this many seconds.',
)
_RUNS = flags.DEFINE_integer('runs', 0, 'Timed runs per measurement (0: auto).')
_OUT = flags.DEFINE_string(
  'out',
  os.path.join(HERE, 'results', 'accelerator_check.json'),
  'Output JSON file (the Markdown table goes beside it, as .md).',
)

# (kind, side, dtype, batch or (images, samples)) in order of priority: what falls off the time
# budget comes last. PyTorch runs in fp16 autocast ("float16").
PLAN = (
  ('train', 'ours', 'bfloat16', 8),
  ('train', 'torch', 'float16', 8),
  ('train', 'ours', 'float32', 8),
  ('sample', 'ours', 'bfloat16', (64, 16)),
  ('sample', 'torch', 'float16', (64, 16)),
  ('train', 'ours', 'bfloat16', 256),
  ('train', 'torch', 'float16', 256),
  ('train', 'ours', 'bfloat16', 64),
  ('train', 'torch', 'float16', 64),
  ('train', 'ours', 'float32', 64),
  ('train', 'ours', 'float32', 256),
  ('sample', 'ours', 'float32', (64, 16)),
)
DRY_PLAN = (
  ('train', 'ours', 'bfloat16', 2),
  ('train', 'torch', 'float16', 2),
  ('train', 'ours', 'float32', 4),
  ('sample', 'ours', 'bfloat16', (2, 4)),
  ('sample', 'torch', 'float16', (2, 4)),
)


def _median_seconds(fn, *, runs: int) -> float:
  times = []
  for _ in range(runs):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def matmul_peak_tflops(*, n: int, dtype, runs: int) -> float:
  """TFLOP/s of a jitted [n, n] x [n, n] matmul in `dtype` (after one warm-up call)."""
  a = jax.random.normal(jax.random.key(0), (n, n), dtype)
  b = jax.random.normal(jax.random.key(1), (n, n), dtype)
  f = jax.jit(jnp.dot)
  jax.block_until_ready(f(a, b))
  return 2.0 * n**3 / _median_seconds(lambda: f(a, b), runs=runs) / 1e12


def bench_train(
  *, side: str, dtype: str, batch: int, size: int, runs: int, dry: bool
) -> dict:
  result = {
    'kind': 'train',
    'side': side,
    'dtype': dtype,
    'batch': batch,
    'size': size,
  }
  start = time.perf_counter()
  if side == 'ours':
    cfg = side_by_side.config(batch=batch, dtype=dtype, smoke=dry)
    step, compiled = side_by_side.ours_train(cfg, size=size)
    flops = side_by_side.flops(compiled)
  else:
    cfg = side_by_side.config(batch=batch, smoke=dry)
    device = side_by_side.torch_device(jax.default_backend())
    step = side_by_side.torch_train(
      cfg, size=size, device=device, fp16=dtype == 'float16'
    )
    result['torch_device'] = device
    flops = None
  step()
  # First call included (PyTorch: warm-up).
  result['compile_s'] = time.perf_counter() - start
  seconds = side_by_side.time_round_robin({'step': step}, runs=runs)['step'][
    'seconds'
  ]
  result.update(
    step_ms=1e3 * seconds,
    img_per_s=batch / seconds,
    tflop_per_step=None if flops is None else flops / 1e12,
    tflop_per_s=None if flops is None else flops / seconds / 1e12,
  )
  return result


def bench_sample(
  *,
  side: str,
  dtype: str,
  images: int,
  samples: int,
  size: int,
  runs: int,
  dry: bool,
) -> dict:
  steps = 2 if dry else 10
  result = {
    'kind': 'sample',
    'side': side,
    'dtype': dtype,
    'images': images,
    'samples': samples,
    'size': size,
    'steps': steps,
  }
  start = time.perf_counter()
  if side == 'ours':
    cfg = side_by_side.config(batch=images, dtype=dtype, smoke=dry)
    call = side_by_side.ours_sample(
      cfg, images=images, samples=samples, size=size, steps=steps
    )
  else:
    cfg = side_by_side.config(batch=images, smoke=dry)
    device = side_by_side.torch_device(jax.default_backend())
    call = side_by_side.torch_sample(
      cfg,
      images=images,
      samples=samples,
      size=size,
      steps=steps,
      device=device,
      fp16=dtype == 'float16',
    )
    result['torch_device'] = device
  call()
  result['compile_s'] = time.perf_counter() - start
  seconds = side_by_side.time_round_robin({'call': call}, runs=runs)['call'][
    'seconds'
  ]
  result.update(call_ms=1e3 * seconds, masks_per_s=images * samples / seconds)
  return result


def _free_torch_memory():
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    return
  if torch.cuda.is_available():
    torch.cuda.empty_cache()


def ratios(runs: list[dict]) -> dict:
  """ours / PyTorch of this run: bf16 vs fp16 (and fp32 vs fp16) train and sampling rates."""
  rate = {}
  for r in runs:
    if r.get('status') == 'ok':
      key = r['batch'] if r['kind'] == 'train' else (r['images'], r['samples'])
      rate[(r['kind'], r['side'], r['dtype'], key)] = (
        r['img_per_s'] if r['kind'] == 'train' else r['masks_per_s']
      )
  out = {}
  for (kind, side, dtype, key), value in rate.items():
    peer = rate.get((kind, 'torch', 'float16', key))
    if side == 'ours' and peer:
      label = f'b{key}' if kind == 'train' else f'{key[0]}x{key[1]}'
      out[f'{kind}_{label}_{dtype}_vs_torch_fp16'] = value / peer
  return out


def _error_summary(err: Exception) -> str:
  text = f'{type(err).__name__}: {err}'
  oom = any(
    s in text
    for s in ('RESOURCE_EXHAUSTED', 'Out of memory', 'out of memory', 'OOM')
  )
  first = text.strip().splitlines()[0][:300]
  return ('OOM: ' if oom else '') + first


def machine_info() -> dict:
  device = jax.devices()[0]
  try:
    limit = (device.memory_stats() or {}).get('bytes_limit')
  except Exception:  # pylint: disable=broad-except
    limit = None
  return {
    'backend': jax.default_backend(),
    'device': str(device.device_kind),
    'device_count': jax.device_count(),
    'device_memory_limit_bytes': limit,
    'jax_version': jax.__version__,
    'python': platform.python_version(),
    'host': platform.node(),
    'platform': platform.platform(),
    'cpu_count': os.cpu_count(),
    'cpu_model': side_by_side.cpu_model(),
    'torch': _torch_info(),
    'date': time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime()),
  }


def _torch_info() -> str:
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as err:
    return f'not importable ({err})'
  cuda = (
    torch.cuda.get_device_name(0)
    if torch.cuda.is_available()
    else 'no CUDA device'
  )
  return f'{torch.__version__} ({cuda})'


def render(results: dict) -> str:
  peak = results.get('matmul_peak_tflops_bf16')
  lines = [
    f'device: {results["machine"]["device"]} ({results["machine"]["backend"]}), jax '
    f'{results["machine"]["jax_version"]}; matmul peak bf16 '
    f'{_fmt(peak, ".1f")} TFLOP/s, fp32 {_fmt(results.get("matmul_peak_tflops_fp32"), ".1f")} '
    f'TFLOP/s; total {results.get("elapsed_s", 0):.0f} s',
    '',
    '| measurement | dtype | batch | images/s or masks/s | ms per call | TFLOP/s | '
    '% of bf16 peak | compile s | status |',
    '|---|---|---|---|---|---|---|---|---|',
  ]
  for r in results['runs']:
    side = 'PyTorch reference' if r.get('side') == 'torch' else 'ours'
    if r['kind'] == 'train':
      what, batch, rate, ms = (
        f'{side}: train step {r["size"]}²',
        str(r['batch']),
        r.get('img_per_s'),
        r.get('step_ms'),
      )
    else:
      what = f'{side}: DDPM {r.get("steps", 10)}-step sampler {r["size"]}²'
      batch, rate, ms = (
        f'{r["images"]}x{r["samples"]}',
        r.get('masks_per_s'),
        r.get('call_ms'),
      )
    tflops = r.get('tflop_per_s')
    frac = None if tflops is None or not peak else 100 * tflops / peak
    lines.append(
      f'| {what} | {r["dtype"]} | {batch} | {_fmt(rate, ".1f")} | {_fmt(ms, ".1f")} | '
      f'{_fmt(tflops, ".2f")} | {_fmt(frac, ".1f")} | {_fmt(r.get("compile_s"), ".0f")} | '
      f'{r.get("status", "ok")} |'
    )
  if results.get('ratios'):
    lines += [
      '',
      '| same-run ratio (ours / PyTorch fp16) | value |',
      '|---|---|',
    ]
    lines += [f'| {k} | {v:.2f} |' for k, v in results['ratios'].items()]
  return '\n'.join(lines)


def _fmt(value, spec):
  return '-' if value is None else format(value, spec)


def main(argv) -> int:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments {argv[1:]}.')
  t0 = time.perf_counter()
  size = 32 if _DRY.value else 128
  runs = _RUNS.value or (2 if _DRY.value else 5)
  results = {
    'machine': machine_info(),
    'dry': _DRY.value,
    'budget_s': _BUDGET_S.value,
    'runs': [],
  }
  os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)

  md_path = os.path.splitext(_OUT.value)[0] + '.md'

  def save():  # After every measurement: a killed run leaves its partial JSON and table.
    results['elapsed_s'] = time.perf_counter() - t0
    with open(_OUT.value, 'w', encoding='utf-8') as f:
      json.dump(results, f, indent=1)
    with open(md_path, 'w', encoding='utf-8') as f:
      f.write(render(results) + '\n')

  print(
    f'accelerator check on {results["machine"]["device"]} ({results["machine"]["backend"]})',
    flush=True,
  )
  n = 256 if _DRY.value else 8192
  for key, dtype in (('bf16', jnp.bfloat16), ('fp32', jnp.float32)):
    try:
      results[f'matmul_peak_tflops_{key}'] = matmul_peak_tflops(
        n=n, dtype=dtype, runs=runs
      )
    except Exception as err:  # pylint: disable=broad-except
      results[f'matmul_peak_tflops_{key}'] = None
      results[f'matmul_peak_error_{key}'] = _error_summary(err)
    print(
      f'matmul peak {key}: {_fmt(results[f"matmul_peak_tflops_{key}"], ".2f")} TFLOP/s',
      flush=True,
    )
  save()

  jobs = [
    dict(
      kind=k,
      side=side,
      dtype=d,
      **({'batch': b} if k == 'train' else {'images': b[0], 'samples': b[1]}),
    )
    for k, side, d, b in (DRY_PLAN if _DRY.value else PLAN)
  ]
  longest = {'train': 0.0, 'sample': 0.0}
  for job in jobs:
    elapsed = time.perf_counter() - t0
    record = dict(job, size=size)
    if elapsed + 1.2 * longest[job['kind']] > _BUDGET_S.value:
      record['status'] = 'skipped (time budget)'
      results['runs'].append(record)
      print(
        f'{job}: skipped, {elapsed:.0f} s of {_BUDGET_S.value:.0f} s used',
        flush=True,
      )
      continue
    start = time.perf_counter()
    try:
      if job['kind'] == 'train':
        record.update(
          bench_train(
            side=job['side'],
            dtype=job['dtype'],
            batch=job['batch'],
            size=size,
            runs=runs,
            dry=_DRY.value,
          )
        )
      else:
        record.update(
          bench_sample(
            side=job['side'],
            dtype=job['dtype'],
            images=job['images'],
            samples=job['samples'],
            size=size,
            runs=runs,
            dry=_DRY.value,
          )
        )
      record['status'] = 'ok'
    except Exception as err:  # pylint: disable=broad-except  # OOM and friends: report, go on.
      record['status'] = _error_summary(err)
      record['traceback_tail'] = traceback.format_exc()[-1500:]
    duration = time.perf_counter() - start
    longest[job['kind']] = max(longest[job['kind']], duration)
    record['wall_s'] = duration
    results['runs'].append(record)
    gc.collect()
    _free_torch_memory()
    results['ratios'] = ratios(results['runs'])
    save()
    print(f'{job}: {record["status"]} in {duration:.0f} s', flush=True)
  peak = results.get('matmul_peak_tflops_bf16')
  ours_flops = {
    r['batch']: r['tflop_per_step']
    for r in results['runs']
    if r['kind'] == 'train'
    and r.get('side') == 'ours'
    and r.get('tflop_per_step')
  }
  for r in results['runs']:
    if (
      r.get('side') == 'torch'
      and r.get('status') == 'ok'
      and r['kind'] == 'train'
    ):
      flops = ours_flops.get(r['batch'])
      r['tflop_per_s'] = (
        None if flops is None else flops * r['img_per_s'] / r['batch']
      )
    if r.get('tflop_per_s') is not None and peak:
      r['fraction_of_bf16_peak'] = r['tflop_per_s'] / peak
  save()
  print(f'wrote {_OUT.value} and {md_path}\n', flush=True)
  print(render(results), flush=True)
  return 0 if all(r['status'] == 'ok' for r in results['runs']) else 1


if __name__ == '__main__':
  app.run(main)
