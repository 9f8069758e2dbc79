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

r"""A simulated raw TCIA LIDC-IDRI tree of N distinct patients from the shared sample.

Patient k (k = 0 .. N-1) is a copy of sample patient k % 2 (LIDC-IDRI-0001, -0002)
named LIDC-IDRI-{first + k:04d}, with every identifier rewritten so that the copy is
a patient of its own to the builder:
  * folder names: the patient folder and the study / series folders (named by UID);
  * DICOM (through pydicom): PatientID, PatientName and every instance UID of TCIA's
    root 1.3.6.1.4.1.14519 (StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID and
    the file meta's MediaStorageSOPInstanceUID, FrameOfReferenceUID, referenced
    SOP UIDs, ...); class UIDs (CT Image Storage, transfer syntax) stay;
  * the radiologists' XML: the same UIDs (SeriesInstanceUid, StudyInstanceUID, every
    roi's imageSOP_UID, the message uid) mapped the same way.
A new UID is `pydicom.uid.generate_uid(entropy_srcs=[old uid, new patient id])`, so the
tree is the same on every run and DICOM and XML agree.

  python benchmarks/simulate_tcia.py --patients=200 --out=/tmp/tcia_sim
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import sys

from absl import app
from absl import flags
import pydicom
from pydicom import uid as pydicom_uid

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(REPO, '..', 'shared', 'data', 'lidc_idri_tcia_sample')
TCIA_ROOT = '1.3.6.1.4.1.14519.'
_UID_RE = re.compile(r'1\.3\.6\.1\.4\.1\.14519\.[0-9.]*[0-9]')
_PATIENT_RE = re.compile(r'LIDC-IDRI-\d{4}')


def sample_patients(sample_root: str = SAMPLE) -> list[str]:
  """The patient folders (LIDC-IDRI-NNNN) of the sample, sorted."""
  root = os.path.join(sample_root, 'LIDC-IDRI')
  if not os.path.isdir(root):
    raise FileNotFoundError(
      f'No TCIA sample at {root}: pass --sample=DIR (the folder '
      'holding LIDC-IDRI/).'
    )
  return sorted(
    os.path.join(root, d) for d in os.listdir(root) if _PATIENT_RE.fullmatch(d)
  )


@functools.lru_cache(maxsize=None)
def new_uid(old: str, patient_id: str) -> str:
  """The rewritten UID of `old` in the copy `patient_id` (deterministic)."""
  return pydicom_uid.generate_uid(entropy_srcs=[old, patient_id])


def _rewrite_name(name, patient_id):
  if name.startswith(TCIA_ROOT):
    return new_uid(name, patient_id)
  return _PATIENT_RE.sub(patient_id, name)


def _rewrite_dicom(src, dst, patient_id):
  ds = pydicom.dcmread(src)
  ds.PatientID = patient_id
  ds.PatientName = patient_id
  for dataset in (ds.file_meta, ds):
    for elem in dataset.iterall():
      if elem.VR != 'UI' or elem.value is None:
        continue
      if isinstance(elem.value, str) and elem.value.startswith(TCIA_ROOT):
        elem.value = new_uid(elem.value, patient_id)
  ds.save_as(dst, enforce_file_format=True)


def _rewrite_xml(src, dst, patient_id):
  with open(src, encoding='utf-8') as f:
    text = f.read()
  text = _UID_RE.sub(lambda m: new_uid(m.group(0), patient_id), text)
  text = _PATIENT_RE.sub(patient_id, text)
  with open(dst, 'w', encoding='utf-8') as f:
    f.write(text)


def copy_patient(src_patient: str, out_root: str, patient_id: str) -> str:
  """Writes a copy of one patient folder with every identifier rewritten; returns it."""
  dst_patient = os.path.join(out_root, 'LIDC-IDRI', patient_id)
  for directory, dirs, files in os.walk(src_patient):
    dirs.sort()
    rel = os.path.relpath(directory, src_patient)
    parts = [] if rel == '.' else rel.split(os.sep)
    dst_dir = os.path.join(
      dst_patient, *(_rewrite_name(p, patient_id) for p in parts)
    )
    os.makedirs(dst_dir, exist_ok=True)
    for name in sorted(files):
      src = os.path.join(directory, name)
      if name.lower().endswith('.dcm'):
        _rewrite_dicom(src, os.path.join(dst_dir, name), patient_id)
      elif name.lower().endswith('.xml'):
        _rewrite_xml(src, os.path.join(dst_dir, name), patient_id)
  return dst_patient


def simulate(
  out_root: str,
  num_patients: int,
  *,
  first: int = 1,
  sample_root: str = SAMPLE,
  log=None,
) -> list[str]:
  """Writes num_patients distinct patients LIDC-IDRI-{first..} under out_root/LIDC-IDRI."""
  if first + num_patients - 1 > 9999:
    raise ValueError(
      f'Patient numbers end at 9999; got first={first}, N={num_patients}.'
    )
  sources = sample_patients(sample_root)
  out = []
  for k in range(num_patients):
    out.append(
      copy_patient(
        sources[k % len(sources)], out_root, f'LIDC-IDRI-{first + k:04d}'
      )
    )
    if log and (k + 1) % 50 == 0:
      log(f'{k + 1}/{num_patients} patients written')
  return out


def _define_flags():
  """Flags of the command line only, so that importing this module defines none."""
  flags.DEFINE_integer('patients', 200, 'Number of simulated patients.')
  flags.DEFINE_string(
    'out', None, 'Output folder (LIDC-IDRI/ is written in it).'
  )
  flags.DEFINE_integer(
    'first', 1, 'Number of the first patient (LIDC-IDRI-NNNN).'
  )
  flags.DEFINE_string('sample', SAMPLE, 'The shared sample (holds LIDC-IDRI/).')
  flags.DEFINE_bool('clean', False, 'Delete OUT/LIDC-IDRI first.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments {argv[1:]}.')
  f = flags.FLAGS
  if not f.out:
    raise app.UsageError('--out=DIR is required.')
  if f.clean:
    shutil.rmtree(os.path.join(f.out, 'LIDC-IDRI'), ignore_errors=True)
  simulate(
    f.out,
    f.patients,
    first=f.first,
    sample_root=f.sample,
    log=lambda m: print(m, file=sys.stderr),
  )
  print(f'{f.patients} patients in {os.path.join(f.out, "LIDC-IDRI")}')


if __name__ == '__main__':
  _define_flags()
  app.run(main)
