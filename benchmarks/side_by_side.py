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

"""Both sides of a speed comparison, built for one run: ours and the PyTorch reference.

Ours is the real thing: the train step that `diffseg_jax.train` builds (augmentation, diffusion
loss, AdamW with clipping, EMA, non-finite guard; via peak_memory.build_train_step) and the
`diffseg_jax.sampling.Sampler` that evaluation uses. The peer is benchmarks/torch_reference.py
(the same network from SPEC §2a; AdamW, clipping and EMA, fp16 autocast with a GradScaler on a
GPU as the authors train; it does no augmentation, which the authors ran in their data loader).
Every case is a callable that blocks until its work is done; `time_round_robin` times the cases
of one comparison in turns, so both sides see the same machine load.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from typing import Callable

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
  sys.path.insert(0, HERE)

import peak_memory  # pylint: disable=g-import-not-at-top,wrong-import-position


def cpu_model() -> str:
  """`lscpu`'s model name (else /proc/cpuinfo's, else platform's)."""
  try:
    out = subprocess.run(
      ['lscpu'], capture_output=True, text=True, check=False
    ).stdout
  except OSError:
    out = ''
  for text, key in (
    (out, 'Model name:'),
    (_read('/proc/cpuinfo'), 'model name'),
  ):
    for line in text.splitlines():
      if line.strip().startswith(key):
        return line.split(':', 1)[1].strip()
  import platform  # pylint: disable=g-import-not-at-top

  return platform.processor() or platform.machine()


def _read(path: str) -> str:
  try:
    with open(path, encoding='utf-8') as f:
      return f.read()
  except OSError:
    return ''


