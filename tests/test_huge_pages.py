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

"""Tests for diffseg_jax.huge_pages: when it re-executes, and that it does so exactly once."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from diffseg_jax import huge_pages

_LINUX = dict(platform='linux', glibc=(2, 35), mode='madvise')


def test_wanted_on_linux_glibc_235_in_madvise_mode():
  assert huge_pages.wanted({}, **_LINUX)


@pytest.mark.parametrize(
  'change',
  [
    {'platform': 'darwin'},
    {'glibc': None},
    {'glibc': (2, 34)},
    {'mode': 'always'},
    {'mode': 'never'},
    {'mode': None},
  ],
)
def test_not_wanted_where_it_cannot_help(change):
  assert not huge_pages.wanted({}, **dict(_LINUX, **change))


def test_not_wanted_when_set_or_opted_out():
  assert not huge_pages.wanted(
    {'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=1'}, **_LINUX
  )
  assert not huge_pages.wanted({'DIFFSEG_HUGE_PAGES': '0'}, **_LINUX)
  assert huge_pages.wanted({'DIFFSEG_HUGE_PAGES': '1'}, **_LINUX)
  assert huge_pages.wanted(
    {'GLIBC_TUNABLES': 'glibc.malloc.arena_max=2'}, **_LINUX
  )


def test_with_tunable_keeps_other_tunables():
  assert huge_pages.with_tunable('') == 'glibc.malloc.hugetlb=1'
  assert (
    huge_pages.with_tunable('glibc.malloc.arena_max=2')
    == 'glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1'
  )


def test_thp_mode_reads_the_bracketed_mode(tmp_path):
  path = tmp_path / 'enabled'
  path.write_text('always [madvise] never\n')
  assert huge_pages.thp_mode(str(path)) == 'madvise'
  assert huge_pages.thp_mode(str(tmp_path / 'missing')) is None


def test_glibc_version_parses_this_machine():
  version = huge_pages.glibc_version()
  if sys.platform.startswith('linux') and version is None:
    pytest.skip('not glibc')
  assert version is None or (len(version) == 2 and version >= (2, 0))


def test_describe_names_the_one_reason_for_small_pages():
  assert 'transparent huge pages' in huge_pages.describe(
    {'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=1'}
  )
  linux = dict(platform='linux', glibc=(2, 36), mode='madvise')
  cases = {
    'DIFFSEG_HUGE_PAGES=0': ({'DIFFSEG_HUGE_PAGES': '0'}, {}),
    'not Linux (darwin)': ({}, {'platform': 'darwin'}),
    'found glibc 2.31': ({}, {'glibc': (2, 31)}),
    'transparent_hugepage: always': ({}, {'mode': 'always'}),
    'transparent_hugepage mode never': ({}, {'mode': 'never'}),
    'not re-executed': ({}, {}),
  }
  for expected, (environ, machine) in cases.items():
    line = huge_pages.describe(environ, **dict(linux, **machine))
    assert line.startswith('host malloc: 4 KiB pages (') and expected in line, (
      expected,
      line,
    )
    others = [e for e in cases if e != expected]
    assert not any(e in line for e in others), line


def _run(script, env, *args) -> list[dict]:
  """The JSON lines the probe script printed."""
  out = subprocess.run(
    [sys.executable, str(script), *args],
    env=env,
    capture_output=True,
    text=True,
    check=True,
    timeout=60,
  ).stdout
  return [json.loads(line) for line in out.splitlines()]


def test_reexecutes_once_with_the_same_arguments_and_pid(tmp_path):
  script = tmp_path / 'probe.py'
  script.write_text(
    textwrap.dedent(
      """
      import json, os, sys
      print(json.dumps({'pid': os.getpid(), 'argv': sys.argv[1:]}), flush=True)
      from diffseg_jax import huge_pages
      huge_pages.reexec_with_huge_pages()
      print(json.dumps({'pid': os.getpid(), 'argv': sys.argv[1:],
                        'tunables': os.environ.get('GLIBC_TUNABLES', '')}))
      """
    )
  )
  env = {
    k: v
    for k, v in os.environ.items()
    if k not in ('GLIBC_TUNABLES', 'DIFFSEG_HUGE_PAGES')
  }
  env['GLIBC_TUNABLES'] = 'glibc.malloc.arena_max=4'
  lines = _run(script, env, '--a=1', 'b c')
  expect_reexec = huge_pages.wanted(
    env,
    platform=sys.platform,
    glibc=huge_pages.glibc_version(),
    mode=huge_pages.thp_mode(),
  )
  if expect_reexec:
    assert len(lines) == 3  # the first start, the re-executed start, its end
    assert lines[1]['pid'] == lines[0]['pid'] == lines[2]['pid']
    assert (
      lines[2]['tunables'] == 'glibc.malloc.arena_max=4:glibc.malloc.hugetlb=1'
    )
  else:
    assert len(lines) == 2
    assert lines[1]['tunables'] == 'glibc.malloc.arena_max=4'
  assert all(line['argv'] == ['--a=1', 'b c'] for line in lines)

  env['DIFFSEG_HUGE_PAGES'] = '0'
  lines = _run(script, env)
  assert len(lines) == 2
  assert lines[1]['tunables'] == 'glibc.malloc.arena_max=4'
