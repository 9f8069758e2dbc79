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

"""The optimizer (AdamW with gradient clipping), its learning-rate schedule, and the EMA of the weights."""

import dataclasses

import jax
import jax.numpy as jnp
import optax


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """AdamW settings (config.optim).

  Attributes:
    learning_rate: peak learning rate.
    b1, b2: Adam moment decays.
    weight_decay: decoupled weight decay.
    warmup_steps: linear warm-up from 0 over this many steps.
    decay_steps: cosine decay to 0 over the last `decay_steps` steps.
    grad_clip: clip the global gradient norm to this (0: no clipping).
  """

  learning_rate: float = 1e-4
  b1: float = 0.9
  b2: float = 0.999
  weight_decay: float = 0.01
  warmup_steps: int = 1000
  decay_steps: int = 100_000
  grad_clip: float = 1.0


def learning_rate_schedule(
  optim: OptimizerConfig, num_train_steps: int
) -> optax.Schedule:
  """Linear warm-up, constant, then cosine decay to 0 over the last `decay_steps` steps."""
  warmup = max(int(optim.warmup_steps), 0)
  decay = min(max(int(optim.decay_steps), 0), max(num_train_steps - warmup, 0))
  constant = max(num_train_steps - warmup - decay, 0)
  lr = optim.learning_rate
  pieces = [
    optax.linear_schedule(0.0, lr, warmup),
    optax.constant_schedule(lr),
    optax.cosine_decay_schedule(lr, max(decay, 1)),
  ]
  return optax.join_schedules(pieces, boundaries=[warmup, warmup + constant])


def make_optimizer(
  optim: OptimizerConfig, schedule: optax.Schedule
) -> optax.GradientTransformation:
  """Global-norm clipping (if grad_clip > 0), then AdamW with `schedule`."""
  return optax.chain(
    optax.clip_by_global_norm(optim.grad_clip)
    if optim.grad_clip > 0
    else optax.identity(),
    optax.adamw(
      schedule, b1=optim.b1, b2=optim.b2, weight_decay=optim.weight_decay
    ),
  )


def ema_decay(decay: float, step):
  """EMA decay with the usual warm-up min(decay, (1 + step) / (10 + step))."""
  step = step.astype(jnp.float32)
  return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def ema_update(ema_params, params, *, decay: float, step):
  """ema <- d ema + (1 - d) params with d = ema_decay(decay, step)."""
  d = ema_decay(decay, step)
  return jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, ema_params, params)
