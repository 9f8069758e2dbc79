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

"""Evaluation protocol: draw samples once, score every metric, write reports.

`evaluate` draws N_max = max(num_samples_list) samples per image once and
scores, per image (diffseg_jax.metrics.all_metrics):

  <metric>_<N>     the first N samples, for every N in num_samples_list;
  <metric>         the paper protocol: the first 4 samples vs the annotations;
  <metric>_pp      the paper protocol after the area filter
                   (metrics.postprocess);
  authors_<key>_<N>, authors_<key>_<N>_pp
                   the authors' own metric code (metrics.authors_metrics, keys
                   GED, CI, S_c, D_max, D_a, iou, dice, ncc) on the model's
                   first N samples, without and with their area filter, for
                   direct comparison with the paper's tables.

Where the batches carry the true distribution (the synthetic set: 'modes'
[B, K, H, W], 'mode_probs' [B, K] and 'geometry' [B, 10]) it adds

  mode_tv_<N>          total variation between the model's mode frequencies
                       and mode_probs (see `mode_tv`), and mode_tv (4 samples);
  oracle_<...>         the same metrics for fresh draws from the true
                       annotation distribution (a mode drawn with mode_probs,
                       traced with the annotators' boundary jitter:
                       tfds_lidc.synthetic_lesions.draw_annotations);
  mode_oracle_<...>    the same for the jitter-free modes drawn with mode_probs;
  ideal_<...>          the same as oracle_ but with the probabilities of an ideal
                       observer who knows the geometry and reads the lobe
                       contrast off the image (synthetic_lesions.
                       ideal_observer_mode_probs): what the image allows for
                       the mode probabilities, which depend on the generator's
                       contrast that the noisy image shows only approximately;
                       its shapes come from the exact geometry, which the image
                       does not give (benchmarks/fitted_observer.py);
  model_modes_<...>    the model's samples, each replaced by a fresh annotation
                       of the true mode it is assigned to (`assign_modes`, the
                       assignment mode_tv counts; unmatched samples kept): the
                       model's mode choices with the annotators' shapes. Its
                       excess over oracle_ is what the mode frequencies cost,
                       the model's excess over it what the shapes cost;
  blind_<...>          with `blind_mode_probs` (the training split's average
                       mode_probs, `average_mode_probs`): an image-blind
                       baseline that draws the jitter-free modes of each image
                       with those probabilities.

Every metric has a defined value on every image (diffseg_jax.metrics documents
the degenerate cases), so every aggregate runs over the same images.

Randomness is per image: the model's samples, the oracles' and the blind
baseline's draws for an image come from keys folded from the image's index in
the split (`sampling.image_keys`), never from its batch or position. With several
processes each evaluates its share of the images (input_pipeline.eval_shard);
the per-image results are gathered and every process aggregates all of them
in index order, so 1 or many processes, any batch size and any sampling chunk
size give the same metrics.json (up to the float rounding of network calls of
other shapes, see diffseg_jax.sampling).

Aggregates (mean, standard error of the mean, n = images counted) go to
out_dir/metrics.json and a Markdown table (out_dir/metrics.md, also logged);
per-image values go to out_dir/per_image.jsonl. A non-finite per-image value
is never dropped: it is written as null, the aggregate's mean and sem are null
and its n counts only the finite values (a warning is logged). Padded examples
(valid False) are skipped. The result is a deterministic function of rng,
blind_mode_probs, sample_fn and the images with their indices.
"""

from collections.abc import Callable, Iterable, Mapping
import functools
import json
import math
import re
from typing import Any

from absl import logging
import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from diffseg_jax import checkpoint
from diffseg_jax import input_pipeline
from diffseg_jax import metric_writers
from diffseg_jax import metrics
from diffseg_jax import parallel
from diffseg_jax import sampling
from diffseg_jax import settings as settings_lib
from diffseg_jax import visualize
from tfds_lidc import paths

PAPER_NUM_SAMPLES = 4
MIN_SAMPLE_PIXELS = 3
# Row groups of the table: the model, then the yardsticks.
PREFIXES = ('', 'model_modes_', 'ideal_', 'oracle_', 'mode_oracle_', 'blind_')
_YARDSTICKS = (
  " model_modes: the model's samples, each replaced by a fresh "
  'annotation of the true mode it matches (its mode frequencies, the '
  "annotators' shapes);"
  ' oracle: fresh draws from the true annotation distribution; '
  'ideal: the same with the probabilities an ideal observer of the image '
  'infers (geometry known, lobe contrast estimated); '
  'mode_oracle: its jitter-free modes drawn with the true '
  'probabilities; blind: those modes drawn with the training '
  "split's average probabilities."
)


