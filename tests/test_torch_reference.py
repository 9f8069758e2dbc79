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

"""benchmarks/torch_reference.py computes the authors' network and loss.

The PyTorch yardstick of the speed benchmarks must be the same network as
ours: it loads the recorded weights of `official_reference.npz` by their
state-dict names and must reproduce the recorded outputs and losses.
"""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffseg_jax import diffusion

torch = pytest.importorskip(
  'torch',
  reason='torch is not installed (pip install -e .[bench]); the '
  'PyTorch reference of benchmarks/ is optional.',
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, 'benchmarks'))
import torch_reference  # pylint: disable=g-import-not-at-top,wrong-import-position

from tests.conftest import needs_reference  # pylint: disable=unused-import
from tests.conftest import SMALL  # pylint: disable=unused-import


def _net(reference, prediction):
  config = torch_reference.NetConfig(
    **SMALL, output_activation='tanh' if prediction == 'x' else 'identity'
  )
  net = torch_reference.UNet(config)
  torch_reference.load_state_dict(
    net,
    {
      k[len('weights/') :]: v
      for k, v in reference.items()
      if k.startswith('weights/')
    },
  )
  return net.eval()


def _t(array):
  return torch.as_tensor(np.asarray(array))


@needs_reference
@pytest.mark.parametrize('prediction', ['x', 'v', 'eps'])
def test_network_matches_authors_outputs(reference, prediction):
  net = _net(reference, prediction)
  with torch.no_grad():
    out = net(
      _t(reference['loss/x/uniform/plain/x_t']),
      _t(reference['inputs/t']),
      _t(reference['inputs/image']),
    )
  want = reference[f'net/{prediction}/output']
  assert out.shape == want.shape
  assert np.max(np.abs(out.numpy() - want)) <= 1e-4  # As test_convert.
  assert np.max(np.abs(want)) > 0.1


@needs_reference
def test_every_parameter_comes_from_the_reference(reference):
  net = _net(reference, 'x')
  names = {k[len('weights/') :] for k in reference if k.startswith('weights/')}
  assert set(net.state_dict()) == names
  with pytest.raises(ValueError, match='middle_block.1.qkv.bias'):
    broken = {
      k: v
      for k, v in net.state_dict().items()
      if k != 'middle_block.1.qkv.bias'
    }
    torch_reference.load_state_dict(net, broken)


@needs_reference
def test_loss_matches_authors_losses(reference):
  cases = sorted(
    {tuple(k.split('/')[1:4]) for k in reference if k.startswith('loss/')}
  )
  assert len(cases) == 3 * 6 * 2
  # Every case shares x_t and t (SPEC §2a): one network call per prediction.
  outputs = {}
  for pred in ('x', 'v', 'eps'):
    with torch.no_grad():
      outputs[pred] = _net(reference, pred)(
        _t(reference['loss/x/uniform/plain/x_t']),
        _t(reference['inputs/t']),
        _t(reference['inputs/image']),
      )
  for pred, weighting, mode in cases:
    prefix = f'loss/{pred}/{weighting}/{mode}/'
    with torch.no_grad() if mode == 'plain' else torch.enable_grad():
      losses, aux = torch_reference.diffusion_loss(
        lambda z, t, image, out=outputs[pred]: out,
        x0=_t(reference['inputs/x0']),
        image=_t(reference['inputs/image']),
        t=_t(reference['inputs/t']),
        eps=_t(reference['inputs/eps']),
        input_scale=0.1,
        prediction=pred,
        weighting=weighting,
        decoupled=mode == 'decoupled',
      )
    # A float32 x_t differs from the float64 record by ~1e-5 (SPEC §2a);
    # eps-prediction divides by alpha_t ~ 0.1.
    np.testing.assert_allclose(
      aux['z'].numpy(), reference[prefix + 'x_t'], atol=2e-5, err_msg=prefix
    )
    np.testing.assert_allclose(
      aux['x0_hat'].detach().numpy(),
      reference[prefix + 'pred_x'],
      atol=1e-3,
      err_msg=prefix,
    )
    np.testing.assert_allclose(
      losses.detach().numpy(),
      reference[prefix + 'losses'],
      rtol=2e-4,
      err_msg=prefix,
    )


def test_schedule_and_ddpm_step_match_ours():
  t = np.linspace(0, 1, 11)
  with jax.enable_x64(True):
    want = np.asarray(
      diffusion.logsnr_schedule(
        jnp.asarray(t), schedule='cosine', input_scale=0.1
      )
    )
  got = torch_reference.logsnr_cosine(_t(t), input_scale=0.1).numpy()
  np.testing.assert_allclose(got, want, atol=1e-6)
  assert got[0] == pytest.approx(20.0) and got[-1] == pytest.approx(-20.0)

  rng = np.random.default_rng(0)
  z, x0_hat, noise = rng.normal(size=(3, 2, 1, 4, 4)).astype(np.float32)
  logsnr_t = np.float32([-3.0, 1.0])
  logsnr_s = np.float32([-1.0, 4.0])
  got = torch_reference.ddpm_step(
    z_t=_t(z),
    x0_hat=_t(x0_hat),
    logsnr_t=_t(logsnr_t),
    logsnr_s=_t(logsnr_s),
    noise=_t(noise),
  ).numpy()
  want = diffusion.ddpm_step(
    z_t=z,
    x0_hat=x0_hat,
    logsnr_t=logsnr_t,
    logsnr_s=logsnr_s,
    noise=noise,
    variance='large',
  )
  np.testing.assert_allclose(got, np.asarray(want), atol=1e-5)


def test_sampler_and_train_step_run():
  torch.manual_seed(0)
  config = torch_reference.NetConfig(
    base_channels=16,
    channel_mult=(1, 2),
    num_res_blocks=(1, 1),
    num_middle_blocks=2,
    num_heads=2,
  )
  net = torch_reference.UNet(config)
  image = torch.rand(2, 1, 8, 8)
  masks = torch_reference.ddpm_sample(
    net, image=image, num_samples=3, num_steps=2
  )
  assert masks.shape == (2, 3, 8, 8) and masks.dtype == torch.bool
  step = torch_reference.make_train_step(net)
  before = [p.detach().clone() for p in net.parameters()]
  x0 = torch.where(torch.rand(2, 1, 8, 8) > 0.5, 1.0, -1.0)
  loss = step(image, x0)
  assert torch.isfinite(loss)
  assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters()))
