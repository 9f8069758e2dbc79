r"""Throughput of the default U-Net: jitted train step and 10-step DDPM sampling.

Times (after warm-up, median of --runs runs):
  * the train step (fp32, batch 8, diffusion.loss, AdamW + grad clip 1.0) at
    128x128 and 64x64, in images/s;
  * the 10-step DDPM sampler drawing 4 masks for each of 8 images (one batched
    network call of 32 per step) at 128x128 and 64x64, in masks/s;
and reports the train step's achieved GFLOP/s (XLA cost analysis) against a
float32 matmul peak measured in the same run, and the ratio to the authors'
PyTorch code on the same 2-core machine type (numbers from issue 2).

  python benchmarks/step_throughput.py            # full (5 runs)
  python benchmarks/step_throughput.py --quick    # 2 runs, for a smoke check
  python benchmarks/step_throughput.py --conv_impl=xla   # stock XLA layers

Writes benchmarks/results/step_throughput.json (or --out).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
from flax import nnx
import numpy as np
import optax

from diffseg_jax import diffusion
from diffseg_jax.models import layers
from diffseg_jax.models import unet

# The authors' PyTorch code, fp32, same network and batches, 2-core machine
# (issue 2): ranges measured there; ratios use the midpoints.
TORCH_REFERENCE = {
    'train_img_per_s_128': (3.2, 3.4),
    'train_img_per_s_64': (11.6, 11.9),
    'sample_masks_per_s_128': (0.9, 0.9),
    'sample_masks_per_s_64': (4.1, 4.1),
}

_QUICK = flags.DEFINE_bool('quick', False, 'Fewer runs (2) for a smoke check.')
_RUNS = flags.DEFINE_integer('runs', 5, 'Timed runs per measurement (median).')
_CONV_IMPL = flags.DEFINE_enum('conv_impl', 'auto', ['auto', 'xla', 'cpu_fast'],
                               'UNetConfig.conv_impl.')
_SIZES = flags.DEFINE_list('sizes', ['128', '64'], 'Image sizes to time.')
_OUT = flags.DEFINE_string(
    'out', os.path.join(os.path.dirname(__file__), 'results',
                        'step_throughput.json'), 'Output JSON file.')

BATCH = 8
NUM_SAMPLES = 4


def _median_seconds(fn, *, runs: int) -> tuple[float, float]:
  """Calls fn() once to warm up; returns the medians over `runs` calls of the
  wall time and of this process's CPU time (all threads), in seconds.

  On a shared machine the wall time includes waiting for cores; the CPU time
  is the work done and is far less sensitive to other processes.
  """
  jax.block_until_ready(fn())
  wall, cpu = [], []
  for _ in range(runs):
    start, start_cpu = time.perf_counter(), time.process_time()
    jax.block_until_ready(fn())
    wall.append(time.perf_counter() - start)
    cpu.append(time.process_time() - start_cpu)
  return statistics.median(wall), statistics.median(cpu)


def matmul_peak_gflops(*, n: int = 2048, runs: int = 5) -> float:
  """float32 GFLOP/s of a jitted n x n matmul on the default device."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
  f = jax.jit(jnp.dot)
  wall, _ = _median_seconds(lambda: f(a, b), runs=runs)
  return 2 * n ** 3 / wall / 1e9


def _flops(compiled) -> float:
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0]
  return float(analysis.get('flops', float('nan'))) if analysis else float('nan')


def make_train_step(graphdef, optimizer, config: diffusion.DiffusionConfig):
  """Jitted (params, opt_state, batch, rng) -> (params, opt_state, loss)."""

  def loss_fn(params, image, x0, rng):
    model = nnx.merge(graphdef, params)
    losses, _ = diffusion.loss(lambda z, t, i: model(z, t, i), x0=x0,
                               image=image, rng=rng, config=config)
    return jnp.mean(losses)

  def step(params, opt_state, image, x0, rng):
    loss, grads = jax.value_and_grad(loss_fn)(params, image, x0, rng)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return jax.jit(step, donate_argnums=(0, 1))


def bench_train(*, model_config, size: int, runs: int) -> dict[str, float]:
  model = unet.UNet(model_config, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model, nnx.Param)
  optimizer = optax.chain(optax.clip_by_global_norm(1.0),
                          optax.adamw(1e-4, b1=0.9, b2=0.999,
                                      weight_decay=0.01))
  opt_state = optimizer.init(params)
  rng = np.random.default_rng(0)
  image = jnp.asarray(rng.uniform(size=(BATCH, size, size, 1)), jnp.float32)
  x0 = jnp.asarray(np.where(rng.uniform(size=(BATCH, size, size, 1)) > 0.7,
                            1.0, -1.0), jnp.float32)
  step = make_train_step(graphdef, optimizer, diffusion.DiffusionConfig())
  key = jax.random.key(0)
  compiled = step.lower(params, opt_state, image, x0, key).compile()
  state = {'params': params, 'opt_state': opt_state}

  def run():
    state['params'], state['opt_state'], loss = compiled(
        state['params'], state['opt_state'], image, x0, key)
    return loss

  seconds, cpu_seconds = _median_seconds(run, runs=runs)
  flops = _flops(compiled)
  return {'seconds': seconds, 'cpu_seconds': cpu_seconds,
          'img_per_s': BATCH / seconds, 'img_per_cpu_s': BATCH / cpu_seconds,
          'gflop_per_step': flops / 1e9, 'gflop_per_s': flops / seconds / 1e9}


