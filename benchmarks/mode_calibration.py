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

r"""Whose error the mode frequencies are: the network's belief, or the sampler's draws from it.

A checkpoint's mode TV (evaluation.mode_tv) mixes three things: the finite number of samples (the
true oracle has it too), the network's belief about how likely each mode is, and how faithfully the
sampler turns that belief into draws. This separates them on synthetic_lesions, whose modes are
empty, core and core u lobe:

* The network's belief: x0_hat at t = 0.9 from pure noise (shape_spread.network_marginal) is its
  E[mask | image]. Its mean over the core's pixels away from every boundary (> 1.5 px inside the core,
  outside the lobe) is P(non-empty); over the lobe's own pixels (> 1.5 px inside the lobe, outside
  the core) P(core u lobe). Hence implied probabilities (empty, core, core u lobe) per image; images
  with fewer than 3 such pixels of either region are left out (counted). Shape uncertainty lowers the
  lobe's estimate a little (some of its mass spreads past the 1.5 px margin), so "belief" errs low
  for the lobe, never high.
* The sampler's draws: N samples per image assigned to modes as mode_tv assigns them.

Compared at the same N with exact expectations (no Monte Carlo): the expected TV of N draws from the
true probabilities (the oracle's floor), of N draws from the network's belief (what an exact sampler
of this network would score), and the samples' own TV; plus the distribution-level TV of the belief,
and calibration tables by true P(lobe | non-empty) and true P(empty). Samples below the belief in the
low-probability bins mean the sampler under-draws minority modes. A bound from the image: the
probabilities of the ideal observer (synthetic_lesions.ideal_observer_mode_probs: knows the exact
geometry, reads the lobe contrast off the image), drawn exactly. Against the stored annotations'
own mode frequencies, a memorisation slope (`memorization`): run with --config.eval.split=train to
see how much of its training images' annotation noise the network learned.

  python benchmarks/mode_calibration.py --config=configs/best.py --workdir=RUN \
      [--samplers=ddpm:10,dpm_solver_pp_2m:10 --num_images=200 --num_samples=32 \
       --out=benchmarks/results/mode_calibration]
"""

from __future__ import annotations

import math
import os
import sys
from typing import Any, Sequence

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Pixels farther than this inside a region, and outside the other one, count as its own.
MARGIN_PIXELS = 1.5
MIN_REGION_PIXELS = 3
BINS = (0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0)


def implied_mode_probs(
  marginal: np.ndarray,
  *,
  d_core: np.ndarray,
  d_lobe: np.ndarray,
  margin: float = MARGIN_PIXELS,
  min_pixels: int = MIN_REGION_PIXELS,
) -> tuple[np.ndarray, np.ndarray]:
  """Mode probabilities [B, 3] (empty, core, core u lobe) a per-pixel marginal implies, and validity [B].

  Args:
    marginal: [B, S, S] foreground probabilities.
    d_core, d_lobe: [B, S, S] signed distances (> 0 inside), synthetic_lesions.mode_distances.
    margin: pixels farther inside than this (and as far outside the other region) are counted.
    min_pixels: images with fewer pixels in either region are not valid.
  """
  marginal = np.asarray(marginal, np.float64)
  core = (d_core > margin) & (d_lobe < -margin)
  lobe = (d_lobe > margin) & (d_core < -margin)
  n_core = core.sum(axis=(-2, -1))
  n_lobe = lobe.sum(axis=(-2, -1))
  valid = (n_core >= min_pixels) & (n_lobe >= min_pixels)
  non_empty = (marginal * core).sum(axis=(-2, -1)) / np.maximum(n_core, 1)
  union = (marginal * lobe).sum(axis=(-2, -1)) / np.maximum(n_lobe, 1)
  union = np.minimum(union, non_empty)
  probs = np.stack([1.0 - non_empty, non_empty - union, union], axis=-1)
  return probs, valid


def expected_tv(probs: np.ndarray, truth: np.ndarray, n: int) -> np.ndarray:
  """E[0.5 sum |counts / n - truth|] for counts ~ Multinomial(n, probs), exactly; [B].

  Args:
    probs: [B, K] the distribution the n draws come from (rows sum to 1).
    truth: [B, K] the probabilities they are compared with.
    n: number of draws.
  """
  probs = np.clip(np.asarray(probs, np.float64), 0.0, 1.0)
  probs = probs / probs.sum(axis=-1, keepdims=True)
  truth = np.asarray(truth, np.float64)
  k = probs.shape[-1]
  counts = _compositions(n, k)  # [C, K]
  log_coef = math.lgamma(n + 1) - np.sum(
    [[math.lgamma(c + 1) for c in row] for row in counts], axis=1
  )
  log_p = np.log(np.where(probs > 0, probs, 1.0))  # [B, K]; zeros handled below
  impossible = ((counts[None] > 0) & (probs[:, None, :] == 0)).any(-1)
  terms = (counts[None] * log_p[:, None, :]).sum(-1)
  pmf = np.where(impossible, 0.0, np.exp(log_coef[None] + terms))  # [B, C]
  tv = 0.5 * np.abs(counts[None] / n - truth[:, None, :]).sum(-1)  # [B, C]
  return (pmf * tv).sum(-1)


