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

r"""A longer recipe on synthetic_lesions/32: configs/best.py trained 4x longer (meant for <= 60 min on 2 CPU cores).

8,000 steps of batch 32 (the quickstart: 2,000), a longer cosine decay and a slower EMA, then the
quickstart's evaluation (500 test images, 4 and 16 samples, oracle and image-blind rows). The time is
an estimate, not a measurement: the quickstart trained at ~5.4 steps/s on an idle 2-core AMD EPYC
(8,000 steps: ~25 min) and at 1.3-3.1 steps/s on the 2-core Intel Xeon (at 3.1: ~43 min), plus a few
minutes of validation and evaluation. Time it before relying on the 60 minutes.

  python -m diffseg_jax.main --config=configs/synthetic_long.py --workdir=/tmp/synthetic_long
  python -m diffseg_jax.main --config=configs/synthetic_long.py:smoke --workdir=/tmp/long_smoke
"""

from configs import best
from configs import default


def get_config(arg=None):
  config = best.get_config(arg)
  config.num_train_steps = 8_000
  config.optim.warmup_steps = 500
  config.optim.decay_steps = 6_000
  config.ema_decay = 0.9995
  config.checkpoint_every_steps = 1_000
  config.validation.every_steps = 2_000
  if arg == 'smoke':
    default.apply_smoke(config)
  return config
