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

"""How much of the shapes the image itself gives: an observer that fits the generator's shapes.

The true oracle and the ideal observer (oracle_yardsticks.py) know each image's exact geometry; the
image shows it only through texture and pixel noise. This observer fits the core and lobe ellipses
and the lobe contrast to the image by maximum likelihood under the generator's own noise model
(`synthetic_lesions.fit_geometry`), starting from the true geometry perturbed by 0.5 px (centres,
semi-axes) and 0.1 rad (angles), then annotates like the annotators: a mode drawn with the ideal
observer's probabilities of the fitted geometry, traced with the boundary jitter. It is optimistic
about the search (a local fit near the truth) and exact about the noise, so it says roughly how far
above the true oracle a model of the image alone must stay. The posterior-sampling observer draws
each annotation from its own sample of the shapes and lobe contrast from their Laplace posterior
(`GeometryFit.covariance`), with the generator's mode probabilities for that sample: a Bayesian
observer of the image, to the Laplace approximation.

Rows, on the first --num_images test images at N = 16 (evaluation.evaluate, as a model is scored):
the true oracle, the posterior-sampling observer, the fitted observer, and the fitted geometry with the true mode probabilities
(shapes only); plus, from `benchmarks.shape_spread`, the majority vote's error against the true
mode and the core vote of each marginal.

  python benchmarks/fitted_observer.py [--num_images=200] [--out=benchmarks/results/fitted_observer]
"""

import json
import os
import sys
import time

from absl import app
from absl import flags
import jax
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

from benchmarks import shape_spread  # pylint: disable=g-import-not-at-top,wrong-import-position
from benchmarks import side_by_side  # pylint: disable=g-import-not-at-top,wrong-import-position
from diffseg_jax import evaluation  # pylint: disable=g-import-not-at-top,wrong-import-position
from tfds_lidc import synthetic_lesions as syn  # pylint: disable=g-import-not-at-top,wrong-import-position

_NUM_IMAGES = flags.DEFINE_integer('num_images', 200, 'First test images.')
_SEED = flags.DEFINE_integer(
  'seed', 0, 'Seed of the start perturbation and the draws.'
)
_START_SCALE = flags.DEFINE_float(
  'start_scale',
  1.0,
  'Scale of START_SD, the start perturbation (0: start at the truth).',
)
_OUT = flags.DEFINE_string(
  'out',
  os.path.join(REPO, 'benchmarks', 'results', 'fitted_observer'),
  'Output path without extension (.json).',
)
# Perturbation of the fit's start: centres and semi-axes (px), angles (rad), per GEOMETRY_KEYS.
START_SD = np.array([0.5, 0.5, 0.5, 0.5, 0.1, 0.5, 0.5, 0.5, 0.5, 0.1])
KEYS = ('ged_16', 'mode_tv_16', 'hm_iou_16')
POSTERIOR = 'posterior-sampling observer'


