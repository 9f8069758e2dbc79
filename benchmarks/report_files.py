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

"""Where a benchmark's result lands: OUT.json (the numbers) and OUT.md (its table)."""

from __future__ import annotations

import json
import os
from typing import Any, Mapping


def write(out: str, *, result: Mapping[str, Any], table: str) -> None:
  """Writes `result` to OUT.json (sorted keys) and `table` to OUT.md, making OUT's folder."""
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  with open(out + '.json', 'w', encoding='utf-8') as f:
    json.dump(result, f, indent=1, sort_keys=True)
  with open(out + '.md', 'w', encoding='utf-8') as f:
    f.write(table if table.endswith('\n') else table + '\n')