def _compositions(n: int, k: int) -> np.ndarray:
  """All count vectors [C, k] of non-negative integers summing to n."""
  if k == 1:
    return np.array([[n]])
  rows = [
    np.concatenate([np.full((len(rest), 1), first), rest], axis=1)
    for first in range(n + 1)
    for rest in (_compositions(n - first, k - 1),)
  ]
  return np.concatenate(rows)


def mode_frequencies(assign: np.ndarray, num_modes: int = 3) -> np.ndarray:
  """[B, num_modes + 1] fraction of each image's samples per mode (last: unmatched)."""
  assign = np.asarray(assign)
  return np.stack(
    [(assign == m).mean(axis=1) for m in range(num_modes + 1)], axis=1
  )


def memorization(
  *, truth: np.ndarray, belief: np.ndarray, annotated: np.ndarray
) -> dict[str, float]:
  """How much of its stored annotations' sampling noise the belief carries.

  Regresses belief - truth on annotated - truth (pooled over images and modes, through the origin):
  a slope of 0 means the belief does not follow the annotations' chance deviations from the truth,
  1 that it reproduces them. On images the network never trained on the slope is 0 up to its error;
  on its training images a positive slope is memorised annotation noise.

  Args:
    truth, belief: [B, K] mode probabilities.
    annotated: [B, K] the stored annotations' own mode frequencies.

  Returns:
    {'slope', 'slope_se' (linearised over images), 'tv_annotated_vs_truth', 'tv_belief_vs_annotated'}.
  """
  truth = np.asarray(truth, np.float64)
  dev_belief = np.asarray(belief, np.float64) - truth
  dev_annotated = np.asarray(annotated, np.float64) - truth
  num = (dev_belief * dev_annotated).sum(-1)
  den = (dev_annotated**2).sum(-1)
  slope = num.sum() / den.sum()
  residual = num - slope * den
  return {
    'slope': float(slope),
    'slope_se': float(np.sqrt((residual**2).sum()) / den.sum()),
    'tv_annotated_vs_truth': float(0.5 * np.abs(dev_annotated).sum(-1).mean()),
    'tv_belief_vs_annotated': float(
      0.5 * np.abs(dev_belief - dev_annotated).sum(-1).mean()
    ),
  }


def calibration(
  truth: np.ndarray,
  estimates: dict[str, np.ndarray],
  bins: Sequence[float] = BINS,
) -> list[dict[str, Any]]:
  """Per bin of `truth` [B]: the count, the mean truth and each estimate's mean over the bin."""
  truth = np.asarray(truth, np.float64)
  rows = []
  for i, (lo, hi) in enumerate(zip(bins[:-1], bins[1:])):
    last = i == len(bins) - 2
    sel = (truth >= lo) & ((truth <= hi) if last else (truth < hi))
    if not sel.any():
      continue
    row = {
      'bin': [lo, hi],
      'n': int(sel.sum()),
      'true': float(truth[sel].mean()),
    }
    for name, values in estimates.items():
      row[name] = float(np.asarray(values, np.float64)[sel].mean())
    rows.append(row)
  return rows


def lobe_given_non_empty(probs: np.ndarray) -> np.ndarray:
  """P(core u lobe | non-empty) [B] from [B, 3] (0 where non-empty has no mass)."""
  probs = np.asarray(probs, np.float64)
  non_empty = probs[:, 1] + probs[:, 2]
  return np.where(
    non_empty > 0, probs[:, 2] / np.maximum(non_empty, 1e-12), 0.0
  )


def probability_errors(
  probs: np.ndarray, truth: np.ndarray
) -> dict[str, float]:
  """Mean over images of TV(probs, truth) and of its two parts' absolute errors, [B, 3] each."""
  probs = np.asarray(probs, np.float64)
  truth = np.asarray(truth, np.float64)
  return {
    'tv': float(0.5 * np.abs(probs - truth).sum(-1).mean()),
    'abs_error_empty': float(np.abs(probs[:, 0] - truth[:, 0]).mean()),
    'abs_error_lobe_given_non_empty': float(
      np.abs(lobe_given_non_empty(probs) - lobe_given_non_empty(truth)).mean()
    ),
  }


