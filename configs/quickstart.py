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

r"""Quickstart: the built-in synthetic set (32x32, no download) with a small U-Net, on a laptop CPU.

configs/best.py (the paper's method on this set, configs/synthetic_paper.py, with the changes that
paid here: the posterior-mean target, uniform weighting, DPM-Solver++(2M)) trained half as long:
  * 1,000 steps of batch 32 instead of 2,000 (warm-up 100, cosine decay over the last 400), and no
    validation during training (the evaluation at the end scores the test split);
  * DPM-Solver++(2M) at 7 steps instead of 10 (on the 2,000-step paper recipe: 3 seeds, paired,
    better than DDPM at 10 and 1 min faster to evaluate).
Over 3 seeds on a 2-core AMD EPYC: 1.65x / 1.69x the true oracle's GED16 / mode TV16, the same
GED16 as synthetic_paper.py at 2,000 steps and a better mode TV16 (paired), in 8.9-10.6 min end to
end (benchmarks/RESULTS.md, "The 1,000-step quickstart"; not timed on an Intel Xeon; nothing here
is measured on LIDC). Trains, then evaluates 500 test images against the
true annotation distribution (oracle) and an image-blind baseline:

  python -m diffseg_jax.main --config=configs/quickstart.py --workdir=/tmp/quickstart
  python -m diffseg_jax.main --config=configs/quickstart.py --workdir=/tmp/quickstart --mode=evaluate
  python -m diffseg_jax.main --config=configs/quickstart.py --workdir=/tmp/quickstart --mode=predict \
      --input=lesion.png  # 32x32 grey (the training window); larger images need --center=ROW,COL

Results land in /tmp/quickstart/eval/test/metrics.md (GED, HM-IoU, CI, mode TV vs oracle and blind).
"""

from configs import best
from configs import default


def get_config(arg=None):
  config = best.get_config(arg)
  config.sampler.num_steps = 7
  config.num_train_steps = 1_000
  config.optim.warmup_steps = 100
  config.optim.decay_steps = 400
  config.validation.every_steps = 0
  if arg == 'smoke':
    default.apply_smoke(config)
  return config
