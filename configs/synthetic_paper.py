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

r"""The paper's method on the built-in synthetic set (32x32, small U-Net): the base of the quickstart.

The paper's loss (x-prediction, b = 0.1, SNR+1 weighting, each annotation as the target) and its
sampler (DDPM, 10 steps) with the quickstart's data set, network, augmentation, 2,000 steps of batch
32 and evaluation (500 test images, 4 and 16 samples, oracle and image-blind rows). This was
configs/quickstart.py until 2026-12-07 (with DDPM 10: 1.70x / 1.81x the true oracle's GED16 / mode
TV16 over 3 seeds on a 2-core AMD EPYC, 12-18 min end to end; benchmarks/RESULTS.md, "Quickstart").
launch/sweep.py's design study runs on it, so its reference cell is the paper's setting.

  python -m diffseg_jax.main --config=configs/synthetic_paper.py --workdir=/tmp/synthetic_paper
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
  # Independent network calls (config.network_chunk_size) bought nothing for this small network at
  # 32x32 (AMD EPYC, 400 steps: same steps/s, 23 s more compile; sampling 100 test images 10 %
  # faster but 10 s more compile): one call per batch.
  config.network_chunk_size = 0
  if arg == 'smoke':
    default.apply_smoke(config)
  return config
