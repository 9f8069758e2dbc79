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

r"""Train, evaluate or predict with a diffusion segmentation model.

  python -m diffseg_jax.main --config=configs/quickstart.py --workdir=/tmp/quickstart
  python -m diffseg_jax.main --config=configs/x_pred.py --workdir=DIR --mode=evaluate
  python -m diffseg_jax.main --config=configs/x_pred.py --workdir=DIR --mode=predict --input=scan.dcm \
      --center=ROW,COL

Several processes (TPU pod, SLURM, local): pass --coordinator_address/--num_processes/--process_id,
or set JAX's environment variables (see launch/); each process runs this same command.

Errors the user can fix (bad flags or config values, missing data, a folder in use by another run, a
full or read-only disk) end the run with one line `ERROR: ...` naming the cause and the fix, and exit
status 2; --verbose or DIFFSEG_TRACEBACK=1 adds the traceback. Each run holds a lock on the folder it
writes (train: the workdir; evaluate: WORKDIR/eval/NAME; predict: the output folder), see
`launcher` and `workdir_lock` (cloud folders, gs://, are not locked), and checks that it can write
there before any long work.

A SIGTERM (preemption notice) to any process of a training run makes every process save the same
step and stop; a SIGTERM during evaluation stops it (nothing already written is touched). Either
prints one line `PREEMPTED: ...` and exits with status 143 (errors.EXIT_PREEMPTED); the same command
resumes.

On Linux with glibc the command re-executes itself once with malloc's transparent huge pages on
(`huge_pages`; DIFFSEG_HUGE_PAGES=0 turns that off).
"""

from absl import app
from absl import flags
from ml_collections import config_flags

from diffseg_jax import huge_pages
from diffseg_jax import launcher

flags.DEFINE_string(
  'workdir',
  None,
  'Directory for checkpoints, logs, pictures and results: a local path, '
  'file:///path or gs://bucket/path.',
)
flags.DEFINE_enum(
  'mode', 'train', ['train', 'evaluate', 'predict'], 'What to run.'
)
flags.DEFINE_string(
  'input',
  None,
  '--mode=predict: a PNG, NPY or DICOM file, or a folder of them.',
)
flags.DEFINE_string(
  'output', None, '--mode=predict: output folder (default WORKDIR/predict).'
)
flags.DEFINE_string(
  'center',
  None,
  '--mode=predict: ROW,COL (input pixels) of the window to segment '
  "in inputs larger than the model's training window.",
)
flags.DEFINE_string(
  'coordinator_address', None, 'host:port of process 0 (multi-process runs).'
)
flags.DEFINE_integer(
  'num_processes', None, 'Number of processes (multi-process runs).'
)
flags.DEFINE_integer(
  'process_id', None, "This process's index (multi-process runs)."
)
flags.DEFINE_string(
  'cpu_collectives', None, "'gloo' for multi-process CPU runs."
)
flags.DEFINE_bool(
  'verbose',
  False,
  'Print the traceback of errors too (or set DIFFSEG_TRACEBACK=1).',
)
config_flags.DEFINE_config_file(
  'config', None, 'ml_collections config file.', lock_config=True
)
flags.mark_flags_as_required(['config', 'workdir'])
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  launcher.launch(
    FLAGS.config,
    mode=FLAGS.mode,
    workdir=FLAGS.workdir,
    input_path=FLAGS.input,
    output=FLAGS.output,
    center=FLAGS.center,
    coordinator_address=FLAGS.coordinator_address,
    num_processes=FLAGS.num_processes,
    process_id=FLAGS.process_id,
    cpu_collectives=FLAGS.cpu_collectives,
  )


if __name__ == '__main__':
  huge_pages.reexec_with_huge_pages()
  app.run(main, flags_parser=launcher.parse_flags)
