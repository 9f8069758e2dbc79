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

"""diffseg_jax: diffusion-based ambiguous medical image segmentation in JAX/Flax."""

import setuptools

setuptools.setup(
  name='diffseg_jax',
  version='0.1.0',
  description='Diffusion models for the distribution of expert segmentations (JAX/Flax NNX).',
  long_description=open('README.md', encoding='utf-8').read(),
  long_description_content_type='text/markdown',
  license='Apache-2.0',
  python_requires='>=3.11',
  packages=setuptools.find_packages(
    include=[
      'diffseg_jax',
      'diffseg_jax.*',
      'tfds_lidc',
      'tfds_lidc.*',
      'configs',
    ]
  ),
  # Floors: the versions the test suite ran with (the exact environment is constraints.txt).
  install_requires=[
    'absl-py>=2.5.1',
    'array_record>=0.8.6',
    'etils>=1.15.0',
    'flax>=0.12.8',
    'grain>=0.2.18',
    'importlib_resources>=7.1.0',  # Imported by tensorflow-datasets when TensorFlow is absent.
    'jax>=0.10.2',
    'ml_collections>=1.1.0',
    'numpy>=2.4.6',
    'optax>=0.2.8',
    'orbax-checkpoint>=0.12.8',
    'pillow>=13.0.0',
    'pydicom>=3.0.2',
    'scipy>=1.17.1',
    'tensorboardX>=2.6.5',
    'tensorflow-datasets>=4.9.10',
  ],
  extras_require={
    'test': [
      'pytest>=9.0.3',
      'pytest-xdist>=3.8.0',
      'ruff==0.17.5',
    ],
    'torch': ['torch>=2.13.0'],
    'bench': ['torch>=2.13.0'],  # The PyTorch yardstick of benchmarks/.
    'plots': ['matplotlib>=3.11.2'],  # benchmarks/quality_curve.py's PNG.
    'gpu': ['jax[cuda12]'],
    'tpu': ['jax[tpu]'],
    'gcs': ['etils[epath-gcs]'],  # gs:// workdirs and data dirs.
  },
)
