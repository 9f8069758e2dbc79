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

"""benchmarks/report_files.py: OUT.json and OUT.md, the folder made."""

import json

from benchmarks import report_files


def test_write_makes_the_folder_and_both_files(tmp_path):
  out = tmp_path / 'new' / 'result'
  report_files.write(str(out), result={'b': 1, 'a': [2.5]}, table='| x |')
  text = (tmp_path / 'new' / 'result.json').read_text()
  assert json.loads(text) == {'a': [2.5], 'b': 1}
  assert text.index('"a"') < text.index('"b"')
  assert (tmp_path / 'new' / 'result.md').read_text() == '| x |\n'
  report_files.write(str(out), result={}, table='| y |\n')
  assert (tmp_path / 'new' / 'result.md').read_text() == '| y |\n'