def score(
  *,
  truth: np.ndarray,
  belief: np.ndarray,
  frequencies: dict[str, np.ndarray],
  num_samples: int,
  annotated: np.ndarray | None = None,
  ideal: np.ndarray | None = None,
) -> dict[str, Any]:
  """The comparison on valid images: truth, belief [B, 3]; frequencies {sampler: [B, 4]}.

  `annotated` [B, 3], the stored annotations' own mode frequencies, adds `memorization`; `ideal`
  [B, 3], the probabilities of an observer who knows each image's geometry (a bound on what a
  belief read off the image can reach), adds `ideal`.
  """
  truth = np.asarray(truth, np.float64)
  out = {
    'num_images': int(truth.shape[0]),
    'num_samples': num_samples,
    'expected_tv_oracle': float(expected_tv(truth, truth, num_samples).mean()),
    'expected_tv_belief': float(expected_tv(belief, truth, num_samples).mean()),
    'expected_tv16_oracle': float(expected_tv(truth, truth, 16).mean()),
    'expected_tv16_belief': float(expected_tv(belief, truth, 16).mean()),
    'tv_belief_vs_truth': float(0.5 * np.abs(belief - truth).sum(-1).mean()),
    'belief_errors': probability_errors(belief, truth),
    'samplers': {},
  }
  if ideal is not None:
    out['ideal'] = dict(
      probability_errors(ideal, truth),
      expected_tv=float(expected_tv(ideal, truth, num_samples).mean()),
      expected_tv16=float(expected_tv(ideal, truth, 16).mean()),
    )
  if annotated is not None:
    out['memorization'] = memorization(
      truth=truth, belief=belief, annotated=annotated
    )
  padded = np.concatenate([truth, np.zeros_like(truth[:, :1])], axis=1)
  lobe = {'belief': lobe_given_non_empty(belief)}
  empty = {'belief': belief[:, 0]}
  for name, freq in frequencies.items():
    freq = np.asarray(freq, np.float64)
    out['samplers'][name] = {
      'tv_samples': float(0.5 * np.abs(freq - padded).sum(-1).mean()),
      'unmatched': float(freq[:, 3].mean()),
    }
    lobe[name] = lobe_given_non_empty(freq[:, :3])
    empty[name] = freq[:, 0]
  out['lobe_calibration'] = calibration(lobe_given_non_empty(truth), lobe)
  out['empty_calibration'] = calibration(truth[:, 0], empty)
  return out


def markdown(result: dict[str, Any]) -> str:
  n = result['num_samples']
  lines = [
    f'{result["num_images"]} {result.get("split", "test")} images (of {result["images_scored"]}; the rest lack '
    f'{MIN_REGION_PIXELS} core or lobe pixels), N = {n} samples, step {result["checkpoint_step"]}:',
    '',
    f'| mode frequencies | TV at N = {n} | TV at N = 16 (expected) |',
    '|---|---|---|',
    f'| true probabilities (oracle floor, exact) | {result["expected_tv_oracle"]:.4f} '
    f'| {result["expected_tv16_oracle"]:.4f} |',
    f"| network's belief, drawn exactly (TV of the belief itself "
    f'{result["tv_belief_vs_truth"]:.4f}) | {result["expected_tv_belief"]:.4f} '
    f'| {result["expected_tv16_belief"]:.4f} |',
  ]
  if 'ideal' in result:
    r = result['ideal']
    lines.append(
      "| ideal observer's probabilities (knows the geometry), drawn exactly "
      f'(TV {r["tv"]:.4f}) | {r["expected_tv"]:.4f} | {r["expected_tv16"]:.4f} |'
    )
  for name, r in result['samplers'].items():
    lines.append(f'| samples, {name} | {r["tv_samples"]:.4f} | |')
  if 'belief_errors' in result:
    parts = [('belief', result['belief_errors'])]
    if 'ideal' in result:
      parts.append(('ideal observer', result['ideal']))
    lines += [
      '',
      'Mean absolute error of P(empty) and of P(core u lobe | non-empty): '
      + '; '.join(
        f'{name} {r["abs_error_empty"]:.4f} and {r["abs_error_lobe_given_non_empty"]:.4f}'
        for name, r in parts
      )
      + '.',
    ]
  if 'memorization' in result:
    m = result['memorization']
    lines += [
      '',
      f"The stored annotations' own mode frequencies are TV {m['tv_annotated_vs_truth']:.4f} from "
      f"the truth and {m['tv_belief_vs_annotated']:.4f} from the belief; the belief's deviation "
      f'from the truth follows theirs with slope {m["slope"]:.3f} +- {m["slope_se"]:.3f} '
      '(0: none of their chance deviations; on training images, > 0 is memorised noise).',
    ]
  names = ['belief'] + list(result['samplers'])
  for title, key in (
    ('P(core u lobe | non-empty)', 'lobe_calibration'),
    ('P(empty)', 'empty_calibration'),
  ):
    lines += [
      '',
      f'Calibration of {title}, by its true value:',
      '',
      '| true bin | images | true | ' + ' | '.join(names) + ' |',
      '|---' * (3 + len(names)) + '|',
    ]
    for row in result[key]:
      lines.append(
        f'| {row["bin"][0]:g}..{row["bin"][1]:g} | {row["n"]} | {row["true"]:.3f} | '
        + ' | '.join(f'{row[name]:.3f}' for name in names)
        + ' |'
      )
  return '\n'.join(lines)


