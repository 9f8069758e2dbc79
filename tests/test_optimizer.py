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

"""The EMA of the weights and the learning-rate schedule against float64 references."""

import jax.numpy as jnp
import numpy as np
import pytest

from diffseg_jax import optimizer


@pytest.mark.parametrize('step', [0, 1, 5, 90, 989, 5000, 10**6])
def test_ema_update_matches_the_formula(step):
  decay = 0.999
  rng = np.random.default_rng(step)
  ema = {
    'a': rng.standard_normal((3, 4)).astype(np.float32),
    'b': np.float32(2.0),
  }
  params = {
    'a': rng.standard_normal((3, 4)).astype(np.float32),
    'b': np.float32(-1.0),
  }
  got = optimizer.ema_update(ema, params, decay=decay, step=jnp.int32(step))
  # Warm-up: 0.1 at step 0, `decay` from step 8990.
  d = min(decay, (1.0 + step) / (10.0 + step))
  for key in ema:
    want = d * np.float64(ema[key]) + (1.0 - d) * np.float64(params[key])
    np.testing.assert_allclose(
      np.asarray(got[key], np.float64), want, rtol=1e-6, atol=1e-7
    )
  assert float(optimizer.ema_decay(decay, jnp.int32(step))) == pytest.approx(
    d, rel=1e-6
  )


def test_schedule_feeds_the_optimizer():
  optim = optimizer.OptimizerConfig(
    learning_rate=0.5,
    warmup_steps=2,
    decay_steps=0,
    grad_clip=0.0,
    weight_decay=0.0,
    b1=0.0,
    b2=0.0,
  )
  schedule = optimizer.learning_rate_schedule(optim, num_train_steps=10)
  tx = optimizer.make_optimizer(optim, schedule)
  params = {'w': jnp.zeros(())}
  state = tx.init(params)
  moves = []
  for _ in range(3):
    updates, state = tx.update({'w': jnp.ones(())}, state, params)
    moves.append(float(updates['w']))
  # Adam with b1 = b2 = 0 moves by -lr * g / (|g| + eps): the schedule's 0, 0.25, 0.5.
  np.testing.assert_allclose(moves, [0.0, -0.25, -0.5], rtol=1e-6)
