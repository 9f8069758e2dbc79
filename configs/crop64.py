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

r"""The paper's harder benchmark: random 64x64 windows of LIDCv1 (SPEC §4, "crop64"), x-prediction.

Train draws a fresh window every step (on device); validation/test use the windows stored by the builder.

  python -m tfds_lidc.build --dataset=lidc/knegt_pickle_crop64 --manual_dir=~/lidc_v1 --data_dir=~/tensorflow_datasets
  python -m diffseg_jax.main --config=configs/crop64.py --workdir=~/runs/crop64
  python -m diffseg_jax.main --config=configs/crop64.py --workdir=~/runs/crop64 --mode=evaluate
"""

from configs import default


def get_config(arg=None):
  config = default.get_config(arg)
  config.dataset.name = 'lidc/knegt_pickle_crop64'
  config.augment.crop_size = 64
  return config