def mode_tv(
  *, samples: np.ndarray, modes: np.ndarray, mode_probs: np.ndarray
) -> np.ndarray:
  """Total variation between model and true mode frequencies, float64 [B].

  Each sample goes to the true mode it overlaps best by IoU. A sample with fewer
  than 3 foreground pixels goes to the empty mode (modes with fewer than 3
  pixels count as one empty mode, their probabilities summed). A sample that
  overlaps no non-empty mode (or is empty while no mode is) goes to an extra
  'unmatched' class of true probability 0. Ties go to the first mode.

  Args:
    samples: bool [B, N, H, W].
    modes: bool/uint8 [B, K, H, W].
    mode_probs: float [B, K].

  Returns:
    0.5 * sum |model frequency - true probability| per image.
  """
  probs = np.asarray(mode_probs, np.float64)
  b, n = np.shape(samples)[:2]
  assign, canon = assign_modes(samples=samples, modes=modes)
  k = canon.shape[1]
  true = np.zeros((b, k + 1))
  np.add.at(true, (np.repeat(np.arange(b), k), canon.ravel()), probs.ravel())
  freq = np.zeros((b, k + 1))
  np.add.at(freq, (np.repeat(np.arange(b), n), assign.ravel()), 1.0 / n)
  return 0.5 * np.abs(freq - true).sum(axis=1)


