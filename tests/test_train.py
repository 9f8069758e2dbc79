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

"""End-to-end training: files written, exact resume after an interruption or SIGKILL, NaN guard."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from diffseg_jax import checkpoint
from diffseg_jax import errors
from diffseg_jax import input_pipeline
from diffseg_jax import optimizer
from diffseg_jax import parallel
from diffseg_jax import settings
from diffseg_jax import train
from diffseg_jax.models import unet
from tests.conftest import config_flags
from tests.conftest import REPO
from tests.conftest import tiny_config


def _final_params(workdir, config):
  abstract = unet.abstract_model(settings.unet_config(config))[1].to_pure_dict()
  params, step = checkpoint.restore_params(
    os.path.join(workdir, 'checkpoints'), abstract, use_ema=False
  )
  return params, step


def _assert_trees_equal(a, b, atol=0.0):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=0, atol=atol)


def test_train_writes_checkpoints_logs_and_grids(tiny_synthetic, tmp_path):
  config = tiny_config(
    tiny_synthetic, num_train_steps=4, **{'validation.every_steps': 4}
  )
  state = train.train_and_evaluate(config, str(tmp_path))
  assert int(state['step']) == 4
  assert (
    checkpoint.Checkpointer(str(tmp_path / 'checkpoints')).latest_step() == 4
  )
  records = [json.loads(line) for line in open(tmp_path / 'metrics.jsonl')]
  losses = [r['train/loss'] for r in records if 'train/loss' in r]
  assert losses and all(np.isfinite(losses))
  assert any('val/ged_4' in r for r in records)
  assert os.listdir(tmp_path / 'grids')
  assert [
    f for f in os.listdir(tmp_path) if f.startswith('events.out.tfevents')
  ]
  assert json.load(open(tmp_path / 'config.json'))['num_train_steps'] == 4


def test_interrupted_run_resumes_exactly(tiny_synthetic, tmp_path, monkeypatch):
  config = tiny_config(
    tiny_synthetic, num_train_steps=6, checkpoint_every_steps=2
  )
  reference = train.train_and_evaluate(config, str(tmp_path / 'uninterrupted'))

  real_next = input_pipeline.TrainIterator.__next__
  delivered = []

  def failing_after_three(self):
    if len(delivered) == 3:
      raise KeyboardInterrupt('simulated crash after 3 steps')
    delivered.append(1)
    return real_next(self)

  monkeypatch.setattr(
    input_pipeline.TrainIterator, '__next__', failing_after_three
  )
  with pytest.raises(KeyboardInterrupt):
    train.train_and_evaluate(config, str(tmp_path / 'resumed'))
  assert (
    checkpoint.Checkpointer(
      str(tmp_path / 'resumed' / 'checkpoints')
    ).latest_step()
    == 2
  )
  monkeypatch.setattr(input_pipeline.TrainIterator, '__next__', real_next)
  resumed = train.train_and_evaluate(config, str(tmp_path / 'resumed'))
  assert int(resumed['step']) == 6
  _assert_trees_equal(reference['params'], resumed['params'])
  _assert_trees_equal(reference['ema_params'], resumed['ema_params'])
  _assert_trees_equal(reference['opt_state'], resumed['opt_state'])


def test_resume_with_another_batch_size_names_the_data_state(
  tiny_synthetic, tmp_path
):
  train.train_and_evaluate(
    tiny_config(tiny_synthetic, num_train_steps=2), str(tmp_path)
  )
  config = tiny_config(tiny_synthetic, num_train_steps=4, batch_size=8)
  with pytest.raises(
    errors.ConfigError,
    match=r'checkpoints/2/data: .*global_batch_size=4 '
    r'\(this run: 8\).*config\.json',
  ) as err:
    train.train_and_evaluate(config, str(tmp_path))
  assert '\n' not in str(err.value)


def test_sigkill_then_restart_matches_uninterrupted_run(
  tiny_synthetic, tmp_path
):
  steps = 120
  overrides = dict(
    num_train_steps=steps,
    checkpoint_every_steps=2,
    log_every_steps=50,
    async_checkpointing=True,
  )
  cmd = [
    sys.executable,
    '-m',
    'diffseg_jax.main',
    f'--workdir={tmp_path / "killed"}',
  ]
  cmd += config_flags(tiny_synthetic, **overrides)
  env = dict(os.environ, PYTHONPATH=REPO)
  proc = subprocess.Popen(
    cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
  )
  ckpt_dir = tmp_path / 'killed' / 'checkpoints'
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None:
    done = (
      [d for d in os.listdir(ckpt_dir) if d.isdigit()]
      if ckpt_dir.exists()
      else []
    )
    if done:
      break
    time.sleep(0.02)
  assert proc.poll() is None, 'training finished before it could be killed'
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  killed_at = checkpoint.Checkpointer(str(ckpt_dir)).latest_step()
  assert killed_at is not None and killed_at < steps
  subprocess.run(cmd, cwd=REPO, env=env, check=True, capture_output=True)

  config = tiny_config(tiny_synthetic, **overrides)
  reference = train.train_and_evaluate(config, str(tmp_path / 'uninterrupted'))
  params, step = _final_params(str(tmp_path / 'killed'), config)
  assert step == steps
  _assert_trees_equal(reference['params'], params, atol=1e-6)


def test_sigterm_saves_and_exits(tiny_synthetic, tmp_path):
  cmd = [sys.executable, '-m', 'diffseg_jax.main', f'--workdir={tmp_path}']
  cmd += config_flags(
    tiny_synthetic, num_train_steps=100_000, checkpoint_every_steps=50_000
  )
  proc = subprocess.Popen(
    cmd,
    cwd=REPO,
    env=dict(os.environ, PYTHONPATH=REPO),
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
    text=True,
  )
  metrics_file = tmp_path / 'metrics.jsonl'
  deadline = time.time() + 300
  while time.time() < deadline and not (
    metrics_file.exists() and 'train/loss' in metrics_file.read_text()
  ):
    time.sleep(0.1)
  proc.send_signal(signal.SIGTERM)
  _, stderr = proc.communicate(timeout=300)
  assert proc.returncode == 0, stderr[-2000:]
  step = checkpoint.Checkpointer(str(tmp_path / 'checkpoints')).latest_step()
  assert step is not None and 0 < step < 100_000
  assert 'SIGTERM' in stderr


def test_nonfinite_loss_stops_and_keeps_last_checkpoint(
  tiny_synthetic, tmp_path
):
  config = tiny_config(
    tiny_synthetic, num_train_steps=4, checkpoint_every_steps=2
  )
  train.train_and_evaluate(config, str(tmp_path))
  good, _ = _final_params(str(tmp_path), config)
  config = tiny_config(
    tiny_synthetic,
    num_train_steps=8,
    checkpoint_every_steps=2,
    log_every_steps=1,
  )
  config.optim.learning_rate = float('nan')
  with pytest.raises(
    errors.NonFiniteLossError, match='last good checkpoint is step 4'
  ):
    train.train_and_evaluate(config, str(tmp_path))
  assert (
    checkpoint.Checkpointer(str(tmp_path / 'checkpoints')).latest_step() == 4
  )
  after, _ = _final_params(str(tmp_path), config)
  _assert_trees_equal(good, after)


def test_learning_rate_schedule_warmup_constant_cosine():
  from configs import default  # pylint: disable=g-import-not-at-top

  config = default.get_config()
  config.num_train_steps = 1000
  config.optim.warmup_steps = 100
  config.optim.decay_steps = 400
  lr = optimizer.learning_rate_schedule(
    settings.optimizer_config(config), config.num_train_steps
  )
  peak = config.optim.learning_rate
  np.testing.assert_allclose(float(lr(50)), peak * 0.5, rtol=1e-6)
  np.testing.assert_allclose(float(lr(100)), peak, rtol=1e-6)
  np.testing.assert_allclose(float(lr(599)), peak, rtol=1e-6)
  np.testing.assert_allclose(
    float(lr(800)), peak * 0.5 * (1 + np.cos(np.pi * 200 / 400)), rtol=1e-5
  )
  assert float(lr(1000)) == pytest.approx(0.0, abs=1e-12)


def test_fsdp_rule_shards_large_params_only():
  mesh = jax.make_mesh(
    (1,), ('data',), axis_types=(jax.sharding.AxisType.Auto,)
  )
  params = {
    'big': jax.ShapeDtypeStruct((3, 3, 64, 128), np.float32),
    'small': jax.ShapeDtypeStruct((128,), np.float32),
  }
  shardings = parallel.param_sharding(mesh, params, 'fsdp')
  assert shardings['big'].spec == jax.sharding.PartitionSpec(
    None, None, None, 'data'
  )
  assert shardings['small'].spec == jax.sharding.PartitionSpec()
  with pytest.raises(errors.ConfigError, match='param_sharding'):
    parallel.param_sharding(mesh, params, 'zero3')
