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

"""TFDS builders for LIDC-IDRI benchmarks and a synthetic ambiguous set (no TensorFlow needed).

Build: `python -m tfds_lidc.build --dataset=NAME/CONFIG --data_dir=OUT [--manual_dir=IN]`
or `tfds_lidc.build.build('synthetic_lesions/32', data_dir)`.
Read: `tfds.data_source('synthetic_lesions/32', split='train', data_dir=OUT)` (array_record).

Data sets: synthetic_lesions/{32,64,128} (`synthetic_lesions.py`) and
lidc/{knegt_pickle,deepmind_crops,tcia}[_crop64] (`lidc.py`, raw TCIA parsing in `tcia.py`).
HU windowing and DICOM reading for predict mode: `preprocessing.py`.
"""
