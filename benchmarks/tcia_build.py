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

r"""Time and memory of the lidc/tcia build on a simulated tree of N distinct patients.

  python benchmarks/tcia_build.py --patients=200 [--num_workers=N] [--workdir=/tmp/tcia_build]

Steps (each build is `python -m tfds_lidc.build --dataset=lidc/tcia` in a subprocess):
  1. `simulate_tcia.py` writes N patients (not timed as part of the build);
  2. cold build: wall time and the peak RSS of the whole process tree (the build and
     its pool workers, summed, sampled every 0.1 s with psutil);
  3. interrupted build: a second cold build into another data dir, killed (SIGKILL to
     its process group) after --interrupt_fraction of the cold wall time, then re-run:
     the re-run's wall time and how many series it parsed vs reused from the cache;
  4. warm re-run of the first data dir with --overwrite (every series from the cache);
  5. the cost of one DICOM header read, for the extrapolation to real series sizes.
Writes benchmarks/results/tcia_build.json, with the CPU model and the load average
(the machine may be shared).
"""

from __future__ import annotations

import glob
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time

from absl import app
from absl import flags
import psutil

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, 'benchmarks'))

import simulate_tcia  # pylint: disable=g-import-not-at-top,wrong-import-position

from tfds_lidc import preprocessing  # pylint: disable=g-import-not-at-top,wrong-import-position

RESULTS = os.path.join(REPO, 'benchmarks', 'results', 'tcia_build.json')
FULL_PATIENTS = 1010
# LIDC-IDRI: 244,527 CT images in 1,018 scans of 1,010 patients (TCIA collection page).
REAL_SLICES_PER_SCAN = 244527 / 1018
REAL_SCANS_PER_PATIENT = 1018 / 1010
MIB = 2.0**20

_PATIENTS = flags.DEFINE_integer('patients', 200, 'Simulated patients.')
_NUM_WORKERS = flags.DEFINE_integer(
  'num_workers', None, 'Build workers (default: all CPUs).'
)
_WORKDIR = flags.DEFINE_string(
  'workdir', '/tmp/tcia_build_bench', 'Scratch folder.'
)
_OUT = flags.DEFINE_string('out', RESULTS, 'Result JSON.')
_INTERRUPT = flags.DEFINE_float(
  'interrupt_fraction',
  0.5,
  'Kill the second cold build after this share of the first '
  "one's wall time (0 skips steps 3).",
)
_SKIP_WARM = flags.DEFINE_bool(
  'skip_warm', False, 'Skip the warm re-run (step 4).'
)


def cpu_model() -> str:
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor()


def _tree_rss(proc: psutil.Process) -> int:
  total = 0
  for p in [proc] + proc.children(recursive=True):
    try:
      total += p.memory_info().rss
    except psutil.Error:
      pass
  return total


def run_build(
  manual, data_dir, *, num_workers, overwrite=False, kill_after=None
):
  """Runs one build subprocess; returns wall seconds, peak tree RSS, exit code, report."""
  cmd = [
    sys.executable,
    '-m',
    'tfds_lidc.build',
    '--dataset=lidc/tcia',
    f'--data_dir={data_dir}',
    f'--manual_dir={manual}',
  ]
  if num_workers is not None:
    cmd.append(f'--num_workers={num_workers}')
  if overwrite:
    cmd.append('--overwrite')
  start = time.perf_counter()
  proc = subprocess.Popen(
    cmd,
    cwd=REPO,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
    start_new_session=True,
  )
  ps = psutil.Process(proc.pid)
  peak = [0]
  done = threading.Event()

  def sample():
    while not done.is_set():
      try:
        peak[0] = max(peak[0], _tree_rss(ps))
      except psutil.Error:
        pass
      done.wait(0.1)

  sampler = threading.Thread(target=sample, daemon=True)
  sampler.start()
  killed = False
  try:
    output, _ = proc.communicate(timeout=kill_after)
  except subprocess.TimeoutExpired:
    # The build and its pool workers (our group).
    os.killpg(proc.pid, signal.SIGKILL)
    output, _ = proc.communicate()
    killed = True
  wall = time.perf_counter() - start
  done.set()
  sampler.join()
  report = None
  paths = glob.glob(
    os.path.join(data_dir, 'lidc', 'tcia', '*', 'build_report.json')
  )
  if paths and not killed:
    with open(paths[0]) as f:
      report = json.load(f)
  if proc.returncode not in (0, -signal.SIGKILL) and not killed:
    raise RuntimeError(f'Build failed ({proc.returncode}):\n{output[-3000:]}')
  return dict(
    wall_s=round(wall, 2),
    peak_tree_rss_mib=round(peak[0] / MIB, 1),
    exit_code=proc.returncode,
    killed=killed,
  ), report


def _du(path) -> int:
  return sum(
    os.path.getsize(os.path.join(d, f))
    for d, _, fs in os.walk(path)
    for f in fs
  )


