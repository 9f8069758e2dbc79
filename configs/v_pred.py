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

r"""The paper's LIDCv1 128x128 model with v-prediction (cosine, b = 0.1, SNR_plus1, DDPM 10 steps).

Build the data once (see README: LIDCv1), then train, evaluate on the paper's test split and predict:

  python -m tfds_lidc.build --dataset=lidc/knegt_pickle --manual_dir=~/lidc_v1 --data_dir=~/tensorflow_datasets
  python -m diffseg_jax.main --config=configs/v_pred.py --workdir=~/runs/v_pred
  python -m diffseg_jax.main --config=configs/v_pred.py --workdir=~/runs/v_pred --mode=evaluate
  python -m diffseg_jax.main --config=configs/v_pred.py --workdir=~/runs/v_pred --mode=predict --input=slice.png
"""

from configs import default


def get_config(arg=None):
  config = default.get_config(arg)
  config.diffusion.prediction = 'v'
  return config
