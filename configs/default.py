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

r"""Default hyper-parameters: the paper's LIDCv1 128x128 model (SPEC §2), x-prediction.

Every other config starts from this one and changes a few fields. The returned ConfigDict is locked:
setting a key that does not exist (a typo, in a file or in a `--config.key=value` override) fails
with that key's name.

  python -m diffseg_jax.main --config=configs/default.py --workdir=/tmp/diffseg_default
  python -m diffseg_jax.main --config=configs/default.py:smoke --workdir=/tmp/smoke   # a few steps
"""

import ml_collections

# Keys that moved (old -> new); `python -m diffseg_jax.main` names the new key for an old override.
RENAMED_KEYS = {
  'eval_every_steps': 'validation.every_steps',
  'eval_num_images': 'validation.num_images',
  'eval_num_samples': 'validation.num_samples',
  'eval_batch_size': 'validation.batch_size',
  'dataset.eval_split': 'validation.split',
  'dataset.manual_dir': None,  # Never read: pass --manual_dir to python -m tfds_lidc.build.
}


def get_config(arg=None):
  """Returns the default config; `arg='smoke'` shrinks it to a seconds-long run."""
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.dataset = ml_collections.ConfigDict()
  config.dataset.name = 'lidc/knegt_pickle'  # TFDS name/config; see tfds_lidc/.
  config.dataset.data_dir = '~/tensorflow_datasets'
  config.dataset.train_split = 'train'
  config.dataset.image_preprocessing = (
    'grey'  # 'grey' | 'imagenet_rgb' (the authors' 3-channel input).
  )

  config.model = ml_collections.ConfigDict()
  config.model.base_channels = 32
  config.model.channel_mult = (1, 1, 2, 4)
  config.model.num_res_blocks = (1, 2, 3, 4)
  config.model.num_middle_blocks = 4
  config.model.attention_levels = (-1,)
  config.model.num_heads = 4
  config.model.dropout = 0.0
  config.model.dtype = (
    'float32'  # Compute dtype: 'float32' | 'bfloat16' (mixed precision).
  )
  config.model.conv_impl = (
    'auto'  # 'auto' picks per back end; 'xla' | 'cpu_fast' force one.
  )

  config.diffusion = ml_collections.ConfigDict()
  config.diffusion.schedule = (
    'cosine'  # cosine | linear | linear_simple | parabola
  )
  config.diffusion.input_scale = 0.1
  config.diffusion.prediction = 'x'  # x | v | eps | logit (not in the paper)
  config.diffusion.weighting = (
    'snr_plus1'  # uniform | snr | snr_plus1 | snr_trunc | sigmoid_<k>
  )
  config.diffusion.decoupled = False
  config.diffusion.time_conditioning = (
    't'  # the network sees 't' (the paper) or 'logsnr'
  )
  # Beyond the paper (off in every paper config): 'bce' = sigmoid cross-entropy on the foreground
  # logit (needs prediction='logit'); self-conditioning on the previous x0 estimate (Analog Bits).
  config.diffusion.loss = 'mse'  # mse | bce
  config.diffusion.self_condition = False
  config.diffusion.self_condition_prob = 0.5
  # 'annotation_posterior' (not in the paper): regress on E[x0 | z, the example's annotations]
  # instead of the one annotation that was noised; same minimiser, less variance.
  config.diffusion.target = 'annotation'  # annotation | annotation_posterior

  config.sampler = ml_collections.ConfigDict()
  config.sampler.name = 'ddpm'  # ddpm | ddim | dpm_solver_pp_2m
  config.sampler.num_steps = 10
  config.sampler.variance = 'large'  # large | small (DDPM only)
  config.sampler.ddim_eps = 'clipped'  # clipped | authors: DDIM's eps from the clipped or unclipped x0_hat

  config.augment = ml_collections.ConfigDict()
  config.augment.dihedral = True
  config.augment.gamma_p = 0.3
  config.augment.brightness_contrast_p = 0.3
  config.augment.affine_p = 0.3
  config.augment.max_rotation_deg = 20.0
  config.augment.crop_size = (
    0  # 64 for the crop64 benchmark (a fresh window every step).
  )

  config.optim = ml_collections.ConfigDict()
  config.optim.learning_rate = 1e-4
  config.optim.b1 = 0.9
  config.optim.b2 = 0.999
  config.optim.weight_decay = 0.01  # Released code; the research runs used 0.
  config.optim.warmup_steps = 1000
  config.optim.decay_steps = (
    100_000  # Cosine decay to 0 over the last `decay_steps` steps.
  )
  config.optim.grad_clip = 1.0
  config.ema_decay = 0.9999
  # Consecutive non-finite updates (loss, gradients, new parameters or optimizer state) that are
  # skipped before training stops with an error naming the first of them; checkpoints stay finite.
  config.max_bad_steps = 10

  config.num_train_steps = 400_000
  config.batch_size = 8  # Global batch, split over all devices of all hosts.

  config.mesh = ml_collections.ConfigDict()
  config.mesh.data = -1  # Devices on the data axis; -1 = all.
  config.mesh.param_sharding = (
    'replicated'  # 'replicated' | 'fsdp' (shard large params over 'data').
  )

  config.log_every_steps = 100
  config.checkpoint_every_steps = 5000
  config.max_checkpoints_to_keep = 3
  config.async_checkpointing = True

  # Validation during training (few samples: a health check, not the paper protocol).
  config.validation = ml_collections.ConfigDict()
  config.validation.split = 'validation'
  config.validation.every_steps = 10_000  # 0 = never.
  config.validation.num_images = 64
  config.validation.num_samples = 4
  config.validation.batch_size = 16
  config.num_grid_images = 8  # Rows of the validation and evaluation grid.png.
  config.evaluate_after_training = (
    False  # Run --mode=evaluate right after training.
  )
  config.sampling_batch = 256  # Max examples per network call when sampling (images x samples / device).
  # Examples per device of each independent network call in a step (training and sampling):
  # -1 = automatic (sampling: 4 on CPU, where independent calls run side by side, 0 elsewhere;
  # training: 0); 0 = whole batch.
  config.network_chunk_size = -1

  # --mode=evaluate (the paper protocol and more).
  config.eval = ml_collections.ConfigDict()
  config.eval.split = 'test'
  config.eval.num_samples_list = (4, 16, 32, 100)
  config.eval.num_examples = -1  # -1 = the whole split.
  config.eval.batch_size = 16
  config.eval.use_ema = True
  config.eval.checkpoint_step = (
    -1
  )  # -1 = the latest checkpoint in WORKDIR/checkpoints.
  config.eval.seed = 0
  config.eval.output_name = (
    ''  # Results go to WORKDIR/eval/<output_name or split>/.
  )
  config.eval.log_every_images = 100  # Progress line (images done, rate, ETA).

  # --mode=predict.
  config.predict = ml_collections.ConfigDict()
  config.predict.num_samples = 16

  if arg == 'smoke':
    apply_smoke(config)
  elif arg:
    raise ValueError(
      f"Unknown config argument {arg!r}; the only one is 'smoke'."
    )
  config.lock()
  return config


def apply_smoke(config):
  """A seconds-long run of the same code paths: tiny network, few steps, small evaluation."""
  config.model.base_channels = 16
  config.model.channel_mult = (1, 2)
  config.model.num_res_blocks = (1, 1)
  config.model.num_middle_blocks = 2
  config.model.num_heads = 2
  config.num_train_steps = 4
  config.optim.warmup_steps = 2
  config.optim.decay_steps = 2
  config.log_every_steps = 2
  config.checkpoint_every_steps = 2
  config.validation.every_steps = 4
  config.validation.num_images = 4
  config.validation.batch_size = 4
  config.num_grid_images = 2
  config.eval.num_samples_list = (2, 4)
  config.eval.num_examples = 4
  config.eval.batch_size = 4
  config.eval.log_every_images = 4
  config.sampler.num_steps = 2
  config.predict.num_samples = 2
