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

"""benchmarks/over_seeds.py: settings matched across seeds, mean and standard error over seeds."""

import math

import numpy as np
import pytest

from benchmarks import over_seeds


def _row(ged_model, d_ged, d_sem=0.001):
  return {
    'ged_model': ged_model,
    'ged': ged_model / 0.12,
    'mode_tv_model': 0.17,
    'mode_tv': 1.7,
    'hm_iou_model': 0.69,
    'd_ged': d_ged,
    'd_ged_sem': d_sem,
    'd_mode_tv': 0.0,
    'd_mode_tv_sem': d_sem,
    'd_hm_iou': 0.0,
    'd_hm_iou_sem': d_sem,
  }


def _seed(k, ref, probe, extra=None):
  suffix = '' if k == 0 else f'_s{k}'
  probes = {
    f'ddpm10{suffix}': _row(ref, 0.0, 0.0),
    f'ddim100{suffix}': _row(probe, probe - ref),
  }
  if extra is not None:
    probes[f'dpmpp100{suffix}'] = _row(extra, extra - ref)
  return {'num_samples': 16, 'reference': f'ddpm10{suffix}', 'probes': probes}


def test_combine_matches_numpy_over_seeds_and_keeps_partial_settings():
  refs, probes = [0.196, 0.197, 0.195], [0.184, 0.186, 0.181]
  per_seed = [
    _seed(k, r, p, extra=0.18 if k == 0 else None)
    for k, (r, p) in enumerate(zip(refs, probes))
  ]
  result = over_seeds.combine(per_seed)
  settings = result['settings']
  assert list(settings) == ['ddpm10', 'ddim100', 'dpmpp100']
  assert settings['ddpm10']['reference']
  assert not settings['ddim100']['reference']
  d = np.subtract(probes, refs)
  mean, sem = settings['ddim100']['d_ged']
  np.testing.assert_allclose(mean, d.mean())
  np.testing.assert_allclose(sem, d.std(ddof=1) / math.sqrt(3))
  np.testing.assert_allclose(
    settings['ddim100']['ged_model'][0], np.mean(probes)
  )
  assert settings['dpmpp100']['seeds'] == 1
  assert math.isnan(settings['dpmpp100']['d_ged'][1])
  text = over_seeds.markdown(result)
  assert '| ddpm10 | 3/3 |' in text and 'reference' in text
  assert '| dpmpp100 | 1/3 |' in text
  z = d.mean() / (d.std(ddof=1) / math.sqrt(3))
  assert f'(z {z:+.1f})' in text


def test_combine_rejects_mixed_n_and_colliding_names():
  a = _seed(0, 0.19, 0.18)
  b = dict(_seed(1, 0.19, 0.18), num_samples=4)
  with pytest.raises(ValueError, match='different N'):
    over_seeds.combine([a, b])
  clash = _seed(0, 0.19, 0.18)
  clash['probes']['ddim100_s3'] = clash['probes']['ddim100']
  with pytest.raises(ValueError, match="setting 'ddim100'"):
    over_seeds.combine([clash])
