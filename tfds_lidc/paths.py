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


"""Local, `file://` and cloud (`gs://`, `s3://`, ...) paths, all as `etils.epath.Path`.

Every folder a user names (--workdir, --output, config.dataset.data_dir, --manual_dir) goes through
`resolve` once: a local path becomes absolute with `~` expanded, a `file://` URL becomes its local
path, and a cloud URL stays a URL once the package that lets epath (and so TFDS and Orbax) read
it is importable; otherwise `resolve` raises one line naming the path and the pip command.
"""

import importlib.util
import os
import re
from typing import Optional, Union
import urllib.parse
import urllib.request

from etils import epath

from tfds_lidc import errors

PathLike = Union[str, os.PathLike]

# Scheme -> (modules of which one lets etils.epath read it, how to install one).
_BACKENDS = {
  'gs': (
    ('gcsfs', 'tensorflow'),
    "pip install gcsfs (or pip install 'etils[epath-gcs]')",
  ),
  's3': (('s3fs',), "pip install s3fs (or pip install 'etils[epath-s3]')"),
  'az': (('adlfs',), 'pip install adlfs'),
  'hf': (('huggingface_hub',), 'pip install huggingface_hub'),
}
_SCHEME = re.compile(r'^([A-Za-z][A-Za-z0-9+.-]*)://')


def scheme(path: PathLike) -> Optional[str]:
  """The URL scheme of `path` ('gs', 's3', 'file', ...), or None for a plain path."""
  match = _SCHEME.match(os.fspath(path))
  return match.group(1).lower() if match else None


def is_local(path: PathLike) -> bool:
  """Whether `path` is on this machine's file system (a plain path or a file:// URL)."""
  return scheme(path) in (None, 'file')


def _importable(module: str) -> bool:
  return importlib.util.find_spec(module) is not None


def _file_url_path(text: str, *, where: str) -> str:
  url = urllib.parse.urlparse(text)
  if url.netloc not in ('', 'localhost'):
    raise errors.PathBackendError(
      f'{where}{text}: a file:// URL names a folder on this machine, '
      f'written file:///absolute/path (not file://{url.netloc}/...).'
    )
  return urllib.request.url2pathname(url.path)


def resolve(path: PathLike, *, what: str = '') -> epath.Path:
  """`path` as an epath.Path: local ones absolute, file:// URLs local, cloud URLs checked.

  Args:
    path: a local path (`~` allowed), a file:///absolute/path URL, or a cloud URL such as
      gs://bucket/folder.
    what: the flag or config key that gave `path` (e.g. '--workdir'), for the error message.

  Raises:
    errors.PathBackendError: an unknown URL scheme, or a cloud URL whose file-system package
      (e.g. gcsfs for gs://) is not installed; the message names the path and the pip command.
  """
  text = os.fspath(path)
  where = f'{what} ' if what else ''
  kind = scheme(text)
  if kind is None:
    return epath.Path(os.path.abspath(os.path.expanduser(text)))
  if kind == 'file':
    return epath.Path(os.path.abspath(_file_url_path(text, where=where)))
  if kind not in _BACKENDS:
    known = ', '.join(f'{s}://' for s in _BACKENDS)
    raise errors.PathBackendError(
      f'{where}{text}: {kind}:// paths are not supported; use a local path, '
      f'file:///absolute/path or one of {known}.'
    )
  modules, install = _BACKENDS[kind]
  if not any(_importable(m) for m in modules):
    raise errors.PathBackendError(
      f'{where}{text}: reading and writing {kind}:// paths needs the '
      f'{modules[0]} package, which is not installed: {install}.'
    )
  return epath.Path(text)


def walk(root: PathLike):
  """os.walk's (folder, dirs, files) under `root` (local or cloud), folders as strings.

  `dirs` may be sorted or pruned in place. Cloud folders keep their scheme (fsspec's walk
  drops it, and etils.epath passes that on).
  """
  root = resolve(root)
  kind = scheme(root)
  for directory, dirs, files in root.walk():
    directory = os.fspath(directory)
    if kind is not None and scheme(directory) is None:
      directory = f'{kind}://{directory.lstrip("/")}'
    yield directory, dirs, files
