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

"""benchmarks/paired_probe.py: pairing by image id, differences and their errors."""

import json
import math

import numpy as np
import pytest

from benchmarks import paired_probe


def _write(directory, rows):
  directory.mkdir(parents=True)
  (directory / 'metrics.json').write_text('{}')
  (directory / 'per_image.jsonl').write_text(
    ''.join(json.dumps(r) + '\n' for r in rows)
  )
  return str(directory)


def _rows(ids, ged, tv, hm, oracle_ged=0.1, oracle_tv=0.1, oracle_hm=0.8):
  return [
    {
      'id': i,
      'ged_16': g,
      'mode_tv_16': t,
      'hm_iou_16': h,
      'oracle_ged_16': oracle_ged,
      'oracle_mode_tv_16': oracle_tv,
      'oracle_hm_iou_16': oracle_hm,
    }
    for i, g, t, h in zip(ids, ged, tv, hm)
  ]


def test_probe_is_paired_by_id_on_common_images_only(tmp_path):
  rng = np.random.default_rng(0)
  ged = rng.uniform(0.1, 0.3, 50)
  tv = rng.uniform(0.1, 0.3, 50)
  hm = rng.uniform(0.6, 0.8, 50)
  ids = [f'img{k}' for k in range(50)]
  ref = _write(tmp_path / 'ref', _rows(ids, ged, tv, hm))
  # The probe scores images 10..59 in reverse order; 10..49 are common.
  ids_p = [f'img{k}' for k in range(10, 60)][::-1]
  shift = {f'img{k}': 0.01 * (k % 3) for k in range(60)}
  ged_p = [
    (ged[k] if k < 50 else 9.0) + shift[f'img{k}'] for k in range(10, 60)
  ][::-1]
  probe = _write(tmp_path / 'p', _rows(ids_p, ged_p, ged_p, ged_p))
  result = paired_probe.run(('base', ref), [('p', probe)], 16)
  row = result['probes']['p']
  d = np.array([shift[f'img{k}'] for k in range(10, 50)])
  assert row['num_images'] == 40
  assert row['d_ged'] == pytest.approx(d.mean())
  assert row['d_ged_sem'] == pytest.approx(d.std(ddof=1) / math.sqrt(40))
  assert row['ged'] == pytest.approx(np.mean(ged[10:50] + d) / 0.1)
  base = result['probes']['base']
  assert base['d_ged'] == 0 and base['num_images'] == 50
  table = paired_probe.markdown(result, n=16)
  assert '| p | 40 |' in table and '| base | 50 |' in table


def test_a_missing_evaluation_names_the_file(tmp_path):
  ref = _write(
    tmp_path / 'ref', _rows(['a', 'b'], [0.1, 0.2], [0.1, 0.2], [0.7, 0.8])
  )
  with pytest.raises(FileNotFoundError, match='nope/per_image.jsonl'):
    paired_probe.run(('base', ref), [('p', str(tmp_path / 'nope'))], 16)
  with pytest.raises(ValueError, match='NAME=DIR'):
    paired_probe._named_dir(str(tmp_path))  # pylint: disable=protected-access


def test_model_modes_difference_where_both_evaluations_have_it(tmp_path):
  ids = [f'img{k}' for k in range(4)]
  ref_rows = _rows(ids, [0.2] * 4, [0.2] * 4, [0.7] * 4)
  probe_rows = _rows(ids, [0.3] * 4, [0.2] * 4, [0.7] * 4)
  for r, value in zip(
    ref_rows + probe_rows, [0.12] * 4 + [0.1, 0.1, 0.12, 0.14]
  ):
    r['model_modes_ged_16'] = value
  ref = _write(tmp_path / 'ref', ref_rows)
  probe = _write(tmp_path / 'p', probe_rows)
  result = paired_probe.run(('base', ref), [('p', probe)], 16)
  assert result['probes']['p']['d_model_modes_ged'] == pytest.approx(-0.005)
  old = _write(tmp_path / 'old', _rows(ids, [0.3] * 4, [0.2] * 4, [0.7] * 4))
  result = paired_probe.run(('base', ref), [('old', old)], 16)
  assert 'd_model_modes_ged' not in result['probes']['old']
  assert 'not scored' in paired_probe.markdown(result, n=16)
