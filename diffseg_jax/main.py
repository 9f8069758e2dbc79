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
  python -m diffseg_jax.main --config=configs/x_pred.py --workdir=DIR --mode=predict --input=scan.dcm

Several processes (TPU pod, SLURM, local): pass --coordinator_address/--num_processes/--process_id,
or set JAX's environment variables (see launch/); each process runs this same command.
"""

import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs, pictures and results.")
flags.DEFINE_enum("mode", "train", ["train", "evaluate", "predict"], "What to run.")
flags.DEFINE_string("input", None, "--mode=predict: a PNG, NPY or DICOM file, or a folder of them.")
flags.DEFINE_string("output", None, "--mode=predict: output folder (default WORKDIR/predict).")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process runs).")
flags.DEFINE_integer("num_processes", None, "Number of processes (multi-process runs).")
flags.DEFINE_integer("process_id", None, "This process's index (multi-process runs).")
flags.DEFINE_string("cpu_collectives", None, "'gloo' for multi-process CPU runs.")
config_flags.DEFINE_config_file("config", None, "ml_collections config file.", lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  from diffseg_jax import runtime  # pylint: disable=g-import-not-at-top

  config = FLAGS.config
  try:
    runtime.initialize(coordinator_address=FLAGS.coordinator_address,
                       num_processes=FLAGS.num_processes, process_id=FLAGS.process_id,
                       cpu_collectives=FLAGS.cpu_collectives)
    # pylint: disable=g-import-not-at-top
    from diffseg_jax import train

    if FLAGS.mode == "train":
      train.train_and_evaluate(config, FLAGS.workdir)
    if FLAGS.mode == "evaluate" or (FLAGS.mode == "train" and config.evaluate_after_training):
      from diffseg_jax import evaluation

      evaluation.evaluate_checkpoint(config, FLAGS.workdir)
    if FLAGS.mode == "predict":
      if not FLAGS.input:
        raise app.UsageError("--mode=predict needs --input=PATH (a PNG, NPY or DICOM file or a folder).")
      from diffseg_jax import predict

      predict.predict(config, FLAGS.workdir, FLAGS.input, output_dir=FLAGS.output)
  except runtime.USER_ERRORS as e:
    logging.error("%s", e)
    print(f"ERROR: {e}", file=sys.stderr)
    sys.exit(2)


def renamed_key_errors(argv) -> list[str]:
  """One message per `--config.KEY=...` override of a key that was renamed or removed."""
  from configs import default  # pylint: disable=g-import-not-at-top

  out = []
  for arg in argv:
    key = arg.partition("=")[0].removeprefix("--config.")
    if arg.startswith("--config.") and key in default.RENAMED_KEYS:
      new = default.RENAMED_KEYS[key]
      out.append(f"--config.{key} was removed" + (f"; use --config.{new}." if new else "."))
  return out


if __name__ == "__main__":
  for message in renamed_key_errors(sys.argv[1:]):
    print(f"ERROR: {message}", file=sys.stderr)
  if renamed_key_errors(sys.argv[1:]):
    sys.exit(2)
  app.run(main)