def assign_modes(
  *, samples: np.ndarray, modes: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
  """The true mode each sample goes to, as `mode_tv` counts it.

  Args:
    samples: bool [B, N, H, W].
    modes: bool/uint8 [B, K, H, W].

  Returns:
    (assign int [B, N] in [0, K], K = unmatched; canon int [B, K], the class
    each mode counts as: the first empty mode for every empty one).
  """
  samples = np.asarray(samples, bool)
  modes = np.asarray(modes, bool)
  k = modes.shape[1]
  iou_sm = np.asarray(metrics.pairwise_iou(samples, modes), np.float64)
  sample_empty = samples.sum(axis=(-2, -1)) < MIN_SAMPLE_PIXELS
  mode_empty = modes.sum(axis=(-2, -1)) < MIN_SAMPLE_PIXELS
  first_empty = np.where(
    mode_empty.any(axis=1), np.argmax(mode_empty, axis=1), k
  )
  canon = np.where(mode_empty, first_empty[:, None], np.arange(k)[None, :])
  masked = np.where(mode_empty[:, None, :], -1.0, iou_sm)
  best = np.argmax(masked, axis=-1)
  overlaps = np.max(masked, axis=-1) > 0
  assign = np.where(overlaps, best, k)
  assign = np.where(sample_empty, first_empty[:, None], assign)
  return assign, canon


def _set_metrics(
  *,
  samples,
  masks,
  num_samples,
  prefix,
  modes=None,
  mode_probs=None,
  authors=False,
) -> dict[str, np.ndarray]:
  """Per-image metrics of one sample set [B, N_max, H, W] for every N.

  With `authors`, also `<prefix>authors_<key>_<N>[_pp]` (module doc).
  """
  out = {}

  def add(values, suffix):
    for name, value in values.items():
      out[f'{prefix}{name}{suffix}'] = value

  by_n = {n: metrics.all_metrics(samples[:, :n], masks) for n in num_samples}
  for n, values in by_n.items():
    add(values, f'_{n}')
  paper = samples[:, :PAPER_NUM_SAMPLES]
  add(by_n.get(PAPER_NUM_SAMPLES) or metrics.all_metrics(paper, masks), '')
  add(metrics.all_metrics(np.asarray(metrics.postprocess(paper)), masks), '_pp')
  if authors:
    for n in num_samples:
      for pp, suffix in ((False, ''), (True, '_pp')):
        values = metrics.authors_metrics(samples[:, :n], masks, postprocess=pp)
        for key, value in values.items():
          out[f'{prefix}authors_{key}_{n}{suffix}'] = np.asarray(value)
  if modes is not None:
    for n in num_samples:
      out[f'{prefix}mode_tv_{n}'] = mode_tv(
        samples=samples[:, :n], modes=modes, mode_probs=mode_probs
      )
    out[f'{prefix}mode_tv'] = mode_tv(
      samples=paper, modes=modes, mode_probs=mode_probs
    )
  return out


def _draw_modes(*, keys, modes, probs, num_samples) -> np.ndarray:
  """num_samples modes per image drawn with probs [B, K], image b with keys[b] -> bool [B, N, H, W]."""
  logits = np.log(np.maximum(np.asarray(probs, np.float64), 1e-30))
  index = np.asarray(
    jax.vmap(
      lambda key, row: jax.random.categorical(key, row, shape=(num_samples,))
    )(keys, logits.astype(np.float32))
  )
  return np.take_along_axis(
    np.asarray(modes, bool), index[:, :, None, None], axis=1
  )


def _geometry(batch, index) -> np.ndarray:
  if 'geometry' not in batch:
    raise KeyError(
      f"evaluation batch {index} has 'modes' but lacks 'geometry', which "
      'synthetic_lesions >= 1.1.0 stores to draw fresh annotations from the '
      'true distribution (the data set was built by an older version). '
      'Rebuild it: python -m tfds_lidc.build --dataset=synthetic_lesions/S '
      '--data_dir=DIR --overwrite (or let --mode=train build it on first use).'
    )
  return np.asarray(batch['geometry'], np.float64)


def _draw_true(
  *, keys, batch, index, size, num_samples, probs=None
) -> np.ndarray:
  """Fresh annotations from the true distribution, image b seeded by keys[b] -> bool [B, N, H, W].

  With `probs` [B, K], the modes are drawn with those probabilities instead of mode_probs.
  """
  from tfds_lidc import synthetic_lesions  # pylint: disable=g-import-not-at-top

  geometry = _geometry(batch, index)
  if probs is None:
    probs = batch['mode_probs']
  probs = np.asarray(probs, np.float64)
  seeds = sampling.key_data(keys).reshape(len(geometry), -1)
  return np.stack(
    [
      synthetic_lesions.draw_annotations(
        geometry=geometry[b],
        mode_probs=probs[b],
        num=num_samples,
        size=size,
        seed=seeds[b].tolist(),
      )
      for b in range(len(geometry))
    ]
  )


def _trace_assigned(*, keys, batch, index, samples, modes) -> np.ndarray:
  """Each sample replaced by a fresh annotation of the true mode it is assigned to -> [B, N, H, W].

  The mode is `assign_modes`'; the annotation is traced with the annotators' boundary jitter
  (tfds_lidc.synthetic_lesions.draw_annotations with that mode's probability 1). Samples that
  match no mode stay as they are.
  """
  from tfds_lidc import synthetic_lesions  # pylint: disable=g-import-not-at-top

  geometry = _geometry(batch, index)
  assign, _ = assign_modes(samples=samples, modes=modes)
  b, n, size = samples.shape[0], samples.shape[1], samples.shape[-1]
  k = modes.shape[1]
  seeds = sampling.key_data(keys).reshape(b, -1)
  out = np.array(samples, bool)
  for i in range(b):
    traced = synthetic_lesions.draw_annotations(
      geometry=np.broadcast_to(geometry[i], (k, geometry.shape[-1])),
      mode_probs=np.eye(k),
      num=n,
      size=size,
      seed=seeds[i].tolist(),
    )  # [K, N, S, S]: every mode traced N times.
    matched = assign[i] < k
    j = np.flatnonzero(matched)
    out[i, j] = traced[assign[i, j], j]
  return out


def gather_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """Every process's JSON-able records, on every process, sorted by 'index'.

  One process: the records sorted. Several: each process's records travel as
  JSON bytes through two `process_allgather` calls (every process must call).
  """
  if jax.process_count() > 1:
    data = np.frombuffer(json.dumps(records).encode(), np.uint8)
    lengths = np.asarray(
      multihost_utils.process_allgather(np.array([data.size], np.int32))
    ).reshape(-1)
    padded = np.zeros(int(lengths.max()), np.uint8)
    padded[: data.size] = data
    everything = np.asarray(multihost_utils.process_allgather(padded))
    records = [
      record
      for row, length in zip(everything, lengths)
      for record in json.loads(row[:length].tobytes())
    ]
  return sorted(records, key=lambda r: r['index'])


def average_mode_probs(source) -> np.ndarray | None:
  """The mean 'mode_probs' over a source (e.g. the training split), float64 [K].

  None when the source has no 'mode_probs' feature (data without a known
  annotation distribution). Pass it to `evaluate` as blind_mode_probs.
  """
  if not len(source) or 'mode_probs' not in source[0]:
    return None
  total, chunk = 0.0, 1024
  for start in range(0, len(source), chunk):
    indices = list(range(start, min(start + chunk, len(source))))
    if hasattr(source, '__getitems__'):
      examples = source.__getitems__(indices)
    else:
      examples = [source[i] for i in indices]
    total = total + np.sum(
      [np.asarray(ex['mode_probs'], np.float64) for ex in examples], axis=0
    )
  return total / len(source)


def _require(batch: Mapping[str, Any], key: str, index: int) -> np.ndarray:
  if key not in batch:
    raise KeyError(
      f'evaluation batch {index} lacks {key!r} (has {sorted(batch)}); pass '
      'batches from diffseg_jax.input_pipeline.eval_batches.'
    )
  return np.asarray(batch[key])


def _summary(
  per_image: list[dict[str, float]], log: Callable[[str], Any] = print
) -> dict[str, dict[str, Any]]:
  """{key: {'mean', 'sem', 'n'}} over all images; see the module doc."""
  keys = sorted(
    {k for record in per_image for k in record if k not in ('id', 'index')}
  )
  out = {}
  for key in keys:
    values = np.array(
      [np.nan if r.get(key) is None else r[key] for r in per_image], np.float64
    )
    count = int(np.isfinite(values).sum())
    if count < values.size:
      log(
        f'WARNING: {key} is not finite on {values.size - count} of '
        f'{values.size} images; its mean is left empty.'
      )
      out[key] = {'mean': None, 'sem': None, 'n': count}
      continue
    mean = float(values.mean()) if count else None
    sem = float(values.std(ddof=1) / math.sqrt(count)) if count > 1 else None
    out[key] = {'mean': mean, 'sem': sem, 'n': count}
  return out


_KEY = re.compile(r'^(?P<base>.+?)(?:_(?P<n>\d+))?(?P<pp>_pp)?$')


def render_table(summary: Mapping[str, Mapping[str, Any]]) -> str:
  """Markdown table of {key: {'mean', 'sem', ...}}.

  Rows are metrics (model, then oracle_, mode_oracle_ and blind_); columns are
  the sample counts N of `<metric>_<N>`, then 'paper (4)' for `<metric>` and
  'paper pp' for `<metric>_pp`. Cells read 'mean ± sem'.
  """
  rows, columns, cells = [], [], {}
  for key, stats in summary.items():
    match = _KEY.match(key)
    base, n, pp = match['base'], match['n'], match['pp']
    if n and pp:  # authors_<key>_<N>_pp: its own row, in the N columns.
      base, pp = base + '_pp', None
    column = 'paper pp' if pp else (f'N={n}' if n else 'paper (4)')
    if base not in rows:
      rows.append(base)
    if column not in columns:
      columns.append(column)
    cells[base, column] = stats

  def order(column):
    if column.startswith('N='):
      return (0, int(column[2:]))
    return (1, column)

  columns.sort(key=order)
  names = metrics.METRIC_NAMES + ('mode_tv',)

  def row_order(base):
    prefix = max((p for p in PREFIXES if base.startswith(p)), key=len)
    name = base[len(prefix) :]
    return (
      PREFIXES.index(prefix),
      names.index(name) if name in names else len(names),
      name,
    )

  rows.sort(key=row_order)

  def cell(stats):
    if stats is None or stats.get('mean') is None:
      return ''
    sem = stats.get('sem')
    return f'{stats["mean"]:.4f}' + ('' if sem is None else f' ± {sem:.4f}')

  lines = [
    '| metric | ' + ' | '.join(columns) + ' |',
    '|---' * (len(columns) + 1) + '|',
  ]
  for base in rows:
    lines.append(
      f'| {base} | '
      + ' | '.join(cell(cells.get((base, c))) for c in columns)
      + ' |'
    )
  return '\n'.join(lines)


def _jsonable(value):
  value = float(value)
  return value if math.isfinite(value) else None


def evaluate(
  sample_fn: Callable[[Any, jax.Array, int], Any],
  batches: Iterable[Mapping[str, Any]],
  *,
  num_samples_list: Iterable[int] = (4, 16, 32, 100),
  out_dir: str | None,
  rng: jax.Array,
  split_name: str,
  blind_mode_probs: np.ndarray | None = None,
  log: Callable[[str], Any] = print,
  check_stop: Callable[[], None] | None = None,
  provenance: Mapping[str, Any] | None = None,
) -> dict[str, dict[str, Any]]:
  """Scores a sampler on a split and writes the reports (see module doc).

  Args:
    sample_fn: (image [B, H, W, C], keys [B], num_samples) -> bool
      [B, N, H, W]; sample j of image b must depend on image b, keys[b] and
      j only (as sampling.Sampler's).
    batches: this process's share of the images (input_pipeline.eval_batches
      with its process index and count): host dicts with 'image'
      [B, H, W, C], 'masks' [B, M, H, W], 'index' [B] (the image's index in
      the split; without it the rows are numbered in stream order), optional
      'valid' [B] (False = padding), 'id' [B], 'modes' [B, K, H, W],
      'mode_probs' [B, K] and 'geometry' [B, 10]. With several processes
      every process calls `evaluate` (and `sample_fn` as often).
    num_samples_list: the N to report; N_max = max(...) >= 4 samples are
      drawn per image once and every N uses the first N of them.
    out_dir: where metrics.json, per_image.jsonl and metrics.md go (None: write nothing, as on
      every process but the first of a multi-process run).
    rng: jax PRNG key; with (model, mode oracle, true oracle, blind) =
      split(rng, 4), model_modes = fold_in(rng, 4) and ideal =
      fold_in(rng, 5), image i of the split
      is drawn with the key fold_in(<that key>, i) (`sampling.image_keys`).
    split_name: recorded in the reports.
    blind_mode_probs: [K] mode probabilities of the image-blind baseline,
      normally the training split's average (`average_mode_probs`); None
      leaves the baseline out.
    log: receives the Markdown table.
    check_stop: called after every batch and before anything is written; it
      raises to stop the evaluation (a SIGTERM) with nothing written.
    provenance: JSON-able facts about what was scored (e.g. the checkpoint
      step and its training seconds), written to metrics.json as they are.

  Returns:
    {key: {'mean', 'sem', 'n'}} over the images of all processes, as written
    to metrics.json['metrics'].
  """
  num_samples = sorted({int(n) for n in num_samples_list})
  if not num_samples or num_samples[0] < 1:
    raise ValueError(
      f'num_samples_list={num_samples_list} must hold positive '
      'sample counts, e.g. (4, 16, 32, 100).'
    )
  n_max = num_samples[-1]
  if n_max < PAPER_NUM_SAMPLES:
    raise ValueError(
      f'num_samples_list={num_samples_list}: the paper protocol '
      f'needs at least {PAPER_NUM_SAMPLES} samples per image.'
    )
  if blind_mode_probs is not None:
    blind_mode_probs = np.asarray(blind_mode_probs, np.float64)
  model_rng, mode_rng, true_rng, blind_rng = jax.random.split(rng, 4)
  traced_rng, ideal_rng = jax.random.fold_in(rng, 4), jax.random.fold_in(rng, 5)

  per_image: list[dict[str, Any]] = []
  rows_seen = 0
  for batch_index, batch in enumerate(batches):
    image = _require(batch, 'image', batch_index)
    masks = _require(batch, 'masks', batch_index).astype(bool)
    size = image.shape[0]
    valid = np.asarray(batch.get('valid', np.ones(size, bool)), bool)
    indices = np.asarray(
      batch.get('index', np.arange(rows_seen, rows_seen + size)), np.int64
    )
    rows_seen += size
    ids = batch.get('id', indices)
    samples = np.asarray(
      sample_fn(image, sampling.image_keys(model_rng, indices), n_max)
    )
    expected = (size, n_max) + masks.shape[-2:]
    if samples.shape != expected:
      raise ValueError(
        f'sample_fn returned shape {samples.shape}, expected '
        f'{expected} = [B, num_samples, H, W] (bool).'
      )
    samples = samples.astype(bool)
    modes = probs = None
    if 'modes' in batch:
      modes = np.asarray(batch['modes'], bool)
      probs = _require(batch, 'mode_probs', batch_index).astype(np.float64)
    scored = functools.partial(
      _set_metrics,
      masks=masks,
      num_samples=num_samples,
      modes=modes,
      mode_probs=probs,
    )
    values = scored(samples=samples, prefix='', authors=True)
    if modes is not None:
      true = _draw_true(
        keys=sampling.image_keys(true_rng, indices),
        batch=batch,
        index=batch_index,
        size=masks.shape[-1],
        num_samples=n_max,
      )
      values.update(scored(samples=true, prefix='oracle_'))
      from tfds_lidc import synthetic_lesions  # pylint: disable=g-import-not-at-top

      ideal = _draw_true(
        keys=sampling.image_keys(ideal_rng, indices),
        batch=batch,
        index=batch_index,
        size=masks.shape[-1],
        num_samples=n_max,
        probs=synthetic_lesions.ideal_observer_mode_probs(
          image=image, geometry=_geometry(batch, batch_index)
        ),
      )
      values.update(scored(samples=ideal, prefix='ideal_'))
      traced = _trace_assigned(
        keys=sampling.image_keys(traced_rng, indices),
        batch=batch,
        index=batch_index,
        samples=samples,
        modes=modes,
      )
      values.update(scored(samples=traced, prefix='model_modes_'))
      drawn = _draw_modes(
        keys=sampling.image_keys(mode_rng, indices),
        modes=modes,
        probs=probs,
        num_samples=n_max,
      )
      values.update(scored(samples=drawn, prefix='mode_oracle_'))
      if blind_mode_probs is not None:
        if blind_mode_probs.shape != probs.shape[1:]:
          raise ValueError(
            f'blind_mode_probs has shape {blind_mode_probs.shape}; the '
            f"batches' mode_probs are [B, {probs.shape[1]}]."
          )
        blind = _draw_modes(
          keys=sampling.image_keys(blind_rng, indices),
          modes=modes,
          probs=np.broadcast_to(blind_mode_probs, probs.shape),
          num_samples=n_max,
        )
        values.update(scored(samples=blind, prefix='blind_'))
    for row in np.flatnonzero(valid):
      identifier = ids[row]
      if isinstance(identifier, bytes):
        identifier = identifier.decode()
      record = {'index': int(indices[row]), 'id': str(identifier)}
      record.update({k: _jsonable(v[row]) for k, v in values.items()})
      per_image.append(record)
    if check_stop is not None:
      check_stop()

  if check_stop is not None:
    check_stop()
  per_image = gather_records(per_image)
  repeated = len(per_image) - len({r['index'] for r in per_image})
  if repeated:
    raise ValueError(
      f'{repeated} images were scored more than once (the same index): pass '
      'each process its own share (input_pipeline.eval_batches with '
      'process_index and process_count).'
    )
  summary = _summary(per_image, log)
  table = render_table(summary)
  header = (
    f'## {split_name}: {len(per_image)} images\n\n'
    'Cells: mean ± standard error over images. N=n: the first n '
    'samples; paper (4): 4 samples vs the annotations; paper pp: the '
    'same after the area filter.'
    + (_YARDSTICKS if any(k.startswith('oracle_') for k in summary) else '')
    + '\n\n'
  )
  if check_stop is not None:
    check_stop()
  if out_dir is not None:
    _write_results(
      out_dir,
      split_name=split_name,
      num_samples=num_samples,
      summary=summary,
      per_image=per_image,
      markdown=header + table + '\n',
      provenance=provenance or {},
    )
  log(header + table)
  return summary


def _write_results(
  out_dir,
  *,
  split_name,
  num_samples,
  summary,
  per_image,
  markdown,
  provenance,
):
  out_dir = paths.resolve(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  with (out_dir / 'metrics.json').open('w') as f:
    json.dump(
      {
        'split': split_name,
        'num_images': len(per_image),
        'num_samples_list': num_samples,
        'paper_num_samples': PAPER_NUM_SAMPLES,
        'metrics': summary,
        **provenance,
      },
      f,
      indent=1,
      sort_keys=True,
    )
  (out_dir / 'per_image.jsonl').write_text(
    ''.join(json.dumps(r, sort_keys=True) + '\n' for r in per_image)
  )
  (out_dir / 'metrics.md').write_text(markdown)


# `--mode=evaluate`: the protocol above on a checkpoint.


def evaluate_checkpoint(
  config: ml_collections.ConfigDict,
  workdir: str,
  *,
  check_stop: Callable[[], None] | None = None,
) -> dict:
  """Samples config.eval.num_samples_list[-1] masks per image of config.eval.split and scores them.

  Each process samples and scores its share of the images; process 0 writes the results of all
  (see `evaluate`). Loads the (EMA, config.eval.use_ema) parameters of the latest checkpoint in WORKDIR/checkpoints and
  writes WORKDIR/eval/<config.eval.output_name or split>/{metrics.json, per_image.jsonl, metrics.md,
  grid.png}; a separate output_name per sampler setting lets one checkpoint be scored many ways.
  Logs images done, rate and ETA every config.eval.log_every_images images.
  `check_stop` is `evaluate`'s.
  """
  settings = settings_lib.resolve(config)
  input_pipeline.prepare_dataset(
    name=config.dataset.name,
    data_dir=config.dataset.data_dir,
    split=config.eval.split,
  )
  mesh = parallel.make_mesh(config.mesh.data)
  wanted = config.eval.checkpoint_step
  graphdef, params, step = checkpoint.load_params(
    workdir,
    settings.unet,
    mesh,
    use_ema=config.eval.use_ema,
    step=None if wanted < 0 else wanted,
  )
  meta = checkpoint.read_meta(
    paths.resolve(workdir, what='--workdir') / 'checkpoints', step
  )
  provenance = {'checkpoint_step': int(step)}
  if 'train_seconds' in meta:
    provenance['train_seconds'] = float(meta['train_seconds'])
  split = config.eval.split
  source = input_pipeline.load_source(
    name=config.dataset.name, split=split, data_dir=config.dataset.data_dir
  )
  # The image-blind baseline draws with the training split's average mode probabilities.
  blind_mode_probs = average_mode_probs(
    input_pipeline.load_source(
      name=config.dataset.name,
      split=config.dataset.train_split,
      data_dir=config.dataset.data_dir,
    )
  )
  num = (
    len(source)
    if config.eval.num_examples < 0
    else min(config.eval.num_examples, len(source))
  )
  process, processes = jax.process_index(), jax.process_count()
  start, stop = input_pipeline.eval_shard(
    num, process_index=process, process_count=processes
  )
  batches = input_pipeline.eval_batches(
    source,
    batch_size=config.eval.batch_size,
    num_examples=num,
    process_index=process,
    process_count=processes,
  )
  sampler = sampling.Sampler(graphdef, mesh, **settings.sampler_kwargs())
  is_main = process == 0
  out_dir = (
    paths.resolve(workdir, what='--workdir')
    / 'eval'
    / (config.eval.output_name or split)
  )
  first = {}

  def sample_fn(image, keys, num_samples):
    samples = sampler(
      params, image, keys, num_samples, num_steps=settings.sampler.num_steps
    )
    first.setdefault('samples', samples)
    return samples

  progress = metric_writers.ReportProgress(
    total=stop - start,
    every=config.eval.log_every_images,
    unit='images',
    what=f'evaluate {split} (step {step}):',
  )
  logging.info(
    'Evaluating step %d on %d images of %s with %d samples each.',
    step,
    num,
    split,
    max(config.eval.num_samples_list),
  )
  if processes > 1:
    logging.info(
      'Process %d of %d evaluates images [%d, %d).',
      process,
      processes,
      start,
      stop,
    )
  results = evaluate(
    sample_fn,
    _with_progress(_remember_first(batches, first), progress, stop - start),
    num_samples_list=tuple(config.eval.num_samples_list),
    out_dir=out_dir if is_main else None,
    rng=jax.random.PRNGKey(config.eval.seed),
    split_name=split,
    blind_mode_probs=blind_mode_probs,
    log=logging.info,
    check_stop=check_stop,
    provenance=provenance,
  )
  if is_main and first:
    k = config.num_grid_images
    visualize.save_grid(
      out_dir / 'grid.png',
      image=first['image'][:k],
      annotations=first['masks'][:k],
      samples=first['samples'][:k],
    )
    logging.info('Evaluated step %d on %s: results in %s', step, split, out_dir)
  return results


def _remember_first(batches, first):
  """Passes `batches` through, keeping the first one's images and masks for the picture."""
  for batch in batches:
    if 'masks' not in first:
      first.update(image=batch['image'], masks=batch['masks'].astype(bool))
    yield batch


def _with_progress(batches, progress, total):
  """Passes `batches` through, reporting the images done when the next batch is asked for.

  The first report only starts the clock, so the rate leaves out the first batch's compilation.
  """
  done = 0
  for batch in batches:
    yield batch
    done = min(
      done
      + int(np.sum(batch.get('valid', np.ones(len(batch['image']), bool)))),
      total,
    )
    progress(done)
