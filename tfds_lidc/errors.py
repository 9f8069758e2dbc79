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

"""Errors raised by the builders; messages name the file and the fix."""


class ManualDataError(FileNotFoundError):
  """The manual_dir or a file the builder needs is missing; says what to put where."""


class CorruptFileError(ValueError):
  """An input file cannot be read or has unexpected content; names the file."""


class SplitLeakError(ValueError):
  """One patient or scan would land in two splits, or twice in one; names both places."""


class PathBackendError(ValueError):
  """A path names a storage (gs://, s3://, ...) that cannot be read here; says what to install."""
