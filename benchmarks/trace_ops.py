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

"""Reading a JAX trace per compiled op: durations from the Perfetto trace, meaning from the HLO."""

from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re

_INSTRUCTION = re.compile(r'\s*(?:ROOT )?%([\w.\-]+) = (\S+) ([\w\-]+)\(')
_CALLS = re.compile(r'calls=%([\w.\-]+)')
_KINDS = ('convolution', 'dot', 'reduce', 'concatenate', 'transpose', 'copy')


def _computations(hlo: str) -> dict[str, list[str]]:
  """Computation name -> its instruction lines."""
  out, current = {}, None
  for line in hlo.splitlines():
    if line and not line.startswith(' ') and line.rstrip().endswith('{'):
      match = re.match(r'^(?:ENTRY )?%?([\w.\-]+)', line)
      current = match.group(1) if match else None
      out[current] = []
    elif current is not None:
      out[current].append(line)
  return out


def describe_ops(hlo: str) -> dict[str, dict[str, str]]:
  """Op name -> {'kind', 'shape', 'detail'} for every instruction of the compiled HLO."""
  computations = _computations(hlo)
  ops = {}
  for line in hlo.splitlines():
    match = _INSTRUCTION.match(line)
    if not match:
      continue
    name, shape, opcode = match.groups()
    called = _CALLS.search(line)
    body = computations.get(called.group(1), []) if called else [line]
    opcodes = {m.group(3) for m in map(_INSTRUCTION.match, body) if m}
    kind = next((k for k in _KINDS if k in opcodes), 'elementwise')
    detail = ''
    for inner in body:
      if ' convolution(' in inner or ' dot(' in inner:
        detail = re.sub(r', metadata=.*', '', inner.strip())
        detail = re.sub(r'^.*? = ', '', detail)[:200]
    ops[name] = {'kind': kind, 'shape': shape, 'detail': detail or opcode}
  return ops


def trace_durations(trace_dir: str) -> dict[str, float]:
  """Op name -> summed duration (ms) of the 'X' events of the Perfetto trace."""
  (path,) = glob.glob(
    os.path.join(trace_dir, '**', 'perfetto_trace.json.gz'), recursive=True
  )
  with gzip.open(path) as f:
    trace = json.load(f)
  events = trace['traceEvents'] if isinstance(trace, dict) else trace
  total = collections.Counter()
  for event in events:
    if event.get('ph') == 'X':
      total[event['name']] += event['dur'] / 1e3
  return dict(total)
