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


r"""How far a checkpoint's samples sit from the true mode they match, against fresh annotations.

The evaluation's model_modes_ row says how much of the GED gap to the true oracle is the shapes'
(the rest is the mode frequencies'). This says what is wrong with the shapes: per sample matched to
a non-empty mode (`evaluation.assign_modes`), the pixels where it differs from that jitter-free mode
("off mode"), and per pair of samples matched to the same non-empty mode of an image, the pixels where
they differ ("within mode"). The annotators' boundary jitter (fresh draws from the true distribution,
the same images) is the target for both: a model with more pixels off mode and within mode draws
noisier boundaries than the annotators, one with fewer draws too little variation. Two more split
"off mode" into a shared and a per-sample part: "majority off mode", the pixels where the majority
vote of an image's samples matched to one mode (3 or more) differs from that mode (a shape error all
samples share; split into the mode's pixels the vote misses and the pixels it adds, and per mode),
and "area bias", the mean signed area of a matched sample minus its mode's.

Where the shared error comes from: the network's own belief about the image alone, x0_hat at t = 0.9
(z pure noise, averaged over 8 draws), is a per-pixel foreground probability E[mask | image]. Scored
against the core's boundary away from the lobe (`boundary_profile`): the probability 0.5-1 px inside
and outside the core, and the pixels where "probability > half the chance of a non-empty mask" (the
vote of many samples) disagrees with the core. The true marginal (1,024 fresh annotations) gives the
target; the model's 16 samples and 16 fresh annotations are scored the same way.

  python benchmarks/shape_spread.py --config=configs/synthetic_long.py --workdir=RUN \
      [--step=-1 --num_images=200 --num_steps=10 --out=benchmarks/results/shape_spread]
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _mean(values) -> float:
  return float(np.mean(values)) if len(values) else float('nan')


def spread(samples: np.ndarray, modes: np.ndarray) -> dict[str, Any]:
  """Pixel counts (module doc) of samples [B, N, H, W] against modes [B, K, H, W], as floats.

  'majority_off_mode_pixels_by_mode' maps each mode index (a string) that had a majority vote to
  its mean; 'num_samples_matched' is an int.
  """
  from diffseg_jax import evaluation  # pylint: disable=g-import-not-at-top

  samples = np.asarray(samples, bool)
  modes = np.asarray(modes, bool)
  assign, _ = evaluation.assign_modes(samples=samples, modes=modes)
  k = modes.shape[1]
  nonempty = modes.sum((-2, -1)) >= evaluation.MIN_SAMPLE_PIXELS  # [B, K]
  off, within, area = [], [], []
  missing, extra, voted_mode = [], [], []  # one entry per majority vote
  for b in range(samples.shape[0]):
    for mode in range(k):
      if not nonempty[b, mode]:
        continue
      idx = np.flatnonzero(assign[b] == mode)
      if not idx.size:
        continue
      group = samples[b, idx]
      off.extend((group ^ modes[b, mode]).sum((-2, -1)).tolist())
      area.extend((group.sum((-2, -1)) - modes[b, mode].sum()).tolist())
      if idx.size >= 3:
        vote = 2 * group.sum(0) > idx.size
        missing.append((modes[b, mode] & ~vote).sum())
        extra.append((vote & ~modes[b, mode]).sum())
        voted_mode.append(mode)
      i, j = np.triu_indices(idx.size, 1)
      within.extend((group[i] ^ group[j]).sum((-2, -1)).tolist())
  majority = np.add(missing, extra, dtype=float)
  voted_mode = np.asarray(voted_mode, int)
  return {
    'area_bias_pixels': _mean(area),
    'majority_off_mode_pixels': _mean(majority),
    'majority_missing_pixels': _mean(missing),
    'majority_extra_pixels': _mean(extra),
    'majority_off_mode_pixels_by_mode': {
      str(m): _mean(majority[voted_mode == m]) for m in np.unique(voted_mode)
    },
    'off_mode_pixels': _mean(off),
    'within_mode_pixels': _mean(within),
    'num_samples_matched': len(off),
    'unmatched_fraction': float((assign == k).mean()),
  }


# Core-distance bands (pixels, > 0 inside) of `boundary_profile`; pixels this far from the lobe count.
PROFILE_BANDS = ((-1.0, -0.5), (0.0, 0.5), (0.5, 1.0))
AWAY_FROM_LOBE = 1.5


def boundary_profile(
  marginal: np.ndarray,
  *,
  d_core: np.ndarray,
  d_lobe: np.ndarray,
  mode_probs: np.ndarray,
) -> dict[str, Any]:
  """How sharply a per-pixel foreground probability [B, H, W] follows the core's boundary.

  Only pixels more than AWAY_FROM_LOBE from the lobe (d_lobe < -AWAY_FROM_LOBE) count. Returns
  'profile': the mean probability in each band of PROFILE_BANDS (key 'lo..hi'), and
  'core_vote_off_pixels': per image with P(non-empty) > 0.5, the pixels where
  marginal > P(non-empty) / 2 disagrees with d_core > 0, averaged over those images.
  """
  marginal = np.asarray(marginal, float)
  away = np.asarray(d_lobe) < -AWAY_FROM_LOBE
  nonempty = 1.0 - np.asarray(mode_probs, float)[:, 0]
  profile = {
    f'{lo:g}..{hi:g}': _mean(marginal[away & (d_core >= lo) & (d_core < hi)])
    for lo, hi in PROFILE_BANDS
  }
  vote = marginal > 0.5 * nonempty[:, None, None]
  off = ((vote != (np.asarray(d_core) > 0)) & away).sum((-2, -1))
  return {
    'profile': profile,
    'core_vote_off_pixels': _mean(off[nonempty > 0.5]),
  }


def main(argv):
  del argv
  from absl import flags  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top

  from benchmarks import side_by_side  # pylint: disable=g-import-not-at-top
  from benchmarks import synthetic_run  # pylint: disable=g-import-not-at-top
  from tfds_lidc import synthetic_lesions  # pylint: disable=g-import-not-at-top

  FLAGS = flags.FLAGS  # pylint: disable=invalid-name
  config = FLAGS.config
  run = synthetic_run.load(
    config, FLAGS.workdir, step=FLAGS.step, num_images=FLAGS.num_images
  )
  settings, batch, step = run.settings, run.batch, run.step
  examples = batch['image']
  num_steps = FLAGS.num_steps or settings.sampler.num_steps
  samples = synthetic_run.draw_samples(
    run, num_samples=FLAGS.num_samples, num_steps=num_steps
  )
  true = synthetic_lesions.draw_annotations(
    geometry=batch['geometry'],
    mode_probs=batch['mode_probs'],
    num=FLAGS.num_samples,
    size=batch['image'].shape[1],
    seed=config.eval.seed,
  )
  rows = {
    'model': spread(samples, batch['modes']),
    'true annotations': spread(true, batch['modes']),
  }
  size = batch['image'].shape[1]
  d_core, d_lobe = synthetic_lesions.mode_distances(
    geometry=batch['geometry'], size=size
  )
  exact = synthetic_lesions.draw_annotations(
    geometry=batch['geometry'],
    mode_probs=batch['mode_probs'],
    num=1024,
    size=size,
    seed=config.eval.seed + 1,
  ).mean(1)
  marginals = {
    'true marginal (1,024 fresh annotations)': exact,
    'network x0_hat at t = 0.9': network_marginal(
      nnx.merge(run.graphdef, run.params), settings, batch['image'], config
    ),
    'model samples': samples.mean(1),
    'fresh annotations': true.mean(1),
  }
  profiles = {
    name: boundary_profile(
      p, d_core=d_core, d_lobe=d_lobe, mode_probs=batch['mode_probs']
    )
    for name, p in marginals.items()
  }
  result = {
    'workdir': FLAGS.workdir,
    'checkpoint_step': int(step),
    'num_images': len(examples),
    'num_samples': FLAGS.num_samples,
    'sampler': f'{settings.sampler.name}, {num_steps} steps',
    'cpu_model': side_by_side.cpu_model(),
    'rows': rows,
    'boundary_profiles': profiles,
  }
  lines = [
    f'Step {step}, {len(examples)} {config.eval.split} images x {FLAGS.num_samples} samples, '
    f'{result["sampler"]}:',
    '',
    '| samples | off-mode pixels | within-mode pixels | majority off mode | area bias '
    '| matched | unmatched |',
    '|---|---|---|---|---|---|---|',
  ]
  for name, r in rows.items():
    lines.append(
      f'| {name} | {r["off_mode_pixels"]:.2f} | {r["within_mode_pixels"]:.2f} | '
      f'{r["majority_off_mode_pixels"]:.2f} ({r["majority_missing_pixels"]:.2f} missing, '
      f'{r["majority_extra_pixels"]:.2f} extra) | {r["area_bias_pixels"]:+.2f} | '
      f'{r["num_samples_matched"]} | {r["unmatched_fraction"]:.3f} |'
    )
  bands = [f'{lo:g}..{hi:g}' for lo, hi in PROFILE_BANDS]
  lines += [
    '',
    'Foreground probability by distance to the core boundary (px, > 0 inside; away from the lobe):',
    '',
    '| marginal | ' + ' | '.join(bands) + ' | core vote off (px) |',
    '|---' * (len(bands) + 2) + '|',
  ]
  for name, r in profiles.items():
    lines.append(
      f'| {name} | '
      + ' | '.join(f'{r["profile"][b]:.3f}' for b in bands)
      + f' | {r["core_vote_off_pixels"]:.2f} |'
    )
  print('\n'.join(lines))
  os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
  with open(FLAGS.out + '.json', 'w') as f:
    json.dump(result, f, indent=1, sort_keys=True)


def network_marginal(model, settings, image, config):
  """E[mask | image] as the network believes it: x0_hat at t = 0.9 from pure noise, 8 draws."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  from diffseg_jax import denoiser  # pylint: disable=g-import-not-at-top
  from diffseg_jax import diffusion  # pylint: disable=g-import-not-at-top

  denoise = denoiser.make_denoise_fn(model)
  net_image = denoiser.network_image(
    jnp.asarray(image), preprocessing=config.dataset.image_preprocessing
  )
  t = jnp.full((image.shape[0],), 0.9, jnp.float32)

  @jax.jit
  def estimate(key):
    z = jax.random.normal(key, image.shape, jnp.float32)
    x0 = diffusion.estimate_x0(
      denoise, z=z, t=t, image=net_image, config=settings.diffusion
    )
    return jnp.clip(x0, -1.0, 1.0)[..., 0]

  keys = jax.random.split(jax.random.PRNGKey(config.eval.seed), 8)
  x0 = np.mean([np.asarray(estimate(k)) for k in keys], axis=0)
  return (x0 + 1.0) / 2.0


if __name__ == '__main__':
  if REPO not in sys.path:
    sys.path.insert(0, REPO)  # configs/ and benchmarks/ as packages.
  from absl import app  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top

  config_flags.DEFINE_config_file(
    'config', None, 'The config the run was trained with.', lock_config=False
  )
  flags.DEFINE_string('workdir', None, 'The training workdir.')
  flags.DEFINE_integer('step', -1, 'Checkpoint step; -1 = the latest.')
  flags.DEFINE_integer('num_images', 200, 'First test images scored.')
  flags.DEFINE_integer('num_samples', 16, 'Samples per image.')
  flags.DEFINE_integer(
    'num_steps', 0, "Sampler steps; 0 = the config's sampler.num_steps."
  )
  flags.DEFINE_string(
    'out',
    os.path.join(REPO, 'benchmarks', 'results', 'shape_spread'),
    'Output path without extension (.json).',
  )
  flags.mark_flags_as_required(['config', 'workdir'])
  app.run(main)