def header_read_seconds(manual, n=200) -> float:
  paths = sorted(
    glob.glob(os.path.join(manual, '**', '*.dcm'), recursive=True)
  )[:n]
  start = time.perf_counter()
  for p in paths:
    preprocessing.read_dicom_header(p)
  return (time.perf_counter() - start) / len(paths)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments {argv[1:]}.')
  n = _PATIENTS.value
  workers = _NUM_WORKERS.value or os.cpu_count()
  work = os.path.join(_WORKDIR.value, f'n{n}')
  manual = os.path.join(work, 'manual')
  result = dict(
    cpu_model=cpu_model(),
    cpu_count=os.cpu_count(),
    num_workers=workers,
    patients=n,
    python=platform.python_version(),
    load_average_start=[round(v, 2) for v in os.getloadavg()],
  )
  print(
    f'{result["cpu_model"]}, {os.cpu_count()} CPUs, load {result["load_average_start"]}'
  )

  if not os.path.isdir(os.path.join(manual, 'LIDC-IDRI')):
    start = time.perf_counter()
    simulate_tcia.simulate(manual, n, log=print)
    result['simulate_s'] = round(time.perf_counter() - start, 1)
  files = glob.glob(os.path.join(manual, '**', '*.dcm'), recursive=True)
  result['dicom_files'] = len(files)
  result['input_mib'] = round(_du(manual) / MIB, 1)

  for d in ('cold', 'resume'):
    subprocess.run(['rm', '-rf', os.path.join(work, d)], check=True)
  print('cold build ...')
  cold, report = run_build(
    manual, os.path.join(work, 'cold'), num_workers=workers
  )
  cold.update(
    num_examples=report['num_examples'],
    patients_per_split=report['patients'],
    series_parsed=report['series_parsed'],
    skipped_corrupt=report['skipped_corrupt'],
    ignored_series_folders=report['ignored_series_folders'],
    build_seconds_in_report=report['build_seconds'],
    load_average_end=[round(v, 2) for v in os.getloadavg()],
  )
  cold['cache_mib'] = round(
    _du(os.path.join(work, 'cold', 'downloads')) / MIB, 1
  )
  cold['output_mib'] = round(_du(os.path.join(work, 'cold', 'lidc')) / MIB, 1)
  result['cold'] = cold
  print(json.dumps(cold))

  if _INTERRUPT.value > 0:
    kill_after = _INTERRUPT.value * cold['wall_s']
    print(f'interrupted build (killed after {kill_after:.0f} s) ...')
    first, _ = run_build(
      manual,
      os.path.join(work, 'resume'),
      num_workers=workers,
      kill_after=kill_after,
    )
    cached = len(
      glob.glob(
        os.path.join(work, 'resume', 'downloads', 'tcia_series_cache', '*.pkl')
      )
    )
    rerun, report = run_build(
      manual, os.path.join(work, 'resume'), num_workers=workers
    )
    rerun.update(
      series_parsed=report['series_parsed'],
      series_reused=report['series_reused'],
      num_examples_equal_cold=report['num_examples'] == cold['num_examples'],
    )
    result['interrupted'] = dict(
      killed_run=first, cache_files_after_kill=cached, rerun=rerun
    )
    print(json.dumps(result['interrupted']))

  if not _SKIP_WARM.value:
    print('warm re-run ...')
    warm, report = run_build(
      manual, os.path.join(work, 'cold'), num_workers=workers, overwrite=True
    )
    warm.update(
      series_parsed=report['series_parsed'],
      series_reused=report['series_reused'],
    )
    result['warm_rerun'] = warm
    print(json.dumps(warm))

  header_s = header_read_seconds(manual)
  per_patient_s = cold['wall_s'] / n
  slices_per_scan = len(files) / cold['series_parsed']
  extra_headers = (
    max(REAL_SLICES_PER_SCAN - slices_per_scan, 0) * REAL_SCANS_PER_PATIENT
  )
  result['dicom_header_read_ms'] = round(header_s * 1e3, 3)
  result['extrapolation_1010'] = dict(
    same_size_patients_s=round(per_patient_s * FULL_PATIENTS, 0),
    real_slice_counts_s=round(
      FULL_PATIENTS * (per_patient_s + extra_headers * header_s / workers), 0
    ),
    cache_gib=round(cold['cache_mib'] / n * FULL_PATIENTS / 1024, 2),
    output_gib=round(cold['output_mib'] / n * FULL_PATIENTS / 1024, 2),
    note=(
      'Linear in patients. same_size_patients_s: patients like the simulated ones '
      f'({slices_per_scan:.1f} DICOM files per scan, the sample keeps only the slices '
      f'near its nodules). real_slice_counts_s adds the header reads of the '
      f'{REAL_SLICES_PER_SCAN:.0f} slices of an average LIDC scan (only contoured '
      'slices are decoded, and LIDC has about as many lesion slices per patient as '
      'the sample). Peak memory is bounded: at most 2 x workers series in flight, '
      "and TFDS's writer keeps at most 1 GiB of serialized examples per split in "
      'memory before it spills to disk.'
    ),
  )
  result['load_average_end'] = [round(v, 2) for v in os.getloadavg()]
  os.makedirs(os.path.dirname(_OUT.value), exist_ok=True)
  with open(_OUT.value, 'w') as f:
    json.dump(result, f, indent=2)
  print(json.dumps(result['extrapolation_1010'], indent=2))
  print(f'-> {_OUT.value}')


if __name__ == '__main__':
  app.run(main)
