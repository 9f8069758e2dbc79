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

"""Transparent huge pages for the host's malloc, by re-executing the command once.

XLA:CPU allocates each execution's temporaries afresh (1.5 GB for the default U-Net's train step at
128², batch 8), so with 4 KiB pages every step faults them in again: ~380,000 page faults and ~1 s
of kernel time per step on a 2-core AMD EPYC (benchmarks/RESULTS.md). glibc (2.35 and later) has a
tunable, `glibc.malloc.hugetlb=1`, with which malloc asks the kernel for transparent huge pages
(`madvise`); glibc reads tunables only when a process starts, so `reexec_with_huge_pages` runs the
same command again, once, with the tunable added to `GLIBC_TUNABLES`. The re-executed process keeps
its process id, arguments and the rest of its environment.

Nothing happens where it cannot help: not Linux with glibc >= 2.35, transparent huge pages not in
`madvise` mode (`always` gives them already, `never` refuses them), the tunable already set, or
DIFFSEG_HUGE_PAGES=0 in the environment (the opt-out).
"""

from __future__ import annotations

from collections.abc import Mapping
import os
import re
import sys
from typing import Optional

OPT_OUT_VARIABLE = 'DIFFSEG_HUGE_PAGES'
TUNABLE = 'glibc.malloc.hugetlb'
_THP_MODE_FILE = '/sys/kernel/mm/transparent_hugepage/enabled'


def glibc_version() -> Optional[tuple[int, int]]:
  """(major, minor) of the C library if it is glibc, else None."""
  try:
    text = os.confstr('CS_GNU_LIBC_VERSION')
  except (AttributeError, ValueError, OSError):
    return None
  match = re.fullmatch(r'glibc (\d+)\.(\d+).*', text or '')
  return (int(match[1]), int(match[2])) if match else None


def thp_mode(path: str = _THP_MODE_FILE) -> Optional[str]:
  """The kernel's transparent-huge-page mode ('always', 'madvise', 'never'), None if unknown."""
  try:
    with open(path) as f:
      match = re.search(r'\[(\w+)\]', f.read())
  except OSError:
    return None
  return match[1] if match else None


def why_not(
  environ: Mapping[str, str],
  *,
  platform: str,
  glibc: Optional[tuple[int, int]],
  mode: Optional[str],
) -> Optional[str]:
  """Why re-executing with the tunable would not change how malloc gets memory; None if it would."""
  if TUNABLE in environ.get('GLIBC_TUNABLES', ''):
    return f'{TUNABLE} already in GLIBC_TUNABLES'
  if environ.get(OPT_OUT_VARIABLE, '1') == '0':
    return f'{OPT_OUT_VARIABLE}=0'
  if not platform.startswith('linux'):
    return f'not Linux ({platform})'
  if glibc is None or glibc < (2, 35):
    found = 'not glibc' if glibc is None else 'glibc %d.%d' % glibc
    return f'needs glibc >= 2.35, found {found}'
  if mode == 'always':
    return (
      'the kernel gives huge pages to all memory (transparent_hugepage: always)'
    )
  if mode != 'madvise':
    return f'transparent_hugepage mode {mode or "unknown"}, not madvise'
  return None


def wanted(
  environ: Mapping[str, str],
  *,
  platform: str,
  glibc: Optional[tuple[int, int]],
  mode: Optional[str],
) -> bool:
  """Whether re-executing with the tunable would change how malloc gets memory."""
  return why_not(environ, platform=platform, glibc=glibc, mode=mode) is None


def with_tunable(tunables: str) -> str:
  """GLIBC_TUNABLES with the huge-page tunable appended (colon-separated)."""
  return ':'.join(t for t in (tunables, f'{TUNABLE}=1') if t)


def reexec_with_huge_pages() -> None:
  """Re-executes this command with malloc's huge pages on, where that helps; else returns."""
  if not wanted(
    os.environ, platform=sys.platform, glibc=glibc_version(), mode=thp_mode()
  ):
    return
  env = dict(os.environ)
  env['GLIBC_TUNABLES'] = with_tunable(env.get('GLIBC_TUNABLES', ''))
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


def describe(
  environ: Mapping[str, str] = os.environ,
  *,
  platform: Optional[str] = None,
  glibc: Optional[tuple[int, int]] = None,
  mode: Optional[str] = None,
) -> str:
  """One line for logs: whether this process runs with the tunable, and if not, why not.

  `platform`, `glibc` and `mode` default to this machine's.
  """
  if TUNABLE in environ.get('GLIBC_TUNABLES', ''):
    return f'host malloc: transparent huge pages ({TUNABLE}=1)'
  reason = why_not(
    environ,
    platform=sys.platform if platform is None else platform,
    glibc=glibc_version() if glibc is None else glibc,
    mode=thp_mode() if mode is None else mode,
  )
  return f'host malloc: 4 KiB pages ({reason or "not re-executed with " + TUNABLE + "=1"})'
