r"""Accelerator check (GPU/TPU): train-step and sampler throughput of the default U-Net.

Run through benchmarks/accelerator_check.sh (no network needed). Measures, in this order, skipping
what no longer fits the time budget:
  * the device's bf16 (and fp32) matmul peak: a jitted n x n `jnp.dot`;
  * the training step of diffseg_jax.train (augmentation, diffusion loss, AdamW, EMA) at 128x128
    for batch 8, 64 and 256 in fp32 and bf16 (config.model.dtype): images/s, ms/step, achieved
    TFLOP/s from XLA's cost analysis and its fraction of the measured bf16 peak, compile time;
  * the 10-step DDPM sampler (diffseg_jax.sampling.Sampler) for 4 samples x 8 images and
    16 samples x 64 images: masks/s.
A configuration that fails (e.g. out of memory) is reported as such and the check goes on. The JSON
is rewritten after every measurement, so a killed run leaves its partial results; the table is
printed last.

  python benchmarks/accelerator_check.py [--budget_s=400] [--out=FILE.json]
  python benchmarks/accelerator_check.py --dry    # tiny network and sizes: checks the script on CPU
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

import peak_memory  # pylint: disable=g-import-not-at-top,wrong-import-position

TRAIN_PLAN = (("float32", 8), ("bfloat16", 8), ("float32", 64), ("bfloat16", 64),
              ("bfloat16", 256), ("float32", 256))
SAMPLE_PLAN = (("float32", 8, 4), ("float32", 64, 16), ("bfloat16", 64, 16))
DRY_TRAIN_PLAN = (("float32", 2), ("bfloat16", 2), ("float32", 4))
DRY_SAMPLE_PLAN = (("float32", 2, 2), ("bfloat16", 2, 4))


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


def _flops(compiled) -> float | None:
  try:
    analysis = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except  # Not every back end implements it.
    return None
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else None
  flops = analysis.get("flops") if analysis else None
  return float(flops) if flops else None


def _config(*, dry: bool, batch_size: int, dtype: str):
  config = peak_memory.build_config("default", batch_size=batch_size, dtype=dtype)
  if dry:
    from configs import default  # pylint: disable=g-import-not-at-top

    config.unlock()
    default.apply_smoke(config)
    config.lock()
  return config


def bench_train(*, dtype: str, batch: int, size: int, runs: int, dry: bool) -> dict:
  config = _config(dry=dry, batch_size=batch, dtype=dtype)
  start = time.perf_counter()
  compiled, state, data = peak_memory.build_train_step(config, size=size)
  compile_s = time.perf_counter() - start
  holder = {"state": state}

  def step():
    holder["state"], out = compiled(holder["state"], data)
    return out

  jax.block_until_ready(step())
  seconds = _median_seconds(step, runs=runs)
  flops = _flops(compiled)
  result = {"kind": "train", "dtype": dtype, "batch": batch, "size": size, "compile_s": compile_s,
            "step_ms": 1e3 * seconds, "img_per_s": batch / seconds,
            "tflop_per_step": None if flops is None else flops / 1e12,
            "tflop_per_s": None if flops is None else flops / seconds / 1e12}
  del holder, state, data, compiled
  return result


def bench_sample(*, dtype: str, images: int, samples: int, size: int, runs: int, dry: bool) -> dict:
  from diffseg_jax import sampling  # pylint: disable=g-import-not-at-top
  from diffseg_jax import train  # pylint: disable=g-import-not-at-top

  config = _config(dry=dry, batch_size=images, dtype=dtype)
  config.unlock()
  config.sampler.name = "ddpm"
  config.sampler.num_steps = 2 if dry else 10
  config.sampling_batch = images * samples  # One network call per step for all masks.
  config.lock()
  mesh = train.make_mesh(config)
  graphdef, _ = train.abstract_model(config)
  params = jax.jit(lambda: train.init_params(config, jax.random.key(0)))()
  sampler = sampling.Sampler(config, graphdef, mesh)
  image = np.random.default_rng(0).uniform(size=(images, size, size, 1)).astype(np.float32)
  rng = jax.random.key(1)
  start = time.perf_counter()
  sampler(params, image, rng, samples)
  compile_s = time.perf_counter() - start
  seconds = _median_seconds(lambda: sampler(params, image, rng, samples), runs=runs)
  return {"kind": "sample", "dtype": dtype, "images": images, "samples": samples, "size": size,
          "steps": config.sampler.num_steps, "compile_s": compile_s, "call_ms": 1e3 * seconds,
          "masks_per_s": images * samples / seconds}


def _error_summary(err: Exception) -> str:
  text = f"{type(err).__name__}: {err}"
  oom = any(s in text for s in ("RESOURCE_EXHAUSTED", "Out of memory", "out of memory", "OOM"))
  first = text.strip().splitlines()[0][:300]
  return ("OOM: " if oom else "") + first


def machine_info() -> dict:
  device = jax.devices()[0]
  try:
    limit = (device.memory_stats() or {}).get("bytes_limit")
  except Exception:  # pylint: disable=broad-except
    limit = None
  return {"backend": jax.default_backend(), "device": str(device.device_kind),
          "device_count": jax.device_count(), "device_memory_limit_bytes": limit,
          "jax_version": jax.__version__, "python": platform.python_version(),
          "host": platform.node(), "platform": platform.platform(), "cpu_count": os.cpu_count(),
          "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}


def render(results: dict) -> str:
  peak = results.get("matmul_peak_tflops_bf16")
  lines = [f"device: {results['machine']['device']} ({results['machine']['backend']}), jax "
           f"{results['machine']['jax_version']}; matmul peak bf16 "
           f"{_fmt(peak, '.1f')} TFLOP/s, fp32 {_fmt(results.get('matmul_peak_tflops_fp32'), '.1f')} "
           f"TFLOP/s; total {results.get('elapsed_s', 0):.0f} s", "",
           "| measurement | dtype | batch | images/s or masks/s | ms per call | TFLOP/s | "
           "% of bf16 peak | compile s | status |",
           "|---|---|---|---|---|---|---|---|---|"]
  for r in results["runs"]:
    if r["kind"] == "train":
      what, batch, rate, ms = f"train step {r['size']}²", str(r["batch"]), r.get("img_per_s"), r.get("step_ms")
    else:
      what = f"DDPM {r.get('steps', 10)}-step sampler {r['size']}²"
      batch, rate, ms = f"{r['images']}x{r['samples']}", r.get("masks_per_s"), r.get("call_ms")
    tflops = r.get("tflop_per_s")
    frac = None if tflops is None or not peak else 100 * tflops / peak
    lines.append(f"| {what} | {r['dtype']} | {batch} | {_fmt(rate, '.1f')} | {_fmt(ms, '.1f')} | "
                 f"{_fmt(tflops, '.2f')} | {_fmt(frac, '.1f')} | {_fmt(r.get('compile_s'), '.0f')} | "
                 f"{r.get('status', 'ok')} |")
  return "\n".join(lines)


def _fmt(value, spec):
  return "-" if value is None else format(value, spec)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--dry", action="store_true", help="Tiny network and sizes (CPU self-check).")
  parser.add_argument("--budget_s", type=float, default=400.0,
                      help="Start no measurement that would likely end after this many seconds.")
  parser.add_argument("--runs", type=int, default=0, help="Timed runs per measurement (0: auto).")
  parser.add_argument("--out", default=os.path.join(HERE, "results", "accelerator_check.json"))
  args = parser.parse_args(argv)
  t0 = time.perf_counter()
  size = 32 if args.dry else 128
  runs = args.runs or (2 if args.dry else 5)
  results = {"machine": machine_info(), "dry": args.dry, "budget_s": args.budget_s, "runs": []}
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)

  def save():
    results["elapsed_s"] = time.perf_counter() - t0
    with open(args.out, "w", encoding="utf-8") as f:
      json.dump(results, f, indent=1)

  print(f"accelerator check on {results['machine']['device']} ({results['machine']['backend']})",
        flush=True)
  n = 256 if args.dry else 8192
  for key, dtype in (("bf16", jnp.bfloat16), ("fp32", jnp.float32)):
    try:
      results[f"matmul_peak_tflops_{key}"] = matmul_peak_tflops(n=n, dtype=dtype, runs=runs)
    except Exception as err:  # pylint: disable=broad-except
      results[f"matmul_peak_tflops_{key}"] = None
      results[f"matmul_peak_error_{key}"] = _error_summary(err)
    print(f"matmul peak {key}: {_fmt(results[f'matmul_peak_tflops_{key}'], '.2f')} TFLOP/s", flush=True)
  save()

  jobs = [dict(kind="train", dtype=d, batch=b) for d, b in (DRY_TRAIN_PLAN if args.dry else TRAIN_PLAN)]
  jobs += [dict(kind="sample", dtype=d, images=i, samples=s)
           for d, i, s in (DRY_SAMPLE_PLAN if args.dry else SAMPLE_PLAN)]
  # The 4 x 8 sampler right after the batch-8 train steps: it must not fall off the budget.
  jobs.insert(2, jobs.pop(len(jobs) - len(DRY_SAMPLE_PLAN if args.dry else SAMPLE_PLAN)))
  longest = {"train": 0.0, "sample": 0.0}
  for job in jobs:
    elapsed = time.perf_counter() - t0
    record = dict(job, size=size)
    if elapsed + 1.2 * longest[job["kind"]] > args.budget_s:
      record["status"] = "skipped (time budget)"
      results["runs"].append(record)
      print(f"{job}: skipped, {elapsed:.0f} s of {args.budget_s:.0f} s used", flush=True)
      continue
    start = time.perf_counter()
    try:
      if job["kind"] == "train":
        record.update(bench_train(dtype=job["dtype"], batch=job["batch"], size=size, runs=runs,
                                  dry=args.dry))
      else:
        record.update(bench_sample(dtype=job["dtype"], images=job["images"],
                                   samples=job["samples"], size=size, runs=runs, dry=args.dry))
      record["status"] = "ok"
    except Exception as err:  # pylint: disable=broad-except  # OOM and friends: report, go on.
      record["status"] = _error_summary(err)
      record["traceback_tail"] = traceback.format_exc()[-1500:]
    duration = time.perf_counter() - start
    longest[job["kind"]] = max(longest[job["kind"]], duration)
    record["wall_s"] = duration
    results["runs"].append(record)
    gc.collect()
    save()
    print(f"{job}: {record['status']} in {duration:.0f} s", flush=True)
  peak = results.get("matmul_peak_tflops_bf16")
  for r in results["runs"]:
    if r.get("tflop_per_s") is not None and peak:
      r["fraction_of_bf16_peak"] = r["tflop_per_s"] / peak
  save()
  print(f"wrote {args.out}\n", flush=True)
  print(render(results), flush=True)
  return 0 if all(r["status"] == "ok" for r in results["runs"]) else 1


if __name__ == "__main__":
  sys.exit(main())
