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
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import optax
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


def test_train_seconds_are_saved_and_carried_over_a_resume(
  tiny_synthetic, tmp_path, monkeypatch
):
  config = tiny_config(
    tiny_synthetic, num_train_steps=4, checkpoint_every_steps=2
  )
  ticks = iter(range(0, 10_000, 10))
  monkeypatch.setattr(train, '_clock', lambda: float(next(ticks)))
  config.num_train_steps = 2
  train.train_and_evaluate(config, str(tmp_path))
  directory = tmp_path / 'checkpoints'
  first = checkpoint.read_meta(str(directory), 2)['train_seconds']
  assert first > 0
  # A stopped clock: whatever step 4 records beyond step 2's seconds came from the first run.
  monkeypatch.setattr(train, '_clock', lambda: 5.0)
  config.num_train_steps = 4
  train.train_and_evaluate(config, str(tmp_path))
  assert checkpoint.read_meta(str(directory), 4)['train_seconds'] == first
  records = [json.loads(line) for line in open(tmp_path / 'metrics.jsonl')]
  minutes = [r['train/minutes'] for r in records if 'train/minutes' in r]
  assert minutes[-1] == pytest.approx(first / 60)


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
  # Checkpoints every 2 steps keep an asynchronous save in flight most of the time, so the kill
  # often lands mid-write; 16 steps leave ~7 saves (seconds) between the first save and the end.
  steps = 16
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
  # The uninterrupted run saves only at its end: saving must not change what training computes.
  reference = train.train_and_evaluate(
    tiny_config(
      tiny_synthetic, **dict(overrides, checkpoint_every_steps=steps)
    ),
    str(tmp_path / 'uninterrupted'),
  )
  params, step = _final_params(str(tmp_path / 'killed'), config)
  assert step == steps
  _assert_trees_equal(reference['params'], params, atol=1e-6)


def _wait_for(predicate, proc, timeout_s=300):
  deadline = time.time() + timeout_s
  while time.time() < deadline and proc.poll() is None and not predicate():
    time.sleep(0.1)


def test_sigterm_saves_and_exits_143(tiny_synthetic, tmp_path):
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
  _wait_for(
    lambda: metrics_file.exists() and 'train/loss' in metrics_file.read_text(),
    proc,
  )
  assert proc.poll() is None, 'training ended before the SIGTERM'
  proc.send_signal(signal.SIGTERM)
  _, stderr = proc.communicate(timeout=300)
  assert proc.returncode == errors.EXIT_PREEMPTED == 143, stderr[-2000:]
  step = checkpoint.Checkpointer(str(tmp_path / 'checkpoints')).latest_step()
  assert step is not None and 0 < step < 100_000
  lines = [x for x in stderr.splitlines() if x.startswith('PREEMPTED: ')]
  assert len(lines) == 1 and f'saved step {step} ' in lines[0], stderr[-2000:]
  assert 'Traceback' not in stderr


def test_sigterm_during_evaluation_is_one_line_and_keeps_checkpoints(
  tiny_synthetic, tmp_path
):
  config = tiny_config(tiny_synthetic, num_train_steps=2)
  train.train_and_evaluate(config, str(tmp_path))
  before, _ = _final_params(str(tmp_path), config)
  cmd = [
    sys.executable,
    '-m',
    'diffseg_jax.main',
    f'--workdir={tmp_path}',
    '--mode=evaluate',
  ]
  # Signalled once it has logged its progress after two of eight images, while it samples the
  # rest in short device calls (a signal is handled between them).
  cmd += config_flags(
    tiny_synthetic,
    num_train_steps=2,
    sampling_batch=16,
    **{
      'sampler.num_steps': 25,
      'eval.num_samples_list': '(64,)',
      'eval.batch_size': 1,
      'eval.num_examples': 8,
      'eval.log_every_images': 1,
    },
  )
  proc = subprocess.Popen(
    cmd,
    cwd=REPO,
    env=dict(os.environ, PYTHONPATH=REPO),
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
    text=True,
  )
  seen = []
  for line in proc.stderr:
    seen.append(line)
    if re.search(r'evaluate test \(step 2\): 2/8 images', line):
      break
  assert proc.poll() is None, ''.join(seen)[-2000:]
  proc.send_signal(signal.SIGTERM)
  _, rest = proc.communicate(timeout=300)
  stderr = ''.join(seen) + rest
  assert proc.returncode == errors.EXIT_PREEMPTED, stderr[-2000:]
  lines = [x for x in stderr.splitlines() if x.startswith('PREEMPTED: ')]
  assert len(lines) == 1 and 'during evaluation' in lines[0], stderr[-2000:]
  assert 'Traceback' not in stderr
  assert not (tmp_path / 'eval' / 'test' / 'metrics.json').exists()
  after, step = _final_params(str(tmp_path), config)
  assert step == 2
  _assert_trees_equal(before, after)


def _checkpoint_steps(workdir):
  return sorted(
    int(d) for d in os.listdir(workdir / 'checkpoints') if d.isdigit()
  )


def _assert_finite(tree, what):
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    assert np.isfinite(np.asarray(leaf)).all(), (
      f'{what}: {jax.tree_util.keystr(path)}'
    )