def main(argv):
  del argv
  from absl import flags  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top

  from benchmarks import report_files  # pylint: disable=g-import-not-at-top
  from benchmarks import shape_spread  # pylint: disable=g-import-not-at-top
  from benchmarks import side_by_side  # pylint: disable=g-import-not-at-top
  from benchmarks import synthetic_run  # pylint: disable=g-import-not-at-top
  from diffseg_jax import evaluation  # pylint: disable=g-import-not-at-top
  from diffseg_jax import settings as settings_lib  # pylint: disable=g-import-not-at-top
  from tfds_lidc import synthetic_lesions  # pylint: disable=g-import-not-at-top

  FLAGS = flags.FLAGS  # pylint: disable=invalid-name
  config = FLAGS.config
  run = synthetic_run.load(
    config, FLAGS.workdir, step=FLAGS.step, num_images=FLAGS.num_images
  )
  batch = run.batch
  d_core, d_lobe = synthetic_lesions.mode_distances(
    geometry=batch['geometry'], size=batch['image'].shape[1]
  )
  marginal = shape_spread.network_marginal(
    nnx.merge(run.graphdef, run.params), run.settings, batch['image'], config
  )
  belief, valid = implied_mode_probs(marginal, d_core=d_core, d_lobe=d_lobe)
  ideal = synthetic_lesions.ideal_observer_mode_probs(
    image=batch['image'], geometry=batch['geometry']
  )
  stored, _ = evaluation.assign_modes(
    samples=batch['masks'].astype(bool), modes=batch['modes']
  )
  annotated = mode_frequencies(stored)[:, :3]
  frequencies = {}
  for spec in FLAGS.samplers:
    name, _, steps = spec.partition(':')
    sampler_config = config.copy_and_resolve_references()
    sampler_config.sampler.name = name
    num_steps = int(steps) if steps else run.settings.sampler.num_steps
    samples = synthetic_run.draw_samples(
      run,
      num_samples=FLAGS.num_samples,
      num_steps=num_steps,
      settings=settings_lib.resolve(sampler_config),
    )
    assign, _ = evaluation.assign_modes(samples=samples, modes=batch['modes'])
    frequencies[f'{name}, {num_steps} steps'] = mode_frequencies(assign)[valid]
  result = score(
    truth=batch['mode_probs'][valid],
    belief=belief[valid],
    frequencies=frequencies,
    num_samples=FLAGS.num_samples,
    annotated=annotated[valid],
    ideal=ideal[valid],
  )
  result.update(
    split=config.eval.split,
    workdir=FLAGS.workdir,
    checkpoint_step=run.step,
    images_scored=len(batch['image']),
    cpu_model=side_by_side.cpu_model(),
  )
  table = markdown(result)
  print(table)
  report_files.write(FLAGS.out, result=result, table=table)


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
  flags.DEFINE_integer(
    'num_images',
    200,
    'First images of config.eval.split scored (--config.eval.split=train: training images).',
  )
  flags.DEFINE_integer('num_samples', 32, 'Samples per image.')
  flags.DEFINE_list(
    'samplers',
    ['ddpm:10', 'dpm_solver_pp_2m:10'],
    'NAME:STEPS of each sampler scored (STEPS empty: the config`s).',
  )
  flags.DEFINE_string(
    'out',
    os.path.join(REPO, 'benchmarks', 'results', 'mode_calibration'),
    'Output path without extension (.json and .md).',
  )
  flags.mark_flags_as_required(['config', 'workdir'])
  app.run(main)
