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

r"""The quickstart (synthetic_lesions/32, small U-Net, 2 CPU cores) with the improvements beyond the paper.

Same data, network, budget and evaluation as configs/quickstart.py; adds self-conditioning on the
previous x0 estimate (Chen, Zhang & Hinton 2022, "Analog Bits": one extra network input channel, a
second forward pass on half of each training batch, the previous step's estimate while sampling).
What was measured to choose it, and how little: benchmarks/results/selfcond_probe.md. Whether it
carries over to LIDC is not measured.

  python -m diffseg_jax.main --config=configs/best.py --workdir=/tmp/best
  python -m diffseg_jax.main --config=configs/best.py:smoke --workdir=/tmp/best_smoke   # seconds
"""

from configs import quickstart


def get_config(arg=None):
  config = quickstart.get_config(arg)
  config.diffusion.self_condition = True
  return config
