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

Trains, then evaluates against the true annotation distribution (oracle) and an image-blind baseline
(12-18 minutes end to end on a 2-core AMD EPYC as its load varies with the DDPM sampler it had until
2026-12-07, more on a 2-core Intel Xeon:
README, "Quickstart"):

  python -m diffseg_jax.main --config=configs/quickstart.py --workdir=/tmp/quickstart
  python -m diffseg_jax.main --config=configs/quickstart.py --workdir=/tmp/quickstart --mode=evaluate
  python -m diffseg_jax.main --config=configs/quickstart.py --workdir=/tmp/quickstart --mode=predict \
      --input=lesion.png  # 32x32 grey (the training window); larger images need --center=ROW,COL

Results land in /tmp/quickstart/eval/test/metrics.md (GED, HM-IoU, CI, mode TV vs oracle and blind).
"""

from configs import default


def get_config(arg=None):
  config = default.get_config(arg)
  config.dataset.name = 'synthetic_lesions/32'
  config.validation.split = 'validation'
  config.model.base_channels = 16
  config.model.channel_mult = (1, 2, 4)
  config.model.num_res_blocks = (1, 1, 1)
  config.model.num_middle_blocks = 2
  config.model.num_heads = 2
  config.augment.dihedral = True
  config.augment.gamma_p = 0.0
  config.augment.brightness_contrast_p = 0.0
  config.augment.affine_p = 0.0
  config.optim.learning_rate = 3e-4
  config.optim.weight_decay = 0.0
  config.optim.warmup_steps = 200
  config.optim.decay_steps = 800
  config.ema_decay = 0.999
  config.batch_size = 32
  config.num_train_steps = 2000
  config.log_every_steps = 100
  config.checkpoint_every_steps = 500
  config.validation.every_steps = 1000
  config.validation.num_images = 32
  config.validation.batch_size = 32
  config.eval.split = 'test'
  config.eval.num_samples_list = (4, 16)
  config.eval.num_examples = 500
  config.eval.batch_size = 50
  config.evaluate_after_training = True
  config.sampling_batch = 1600
  # DPM-Solver++(2M) at 7 steps instead of the paper's DDPM at 10: over 3 seeds, paired on the same
  # 500 test images, GED_16 -0.0054 +- 0.0011 and mode TV_16 -0.0107 +- 0.0014, evaluation 3.2
  # instead of 4.0-4.4 min (benchmarks/RESULTS.md, "The sampler's share of the time").
  config.sampler.name = 'dpm_solver_pp_2m'
  config.sampler.num_steps = 7
  # Independent network calls (config.network_chunk_size) bought nothing for this small network at
  # 32x32 (AMD EPYC, 400 steps: same steps/s, 23 s more compile): one call per batch.
  config.network_chunk_size = 0
  if arg == 'smoke':
    default.apply_smoke(config)
  return config
