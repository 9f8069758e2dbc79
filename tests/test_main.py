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

"""The program as users run it: every mode end to end, and clear errors for bad input."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from diffseg_jax import checkpoint
from diffseg_jax import errors
from diffseg_jax import evaluation
from diffseg_jax import launcher
from diffseg_jax import predict
from diffseg_jax import train
from tests.conftest import config_flags
from tests.conftest import REPO
from tests.conftest import tiny_config


def _main(*args, timeout=600):
  return subprocess.run(
    [sys.executable, '-m', 'diffseg_jax.main', *args],
    cwd=REPO,
    env=dict(os.environ, PYTHONPATH=REPO),
    capture_output=True,
    text=True,
    timeout=timeout,
  )


def test_evaluate_a_chosen_checkpoint_records_its_step_and_seconds(
  tiny_synthetic, tmp_path
):
  config = tiny_config(
    tiny_synthetic, num_train_steps=4, checkpoint_every_steps=2
  )
  train.train_and_evaluate(config, str(tmp_path))
  config.eval.num_samples_list = (4,)
  config.eval.num_examples = 2
  config.eval.checkpoint_step = 2
  config.eval.output_name = 'step2'
  evaluation.evaluate_checkpoint(config, str(tmp_path))
  metrics = json.load(open(tmp_path / 'eval' / 'step2' / 'metrics.json'))
  assert metrics['checkpoint_step'] == 2
  assert (
    metrics['train_seconds']
    == checkpoint.read_meta(str(tmp_path / 'checkpoints'), 2)['train_seconds']
  )
  config.eval.checkpoint_step = 3
  with pytest.raises(
    checkpoint.CheckpointNotFoundError,
    match=r'No checkpoint of step 3 in .*checkpoints; it holds steps \[2, 4\]'
    r'.*config\.eval\.checkpoint_step',
  ):
    evaluation.evaluate_checkpoint(config, str(tmp_path))


def test_train_evaluate_predict_end_to_end(tiny_synthetic, tmp_path):
  config = tiny_config(tiny_synthetic, num_train_steps=2)
  config.eval.num_samples_list = (4, 8)
  config.eval.num_examples = (
    6  # Not a multiple of the batch size: exercises padding.
  )
  train.train_and_evaluate(config, str(tmp_path))
  results = evaluation.evaluate_checkpoint(config, str(tmp_path))
  out = tmp_path / 'eval' / 'test'
  metrics = json.load(open(out / 'metrics.json'))
  assert metrics['num_images'] == 6
  for key in (
    'ged_4',
    'ged_8',
    'hm_iou_8',
    'ci',
    'ged_pp',
    'mode_tv_8',
    'oracle_ged_8',
    'blind_ged_8',
  ):
    assert key in metrics['metrics'], key
    assert key in results
  assert len(open(out / 'per_image.jsonl').read().splitlines()) == 6
  assert (out / 'metrics.md').exists() and (out / 'grid.png').exists()

  inputs = tmp_path / 'inputs'
  inputs.mkdir()
  Image.fromarray(
    (np.linspace(0, 65535, 32 * 32).reshape(32, 32)).astype(np.uint16)
  ).save(inputs / 'a.png')
  np.save(
    inputs / 'b.npy',
    np.random.default_rng(0).uniform(size=(32, 32)).astype(np.float32),
  )
  (inputs / 'c.png').write_bytes(b'not a png')
  with pytest.raises(
    errors.DataError, match=r'1 of 3 inputs were skipped .*\n.*c.png'
  ):
    predict.predict(
      config, str(tmp_path), str(inputs), output_dir=str(tmp_path / 'pred')
    )
  samples = np.load(str(tmp_path / 'pred' / 'a_samples.npy'))
  assert (
    samples.shape == (config.predict.num_samples, 32, 32)
    and samples.dtype == bool
  )
  variance = np.load(str(tmp_path / 'pred' / 'a_variance.npy'))
  np.testing.assert_allclose(
    variance, samples.mean(0) * (1 - samples.mean(0)), atol=1e-6
  )
  for suffix in ('mean.png', 'variance.png', 'entropy.png', 'grid.png'):
    assert (tmp_path / 'pred' / f'b_{suffix}').exists()


def test_predict_reads_dicom_through_the_hu_window(tmp_path):
  shared = os.path.join(REPO, '..', 'shared', 'data', 'lidc_idri_tcia_sample')
  if not os.path.isdir(shared):
    pytest.skip('../shared/data/lidc_idri_tcia_sample is not present')
  dcm = next(
    os.path.join(d, f)
    for d, _, fs in os.walk(shared)
    for f in sorted(fs)
    if f.endswith('.dcm')
  )
  image = predict.read_image(dcm)
  assert image.dtype == np.float32 and image.ndim == 2
  assert 0.0 <= image.min() and image.max() <= 1.0 and image.std() > 0.05


def test_predict_rejects_bad_inputs(tmp_path):
  with pytest.raises(FileNotFoundError, match='does not exist'):
    predict.list_inputs(str(tmp_path / 'missing.png'))
  (tmp_path / 'empty').mkdir()
  with pytest.raises(FileNotFoundError, match='holds no'):
    predict.list_inputs(str(tmp_path / 'empty'))
  np.save(tmp_path / 'hu.npy', np.full((8, 8), -1000.0, np.float32))
  with pytest.raises(errors.DataError, match=r'values must lie in \[0, 1\]'):
    predict.read_image(str(tmp_path / 'hu.npy'))
  (tmp_path / 'broken.png').write_bytes(b'not a png')
  with pytest.raises(errors.DataError, match='broken.png'):
    predict.read_image(str(tmp_path / 'broken.png'))


def test_evaluate_without_checkpoint_is_a_clear_error(tiny_synthetic, tmp_path):
  with pytest.raises(FileNotFoundError, match='train first'):
    evaluation.evaluate_checkpoint(tiny_config(tiny_synthetic), str(tmp_path))


def test_cli_mistyped_config_key_names_the_key(tiny_synthetic, tmp_path):
  result = _main(
    f'--workdir={tmp_path}',
    *config_flags(tiny_synthetic),
    '--config.optim.learnig_rate=0.1',
  )
  assert result.returncode != 0
  assert 'learnig_rate' in result.stderr


def test_cli_renamed_config_key_names_the_new_key(tiny_synthetic, tmp_path):
  result = _main(
    f'--workdir={tmp_path}',
    *config_flags(tiny_synthetic),
    '--config.eval_batch_size=2',
    '--config.dataset.eval_split=test',
  )
  assert result.returncode == 2
  assert (
    '--config.eval_batch_size was removed; use --config.validation.batch_size.'
    in result.stderr
  )
  assert (
    '--config.dataset.eval_split was removed; use --config.validation.split.'
    in result.stderr
  )


def test_cli_invalid_choice_names_the_key(tiny_synthetic, tmp_path):
  result = _main(
    f'--workdir={tmp_path}',
    *config_flags(tiny_synthetic),
    '--config.diffusion.prediction=z',
  )
  assert result.returncode == 2
  assert 'config.diffusion' in result.stderr and "'z'" in result.stderr


def test_cli_missing_dataset_says_how_to_build_it(tmp_path):
  result = _main(
    f'--workdir={tmp_path / "w"}',
    '--config=' + os.path.join(REPO, 'configs', 'x_pred.py'),
    f'--config.dataset.data_dir={tmp_path / "no_data"}',
  )
  assert result.returncode == 2
  assert (
    'lidc/knegt_pickle' in result.stderr
    and 'python -m tfds_lidc.build' in result.stderr
  )
  assert 'Traceback' not in result.stderr


def test_crop64_lidc_config_trains_and_evaluates(tmp_path):
  """configs/crop64.py on a tiny LIDCv1 pickle: 128 px train crops to 64 on device, eval reads 64 px."""
  from configs import crop64  # pylint: disable=g-import-not-at-top
  from tests.test_tfds_lidc import _write_knegt  # pylint: disable=g-import-not-at-top
  from tfds_lidc import build  # pylint: disable=g-import-not-at-top

  _write_knegt(str(tmp_path / 'manual'))
  build.build(
    'lidc/knegt_pickle_crop64',
    str(tmp_path / 'data'),
    str(tmp_path / 'manual'),
    log=lambda *a: None,
  )
  config = crop64.get_config('smoke')
  config.dataset.data_dir = str(tmp_path / 'data')
  config.batch_size = 4
  config.num_train_steps = 2
  config.validation.every_steps = 2
  config.async_checkpointing = False
  state = train.train_and_evaluate(config, str(tmp_path / 'work'))
  assert int(state['step']) == 2
  evaluation.evaluate_checkpoint(config, str(tmp_path / 'work'))
  metrics = json.load(
    open(tmp_path / 'work' / 'eval' / 'test' / 'metrics.json')
  )
  assert metrics['num_images'] == 4 and 'ged_4' in metrics['metrics']


def test_sigterm_stops_at_the_next_check_not_inside_the_handler():
  before = signal.getsignal(signal.SIGTERM)
  with launcher.sigterm_stops('stopped') as stop:
    stop.check()
    # Nothing is raised where the signal lands (it could be inside a lock's bookkeeping) ...
    os.kill(os.getpid(), signal.SIGTERM)
    # ... the next check stops, and every check after it.
    for _ in range(2):
      with pytest.raises(errors.PreemptedError, match='stopped'):
        stop.check()
  assert signal.getsignal(signal.SIGTERM) is before
