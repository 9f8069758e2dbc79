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

r"""The quickstart (synthetic_lesions/32, small U-Net, 2 CPU cores) with what won here beyond the paper.

Same data, network, training budget and evaluation as configs/quickstart.py; samples with
DPM-Solver++(2M) instead of DDPM (same 10 network calls). On the same quickstart-recipe checkpoint
and the same 200 test images it lowered GED16 by 0.023 +- 0.006 and mode TV16 by 0.022 +- 0.006
(paired, one training seed, 600 steps; benchmarks/results/selfcond_probe.md). Self-conditioning
(diffusion.self_condition) is off: in the same short probe it was worse. Nothing here is measured on
LIDC.

  python -m diffseg_jax.main --config=configs/best.py --workdir=/tmp/best
  python -m diffseg_jax.main --config=configs/best.py:smoke --workdir=/tmp/best_smoke   # seconds
"""

from configs import quickstart


def get_config(arg=None):
  config = quickstart.get_config(arg)
  config.sampler.name = 'dpm_solver_pp_2m'
  return config