def bench_sample(*, model_config, size: int, runs: int) -> dict[str, float]:
  model = unet.UNet(model_config, rngs=nnx.Rngs(0))
  # Non-zero output layers, so that sampling does real work on real values.
  model.out_conv.kernel = nnx.Param(0.01 * jax.random.normal(
      jax.random.key(1), model.out_conv.kernel.shape))
  graphdef, params = nnx.split(model, nnx.Param)
  image = jnp.asarray(
      np.random.default_rng(0).uniform(size=(BATCH, size, size, 1)),
      jnp.float32)

  @jax.jit
  def sample(params, image, rng):
    net = nnx.merge(graphdef, params)
    return diffusion.sample(lambda z, t, i: net(z, t, i), image=image, rng=rng,
                            num_samples=NUM_SAMPLES,
                            diffusion=diffusion.DiffusionConfig(),
                            sampler=diffusion.SamplerConfig())

  key = jax.random.key(0)
  seconds, cpu_seconds = _median_seconds(lambda: sample(params, image, key),
                                         runs=runs)
  return {'seconds': seconds, 'masks_per_s': BATCH * NUM_SAMPLES / seconds,
          'masks_per_cpu_s': BATCH * NUM_SAMPLES / cpu_seconds}


def main(argv):
  del argv
  runs = 2 if _QUICK.value else _RUNS.value
  model_config = unet.UNetConfig(conv_impl=_CONV_IMPL.value)
  peak = matmul_peak_gflops(runs=runs)
  results = {
      'params': unet.count_params(model_config),
      'conv_impl': _CONV_IMPL.value,
      'resolved_conv_impl': layers.resolve_conv_impl(_CONV_IMPL.value),
      'backend': jax.default_backend(),
      'device': str(jax.devices()[0].device_kind),
      'cpu_count': os.cpu_count(),
      'machine': platform.platform(),
      'processor': platform.processor(),
      'runs': runs,
      'batch': BATCH,
      'num_samples': NUM_SAMPLES,
      'matmul_peak_gflop_per_s': peak,
      'load_average_at_start': os.getloadavg(),
  }
  for size in [int(s) for s in _SIZES.value]:
    train = bench_train(model_config=model_config, size=size, runs=runs)
    results[f'train_img_per_s_{size}'] = train['img_per_s']
    results[f'train_gflop_per_step_{size}'] = train['gflop_per_step']
    results[f'train_gflop_per_s_{size}'] = train['gflop_per_s']
    results[f'train_fraction_of_matmul_peak_{size}'] = train['gflop_per_s'] / peak
    results[f'train_img_per_cpu_s_{size}'] = train['img_per_cpu_s']
    sample = bench_sample(model_config=model_config, size=size, runs=runs)
    results[f'sample_masks_per_s_{size}'] = sample['masks_per_s']
    results[f'sample_masks_per_cpu_s_{size}'] = sample['masks_per_cpu_s']
  for key, (low, high) in TORCH_REFERENCE.items():
    if key in results:
      results[f'{key}_vs_torch'] = results[key] / ((low + high) / 2)
  os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
  with open(_OUT.value, 'w') as f:
    json.dump(results, f, indent=2)

  print(f'{"metric":32s} {"ours":>10s} {"torch":>12s} {"ratio":>7s}')
  for key, (low, high) in TORCH_REFERENCE.items():
    if key in results:
      print(f'{key:32s} {results[key]:10.2f} {f"{low}-{high}":>12s} '
            f'{results[key + "_vs_torch"]:7.2f}')
  for size in _SIZES.value:
    print(f'per CPU-second @{size}: train '
          f'{results[f"train_img_per_cpu_s_{size}"]:.2f} img, sampling '
          f'{results[f"sample_masks_per_cpu_s_{size}"]:.2f} masks')
    print(f'train GFLOP/s @{size}: {results[f"train_gflop_per_s_{size}"]:.1f} '
          f'({results[f"train_gflop_per_step_{size}"]:.1f} GFLOP/step) vs '
          f'matmul peak {peak:.1f} GFLOP/s')
  print(f'params {results["params"]:,}; load average at start '
        f'{results["load_average_at_start"]}; wrote {_OUT.value}')


if __name__ == '__main__':
  app.run(main)
