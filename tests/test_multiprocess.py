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

"""Multi-process start-up: the settings chosen from flags and environment, and two real processes.

Two `jax.distributed` CPU processes (gloo collectives) train to the same parameters as one process:
both runs execute `python -m diffseg_jax.main` with the same global batch; each of the two processes
reads half of it and Orbax writes one checkpoint from both. The final parameters, read back from the
checkpoints, must agree within float tolerance (the gradient mean is reduced in another order).
A SIGTERM to one of two processes makes both save the same step and exit 143; restarting both ends
bit-identical to an uninterrupted two-process run.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from diffseg_jax import checkpoint
from diffseg_jax import errors
from diffseg_jax import runtime
from diffseg_jax import settings
from diffseg_jax.models import unet
from tests.conftest import config_flags
from tests.conftest import REPO
from tests.conftest import tiny_config

NUM_STEPS = 2
TIMEOUT_S = 400
# A one-level U-Net: the run time is mostly compilation, twice over in two processes.
OVERRIDES = {
  'num_train_steps': NUM_STEPS,
  'checkpoint_every_steps': NUM_STEPS,
  'model.channel_mult': (1,),
  'model.num_res_blocks': (1,),
  'model.num_middle_blocks': 1,
}


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _start_all(commands, *, log_dir):
  """Starts the commands concurrently, each logging to log_dir/process_I.log; returns (procs, logs)."""
  procs, logs = [], []
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS='cpu')
  for i, cmd in enumerate(commands):
    log = open(
      os.path.join(log_dir, f'process_{i}.log'), 'w+', encoding='utf-8'
    )
    logs.append(log)
    procs.append(
      subprocess.Popen(
        cmd,
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
      )
    )
  return procs, logs


def _wait_all(procs, logs, *, timeout_s, expect=0):
  """Waits for the processes; fails with their log tails unless all exit with `expect`."""
  deadline = time.time() + timeout_s
  try:
    while time.time() < deadline and any(p.poll() is None for p in procs):
      if any(p.poll() not in (None, expect) for p in procs):
        break  # One failed: the other would wait for it until the coordinator's timeout.
      time.sleep(0.2)
  finally:
    for p in procs:
      if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
  texts = []
  for log in logs:
    log.seek(0)
    texts.append(log.read())
    log.close()
  if any(p.returncode != expect for p in procs):
    tails = [
      f'--- process {i} (exit {p.returncode}) ---\n' + text[-3000:]
      for i, (p, text) in enumerate(zip(procs, texts))
    ]
    pytest.fail(
      f'a process did not exit with {expect} within {timeout_s} s:\n'
      + '\n'.join(tails)
    )
  return texts


def _run_all(commands, *, log_dir, timeout_s):
  """Runs the commands concurrently; fails with their log tails if one fails or times out."""
  procs, logs = _start_all(commands, log_dir=log_dir)
  return _wait_all(procs, logs, timeout_s=timeout_s)


def _two_process_commands(flags, workdir):
  address = f'127.0.0.1:{_free_port()}'
  return [
    [sys.executable, '-m', 'diffseg_jax.main']
    + flags
    + [
      f'--workdir={workdir}',
      f'--coordinator_address={address}',
      '--num_processes=2',
      f'--process_id={i}',
      '--cpu_collectives=gloo',
    ]
    for i in range(2)
  ]


def _abstract_params(config):
  return unet.abstract_model(settings.unet_config(config))[1].to_pure_dict()


def _final_params(workdir, config):
  """(params, ema_params, step) of the latest checkpoint, restored onto this process's first device.

  The target carries its sharding: without one Orbax would restore into the saving run's topology.
  """
  abstract = _abstract_params(config)
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), abstract
  )
  params, step = checkpoint.restore_params(
    os.path.join(workdir, 'checkpoints'), abstract, use_ema=False
  )
  ema, _ = checkpoint.restore_params(
    os.path.join(workdir, 'checkpoints'), abstract, use_ema=True
  )
  return params, ema, step


# The tests of one fixture run on one pytest-xdist worker (`--dist loadgroup`, as .ci/run does):
# otherwise each worker would train the two runs again.
TWO_PROCESS_RUNS = pytest.mark.xdist_group('two_and_one_process_runs')


@pytest.fixture(scope='module')
def two_and_one_process_runs(tiny_synthetic, tmp_path_factory):
  """Work directories of the same training run by two processes and by one process."""
  tmp_path = tmp_path_factory.mktemp('multiprocess')
  flags = config_flags(tiny_synthetic, **OVERRIDES)
  main = [sys.executable, '-m', 'diffseg_jax.main']
  two_dir, one_dir = tmp_path / 'two_processes', tmp_path / 'one_process'
  two = _two_process_commands(flags, two_dir)
  (tmp_path / 'logs').mkdir()
  _run_all(two, log_dir=str(tmp_path / 'logs'), timeout_s=TIMEOUT_S)
  one = [main + flags + [f'--workdir={one_dir}']]
  _run_all(one, log_dir=str(tmp_path), timeout_s=TIMEOUT_S)
  return {
    'two': two_dir,
    'one': one_dir,
    'logs': tmp_path / 'logs',
    'config': tiny_config(tiny_synthetic, **OVERRIDES),
  }


@TWO_PROCESS_RUNS
def test_two_processes_match_one_process(two_and_one_process_runs):
  runs = two_and_one_process_runs
  log0 = (runs['logs'] / 'process_0.log').read_text()
  assert 'JAX process 0 of 2; 1 local / 2 global cpu devices' in log0, log0[
    -3000:
  ]
  assert "{'data': 2} mesh" in log0, log0[-3000:]
  log1 = (runs['logs'] / 'process_1.log').read_text()
  assert 'JAX process 1 of 2' in log1, log1[-3000:]
  # Only process 0 writes event files.
  assert (
    len([f for f in os.listdir(runs['two']) if f.startswith('events.out')]) == 1
  )

  config = runs['config']
  params2, ema2, step2 = _final_params(str(runs['two']), config)
  params1, ema1, step1 = _final_params(str(runs['one']), config)
  assert step1 == step2 == NUM_STEPS
  initial = unet.init_params(
    settings.unet_config(config),
    jax.random.split(jax.random.PRNGKey(config.seed))[0],
  )
  moved = max(
    float(np.abs(np.asarray(a) - np.asarray(b)).max())
    for a, b in zip(
      jax.tree.leaves(params1), jax.tree.leaves(initial), strict=True
    )
  )
  assert moved > 1e-4, (
    'the steps did not change the parameters: the comparison would be empty'
  )
  for one_tree, two_tree in ((params1, params2), (ema1, ema2)):
    for path, a in jax.tree_util.tree_leaves_with_path(one_tree):
      b = _get(two_tree, path)
      np.testing.assert_allclose(
        np.asarray(b),
        np.asarray(a),
        rtol=0,
        atol=1e-5,
        err_msg=jax.tree_util.keystr(path),
      )


@TWO_PROCESS_RUNS
def test_two_processes_checkpoint_the_same_data_iterator_state(
  two_and_one_process_runs,
):
  states = {}
  for label in ('two', 'one'):
    path = (
      two_and_one_process_runs[label]
      / 'checkpoints'
      / str(NUM_STEPS)
      / 'data'
      / 'metadata'
    )
    states[label] = json.loads(path.read_text())
  assert (
    states['two']['next_index'] == NUM_STEPS
    and states['two']['process_count'] == 2
  )
  assert dict(states['two'], process_count=1) == states['one']


@TWO_PROCESS_RUNS
def test_restore_params_without_shardings_reads_a_two_process_checkpoint(
  two_and_one_process_runs,
):
  config = two_and_one_process_runs['config']
  abstract = _abstract_params(config)
  params, step = checkpoint.restore_params(
    os.path.join(two_and_one_process_runs['two'], 'checkpoints'), abstract
  )
  assert step == NUM_STEPS and len(jax.tree.leaves(params)) == len(
    jax.tree.leaves(abstract)
  )


@TWO_PROCESS_RUNS
def test_sigterm_to_one_process_then_restart_matches_uninterrupted_run(
  tiny_synthetic, two_and_one_process_runs, tmp_path
):
  """SIGTERM to process 1 only: both save the same step and exit 143; a restart ends bit-identical.

  The signal goes to process 1 as soon as its distributed runtime is up, before the first step
  (still compiling): JAX's sync manager then agrees on step 1 on both processes whatever the speed
  of the machine, so the test needs only a few steps. Process 0 gets no signal. The uninterrupted
  run is the fixture's two-process run (same flags).
  """
  flags = config_flags(tiny_synthetic, **OVERRIDES)
  for name in ('preempted', 'resumed'):
    (tmp_path / name).mkdir()

  workdir = tmp_path / 'interrupted'
  commands = _two_process_commands(flags, workdir)
  procs, logs = _start_all(commands, log_dir=str(tmp_path / 'preempted'))
  log1 = tmp_path / 'preempted' / 'process_1.log'
  deadline = time.time() + TIMEOUT_S
  while time.time() < deadline and all(p.poll() is None for p in procs):
    if 'JAX process 1 of 2' in log1.read_text():
      break
    time.sleep(0.05)
  procs[1].send_signal(signal.SIGTERM)
  texts = _wait_all(
    procs, logs, timeout_s=TIMEOUT_S, expect=errors.EXIT_PREEMPTED
  )
  for text in texts:
    lines = [x for x in text.splitlines() if x.startswith('PREEMPTED: ')]
    assert len(lines) == 1 and ' saved step 1 ' in lines[0], text[-3000:]
    assert 'Traceback' not in text, text[-3000:]
  assert os.listdir(workdir / 'checkpoints') == ['1']

  texts = _run_all(
    commands, log_dir=str(tmp_path / 'resumed'), timeout_s=TIMEOUT_S
  )
  assert all('Resumed from step 1 ' in text for text in texts), texts[0][-3000:]
  config = two_and_one_process_runs['config']
  params, ema, step = _final_params(str(workdir), config)
  ref_params, ref_ema, ref_step = _final_params(
    str(two_and_one_process_runs['two']), config
  )
  assert step == ref_step == NUM_STEPS
  for one, other in ((params, ref_params), (ema, ref_ema)):
    for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(other), strict=True):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _get(tree, path):
  for entry in path:
    tree = tree[getattr(entry, 'key', getattr(entry, 'idx', None))]
  return tree


SRUN_ENV = {
  'SLURM_JOB_ID': '1234',
  'SLURM_STEP_NODELIST': 'gpu[01-02]',
  'SLURM_NTASKS': '8',
  'SLURM_PROCID': '3',
  'SLURM_LOCALID': '3',
}


def _settings(environ, **flags):
  flags = {
    'coordinator_address': None,
    'num_processes': None,
    'process_id': None,
    **flags,
  }
  return runtime.distributed_settings(environ=environ, **flags)


def test_single_process_without_settings():
  assert _settings({}) is None
  assert _settings({'TPU_WORKER_HOSTNAMES': 'host0'}) is None  # One TPU host.
  # A one-task SLURM step.
  assert _settings(dict(SRUN_ENV, SLURM_NTASKS='1')) is None
  # An allocation's shell (no srun step) is not a multi-process launch.
  assert (
    _settings({k: v for k, v in SRUN_ENV.items() if k != 'SLURM_STEP_NODELIST'})
    is None
  )


def test_flags_then_jax_env_variables():
  env = {
    'JAX_COORDINATOR_ADDRESS': 'h0:1234',
    'JAX_NUM_PROCESSES': '4',
    'JAX_PROCESS_ID': '2',
  }
  assert _settings(env) == {
    'coordinator_address': 'h0:1234',
    'num_processes': 4,
    'process_id': 2,
  }
  assert _settings(env, coordinator_address='h1:99', process_id=0) == {
    'coordinator_address': 'h1:99',
    'num_processes': 4,
    'process_id': 0,
  }
  assert _settings(
    {}, coordinator_address='h1:99', num_processes=2, process_id=1
  ) == {'coordinator_address': 'h1:99', 'num_processes': 2, 'process_id': 1}


def test_clusters_are_left_to_jax_auto_detection():
  assert _settings(SRUN_ENV) == {}
  assert _settings({'TPU_WORKER_HOSTNAMES': 't0,t1,t2,t3'}) == {}
  assert _settings({'MEGASCALE_COORDINATOR_ADDRESS': 't0:8080'}) == {}
  assert _settings({'DIFFSEG_DISTRIBUTED': 'auto'}) == {}
  # Partial explicit settings inside a cluster: JAX detects the rest.
  assert _settings(dict(SRUN_ENV, JAX_COORDINATOR_ADDRESS='gpu01:5000')) == {
    'coordinator_address': 'gpu01:5000'
  }
  assert _settings(dict(SRUN_ENV, DIFFSEG_DISTRIBUTED='off')) is None


def test_bad_settings_name_the_fix():
  with pytest.raises(
    ValueError, match=r'--num_processes \(or JAX_NUM_PROCESSES\), --process_id'
  ):
    _settings({}, coordinator_address='h0:1234')
  with pytest.raises(
    ValueError, match="JAX_NUM_PROCESSES='two' is not an integer"
  ):
    _settings({'JAX_NUM_PROCESSES': 'two'})
  with pytest.raises(ValueError, match="DIFFSEG_DISTRIBUTED='yes'"):
    _settings({'DIFFSEG_DISTRIBUTED': 'yes'})


def test_initialize_rejects_incomplete_settings_before_starting_anything(
  monkeypatch,
):
  monkeypatch.setenv('JAX_COORDINATOR_ADDRESS', '127.0.0.1:1')
  for name in (
    'JAX_NUM_PROCESSES',
    'JAX_PROCESS_ID',
    'DIFFSEG_DISTRIBUTED',
    'SLURM_NTASKS',
    'TPU_WORKER_HOSTNAMES',
    'MEGASCALE_COORDINATOR_ADDRESS',
  ):
    monkeypatch.delenv(name, raising=False)
  with pytest.raises(errors.ConfigError, match='JAX_NUM_PROCESSES'):
    runtime.initialize()
  assert jax.process_count() == 1


def test_main_reports_incomplete_settings_and_exits_2():
  proc = subprocess.run(
    [
      sys.executable,
      '-m',
      'diffseg_jax.main',
      '--config=' + os.path.join(REPO, 'configs', 'quickstart.py'),
      '--workdir=/nonexistent',
      '--coordinator_address=127.0.0.1:1',
    ],
    cwd=REPO,
    env=dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS='cpu'),
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert 'JAX_NUM_PROCESSES' in proc.stderr, proc.stderr[-2000:]
  assert proc.returncode == 2 and 'Traceback' not in proc.stderr, proc.stderr[
    -2000:
  ]


# Evaluation shared across processes: a one-level U-Net trained one step, 8 test images, 8 samples.
EVAL_OVERRIDES = {
  'num_train_steps': 1,
  'checkpoint_every_steps': 1,
  'model.channel_mult': (1,),
  'model.num_res_blocks': (1,),
  'model.num_middle_blocks': 1,
  'eval.num_samples_list': (4, 8),
  'eval.num_examples': -1,
  'sampler.num_steps': 2,
}


def test_two_process_evaluation_equals_one_process_and_other_chunks(
  tiny_synthetic, tmp_path
):
  """Two processes each sample and score half the images; metrics.json is byte-identical to one
  process's, and to one process's with another eval batch size and sampling chunk size."""
  from diffseg_jax import evaluation  # pylint: disable=g-import-not-at-top
  from diffseg_jax import train  # pylint: disable=g-import-not-at-top

  workdir = tmp_path / 'work'
  train.train_and_evaluate(
    tiny_config(tiny_synthetic, **EVAL_OVERRIDES), str(workdir)
  )
  # Per device and network call: 2 images x 2 samples (two processes), 4 x 8 and 3 x 2 (one).
  runs = {'two': (2, 4), 'one': (4, 1000), 'chunked': (3, 6)}

  def overrides(name):
    batch_size, sampling_batch = runs[name]
    return dict(
      EVAL_OVERRIDES,
      **{
        'eval.batch_size': batch_size,
        'sampling_batch': sampling_batch,
        'eval.output_name': name,
      },
    )

  address = f'127.0.0.1:{_free_port()}'
  two = [
    [sys.executable, '-m', 'diffseg_jax.main', '--mode=evaluate']
    + config_flags(tiny_synthetic, **overrides('two'))
    + [
      f'--workdir={workdir}',
      f'--coordinator_address={address}',
      '--num_processes=2',
      f'--process_id={i}',
      '--cpu_collectives=gloo',
    ]
    for i in range(2)
  ]
  (tmp_path / 'logs').mkdir()
  _run_all(two, log_dir=str(tmp_path / 'logs'), timeout_s=TIMEOUT_S)
  for name in ('one', 'chunked'):
    evaluation.evaluate_checkpoint(
      tiny_config(tiny_synthetic, **overrides(name)), str(workdir)
    )

  for i, block in enumerate(('[0, 4)', '[4, 8)')):
    log = (tmp_path / 'logs' / f'process_{i}.log').read_text()
    assert f'Process {i} of 2 evaluates images {block}' in log, log[-3000:]
  out = workdir / 'eval'
  want = (out / 'one' / 'metrics.json').read_text()
  assert json.loads(want)['num_images'] == 8
  assert json.loads(want)['metrics']['ged_8']['n'] == 8
  records = (out / 'one' / 'per_image.jsonl').read_text()
  assert [json.loads(r)['index'] for r in records.splitlines()] == list(
    range(8)
  )
  for name in ('two', 'chunked'):
    assert (out / name / 'metrics.json').read_text() == want, name
    assert (out / name / 'per_image.jsonl').read_text() == records, name
  assert (out / 'two' / 'metrics.md').exists()
  assert (out / 'two' / 'grid.png').exists()