def fitted_geometries(images, geometries, *, seed, start_scale=1.0):
  """[B] GeometryFits from true starts perturbed by start_scale * START_SD."""
  rng = np.random.default_rng(seed)
  fits = []
  for image, truth in zip(images, geometries):
    start = truth + start_scale * START_SD * rng.standard_normal(10)
    start[[2, 3, 7, 8]] = np.maximum(start[[2, 3, 7, 8]], 1.0)
    fits.append(syn.fit_geometry(image=image, start=start))
  return fits


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments {argv[1:]}.')
  config = next(c for c in syn.SyntheticLesions.BUILDER_CONFIGS if c.size == 32)
  size, num = config.size, _NUM_IMAGES.value
  start = time.perf_counter()
  examples = [
    x
    for _, x in syn.generate_split(
      seed=config.seed, split='test', num=num, size=size
    )
  ]
  test = {
    k: np.stack([x[k] for x in examples])
    for k in ('image', 'masks', 'modes', 'mode_probs', 'geometry')
  }
  results = fitted_geometries(
    test['image'],
    test['geometry'],
    seed=_SEED.value,
    start_scale=_START_SCALE.value,
  )
  fit_seconds = time.perf_counter() - start
  fits = np.stack([r.geometry for r in results])
  probs = {
    'fitted observer': syn.ideal_observer_mode_probs(
      image=test['image'], geometry=fits
    ),
    'fitted geometry, true probabilities': test['mode_probs'],
  }
  index = {test['image'][b].tobytes(): b for b in range(num)}
  batch = {
    k: test[k] for k in ('image', 'masks', 'modes', 'mode_probs', 'geometry')
  }
  batch['id'] = np.array([f'synth{size}-test-{i:06d}' for i in range(num)])

  def posterior_draws(b, num_samples, seed):
    """Annotations each from its own draw of the Laplace posterior of the shapes and contrast."""
    r = results[b]
    rng = np.random.default_rng(seed)
    p = rng.multivariate_normal(
      np.append(r.geometry, r.lobe_contrast), r.covariance, num_samples
    )
    p[:, [2, 3, 7, 8]] = np.maximum(p[:, [2, 3, 7, 8]], 0.5)
    d_core, _ = syn.mode_distances(geometry=p[:, :10], size=size)
    mode_probs = syn.mode_probabilities(
      core_area_fraction=(d_core > 0).mean((-2, -1)),
      lobe_contrast=np.clip(p[:, 10], 0.0, syn.CORE_CONTRAST),
    )
    return syn.draw_annotations(
      geometry=p[:, :10], mode_probs=mode_probs, num=1, size=size, seed=seed
    )[:, 0]

  def observer(name):
    def draws(image, keys, num_samples):
      seeds = np.asarray(jax.random.key_data(keys)).reshape(len(image), -1)
      members = [index[x.tobytes()] for x in np.asarray(image)]
      if name == POSTERIOR:
        return np.stack(
          [
            posterior_draws(b, num_samples, s.tolist())
            for b, s in zip(members, seeds)
          ]
        )
      return np.stack(
        [
          syn.draw_annotations(
            geometry=fits[b],
            mode_probs=probs[name][b],
            num=num_samples,
            size=size,
            seed=s.tolist(),
          )
          for b, s in zip(members, seeds)
        ]
      )

    return draws

  rows = {}
  for name in (*probs, POSTERIOR):
    summary = evaluation.evaluate(
      observer(name),
      [batch],
      num_samples_list=(16,),
      out_dir=None,
      rng=jax.random.PRNGKey(_SEED.value),
      split_name='test',
      blind_mode_probs=np.full(3, 1 / 3),
      log=lambda *_: None,
    )
    rows[name] = {k: summary[k]['mean'] for k in KEYS}
  # Every evaluation scores the same oracle draws (same images and rng): take the last one's.
  rows['true oracle'] = {k: summary['oracle_' + k]['mean'] for k in KEYS}
  d_core, d_lobe = syn.mode_distances(geometry=test['geometry'], size=size)

  def many_draws(geometry, mode_probs):
    return syn.draw_annotations(
      geometry=geometry,
      mode_probs=mode_probs,
      num=1024,
      size=size,
      seed=_SEED.value + 1,
    )

  for name, many in (
    ('true oracle', many_draws(test['geometry'], test['mode_probs'])),
    (
      POSTERIOR,
      np.stack([posterior_draws(b, 1024, _SEED.value + 1) for b in range(num)]),
    ),
    ('fitted observer', many_draws(fits, probs['fitted observer'])),
    (
      'fitted geometry, true probabilities',
      many_draws(fits, test['mode_probs']),
    ),
  ):
    rows[name]['core_vote_off_pixels'] = shape_spread.boundary_profile(
      many.mean(1), d_core=d_core, d_lobe=d_lobe, mode_probs=test['mode_probs']
    )['core_vote_off_pixels']
    rows[name]['majority_off_mode_pixels'] = shape_spread.spread(
      many[:, :16], test['modes']
    )['majority_off_mode_pixels']
  base = rows['true oracle']
  lines = [
    f'synthetic_lesions/32 test, first {num} images, N = 16; fits {fit_seconds:.0f} s on '
    f'{side_by_side.cpu_model()}:',
    '',
    '| observer | GED₁₆ | / true oracle | mode TV₁₆ | / true oracle | HM-IoU₁₆ | core vote off (px) '
    '| majority off mode (px) |',
    '|---|---|---|---|---|---|---|---|',
  ]
  for name in (
    'true oracle',
    POSTERIOR,
    'fitted observer',
    'fitted geometry, true probabilities',
  ):
    r = rows[name]
    lines.append(
      f'| {name} | {r["ged_16"]:.4f} | {r["ged_16"] / base["ged_16"]:.3f} | '
      f'{r["mode_tv_16"]:.4f} | {r["mode_tv_16"] / base["mode_tv_16"]:.3f} | '
      f'{r["hm_iou_16"]:.4f} | {r["core_vote_off_pixels"]:.2f} | '
      f'{r["majority_off_mode_pixels"]:.2f} |'
    )
  print('\n'.join(lines))
  errors = np.abs(fits - test['geometry'])
  result = {
    'num_images': num,
    'seed': _SEED.value,
    'cpu_model': side_by_side.cpu_model(),
    'fit_seconds': fit_seconds,
    'rows': rows,
    'median_abs_fit_error': dict(
      zip(syn.GEOMETRY_KEYS, np.median(errors, 0).tolist())
    ),
    'start_scale': _START_SCALE.value,
    'command': f'python benchmarks/fitted_observer.py --num_images={num} '
    f'--start_scale={_START_SCALE.value:g}',
  }
  os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
  with open(_OUT.value + '.json', 'w') as f:
    json.dump(result, f, indent=1, sort_keys=True)


if __name__ == '__main__':
  app.run(main)
