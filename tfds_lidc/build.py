r"""Builds a data set of this package into a TFDS data dir (array_record, no TensorFlow).

  python -m tfds_lidc.build --dataset=synthetic_lesions/32 --data_dir=~/tensorflow_datasets
  python -m tfds_lidc.build --dataset=lidc/knegt_pickle --data_dir=OUT --manual_dir=IN \
      [--skip_corrupt] [--overwrite] [--override=num_train=2000,seed=1]

From Python: `tfds_lidc.build.build('synthetic_lesions/32', data_dir)`. Read the result with
`tfds.data_source('synthetic_lesions/32', split='train', data_dir=data_dir)`.
A report (`build_report.json`: split sizes, build seconds, skipped corrupt files) is
written into the data set's versioned folder.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import sys
import time

import tensorflow_datasets as tfds

from tfds_lidc import errors

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


def parse_overrides(text: str) -> dict:
  """'a=1,b=x' -> {'a': 1, 'b': 'x'} (ints, floats and true/false are converted)."""
  out = {}
  for item in filter(None, (t.strip() for t in text.split(','))):
    if '=' not in item:
      raise ValueError(f'--override expects key=value pairs separated by commas, got {item!r}.')
    key, value = item.split('=', 1)
    out[key.strip()] = _parse_value(value.strip())
  return out


def override_config_name(config_name: str, overrides: dict) -> str:
  """Name of a config with overrides, e.g. ('32', {'num_train': 100}) -> '32_num_train100'."""
  return '_'.join([config_name] + [f'{k}{v}' for k, v in sorted(overrides.items())])


def make_builder(name: str, data_dir: str, *, skip_corrupt: bool = False,
                 overrides: dict | None = None) -> tfds.core.DatasetBuilder:
  """Returns the builder for 'NAME/CONFIG' writing array_record files under data_dir.

  `overrides` replaces fields of the named config (e.g. split sizes, seed); TFDS needs
  a new config name for that: `overrides['name']` or `override_config_name(...)`.
  """
  if '/' not in name:
    raise ValueError(f'--dataset must be NAME/CONFIG, e.g. synthetic_lesions/32; got {name!r}.')
  builder_name, config_name = name.split('/', 1)
  if builder_name not in BUILDERS:
    raise ValueError(f'Unknown data set {builder_name!r}; choose one of {sorted(BUILDERS)}.')
  module_name, class_name = BUILDERS[builder_name]
  cls = getattr(importlib.import_module(module_name), class_name)
  configs = {c.name: c for c in cls.BUILDER_CONFIGS}
  if config_name not in configs:
    raise ValueError(f'Unknown config {config_name!r} of {builder_name}; '
                     f'choose one of {sorted(configs)}.')
  config = configs[config_name]
  if overrides:
    overrides = dict(overrides)
    fields = {f.name for f in dataclasses.fields(config)} - {'version'}
    unknown = set(overrides) - fields
    if unknown:
      raise ValueError(f'Unknown config fields {sorted(unknown)} for {name}; known: {sorted(fields)}.')
    new_name = overrides.pop('name', None) or override_config_name(config_name, overrides)
    config = dataclasses.replace(config, name=new_name, **overrides)
  kwargs = dict(data_dir=os.path.expanduser(data_dir), config=config,
                file_format=tfds.core.FileFormat.ARRAY_RECORD)
  if builder_name == 'lidc':
    kwargs['skip_corrupt'] = skip_corrupt
  return cls(**kwargs)


def build(name: str, data_dir: str, manual_dir: str | None = None, *,
          skip_corrupt: bool = False, overwrite: bool = False,
          overrides: dict | None = None, log=print) -> dict:
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
    log: callable for progress messages.
  """
  builder = make_builder(name, data_dir, skip_corrupt=skip_corrupt, overrides=overrides)
  mode = (tfds.download.GenerateMode.FORCE_REDOWNLOAD if overwrite
          else tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS)
  download_config = tfds.download.DownloadConfig(
      manual_dir=os.path.expanduser(manual_dir) if manual_dir else None, download_mode=mode)
  report_path = os.path.join(builder.data_dir, REPORT_NAME)
  if builder.is_prepared() and not overwrite:
    log(f'{name} already built in {builder.data_dir}; pass overwrite=True to rebuild.')
    if os.path.exists(report_path):
      with open(report_path) as f:
        return json.load(f)
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
  )
  with open(report_path, 'w') as f:
    json.dump(report, f, indent=2)
  log(f'Built {report["dataset"]} in {seconds:.1f} s: {report["num_examples"]} -> {builder.data_dir}')
  if report['skipped_corrupt']:
    log(f'Skipped {len(report["skipped_corrupt"])} corrupt files; see {report_path}')
  return report


def _config_dict(config):
  return {f.name: (str(v) if not isinstance(v, (int, float, str, bool, type(None))) else v)
          for f in dataclasses.fields(config) for v in [getattr(config, f.name)]
          if f.name not in ('description', 'release_notes', 'supported_versions', 'tags')}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--dataset', required=True, help='NAME/CONFIG, e.g. synthetic_lesions/32')
  parser.add_argument('--data_dir', required=True, help='TFDS data dir to write to')
  parser.add_argument('--manual_dir', default=None, help='folder with the LIDC input files')
  parser.add_argument('--skip_corrupt', action='store_true',
                      help='skip unreadable input files and list them in build_report.json')
  parser.add_argument('--overwrite', action='store_true', help='rebuild if already built')
  parser.add_argument('--override', default='',
                      help='config overrides, e.g. num_train=1000,seed=1')
  args = parser.parse_args(argv)
  try:
    build(args.dataset, args.data_dir, args.manual_dir, skip_corrupt=args.skip_corrupt,
          overwrite=args.overwrite, overrides=parse_overrides(args.override))
  except (errors.ManualDataError, errors.CorruptFileError, ValueError) as e:
    print(f'ERROR: {e}', file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main())