def cpu_threads() -> int:
  """CPUs this process may run on: XLA's CPU client sizes its thread pool by them."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1


def time_round_robin(
  cases: dict[str, Callable[[], object]], *, runs: int
) -> dict[str, dict[str, float]]:
  """Warms each case up once, then times `runs` rounds of every case in turn.

  Returns:
    {name: {'seconds': median wall s, 'cpu_seconds': median process CPU s}}.
  """
  for fn in cases.values():
    fn()
  wall = {name: [] for name in cases}
  cpu = {name: [] for name in cases}
  for _ in range(runs):
    for name, fn in cases.items():
      start, start_cpu = time.perf_counter(), time.process_time()
      fn()
      wall[name].append(time.perf_counter() - start)
      cpu[name].append(time.process_time() - start_cpu)
  return {
    name: {
      'seconds': statistics.median(wall[name]),
      'cpu_seconds': statistics.median(cpu[name]),
    }
    for name in cases
  }


def config(
  *,
  batch: int,
  dtype: str = 'float32',
  conv_impl: str = 'auto',
  smoke: bool = False,
  network_chunk_size: int = -1,
):
  """configs/default.py (the paper's network) with batch, compute dtype, conv impl and network chunk size set."""
  cfg = peak_memory.build_config('default', batch_size=batch, dtype=dtype)
  cfg.unlock()
  cfg.model.conv_impl = conv_impl
  cfg.network_chunk_size = network_chunk_size
  if smoke:
    from configs import default  # pylint: disable=g-import-not-at-top

    default.apply_smoke(cfg)
  cfg.lock()
  return cfg


def flops(compiled) -> float | None:
  """XLA's cost-analysis FLOPs of a compiled function (None where unavailable)."""
  try:
    analysis = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except  # Not every back end implements it.
    return None
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else None
  value = analysis.get('flops') if analysis else None
  return float(value) if value else None


def ours_train(cfg, *, size: int):
  """(step callable, compiled) of diffseg_jax.train's step on a random [B, size, size] batch."""
  import jax  # pylint: disable=g-import-not-at-top

  compiled, state, batch = peak_memory.build_train_step(cfg, size=size)
  holder = {'state': state}

  def step():
    holder['state'], out = compiled(holder['state'], batch)
    jax.block_until_ready(out)

  return step, compiled


def ours_sample(cfg, *, images: int, samples: int, size: int, steps: int):
  """Callable drawing `samples` masks for each of `images` random images (diffseg_jax.sampling)."""
  import jax  # pylint: disable=g-import-not-at-top

  from diffseg_jax import parallel  # pylint: disable=g-import-not-at-top
  from diffseg_jax import sampling  # pylint: disable=g-import-not-at-top
  from diffseg_jax import settings as settings_lib  # pylint: disable=g-import-not-at-top
  from diffseg_jax.models import unet  # pylint: disable=g-import-not-at-top

  cfg = cfg.copy_and_resolve_references()
  cfg.sampler.name = 'ddpm'
  cfg.sampler.variance = 'large'
  cfg.sampler.num_steps = steps
  # One network call per step for all masks.
  cfg.sampling_batch = images * samples
  settings = settings_lib.resolve(cfg)
  mesh = parallel.make_mesh(cfg.mesh.data)
  graphdef, _ = unet.abstract_model(settings.unet)
  params = jax.jit(lambda: unet.init_params(settings.unet, jax.random.key(0)))()
  sampler = sampling.Sampler(graphdef, mesh, **settings.sampler_kwargs())
  image = (
    np.random.default_rng(0)
    .uniform(size=(images, size, size, 1))
    .astype(np.float32)
  )
  keys = jax.random.split(jax.random.key(1), images)
  return lambda: sampler(params, image, keys, samples)  # Returns numpy: blocks.


def torch_device(backend: str) -> str:
  """'cuda' when JAX runs on a GPU and torch sees one, else 'cpu'."""
  import torch  # pylint: disable=g-import-not-at-top

  return 'cuda' if backend == 'gpu' and torch.cuda.is_available() else 'cpu'


def _torch_net(cfg, device: str):
  import torch_reference  # pylint: disable=g-import-not-at-top

  m = cfg.model
  net_config = torch_reference.NetConfig(
    base_channels=m.base_channels,
    channel_mult=tuple(m.channel_mult),
    num_res_blocks=tuple(m.num_res_blocks),
    num_middle_blocks=m.num_middle_blocks,
    attention_levels=tuple(m.attention_levels),
    num_heads=m.num_heads,
    image_channels=1,
    output_activation='tanh' if cfg.diffusion.prediction == 'x' else 'identity',
  )
  return torch_reference.UNet(net_config).to(device)


def _sync(device: str):
  import torch  # pylint: disable=g-import-not-at-top

  if device == 'cuda':
    torch.cuda.synchronize()


def torch_train(cfg, *, size: int, device: str, fp16: bool):
  """Callable running one PyTorch reference train step (fp16 autocast + GradScaler if fp16)."""
  import torch  # pylint: disable=g-import-not-at-top
  import torch_reference  # pylint: disable=g-import-not-at-top

  torch.manual_seed(0)
  net = _torch_net(cfg, device).train()
  d, o = cfg.diffusion, cfg.optim
  step = torch_reference.make_train_step(
    net,
    lr=o.learning_rate,
    weight_decay=o.weight_decay,
    grad_clip=o.grad_clip,
    ema_decay=cfg.ema_decay,
    amp_dtype=torch.float16 if fp16 else None,
    input_scale=d.input_scale,
    prediction=d.prediction,
    weighting=d.weighting,
  )
  b = cfg.batch_size
  image = torch.rand(b, 1, size, size, device=device)
  x0 = torch.where(torch.rand(b, 1, size, size, device=device) > 0.7, 1.0, -1.0)

  def run():
    step(image, x0)
    _sync(device)

  return run


def torch_sample(
  cfg,
  *,
  images: int,
  samples: int,
  size: int,
  steps: int,
  device: str,
  fp16: bool,
):
  """Callable drawing masks with the PyTorch reference's DDPM sampler (fp16 autocast if fp16)."""
  import torch  # pylint: disable=g-import-not-at-top
  import torch_reference  # pylint: disable=g-import-not-at-top

  torch.manual_seed(0)
  net = _torch_net(cfg, device).eval()
  image = torch.rand(images, 1, size, size, device=device)
  generator = torch.Generator(device=device).manual_seed(1)

  def run():
    with torch.autocast(device, dtype=torch.float16, enabled=fp16):
      masks = torch_reference.ddpm_sample(
        net,
        image=image,
        num_samples=samples,
        num_steps=steps,
        input_scale=cfg.diffusion.input_scale,
        prediction=cfg.diffusion.prediction,
        generator=generator,
      )
    _sync(device)
    return masks

  return run
