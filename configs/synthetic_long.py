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

r"""A longer recipe on synthetic_lesions/32: configs/best.py trained 3x longer, for <= 60 min on 2 CPU cores.

configs/best.py (posterior-mean target, DPM-Solver++(2M) sampling) with the paper's SNR+1 loss
weighting, as it was measured (best.py's uniform weighting came later and is not measured at this
length), and 6,000 steps of batch 32 (best.py:
2,000; warm-up 500, cosine decay over the last 4,500) and a slower EMA, then the
same evaluation (500 test images, 4 and 16 samples, oracle and image-blind rows). Measured
as committed on a 2-core AMD EPYC, seeds 0-2 (benchmarks/RESULTS.md, "The committed long recipe,
3 seeds"): seed 0 trained in 36.5 min (beside light jobs of ours) and took 44 min end to end; GED16
1.51x and mode TV16 1.57x the true oracle, HM-IoU16 0.057 below it (mean of 3 seeds), flat after
~20 min. It does not reach issue 10's targets (1.15x / 1.2x / 0.03): most of the shapes' error is
what the image does not say, and the mode frequencies are off in the network's belief, which
DPM-Solver++ draws about as an exact sampler would (benchmarks/mode_calibration.py).

  python -m diffseg_jax.main --config=configs/synthetic_long.py --workdir=/tmp/synthetic_long
  python -m diffseg_jax.main --config=configs/synthetic_long.py:smoke --workdir=/tmp/long_smoke
"""

from configs import best
from configs import default


def get_config(arg=None):
  config = best.get_config(arg)
  config.diffusion.weighting = 'snr_plus1'
  config.num_train_steps = 6_000
  config.optim.warmup_steps = 500
  config.optim.decay_steps = 4_500
  config.ema_decay = 0.9995
  config.checkpoint_every_steps = 1_000
  config.validation.every_steps = 2_000
  if arg == 'smoke':
    default.apply_smoke(config)
  return config
