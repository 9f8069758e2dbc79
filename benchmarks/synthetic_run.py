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

"""A trained checkpoint with the first test images of synthetic_lesions and their true modes.

What the benchmarks that score a model against the generating distribution (shape_spread,
mode_calibration) load, and how they draw its samples: image by image keys from the config's
eval.seed, so every benchmark and sampler sees the same starting noise for an image.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

FEATURES = ('image', 'masks', 'modes', 'mode_probs', 'geometry')


@dataclasses.dataclass(frozen=True)
class Run:
  config: Any
  settings: Any
  mesh: Any
  graphdef: Any
  params: Any
  step: int
  batch: dict[str, np.ndarray]  # FEATURES, stacked over the images.


def load(config, workdir: str, *, step: int = -1, num_images: int) -> Run:
  """The checkpoint `step` (-1: latest) of `workdir` and the first `num_images` of config.eval.split."""
  from diffseg_jax import checkpoint  # pylint: disable=g-import-not-at-top
  from diffseg_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  from diffseg_jax import parallel  # pylint: disable=g-import-not-at-top
  from diffseg_jax import settings as settings_lib  # pylint: disable=g-import-not-at-top

  settings = settings_lib.resolve(config)
  mesh = parallel.make_mesh(config.mesh.data)
  graphdef, params, loaded = checkpoint.load_params(
    workdir,
    settings.unet,
    mesh,
    use_ema=config.eval.use_ema,
    step=None if step < 0 else step,
  )
  source = input_pipeline.load_source(
    name=config.dataset.name,
    split=config.eval.split,
    data_dir=config.dataset.data_dir,
  )
  examples = [source[i] for i in range(min(num_images, len(source)))]
  if 'modes' not in examples[0]:
    raise SystemExit(
      f'{config.dataset.name} has no true modes: this needs synthetic_lesions.'
    )
  batch = {key: np.stack([x[key] for x in examples]) for key in FEATURES}
  return Run(config, settings, mesh, graphdef, params, int(loaded), batch)


def draw_samples(
  run: Run, *, num_samples: int, num_steps: int, settings=None, chunk: int = 50
) -> np.ndarray:
  """bool [B, num_samples, S, S] from the run's sampler (or `settings`'), `chunk` images a call."""
  import jax  # pylint: disable=g-import-not-at-top

  from diffseg_jax import sampling  # pylint: disable=g-import-not-at-top

  sampler = sampling.Sampler(
    run.graphdef, run.mesh, **(settings or run.settings).sampler_kwargs()
  )
  images = run.batch['image']
  keys = sampling.image_keys(
    jax.random.PRNGKey(run.config.eval.seed), np.arange(len(images))
  )
  return np.concatenate(
    [
      np.asarray(
        sampler(
          run.params,
          images[i : i + chunk],
          keys[i : i + chunk],
          num_samples,
          num_steps=num_steps,
        )
      )
      for i in range(0, len(images), chunk)
    ]
  )
