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

r"""Builds a data set of this package into a TFDS data dir (array_record, no TensorFlow).

  python -m tfds_lidc.build --dataset=synthetic_lesions/32 --data_dir=~/tensorflow_datasets
  python -m tfds_lidc.build --dataset=lidc/knegt_pickle --data_dir=OUT --manual_dir=IN \
      [--skip_corrupt] [--overwrite] [--override=num_train=2000,seed=1] \
      [--allow_unmatched_ids] [--num_workers=N]

From Python: `tfds_lidc.build.build('synthetic_lesions/32', data_dir)`. Read the result with
`tfds.data_source('synthetic_lesions/32', split='train', data_dir=data_dir)`.
A report (`build_report.json`: split sizes in examples and patients, build seconds,
skipped corrupt files, ignored folders) is written into the data set's versioned folder.
A build that would put one patient or scan in two splits (or one scan twice) is refused.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import sys
import time

from absl import app
from absl import flags
from etils import epath
import tensorflow_datasets as tfds

from tfds_lidc import errors
from tfds_lidc import paths

_DATASET = flags.DEFINE_string(
  'dataset', None, 'NAME/CONFIG, e.g. synthetic_lesions/32.'
)
_DATA_DIR = flags.DEFINE_string('data_dir', None, 'TFDS data dir to write to.')
_MANUAL_DIR = flags.DEFINE_string(
  'manual_dir', None, 'Folder with the LIDC input files.'
)
_SKIP_CORRUPT = flags.DEFINE_bool(
  'skip_corrupt',
  False,
  'Skip unreadable input files and list them in build_report.json.',
)
_OVERWRITE = flags.DEFINE_bool('overwrite', False, 'Rebuild if already built.')
_OVERRIDE = flags.DEFINE_list(
  'override',
  [],
  'Config field overrides, e.g. num_train=1000,seed=1 (the data set is '
  'then named NAME/CONFIG_num_train1000_seed1 unless name=... is given).',
)
_ALLOW_UNMATCHED_IDS = flags.DEFINE_bool(
  'allow_unmatched_ids',
  False,
  'lidc/knegt_pickle: ignore ids of test_ids.txt / '
  'vali_ids.txt that match no pickle key (listed in the report) instead of failing.',
)
_NUM_WORKERS = flags.DEFINE_integer(
  'num_workers',
  None,
  'lidc/tcia: processes parsing patients in parallel (default: all '
  'CPUs; 0 parses in the main process).',
)
_FLAGS = (
  _DATASET,
  _DATA_DIR,
  _MANUAL_DIR,
  _SKIP_CORRUPT,
  _OVERWRITE,
  _OVERRIDE,
  _ALLOW_UNMATCHED_IDS,
  _NUM_WORKERS,
)

# Data set name -> (module, builder class); modules are imported on use.
BUILDERS = {
  'synthetic_lesions': ('tfds_lidc.synthetic_lesions', 'SyntheticLesions'),
  'lidc': ('tfds_lidc.lidc', 'Lidc'),
}
REPORT_NAME = 'build_report.json'


def _parse_value(text):
  for cast in (int, float):
    try:
      return cast(text)
    except ValueError:
      pass
  return {'true': True, 'false': False}.get(text.lower(), text)


def parse_overrides(items) -> dict:
  """'a=1,b=x' or ['a=1', 'b=x'] -> {'a': 1, 'b': 'x'} (ints, floats, true/false converted)."""
  if isinstance(items, str):
    items = items.split(',')
  out = {}
  for item in filter(None, (t.strip() for t in items)):
    if '=' not in item:
      raise ValueError(
        f'--override expects key=value pairs separated by commas, got {item!r}.'
      )
    key, value = item.split('=', 1)
    out[key.strip()] = _parse_value(value.strip())
  return out


def override_config_name(config_name: str, overrides: dict) -> str:
  """Name of a config with overrides, e.g. ('32', {'num_train': 100}) -> '32_num_train100'."""
  return '_'.join(
    [config_name] + [f'{k}{v}' for k, v in sorted(overrides.items())]
  )


def make_builder(
  name: str,
  data_dir: str,
  *,
  skip_corrupt: bool = False,
  overrides: dict | None = None,
  allow_unmatched_ids: bool = False,
  num_workers: int | None = None,
) -> tfds.core.DatasetBuilder:
  """Returns the builder for 'NAME/CONFIG' writing array_record files under data_dir.

  `overrides` replaces fields of the named config (e.g. split sizes, seed); TFDS needs
  a new config name for that: `overrides['name']` or `override_config_name(...)`.
  skip_corrupt, allow_unmatched_ids and num_workers are options of the lidc builder
  (see `lidc.Lidc`); they do not change the data set's name.
  """
  if '/' not in name:
    raise ValueError(
      f'--dataset must be NAME/CONFIG, e.g. synthetic_lesions/32; got {name!r}.'
    )
  builder_name, config_name = name.split('/', 1)
  if builder_name not in BUILDERS:
    raise ValueError(
      f'Unknown data set {builder_name!r}; choose one of {sorted(BUILDERS)}.'
    )
  module_name, class_name = BUILDERS[builder_name]
  cls = getattr(importlib.import_module(module_name), class_name)
  configs = {c.name: c for c in cls.BUILDER_CONFIGS}
  if config_name not in configs:
    raise ValueError(
      f'Unknown config {config_name!r} of {builder_name}; '
      f'choose one of {sorted(configs)}.'
    )
  config = configs[config_name]
  if overrides:
    overrides = dict(overrides)
    fields = {f.name for f in dataclasses.fields(config)} - {'version'}
    unknown = set(overrides) - fields
    if unknown:
      raise ValueError(
        f'Unknown config fields {sorted(unknown)} for {name}; known: {sorted(fields)}.'
      )
    new_name = overrides.pop('name', None) or override_config_name(
      config_name, overrides
    )
    config = dataclasses.replace(config, name=new_name, **overrides)
  kwargs = dict(
    data_dir=str(paths.resolve(data_dir, what='--data_dir')),
    config=config,
    file_format=tfds.core.FileFormat.ARRAY_RECORD,
  )
  if builder_name == 'lidc':
    kwargs.update(
      skip_corrupt=skip_corrupt,
      allow_unmatched_ids=allow_unmatched_ids,
      num_workers=num_workers,
    )
  return cls(**kwargs)


def build(
  name: str,
  data_dir: str,
  manual_dir: str | None = None,
  *,
  skip_corrupt: bool = False,
  overwrite: bool = False,
  overrides: dict | None = None,
  allow_unmatched_ids: bool = False,
  num_workers: int | None = None,
  log=print,
) -> dict:
  """Builds 'NAME/CONFIG' into data_dir and returns the build report dict.

  Args:
    name: e.g. 'synthetic_lesions/32', 'lidc/tcia_crop64'.
    data_dir: TFDS data dir (created if needed).
    manual_dir: folder with the user's LIDC files (see `lidc.MANUAL_DOWNLOAD_INSTRUCTIONS`).
    skip_corrupt: skip unreadable input files and list them in the report instead of failing.
    overwrite: rebuild even if the data set already exists in data_dir.
    overrides: config field overrides, e.g. {'num_train': 1000}; the data set is then
      named NAME/CONFIG_num_train1000 unless overrides['name'] is given
      (the report's 'dataset' entry holds the name to read).
    allow_unmatched_ids: lidc/knegt_pickle: ignore split-list ids that match no pickle
      key (they are listed in the report) instead of failing.
    num_workers: lidc/tcia: parallel parsing processes (None: all CPUs).
    log: callable for progress messages.

  Raises:
    errors.SplitLeakError: a patient or scan would be in two splits or twice in one.
    errors.ManualDataError, errors.CorruptFileError, ValueError: bad input (the
      message names the file or key and the fix).
  """
  manual_path = (
    paths.resolve(manual_dir, what='--manual_dir') if manual_dir else None
  )
  if manual_path and manual_path.exists() and not manual_path.is_dir():
    raise errors.ManualDataError(
      f'--manual_dir {manual_path} is a file, not a folder: pass the folder that holds '
      f'the LIDC input files (for a single file such as data_lidc.pickle, its folder '
      f'{manual_path.parent}).'
    )
  builder = make_builder(
    name,
    data_dir,
    skip_corrupt=skip_corrupt,
    overrides=overrides,
    allow_unmatched_ids=allow_unmatched_ids,
    num_workers=num_workers,
  )
  mode = (
    tfds.download.GenerateMode.FORCE_REDOWNLOAD
    if overwrite
    else tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS
  )
  download_config = tfds.download.DownloadConfig(
    manual_dir=str(manual_path) if manual_path else None,
    download_mode=mode,
  )
  report_path = epath.Path(builder.data_dir) / REPORT_NAME
  if builder.is_prepared() and not overwrite:
    log(
      f'{name} already built in {builder.data_dir}; pass overwrite=True to rebuild.'
    )
    if report_path.exists():
      return json.loads(report_path.read_text())
  parent = epath.Path(builder.data_dir).parent
  stale = sorted(str(p) for p in parent.glob('incomplete.*'))
  if stale:
    log(
      f'Folders left by an interrupted build (delete them to free the disk): {stale}'
    )
  tfds.disable_progress_bar()
  start = time.perf_counter()
  builder.download_and_prepare(download_config=download_config)
  seconds = time.perf_counter() - start
  report = dict(
    dataset=f'{builder.name}/{builder.builder_config.name}',
    config=_config_dict(builder.builder_config),
    data_dir=str(builder.data_dir),
    build_seconds=round(seconds, 3),
    num_examples={k: v.num_examples for k, v in builder.info.splits.items()},
    skipped_corrupt=list(getattr(builder, 'skipped_files', [])),
    **getattr(builder, 'notes', {}),
  )
  report_path.write_text(json.dumps(report, indent=2))
  log(
    f'Built {report["dataset"]} in {seconds:.1f} s: {report["num_examples"]} examples'
    + (f', {report["patients"]} patients' if 'patients' in report else '')
    + f' -> {builder.data_dir}'
  )
  if report['skipped_corrupt']:
    log(
      f'Skipped {len(report["skipped_corrupt"])} corrupt files; see {report_path}'
    )
  for entry in ('unmatched_ids', 'ignored_series_folders'):
    if report.get(entry):
      log(f'{entry}: {report[entry]} (listed in {report_path})')
  return report


def _config_dict(config):
  return {
    f.name: (
      str(v) if not isinstance(v, (int, float, str, bool, type(None))) else v
    )
    for f in dataclasses.fields(config)
    for v in [getattr(config, f.name)]
    if f.name
    not in ('description', 'release_notes', 'supported_versions', 'tags')
  }


def main(argv):
  """Builds the data set the flags name; returns the exit status (1 on bad input).

  Args:
    argv: as `app.run` passes it (program name first, flags already parsed), or a list
      of flags such as ['--dataset=synthetic_lesions/32', '--data_dir=/tmp/d'] that is
      parsed here (flags it leaves out take their defaults).
  """
  if argv and argv[0].startswith('--'):
    for flag in _FLAGS:
      flags.FLAGS[flag.name].unparse()
    try:
      argv = flags.FLAGS(['tfds_lidc.build'] + list(argv))
    except flags.Error as e:
      print(f'ERROR: {e}', file=sys.stderr)
      return 1
  if len(argv) > 1:
    print(
      f'ERROR: unexpected arguments {argv[1:]}; flags are --name=value.',
      file=sys.stderr,
    )
    return 1
  missing = [f'--{f.name}' for f in (_DATASET, _DATA_DIR) if not f.value]
  if missing:
    print(
      f'ERROR: {" and ".join(missing)} required, e.g. --dataset=synthetic_lesions/32 '
      '--data_dir=~/tensorflow_datasets (see --help).',
      file=sys.stderr,
    )
    return 1
  try:
    build(
      _DATASET.value,
      _DATA_DIR.value,
      _MANUAL_DIR.value,
      skip_corrupt=_SKIP_CORRUPT.value,
      overwrite=_OVERWRITE.value,
      overrides=parse_overrides(_OVERRIDE.value),
      allow_unmatched_ids=_ALLOW_UNMATCHED_IDS.value,
      num_workers=_NUM_WORKERS.value,
    )
  except (errors.ManualDataError, errors.CorruptFileError, ValueError) as e:
    print(f'ERROR: {e}', file=sys.stderr)
    return 1
  except OSError as e:  # A folder that cannot be read or written, a full disk.
    where = (
      f' ({e.filename})' if e.filename and str(e.filename) not in str(e) else ''
    )
    print(
      f'ERROR: {e}{where}: check the path and its permissions and free space.',
      file=sys.stderr,
    )
    return 1
  return 0


if __name__ == '__main__':
  app.run(main)