def test_nan_learning_rate_is_never_applied_nor_saved(tiny_synthetic, tmp_path):
  """The reported bug: a NaN learning rate gives finite loss and gradients but NaN parameters."""
  config = tiny_config(
    tiny_synthetic,
    num_train_steps=12,
    checkpoint_every_steps=1,
    max_checkpoints_to_keep=20,
  )
  config.optim.learning_rate = float('nan')
  initial = jax.device_get(train.build(config).state['params'])
  # max_bad_steps defaults to 10: steps 1-9 are skipped (and saved unchanged), step 10 stops.
  with pytest.raises(
    errors.NonFiniteLossError, match=r'at step 1 and the 9 steps after it'
  ) as err:
    train.train_and_evaluate(config, str(tmp_path))
  assert '\n' not in str(err.value)
  steps = _checkpoint_steps(tmp_path)
  assert steps, 'nothing was saved: the test would check nothing'
  abstract = unet.abstract_model(settings.unet_config(config))[1].to_pure_dict()
  for step in steps:
    for use_ema in (False, True):
      params, _ = checkpoint.restore_params(
        os.path.join(tmp_path, 'checkpoints'),
        abstract,
        use_ema=use_ema,
        step=step,
      )
      _assert_finite(params, f'checkpoint {step} (ema: {use_ema})')
      _assert_trees_equal(initial, params)
  assert steps[-1] == 9


def test_bad_step_is_skipped_and_counted(tiny_synthetic):
  config = tiny_config(tiny_synthetic, max_bad_steps=2)
  parts = train.build(config)
  source = input_pipeline.load_source(
    name=tiny_synthetic.name, split='train', data_dir=tiny_synthetic.data_dir
  )
  batches = input_pipeline.train_batches(
    source, global_batch_size=4, seed=0, mesh=parts.mesh, prefetch=0
  )
  good = next(batches)
  bad = dict(good, image=good['image'] * np.nan)
  # The schedule's first learning rate is 0 (warm-up): start after one applied step.
  state, _ = parts.train_step(parts.state, good)
  before = jax.device_get(state)
  state, metrics = parts.train_step(state, bad)
  assert float(metrics['finite']) == 0 and int(state['bad_steps']) == 1
  assert int(state['step']) == 2
  for key in ('params', 'ema_params', 'opt_state', 'rng'):
    _assert_trees_equal(before[key], jax.device_get(state[key]))
  state, metrics = parts.train_step(state, good)
  assert float(metrics['finite']) == 1 and int(state['bad_steps']) == 0
  moved = jax.device_get(state['params'])
  assert any(
    not np.array_equal(a, b)
    for a, b in zip(jax.tree.leaves(moved), jax.tree.leaves(before['params']))
  )
  # After max_bad_steps consecutive skips nothing is applied, not even a finite update.
  for _ in range(2):
    state, _ = parts.train_step(state, bad)
  state, metrics = parts.train_step(state, good)
  assert float(metrics['finite']) == 1 and int(state['bad_steps']) == 3
  _assert_trees_equal(moved, jax.device_get(state['params']))


@pytest.mark.parametrize('value', [0, -1])
def test_max_bad_steps_must_be_a_positive_integer(tiny_synthetic, value):
  config = tiny_config(tiny_synthetic, max_bad_steps=value)
  with pytest.raises(errors.ConfigError, match='config.max_bad_steps='):
    train.build(config)


def test_nonfinite_updates_stop_and_keep_last_checkpoint(
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
    max_bad_steps=2,
  )
  config.optim.learning_rate = float('nan')
  with pytest.raises(
    errors.NonFiniteLossError,
    match=r'at step 5 and the 1 steps after it.*latest checkpoint, step 4',
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


def test_initial_state_compiled_unoptimised_is_bit_identical(monkeypatch):
  """The run-once init program skips LLVM's optimisation on CPU; the state must not change."""
  unet_config = unet.UNetConfig(
    base_channels=8,
    channel_mult=(1, 2),
    num_res_blocks=(1, 1),
    num_middle_blocks=1,
    num_heads=2,
    attention_levels=(-1,),
  )
  mesh = parallel.make_mesh(-1)

  def initial_state():
    state, _ = train.create_train_state(
      unet_config, mesh, optax.adamw(1e-3), seed=3
    )
    return {k: state[k] for k in ('params', 'ema_params', 'opt_state')}

  unoptimised = initial_state()
  # XLA:CPU's default level (3) explicitly: the quick tests set level 0 for everything through
  # XLA_FLAGS, and a compile option overrides that flag.
  monkeypatch.setattr(
    train,
    '_RUN_ONCE_CPU_COMPILER_OPTIONS',
    {'xla_backend_optimization_level': 3},
  )
  optimised = initial_state()
  assert jax.tree.structure(unoptimised) == jax.tree.structure(optimised)
  _assert_trees_equal(unoptimised, optimised)
  _assert_trees_equal(unoptimised['ema_params'], optimised['params'])


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


def test_checkpoint_without_bad_steps_restores_it_as_zero(
  tiny_synthetic, tmp_path
):
  """Checkpoints written before the NaN guard counted skips keep restoring."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  parts = train.build(tiny_config(tiny_synthetic))
  state = parts.state
  ckpt = checkpoint.Checkpointer(str(tmp_path), async_save=False)
  # The earlier layout: item `train` held only {step, rng}.
  ckpt._manager.save(  # pylint: disable=protected-access
    3,
    args=ocp.args.Composite(
      params=ocp.args.StandardSave(state['params']),
      ema_params=ocp.args.StandardSave(state['ema_params']),
      opt_state=ocp.args.StandardSave(state['opt_state']),
      train=ocp.args.StandardSave({'step': state['step'], 'rng': state['rng']}),
      meta=ocp.args.JsonSave({'data_step': 0}),
    ),
    force=True,
  )
  ckpt.wait_until_finished()
  restored, _ = ckpt.restore(checkpoint.abstract_like(state, parts.shardings))
  ckpt.close()
  assert int(restored['bad_steps']) == 0
  assert restored['bad_steps'].sharding == parts.shardings['bad_steps']
  _assert_trees_equal(
    jax.device_get(state['params']), jax.device_get(restored['params'])
  )
