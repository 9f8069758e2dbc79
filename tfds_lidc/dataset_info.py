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

"""DatasetInfo for data sets that exist only where the user built them."""

from __future__ import annotations

import tensorflow_datasets as tfds


class LocalDatasetInfo(tfds.core.DatasetInfo):
  """tfds.core.DatasetInfo without the TFDS bucket lookup.

  A builder whose data is not prepared yet asks the TFDS bucket for pre-computed metadata; for a
  data set that is never on that bucket this finds nothing but leaves an empty directory in the
  system temp folder on every such construction (tfds 4.9: `tempfile.mkdtemp('tfds')`).
  """

  def initialize_from_bucket(self) -> None:
    return None
