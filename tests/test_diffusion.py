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

"""Tests for diffseg_jax.diffusion against float64 numpy references."""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffseg_jax import diffusion as dfn

SHARED = os.path.join(os.path.dirname(__file__), '..', '..', 'shared')
REFERENCE = os.path.join(SHARED, 'data', 'reference', 'official_reference.npz')

SCHEDULE_NAMES = ('cosine', 'linear', 'linear_simple', 'parabola')
INPUT_SCALES = (1.0, 0.6, 0.3, 0.1, 0.03)


# --------------------------------------------------------------------------
# Independent float64 numpy references.
# --------------------------------------------------------------------------


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def _ref_gamma(t, name):
  """Base gamma(t) and d gamma / dt, closed form."""
  if name == 'cosine':
    return np.cos(np.pi * t / 2) ** 2, -np.pi / 2 * np.sin(np.pi * t)
  if name == 'linear':
    c = 1e-4 + 10 * t**2
    g = _sigmoid(-np.log(np.expm1(c)))
    return g, -g * (1 - g) * np.exp(c) / np.expm1(c) * 20 * t
  if name == 'linear_simple':
    return 1 - t, -np.ones_like(t)
  if name == 'parabola':
    return (1 - t**2) ** 2, -4 * t * (1 - t**2)
  raise ValueError(name)


def _ref_scaled(t, name, b):
  g, dg = _ref_gamma(t, name)
  den = (b**2 - 1) * g + 1
  return b**2 * g / den, b**2 * dg / den**2


def _ref_logsnr_and_derivative(t, name, b, lo=-20.0, hi=20.0):
  gb, dgb = _ref_scaled(t, name, b)
  gb0, _ = _ref_scaled(np.zeros(()), name, b)
  gb1, _ = _ref_scaled(np.ones(()), name, b)
  span = _sigmoid(hi) - _sigmoid(lo)
  gp = _sigmoid(lo) + span * (gb - gb1) / (gb0 - gb1)
  logsnr = np.log(gp / (1 - gp))
  dlogsnr = span * dgb / (gb0 - gb1) / (gp * (1 - gp))
  return logsnr, dlogsnr


def _ref_weight(name, logsnr):
  snr = np.exp(logsnr)
  name = name.lower()
  if name == 'uniform':
    return np.ones_like(logsnr)
  if name == 'snr':
    return snr
  if name == 'snr_plus1':
    return snr + 1
  if name == 'snr_trunc':
    return np.maximum(snr, 1)
  k = float(name.split('_')[1])
  return _sigmoid(logsnr - k)


def _rand_t(n, seed=0):
  t = np.random.RandomState(seed).uniform(0, 1, n)
  return np.concatenate([[0.0, 1.0, 1e-4, 1 - 1e-4], t])


# --------------------------------------------------------------------------
# Schedules.
# --------------------------------------------------------------------------


@pytest.mark.parametrize('name', SCHEDULE_NAMES)
@pytest.mark.parametrize('b', INPUT_SCALES)
def test_logsnr_schedule_matches_float64_reference(name, b):
  t = _rand_t(64, seed=1)
  ref, dref = _ref_logsnr_and_derivative(t, name, b)
  with jax.enable_x64(True):
    got = np.asarray(
      dfn.logsnr_schedule(jnp.asarray(t), schedule=name, input_scale=b)
    )
    dgot = np.asarray(
      dfn.dlogsnr_dt(jnp.asarray(t), schedule=name, input_scale=b)
    )
  assert got.dtype == np.float64
  np.testing.assert_allclose(got, ref, atol=2e-7, rtol=0)
  np.testing.assert_allclose(dgot, np.minimum(dref, 0), rtol=1e-6, atol=1e-3)
  got32 = np.asarray(
    dfn.logsnr_schedule(t.astype(np.float32), schedule=name, input_scale=b)
  )
  assert got32.dtype == np.float32
  # float32 error grows where logSNR is steep in t (near the ends).
  np.testing.assert_allclose(got32, ref, atol=2e-3, rtol=1e-5)


@pytest.mark.parametrize('name', SCHEDULE_NAMES)
@pytest.mark.parametrize('b', INPUT_SCALES)
def test_endpoints_exact(name, b):
  for dtype in (np.float32, np.float64):
    with jax.enable_x64(dtype == np.float64):
      ends = np.asarray(
        dfn.logsnr_schedule(
          jnp.asarray([0.0, 1.0], dtype), schedule=name, input_scale=b
        )
      )
    assert ends[0] == 20.0 and ends[1] == -20.0, (dtype, ends)
  ends = dfn.logsnr_schedule(
    jnp.asarray([0.0, 1.0]),
    schedule=name,
    input_scale=b,
    logsnr_min=-7.0,
    logsnr_max=11.0,
  )
  np.testing.assert_array_equal(np.asarray(ends), [11.0, -7.0])


@pytest.mark.parametrize('name', SCHEDULE_NAMES)
@pytest.mark.parametrize('b', (0.6, 0.1, 0.03))
def test_input_scaling_shifts_unmapped_logsnr_by_2lnb(name, b):
  t = np.random.RandomState(2).uniform(0.01, 0.99, 50)

  def unmapped_logsnr(**kw):
    g, one_minus_g = dfn.scaled_gamma(jnp.asarray(t), schedule=name, **kw)
    return np.log(np.asarray(g)) - np.log(np.asarray(one_minus_g))

  with jax.enable_x64(True):
    base = unmapped_logsnr()
    scaled = unmapped_logsnr(input_scale=b)
  g, _ = _ref_gamma(t, name)
  np.testing.assert_allclose(base, np.log(g / (1 - g)), rtol=1e-10)
  np.testing.assert_allclose(scaled - base, 2 * np.log(b), atol=1e-10)


def test_alpha_sigma_and_derivative_against_autodiff():
  t = np.linspace(0.02, 0.98, 25)
  with jax.enable_x64(True):
    lg = dfn.logsnr_schedule(jnp.asarray(t), schedule='linear', input_scale=0.3)
    alpha, sigma = dfn.alpha_sigma(lg)
    grad = jax.jit(
      jax.vmap(
        jax.grad(
          functools.partial(
            dfn.logsnr_schedule, schedule='linear', input_scale=0.3
          )
        )
      )
    )(jnp.asarray(t))
    deriv = dfn.dlogsnr_dt(jnp.asarray(t), schedule='linear', input_scale=0.3)
  lg = np.asarray(lg)
  np.testing.assert_allclose(
    np.asarray(alpha), np.sqrt(_sigmoid(lg)), rtol=1e-12
  )
  np.testing.assert_allclose(
    np.asarray(sigma), np.sqrt(_sigmoid(-lg)), rtol=1e-12
  )
  np.testing.assert_allclose(
    np.asarray(alpha) ** 2 + np.asarray(sigma) ** 2, 1, rtol=1e-12
  )
  np.testing.assert_allclose(np.asarray(deriv), np.asarray(grad), rtol=1e-10)
  assert np.all(np.asarray(deriv) < 0)


def test_schedule_gradients_finite_everywhere():
  t = jnp.asarray([0.0, 0.5, 1.0])

  @jax.jit
  def derivatives(t):
    out = {}
    for name in SCHEDULE_NAMES:
      out[name] = (
        dfn.dlogsnr_dt(t, schedule=name, input_scale=0.1),
        jax.vmap(
          jax.grad(
            functools.partial(
              dfn.logsnr_schedule, schedule=name, input_scale=0.1
            )
          )
        )(t),
      )
    return out

  for name, (d, g) in derivatives(t).items():
    assert np.all(np.isfinite(np.asarray(d))) and np.all(np.asarray(d) <= 0)
    assert np.all(np.isfinite(np.asarray(g))), name


def test_bad_names_raise_clear_errors():
  with pytest.raises(ValueError, match='schedule'):
    dfn.logsnr_schedule(0.5, schedule='cosin')
  for bad in ('snr+1', 'sigmoid', 'sigmoid_x', 'sigmoid_nan'):
    with pytest.raises(ValueError, match='weighting'):
      dfn.DiffusionConfig(weighting=bad)
  with pytest.raises(ValueError, match='prediction'):
    dfn.DiffusionConfig(prediction='score')
  with pytest.raises(ValueError, match='SamplerConfig.name'):
    dfn.SamplerConfig(name='euler')
  with pytest.raises(ValueError, match='SamplerConfig.ddim_eps'):
    dfn.SamplerConfig(name='ddim', ddim_eps='unclipped')
  with pytest.raises(ValueError, match='input_scale'):
    dfn.logsnr_schedule(0.5, input_scale=0.0)


# --------------------------------------------------------------------------
# Conversions, weightings and loss identities.
# --------------------------------------------------------------------------


def _random_state(seed, shape=(6, 5, 4, 1)):
  rs = np.random.RandomState(seed)
  x = rs.uniform(-1, 1, shape)
  eps = rs.randn(*shape)
  logsnr = np.concatenate([[-20.0, 20.0], rs.uniform(-20, 20, shape[0] - 2)])
  return x, eps, logsnr


def _ref_conversions(x, eps, logsnr):
  a = np.sqrt(_sigmoid(logsnr))[:, None, None, None]
  s = np.sqrt(_sigmoid(-logsnr))[:, None, None, None]
  return a, s, a * x + s * eps, a * eps - s * x


def test_conversions_float64():
  x, eps, logsnr = _random_state(3)
  a, s, z, v = _ref_conversions(x, eps, logsnr)
  with jax.enable_x64(True):
    x_, eps_, lg_ = (jnp.asarray(u) for u in (x, eps, logsnr))
    z_, v_ = jnp.asarray(z), jnp.asarray(v)
    got = dict(
      z=dfn.diffuse(x=x_, eps=eps_, logsnr=lg_),
      x_from_eps=dfn.predict_x_from_eps(z=z_, eps=eps_, logsnr=lg_),
      eps_from_x=dfn.predict_eps_from_x(z=z_, x=x_, logsnr=lg_),
      x_from_v=dfn.predict_x_from_v(z=z_, v=v_, logsnr=lg_),
      v=dfn.predict_v_from_x_and_eps(x=x_, eps=eps_, logsnr=lg_),
      px_x=dfn.predict_x(z=z_, output=x_, logsnr=lg_, prediction='x'),
      px_eps=dfn.predict_x(z=z_, output=eps_, logsnr=lg_, prediction='eps'),
      px_v=dfn.predict_x(z=z_, output=v_, logsnr=lg_, prediction='v'),
    )
  want = dict(
    z=z, x_from_eps=x, eps_from_x=eps, x_from_v=x, v=v, px_x=x, px_eps=x, px_v=x
  )
  # Divisions by alpha or sigma ~ 4.5e-5 at |logSNR| = 20 amplify the
  # float64 rounding of z by up to 2.2e4.
  for key, value in want.items():
    np.testing.assert_allclose(
      np.asarray(got[key]), value, atol=1e-10, err_msg=key
    )


def test_conversions_float32_robust_at_extremes():
  x, eps, logsnr = _random_state(4)
  _, _, z, v = _ref_conversions(x, eps, logsnr)
  f32 = lambda u: jnp.asarray(u, jnp.float32)
  x_hat = dfn.predict_x_from_eps(z=f32(z), eps=f32(eps), logsnr=f32(logsnr))
  eps_hat = dfn.predict_eps_from_x(z=f32(z), x=f32(x), logsnr=f32(logsnr))
  x_from_v = dfn.predict_x_from_v(z=f32(z), v=f32(v), logsnr=f32(logsnr))
  for got in (x_hat, eps_hat, x_from_v):
    assert got.dtype == jnp.float32 and np.all(np.isfinite(np.asarray(got)))
  # Documented bound: |error| <~ 1e-7 * |z| * exp(10).
  np.testing.assert_allclose(np.asarray(x_hat), x, atol=1e-2)
  np.testing.assert_allclose(np.asarray(eps_hat), eps, atol=1e-2)
  np.testing.assert_allclose(np.asarray(x_from_v), x, atol=1e-5)
  np.testing.assert_allclose(np.asarray(x_hat)[2:], x[2:], atol=2e-3)


@pytest.mark.parametrize(
  'name',
  [
    'uniform',
    'snr',
    'SNR_plus1',
    'snr_trunc',
    'sigmoid_0',
    'sigmoid_2',
    'sigmoid_-1.5',
  ],
)
def test_weightings(name):
  logsnr = np.concatenate(
    [[-20.0, 0.0, 20.0], np.random.RandomState(5).uniform(-20, 20, 30)]
  )
  with jax.enable_x64(True):
    got = np.asarray(dfn.get_weighting(name)(jnp.asarray(logsnr)))
  np.testing.assert_allclose(got, _ref_weight(name, logsnr), rtol=1e-12)
  got32 = np.asarray(dfn.get_weighting(name)(jnp.asarray(logsnr, jnp.float32)))
  np.testing.assert_allclose(got32, _ref_weight(name, logsnr), rtol=5e-5)


@pytest.mark.parametrize('decoupled', [False, True])
def test_loss_weight_decoupled(decoupled):
  t = np.random.RandomState(6).uniform(0, 1, 16)
  cfg = dfn.DiffusionConfig(
    schedule='parabola',
    input_scale=0.3,
    weighting='sigmoid_2',
    decoupled=decoupled,
  )
  with jax.enable_x64(True):
    got = np.asarray(dfn.loss_weight(t=jnp.asarray(t), config=cfg))
  lg, dlg = _ref_logsnr_and_derivative(t, 'parabola', 0.3)
  want = _ref_weight('sigmoid_2', lg) * (-dlg if decoupled else 1)
  np.testing.assert_allclose(got, want, rtol=1e-6)


def test_mse_identities():
  """x-MSE * SNR == eps-MSE and x-MSE * (SNR + 1) == v-MSE."""
  x, eps, logsnr = _random_state(7)
  x_hat = np.random.RandomState(8).uniform(-1, 1, x.shape)
  with jax.enable_x64(True):
    z = dfn.diffuse(
      x=jnp.asarray(x), eps=jnp.asarray(eps), logsnr=jnp.asarray(logsnr)
    )
    lg = jnp.asarray(logsnr)
    eps_hat = dfn.predict_eps_from_x(z=z, x=jnp.asarray(x_hat), logsnr=lg)
    a, s = _ab(logsnr)
    v_hat = (a[:, None, None, None] * np.asarray(z) - x_hat) / s[
      :, None, None, None
    ]
    v = dfn.predict_v_from_x_and_eps(
      x=jnp.asarray(x), eps=jnp.asarray(eps), logsnr=lg
    )
    mse = lambda a, b: np.mean((np.asarray(a) - np.asarray(b)) ** 2, (1, 2, 3))
    x_mse = mse(x_hat, x)
    snr = np.asarray(dfn.get_weighting('snr')(lg))
    snr1 = np.asarray(dfn.get_weighting('snr_plus1')(lg))
    np.testing.assert_allclose(x_mse * snr, mse(eps_hat, eps), rtol=1e-7)
    np.testing.assert_allclose(x_mse * snr1, mse(v_hat, v), rtol=1e-7)


def test_stratified_time():
  t = np.asarray(dfn.stratified_time(jax.random.key(0), batch_size=64))
  assert t.shape == (64,) and t.dtype == np.float32
  idx = np.arange(64)
  assert np.all(t >= idx / 64) and np.all(t < (idx + 1) / 64)
  t2 = np.asarray(dfn.stratified_time(jax.random.key(1), batch_size=64))
  assert not np.allclose(t, t2)


def _linear_denoiser(z, t, image):
  return jnp.tanh(0.7 * z + 0.3 * image[..., :1] - 0.2 * t[:, None, None, None])


def test_loss_matches_reference_and_jit():
  rs = np.random.RandomState(9)
  x0 = np.where(rs.rand(4, 8, 8, 1) > 0.5, 1.0, -1.0).astype(np.float32)
  image = rs.rand(4, 8, 8, 1).astype(np.float32)
  cfg = dfn.DiffusionConfig(
    prediction='v', weighting='snr_trunc', decoupled=True
  )
  rng = jax.random.key(3)
  losses, aux = dfn.loss(
    _linear_denoiser, x0=x0, image=image, rng=rng, config=cfg
  )
  jitted = jax.jit(functools.partial(dfn.loss, _linear_denoiser, config=cfg))
  losses_j, aux_j = jitted(x0=x0, image=image, rng=rng)
  np.testing.assert_allclose(
    np.asarray(losses_j), np.asarray(losses), rtol=1e-5
  )
  np.testing.assert_allclose(
    np.asarray(aux_j['x0_hat']), np.asarray(aux['x0_hat']), atol=1e-6
  )
  assert losses.shape == (4,) and losses.dtype == jnp.float32
  t = np.asarray(aux['t'], np.float64)
  assert np.all((t >= np.arange(4) / 4) & (t < np.arange(1, 5) / 4))
  # Reference from the returned z and t.
  lg, dlg = _ref_logsnr_and_derivative(t, 'cosine', 0.1)
  z = np.asarray(aux['z'], np.float64)
  a = np.sqrt(_sigmoid(lg))[:, None, None, None]
  s = np.sqrt(_sigmoid(-lg))[:, None, None, None]
  v_hat = np.tanh(0.7 * z + 0.3 * image - 0.2 * t[:, None, None, None])
  x_hat = a * z - s * v_hat
  want = (
    np.maximum(np.exp(lg), 1) * -dlg * np.mean((x_hat - x0) ** 2, (1, 2, 3))
  )
  np.testing.assert_allclose(np.asarray(losses), want, rtol=2e-4)
  eps_implied = (z - a * x0) / s
  assert np.std(eps_implied) > 0.5  # noise was really drawn


def test_loss_bfloat16_network_output():
  rs = np.random.RandomState(10)
  x0 = np.where(rs.rand(2, 8, 8, 1) > 0.5, 1.0, -1.0).astype(np.float32)
  image = jnp.asarray(rs.rand(2, 8, 8, 1), jnp.bfloat16)
  bf16_fn = lambda z, t, im: _linear_denoiser(z, t, im).astype(jnp.bfloat16)
  f32_fn = lambda z, t, im: bf16_fn(z, t, im).astype(jnp.float32)
  for pred in ('x', 'eps', 'v'):
    cfg = dfn.DiffusionConfig(prediction=pred)
    l16, aux16 = dfn.loss(
      bf16_fn, x0=x0, image=image, rng=jax.random.key(0), config=cfg
    )
    l32, _ = dfn.loss(
      f32_fn, x0=x0, image=image, rng=jax.random.key(0), config=cfg
    )
    assert l16.dtype == jnp.float32 and aux16['x0_hat'].dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(l16), np.asarray(l32))


def test_loss_logsnr_conditioning():
  seen = {}

  def fn(z, time, image):
    seen['time'] = time
    return jnp.zeros_like(z)

  cfg = dfn.DiffusionConfig(conditioning='logsnr')
  _, aux = dfn.loss(
    fn,
    x0=jnp.ones((3, 4, 4, 1)),
    image=jnp.ones((3, 4, 4, 1)),
    rng=jax.random.key(0),
    config=cfg,
  )
  np.testing.assert_array_equal(
    np.asarray(seen['time']), np.asarray(aux['logsnr'])
  )


# --------------------------------------------------------------------------
# Beyond the paper: logit prediction and the sigmoid cross-entropy loss.
# --------------------------------------------------------------------------


def _logit_case(seed=11, shape=(5, 6, 6, 1)):
  rs = np.random.RandomState(seed)
  x0 = np.where(rs.rand(*shape) > 0.4, 1.0, -1.0)
  # Logits of every size, including confidently wrong ones (|logit| = 30).
  logits = rs.normal(0, 4, shape)
  logits[0, 0, 0, 0] = -30 * x0[0, 0, 0, 0]
  logits[1, 0, 0, 0] = 30 * x0[1, 0, 0, 0]
  t = np.array([0.0, 0.05, 0.4, 0.8, 1.0])
  return x0, logits, t


@pytest.mark.parametrize('weighting', ['snr_plus1', 'uniform', 'sigmoid_2'])
@pytest.mark.parametrize('loss_name', ['bce', 'mse'])
def test_logit_prediction_losses_match_float64_reference(weighting, loss_name):
  x0, logits, t = _logit_case()
  cfg = dfn.DiffusionConfig(
    prediction='logit', loss=loss_name, weighting=weighting
  )
  losses, aux = dfn.loss(
    lambda z, tt, im: jnp.asarray(logits, jnp.float32),
    x0=x0.astype(np.float32),
    image=np.zeros_like(x0, np.float32),
    rng=jax.random.key(0),
    config=cfg,
    t=t.astype(np.float32),
  )
  p = _sigmoid(logits)
  x0_hat = 2 * p - 1
  if loss_name == 'bce':
    y = (x0 + 1) / 2
    # Written as -(y log p + (1 - y) log(1 - p)) with log p = -log1p(e^-l).
    log_p = -np.log1p(np.exp(-logits))
    log_1mp = -np.log1p(np.exp(logits))
    pixel = -(y * log_p + (1 - y) * log_1mp)
  else:
    pixel = (x0_hat - x0) ** 2
  lg, _ = _ref_logsnr_and_derivative(t, 'cosine', 0.1)
  want = _ref_weight(weighting, lg) * pixel.mean(axis=(1, 2, 3))
  np.testing.assert_allclose(np.asarray(losses), want, rtol=2e-5)
  np.testing.assert_allclose(np.asarray(aux['x0_hat']), x0_hat, atol=1e-6)
  np.testing.assert_allclose(
    np.asarray(aux['mse']), ((x0_hat - x0) ** 2).mean((1, 2, 3)), rtol=1e-5
  )


def test_bce_gradient_survives_saturation_and_targets_the_posterior_mean():
  x0 = jnp.array([1.0, -1.0])
  # Confidently wrong: the BCE gradient in the logit is p - y, about +-1.
  wrong = jnp.array([-30.0, 30.0])
  grad = jax.grad(
    lambda o: jnp.sum(dfn.bce_loss(x0_hat=None, x0=x0, output=o))
  )(wrong)
  np.testing.assert_allclose(np.asarray(grad), [-1.0, 1.0], atol=1e-6)
  # Expected loss over x0 = +1 with probability q is stationary where
  # x0_hat = 2q - 1, the posterior mean (as for the MSE).
  for q in (0.1, 0.5, 0.83):
    expected = lambda o, q=q: (
      q * dfn.bce_loss(x0_hat=None, x0=1.0, output=o)
      + (1 - q) * dfn.bce_loss(x0_hat=None, x0=-1.0, output=o)
    )
    logit = float(np.log(q / (1 - q)))
    assert abs(float(jax.grad(expected)(logit))) < 1e-6
    np.testing.assert_allclose(
      float(
        dfn.predict_x(
          z=jnp.zeros(()), output=logit, logsnr=0.0, prediction='logit'
        )
      ),
      2 * q - 1,
      atol=1e-6,
    )


def test_loss_config_errors_name_the_fix():
  with pytest.raises(ValueError, match="prediction='logit'"):
    dfn.DiffusionConfig(loss='bce', prediction='x')
  with pytest.raises(ValueError, match="loss='hinge'"):
    dfn.DiffusionConfig(loss='hinge')
  with pytest.raises(ValueError, match='self_condition_prob'):
    dfn.DiffusionConfig(self_condition=True, self_condition_prob=1.5)
  with pytest.raises(ValueError, match="target='posterior'"):
    dfn.DiffusionConfig(target='posterior')


# --------------------------------------------------------------------------
# target='annotation_posterior': E[x0 | z, the example's annotations].
# --------------------------------------------------------------------------


def _ref_annotation_posterior(z, annotations, logsnr):
  """float64: weights from the Gaussian likelihood N(z; alpha a_m, sigma^2 I) itself."""
  a, s = _ab(logsnr)
  a, s = a[:, None, None, None, None], s[:, None, None, None, None]
  log_lik = -((z[:, None] - a * annotations) ** 2).sum((2, 3, 4)) / (
    2 * s[:, 0, 0, 0, 0, None] ** 2
  )
  w = np.exp(log_lik - log_lik.max(1, keepdims=True))
  w /= w.sum(1, keepdims=True)
  return (w[:, :, None, None, None] * annotations).sum(1), w


def _annotation_case(seed=3, batch=4, num=4, size=6):
  rs = np.random.RandomState(seed)
  annotations = np.where(rs.rand(batch, num, size, size, 1) < 0.5, -1.0, 1.0)
  # Annotations that differ in a few pixels only, as boundary jitter does.
  annotations[:, 1:] = annotations[:, :1]
  flips = rs.rand(batch, num - 1, size, size, 1) < 0.08
  annotations[:, 1:] = np.where(flips, -annotations[:, 1:], annotations[:, 1:])
  chosen = rs.randint(0, num, batch)
  x0 = annotations[np.arange(batch), chosen]
  return annotations, x0, chosen, rs


def test_annotation_posterior_mean_matches_float64_reference():
  annotations, x0, _, rs = _annotation_case()
  # From no information through partial (weights neither uniform nor one-hot) to full.
  logsnr = np.array([-20.0, -3.0, -1.0, 0.5])
  a, s = _ab(logsnr)
  z = a[:, None, None, None] * x0 + s[:, None, None, None] * rs.randn(*x0.shape)
  want, weights = _ref_annotation_posterior(z, annotations, logsnr)
  assert (weights[1:].max(1) < 0.999).any() and (weights.min(1) < 0.2).any()
  got = dfn.annotation_posterior_mean(
    z=z.astype(np.float32), annotations=annotations, logsnr=logsnr
  )
  np.testing.assert_allclose(np.asarray(got), want, atol=2e-5)


def test_annotation_posterior_mean_limits():
  annotations, x0, _, rs = _annotation_case(seed=5)
  for logsnr, want in ((-20.0, annotations.mean(1)), (20.0, x0)):
    a, s = _ab(np.float64(logsnr))
    z = a * x0 + s * rs.randn(*x0.shape)
    got = dfn.annotation_posterior_mean(
      z=z.astype(np.float32),
      annotations=annotations,
      logsnr=np.full(len(x0), logsnr),
    )
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-3)


def test_annotation_posterior_loss_regresses_on_the_posterior_mean():
  annotations, x0, _, rs = _annotation_case(seed=7)
  x0 = x0.astype(np.float32)
  t = np.array([0.2, 0.05, 0.6, 0.9], np.float32)
  eps = rs.randn(*x0.shape).astype(np.float32)
  output = rs.uniform(-1, 1, x0.shape).astype(np.float32)
  kw = dict(
    x0=x0,
    image=np.zeros_like(x0),
    rng=jax.random.key(0),
    t=t,
    eps=eps,
    annotations=annotations,
  )
  net = lambda z, tt, im: jnp.asarray(output)
  cfg = dfn.DiffusionConfig(target='annotation_posterior', weighting='uniform')
  losses, aux = dfn.loss(net, config=cfg, **kw)
  logsnr, _ = _ref_logsnr_and_derivative(t.astype(np.float64), 'cosine', 0.1)
  a, s = _ab(logsnr)
  z = a[:, None, None, None] * x0 + s[:, None, None, None] * eps
  target, _ = _ref_annotation_posterior(z, annotations, logsnr)
  np.testing.assert_allclose(np.asarray(aux['target']), target, atol=2e-5)
  np.testing.assert_allclose(
    np.asarray(losses), ((output - target) ** 2).mean((1, 2, 3)), rtol=1e-4
  )
  # One annotation per example: the posterior mean is that annotation, the paper's loss.
  one = dict(kw, annotations=x0[:, None])
  paper, _ = dfn.loss(
    net, config=dfn.DiffusionConfig(weighting='uniform'), **kw
  )
  np.testing.assert_allclose(
    np.asarray(dfn.loss(net, config=cfg, **one)[0]),
    np.asarray(paper),
    rtol=1e-6,
  )
  with pytest.raises(ValueError, match='needs annotations'):
    dfn.loss(net, config=cfg, **dict(kw, annotations=None))


def test_annotation_posterior_target_is_unbiased_for_the_posterior_mean():
  """Monte Carlo: over draws of the annotation set, E[target | z] = E[x0 | z] (tower rule).

  One pixel, two possible masks (+1 w.p. q): E[x0 | z] has a closed form; the target's average
  over annotation sets consistent with z (drawn by rejection-free weighting) matches it.
  """
  rs = np.random.RandomState(0)
  q, num, logsnr = 0.3, 4, -0.5
  a, s = _ab(np.float64(logsnr))
  n = 200_000
  sets = np.where(rs.rand(n, num) < q, 1.0, -1.0)
  chosen = rs.randint(0, num, n)
  x0 = sets[np.arange(n), chosen]
  z = a * x0 + s * rs.randn(n)
  target = np.asarray(
    dfn.annotation_posterior_mean(
      z=z[:, None, None, None].astype(np.float32),
      annotations=sets[:, :, None, None, None],
      logsnr=np.full(n, logsnr),
    )
  )[:, 0, 0, 0]
  bins = np.quantile(z, [0.1, 0.3, 0.5, 0.7, 0.9])
  for lo, hi in zip(bins[:-1], bins[1:]):
    sel = (z >= lo) & (z < hi)
    lik = lambda x, zs=z[sel]: np.exp(-((zs - a * x) ** 2) / (2 * s * s))
    exact = np.mean(
      (q * lik(1) - (1 - q) * lik(-1)) / (q * lik(1) + (1 - q) * lik(-1))
    )
    assert abs(target[sel].mean() - exact) < 0.01
    assert abs(x0[sel].mean() - exact) < 0.02
    # Less variance than the drawn annotation: the point of the target.
    assert target[sel].var() < 0.5 * x0[sel].var()


def test_bce_takes_soft_targets():
  out = np.linspace(-40, 40, 9).astype(np.float32)
  for x0 in (-1.0, -0.3, 0.0, 0.6, 1.0):
    y = (x0 + 1) / 2
    o = out.astype(np.float64)
    want = y * np.logaddexp(0, -o) + (1 - y) * np.logaddexp(0, o)
    got = dfn.bce_loss(x0_hat=None, x0=jnp.float32(x0), output=out)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------
# Sampler steps against independent Gaussian-posterior formulas.
# --------------------------------------------------------------------------


def _ab(logsnr):
  return np.sqrt(_sigmoid(logsnr)), np.sqrt(_sigmoid(-logsnr))


@pytest.mark.parametrize('variance', ['large', 'small'])
def test_ddpm_step_is_gaussian_posterior(variance):
  rs = np.random.RandomState(11)
  z_t, x = rs.randn(3, 4, 4, 1), rs.uniform(-1, 1, (3, 4, 4, 1))
  lt, ls = np.array([-15.0, -2.0, 3.0]), np.array([-5.0, 1.0, 19.0])
  at, st = _ab(lt)
  as_, ss = _ab(ls)
  a_ts = at / as_
  var_ts = st**2 - a_ts**2 * ss**2
  e = lambda u: u[:, None, None, None]
  mean = e(a_ts * ss**2 / st**2) * z_t + e(as_ * var_ts / st**2) * x
  var = var_ts if variance == 'large' else var_ts * ss**2 / st**2
  with jax.enable_x64(True):
    step = functools.partial(
      dfn.ddpm_step,
      z_t=jnp.asarray(z_t),
      x0_hat=jnp.asarray(x),
      logsnr_t=jnp.asarray(lt),
      logsnr_s=jnp.asarray(ls),
      variance=variance,
    )
    m = np.asarray(step(noise=jnp.zeros_like(z_t)))
    m1 = np.asarray(step(noise=jnp.ones_like(z_t)))
  np.testing.assert_allclose(m, mean, rtol=1e-9, atol=1e-12)
  np.testing.assert_allclose(
    m1 - m, np.broadcast_to(e(np.sqrt(var)), m.shape), rtol=1e-7
  )


def test_ddim_and_dpm_steps_exact_for_oracle():
  """With x0_hat = x the deterministic steps map z_t(eps) to z_s(eps)."""
  rs = np.random.RandomState(12)
  x, eps = rs.uniform(-1, 1, (3, 4, 4, 1)), rs.randn(3, 4, 4, 1)
  lt, ls, lp = (
    np.array([-20.0, -3.0, 5.0]),
    np.array([-10.0, 0.5, 20.0]),
    np.array([-25.0, -6.0, 1.0]),
  )
  at, st = _ab(lt)
  as_, ss = _ab(ls)
  e = lambda u: u[:, None, None, None]
  z_t = e(at) * x + e(st) * eps
  z_s = e(as_) * x + e(ss) * eps
  with jax.enable_x64(True):
    ddim = dfn.ddim_step(
      z_t=jnp.asarray(z_t),
      x0_hat=jnp.asarray(x),
      logsnr_t=jnp.asarray(lt),
      logsnr_s=jnp.asarray(ls),
    )
    dpm = dfn.dpm_solver_pp_2m_step(
      z_t=jnp.asarray(z_t),
      x0_hat=jnp.asarray(x),
      x0_prev=jnp.asarray(x),
      logsnr_t=jnp.asarray(lt),
      logsnr_s=jnp.asarray(ls),
      logsnr_prev=jnp.asarray(lp),
      first=False,
    )
  np.testing.assert_allclose(np.asarray(ddim), z_s, atol=1e-9)
  np.testing.assert_allclose(np.asarray(dpm), z_s, atol=1e-9)


def test_dpm_solver_2m_step_formula():
  rs = np.random.RandomState(13)
  z, x, xp = rs.randn(2, 3, 3, 1), rs.randn(2, 3, 3, 1), rs.randn(2, 3, 3, 1)
  lt, ls, lp = (
    np.array([-4.0, 2.0]),
    np.array([-1.0, 6.0]),
    np.array([-9.0, 0.0]),
  )
  # DPM-Solver++(2M), Lu et al. 2022, Alg. 2, written in lambda = logSNR/2.
  lam_t, lam_s, lam_p = lt / 2, ls / 2, lp / 2
  h = lam_s - lam_t
  r = (lam_t - lam_p) / h
  e = lambda u: u[:, None, None, None]
  d = e(1 + 1 / (2 * r)) * x - e(1 / (2 * r)) * xp
  _, st = _ab(lt)
  as_, ss = _ab(ls)
  want = e(ss / st) * z - e(as_ * (np.exp(-h) - 1)) * d
  want_first = e(ss / st) * z - e(as_ * (np.exp(-h) - 1)) * x
  with jax.enable_x64(True):
    step = functools.partial(
      dfn.dpm_solver_pp_2m_step,
      z_t=jnp.asarray(z),
      x0_hat=jnp.asarray(x),
      x0_prev=jnp.asarray(xp),
      logsnr_t=jnp.asarray(lt),
      logsnr_s=jnp.asarray(ls),
      logsnr_prev=jnp.asarray(lp),
    )
    got, got_first = step(first=False), step(first=True)
    ddim = dfn.ddim_step(
      z_t=jnp.asarray(z),
      x0_hat=jnp.asarray(x),
      logsnr_t=jnp.asarray(lt),
      logsnr_s=jnp.asarray(ls),
    )
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-10)
  np.testing.assert_allclose(np.asarray(got_first), want_first, rtol=1e-10)
  np.testing.assert_allclose(
    np.asarray(got_first), np.asarray(ddim), rtol=1e-10
  )


# --------------------------------------------------------------------------
# End-to-end sampling.
# --------------------------------------------------------------------------

SAMPLER_NAMES = ('ddpm', 'ddim', 'dpm_solver_pp_2m')


@pytest.mark.parametrize('name', SAMPLER_NAMES)
@pytest.mark.parametrize('prediction', ['x', 'eps', 'v', 'logit'])
def test_oracle_denoiser_reproduces_x0(name, prediction):
  """A denoiser that knows x0 (and answers in any parameterisation) is exact."""
  rs = np.random.RandomState(14)
  x0 = np.where(rs.rand(2, 8, 8, 1) > 0.5, 1.0, -1.0).astype(np.float32)
  image = jnp.asarray(x0)  # the "network" reads x0 from its image input.
  diffusion = dfn.DiffusionConfig(prediction=prediction)
  calls = []

  def oracle(z, t, im):
    calls.append(z.shape)
    lg = dfn.config_logsnr(t, diffusion)
    if prediction == 'x':
      return im
    if prediction == 'logit':
      return 40.0 * im  # p = sigmoid(+-40): x0_hat = +-1 in float32.
    eps = dfn.predict_eps_from_x(z=z, x=im, logsnr=lg)
    if prediction == 'eps':
      return eps
    return dfn.predict_v_from_x_and_eps(x=im, eps=eps, logsnr=lg)

  sampler = dfn.SamplerConfig(name=name, num_steps=7)
  masks, soft = dfn.sample(
    oracle,
    image=image,
    rng=jax.random.key(0),
    num_samples=3,
    diffusion=diffusion,
    sampler=sampler,
    return_soft=True,
  )
  assert masks.shape == (2, 3, 8, 8) and masks.dtype == jnp.bool_
  assert soft.shape == (2, 3, 8, 8) and soft.dtype == jnp.float32
  want = np.broadcast_to(x0[:, None, ..., 0] > 0, (2, 3, 8, 8))
  np.testing.assert_array_equal(np.asarray(masks), want)
  # x-prediction is exact; eps/v go through 1/alpha, 1/sigma in float32.
  np.testing.assert_allclose(
    np.asarray(soft), np.where(want, 1.0, -1.0), atol=1e-2
  )
  assert calls == [(6, 8, 8, 1)]  # traced once, one batched call per step


# Three 4x4 masks with known probabilities.
_MIX_PROBS = np.array([0.5, 0.3, 0.2])
_MIX_MASKS = np.stack(
  [
    -np.ones((4, 4)),
    np.where(np.arange(16).reshape(4, 4) < 8, 1.0, -1.0),
    np.where(np.add.outer(np.arange(4), np.arange(4)) % 2 == 0, 1.0, -1.0),
  ]
)


def _mixture_denoiser(diffusion):
  masks = jnp.asarray(_MIX_MASKS.reshape(3, -1), jnp.float32)
  log_p = jnp.log(jnp.asarray(_MIX_PROBS, jnp.float32))

  def fn(z, t, image):
    del image
    lg = dfn.config_logsnr(t, diffusion)
    alpha, sigma = dfn.alpha_sigma(lg)
    zf = z.reshape(z.shape[0], -1)
    # log N(z; alpha m_k, sigma^2) up to terms equal for all k (|m_k|^2 = D).
    logits = log_p + (alpha / sigma**2)[:, None] * (zf @ masks.T)
    x = jax.nn.softmax(logits, axis=-1) @ masks
    return x.reshape(z.shape)

  return fn


def _mixture_frequencies(name, num_steps, n=2000, seed=0, variance='large'):
  diffusion = dfn.DiffusionConfig()
  sampler = dfn.SamplerConfig(name=name, num_steps=num_steps, variance=variance)
  run = jax.jit(
    lambda rng: dfn.sample(
      _mixture_denoiser(diffusion),
      image=jnp.zeros((1, 4, 4, 1)),
      rng=rng,
      num_samples=n,
      diffusion=diffusion,
      sampler=sampler,
    )
  )
  masks = np.asarray(run(jax.random.key(seed)))[0].reshape(n, 16)
  target = _MIX_MASKS.reshape(3, 16) > 0
  match = (masks[:, None, :] == target[None]).all(-1)  # [n, 3]
  return match.mean(0), match.any(-1).mean()


@pytest.mark.parametrize('variance', ['large', 'small'])
def test_ddpm_reproduces_mixture_weights(variance):
  freq, on_support = _mixture_frequencies('ddpm', 100, variance=variance)
  assert on_support == 1.0
  se = np.sqrt(_MIX_PROBS * (1 - _MIX_PROBS) / 2000)
  assert np.all(np.abs(freq - _MIX_PROBS) < 3 * se), (freq, se)


def test_dpm_solver_reproduces_mixture_weights():
  freq, on_support = _mixture_frequencies('dpm_solver_pp_2m', 50)
  assert on_support == 1.0
  se = np.sqrt(_MIX_PROBS * (1 - _MIX_PROBS) / 2000)
  assert np.all(np.abs(freq - _MIX_PROBS) < 3 * se), (freq, se)


def test_ddim_mixture_weights_and_bias():
  """DDIM (probability-flow ODE) transports mass correctly as steps grow.

  Known bias: with few steps the deterministic sampler cannot follow the
  sharpening posterior, so some samples land between the masks and mass
  shifts towards the dominant mode. Measured (cosine, b = 0.1, seed 0, 2,000
  samples; probabilities 0.5/0.3/0.2): 5 steps 0.505/0.235/0.116 with 86% of
  samples on one of the masks, 10 steps 0.508/0.299/0.173 (98%), 20 steps
  0.506/0.310/0.183 (99.95%), 50 and 100 steps 0.503/0.312/0.185 (100%).
  Pooled over 40,000 samples (4 other seeds) DDIM at 100 steps gives
  0.501/0.304/0.195, within 2 standard errors. DPM-Solver++(2M) converges to
  the same ODE solution with about 20 steps.
  """
  se = np.sqrt(_MIX_PROBS * (1 - _MIX_PROBS) / 2000)
  freq, on_support = _mixture_frequencies('ddim', 100)
  assert on_support == 1.0
  assert np.all(np.abs(freq - _MIX_PROBS) < 3 * se), (freq, se)


def _mixture_x0_float64(z, t, lo=-20.0, hi=20.0):
  """The mixture denoiser's x0_hat in float64 numpy (z [K, 16], t scalar)."""
  lg, _ = _ref_logsnr_and_derivative(
    np.asarray(t, np.float64), 'cosine', 0.1, lo, hi
  )
  alpha, sigma = _ab(lg)
  masks = _MIX_MASKS.reshape(3, 16)
  logits = np.log(_MIX_PROBS) + alpha / sigma**2 * (z @ masks.T)
  p = np.exp(logits - logits.max(-1, keepdims=True))
  return (p / p.sum(-1, keepdims=True)) @ masks


def _ref_ddim_loop(x0_fn, z, num_steps, *, ddim_eps='clipped'):
  """Float64 DDIM from t = 1 to 0 on the grid i / N (SPEC 2).

  x0_fn(z, t) -> unclipped x0_hat; eps_hat from the clipped or (the authors')
  unclipped x0_hat, the step itself with the clipped one. Returns the last
  clipped x0_hat.
  """
  for i in range(num_steps):
    t, s = (num_steps - i) / num_steps, (num_steps - i - 1) / num_steps
    lg_t, _ = _ref_logsnr_and_derivative(np.float64(t), 'cosine', 0.1)
    lg_s, _ = _ref_logsnr_and_derivative(np.float64(s), 'cosine', 0.1)
    a_t, s_t = _ab(lg_t)
    a_s, s_s = _ab(lg_s)
    raw = x0_fn(z, t)
    x0 = np.clip(raw, -1, 1)
    eps = (z - a_t * (raw if ddim_eps == 'authors' else x0)) / s_t
    z = a_s * x0 + s_s * eps
  return x0


def test_ddim_few_steps_follows_float64_reference():
  """10-step DDIM is biased (docstring above); it is exactly that DDIM.

  Same initial noise as a float64 numpy DDIM: every sample whose reference
  x0_hat is not within 1e-3 of the threshold gets the same mask, so the
  mode frequencies are the discretised ODE's, not a fitted bound.
  """
  diffusion = dfn.DiffusionConfig()
  z_init = np.random.RandomState(16).randn(2000, 4, 4, 1)
  got = np.asarray(
    jax.jit(
      lambda z: dfn.sample_loop(
        _mixture_denoiser(diffusion),
        image=jnp.zeros((2000, 4, 4, 1)),
        z_init=z,
        rng=jax.random.key(0),
        diffusion=diffusion,
        sampler=dfn.SamplerConfig(name='ddim', num_steps=10),
      )
    )(jnp.asarray(z_init, jnp.float32))
  ).reshape(2000, 16)
  want = _ref_ddim_loop(_mixture_x0_float64, z_init.reshape(2000, 16), 10)
  clear = np.all(np.abs(want) > 1e-3, axis=-1)
  assert clear.mean() > 0.9
  np.testing.assert_array_equal(got[clear] > 0, want[clear] > 0)
  np.testing.assert_allclose(got, want, atol=1e-2)


def _toy_output(z, t, prediction):
  """A network output whose x0_hat leaves [-1, 1] at high noise."""
  return 1.5 * z - 0.5 * t + (0.3 if prediction == 'v' else -0.2)


@pytest.mark.parametrize('prediction', ['eps', 'v'])
def test_ddim_both_eps_forms_against_float64(prediction):
  rs = np.random.RandomState(17)
  z_init = rs.randn(3, 5, 5, 1)

  def x0_fn(z, t):
    lg, _ = _ref_logsnr_and_derivative(np.float64(t), 'cosine', 0.1)
    a, s = _ab(lg)
    out = _toy_output(z, t, prediction)
    return (z - s * out) / a if prediction == 'eps' else a * z - s * out

  diffusion = dfn.DiffusionConfig(prediction=prediction)

  def net(z, t, image):
    del image
    return _toy_output(z, t[:, None, None, None], prediction)

  results = {}
  for form in dfn.DDIM_EPS:
    sampler = dfn.SamplerConfig(name='ddim', num_steps=6, ddim_eps=form)
    got = np.asarray(
      dfn.sample_loop(
        net,
        image=jnp.zeros_like(z_init),
        z_init=z_init,
        rng=jax.random.key(0),
        diffusion=diffusion,
        sampler=sampler,
      )
    )
    want = _ref_ddim_loop(x0_fn, z_init, 6, ddim_eps=form)
    # float32 logSNR near the ends is off by up to 2e-3 (schedule test).
    np.testing.assert_allclose(got, want, atol=2e-3, err_msg=form)
    results[form] = want
    assert np.abs(x0_fn(z_init, 1.0)).max() > 2  # really leaves [-1, 1].
  assert np.abs(results['clipped'] - results['authors']).max() > 0.1


def test_sample_loop_compiles_once_for_any_step_count():
  traces = []

  def net(z, t, image):
    traces.append(z.shape)
    return jnp.tanh(0.8 * z + image - 0.1 * t[:, None, None, None])

  diffusion = dfn.DiffusionConfig()
  sampler = dfn.SamplerConfig(name='ddpm', num_steps=10)
  image = jnp.asarray(np.random.RandomState(18).rand(2, 6, 6, 1), jnp.float32)
  run = jax.jit(
    lambda im, n: dfn.sample(
      net,
      image=im,
      rng=jax.random.key(5),
      num_samples=3,
      diffusion=diffusion,
      sampler=sampler,
      return_soft=True,
      num_steps=n,
    )
  )
  for num_steps in (3, 7, 10):
    _, soft = run(image, num_steps)
    static = dfn.sample(
      net,
      image=image,
      rng=jax.random.key(5),
      num_samples=3,
      diffusion=diffusion,
      return_soft=True,
      sampler=dfn.SamplerConfig(name='ddpm', num_steps=num_steps),
    )[1]
    np.testing.assert_allclose(np.asarray(soft), np.asarray(static), atol=1e-6)
  eager_traces = 3
  assert len(traces) == 1 + eager_traces, traces
  with pytest.raises(ValueError, match='num_steps must be >= 1'):
    dfn.sample(
      net,
      image=image,
      rng=jax.random.key(5),
      num_samples=1,
      diffusion=diffusion,
      sampler=sampler,
      num_steps=0,
    )


def test_sample_loop_dispatches_through_samplers(monkeypatch):
  seen = []

  def fake(x, sampler):
    seen.append((x.z.shape, sampler.name))
    return x.z + 1.0

  monkeypatch.setitem(dfn.SAMPLERS, 'ddim', fake)
  out = dfn.sample_loop(
    lambda z, t, im: jnp.full_like(z, 3.0),
    image=jnp.zeros((2, 3, 3, 1)),
    z_init=jnp.zeros((2, 3, 3, 1)),
    rng=jax.random.key(0),
    diffusion=dfn.DiffusionConfig(),
    sampler=dfn.SamplerConfig(name='ddim', num_steps=4),
  )
  assert seen == [((2, 3, 3, 1), 'ddim')]  # traced once in the loop body
  np.testing.assert_array_equal(np.asarray(out), 1.0)  # tanh-free x: clipped


def test_deterministic_samplers_solve_the_same_ode():
  """Same noise: DDIM (100 steps) and DPM-Solver++(2M) (25) agree per sample."""
  diffusion = dfn.DiffusionConfig()
  fn = _mixture_denoiser(diffusion)

  def run(name, steps):
    return np.asarray(
      jax.jit(
        lambda rng: dfn.sample(
          fn,
          image=jnp.zeros((1, 4, 4, 1)),
          rng=rng,
          num_samples=500,
          diffusion=diffusion,
          sampler=dfn.SamplerConfig(name=name, num_steps=steps),
        )
      )(jax.random.key(4))
    )

  agree = (run('ddim', 100) == run('dpm_solver_pp_2m', 25)).all((-1, -2))
  assert agree.mean() > 0.99, agree.mean()


def test_sample_jit_matches_eager_and_dtypes():
  diffusion = dfn.DiffusionConfig(prediction='eps')
  image = jnp.asarray(np.random.RandomState(15).rand(2, 8, 8, 1), jnp.float32)

  def net(z, t, im):
    return 0.5 * z + 0.1 * im - 0.05 * t[:, None, None, None]

  def net_bf16(z, t, im):
    return net(z, t, im.astype(jnp.float32)).astype(jnp.bfloat16)

  for name in ('dpm_solver_pp_2m',):
    sampler = dfn.SamplerConfig(name=name, num_steps=5)
    kw = dict(
      rng=jax.random.key(1),
      num_samples=4,
      diffusion=diffusion,
      sampler=sampler,
      return_soft=True,
    )
    m_e, s_e = dfn.sample(net, image=image, **kw)
    m_j, s_j = jax.jit(lambda im, kw=kw: dfn.sample(net, image=im, **kw))(image)
    np.testing.assert_allclose(np.asarray(s_j), np.asarray(s_e), atol=1e-5)
    np.testing.assert_array_equal(np.asarray(m_j), np.asarray(s_j) > 0)
    np.testing.assert_array_equal(np.asarray(m_e), np.asarray(s_e) > 0)
    assert np.all(np.abs(np.asarray(s_e)) <= 1.0)  # clipped
    assert not np.allclose(np.asarray(s_e)[:, 0], np.asarray(s_e)[:, 1])
  m16, s16 = jax.jit(
    lambda im: dfn.sample(
      net_bf16,
      image=im,
      rng=jax.random.key(1),
      num_samples=4,
      diffusion=diffusion,
      sampler=dfn.SamplerConfig(name='ddim'),
      return_soft=True,
    )
  )(image.astype(jnp.bfloat16))
  assert m16.shape == (2, 4, 8, 8) and m16.dtype == jnp.bool_
  assert s16.dtype == jnp.float32


# --------------------------------------------------------------------------
# Parity with the authors' code (SPEC 2a).
# --------------------------------------------------------------------------


@pytest.fixture(scope='module')
def reference():
  if not os.path.exists(REFERENCE):
    pytest.skip(f'{REFERENCE} missing (shared/ must sit beside the checkout)')
  with np.load(REFERENCE) as f:
    return {k: f[k] for k in f.files if not k.startswith('weights/')}


def _nhwc(a):
  return np.transpose(a, (0, 2, 3, 1))


def test_parity_schedules(reference):
  t = reference['schedule/t']
  keys = [
    k for k in reference if k.startswith('schedule/') and k.endswith('/logsnr')
  ]
  assert len(keys) == 16
  for key in keys:
    _, name, b, _ = key.split('/')
    b = float(b[1:])
    with jax.enable_x64(True):
      lg = dfn.logsnr_schedule(jnp.asarray(t), schedule=name, input_scale=b)
      alpha, _ = dfn.alpha_sigma(lg)
    np.testing.assert_allclose(
      np.asarray(lg), reference[key], atol=1e-5, rtol=0, err_msg=key
    )
    np.testing.assert_allclose(
      np.asarray(alpha),
      reference[key.replace('logsnr', 'alpha')],
      atol=1e-7,
      err_msg=key,
    )
    lg32 = dfn.logsnr_schedule(
      jnp.asarray(t, jnp.float32), schedule=name, input_scale=b
    )
    np.testing.assert_allclose(
      np.asarray(lg32), reference[key], atol=2e-3, rtol=2e-6, err_msg=key
    )


def _loss_cases(reference):
  cases = sorted(
    {tuple(k.split('/')[1:4]) for k in reference if k.startswith('loss/')}
  )
  assert len(cases) == 3 * 6 * 2, cases
  return cases


def test_parity_noising_and_x_t_shared(reference):
  x0, eps = _nhwc(reference['inputs/x0']), _nhwc(reference['inputs/eps'])
  t = reference['inputs/t'].astype(np.float64)
  with jax.enable_x64(True):
    lg = dfn.logsnr_schedule(jnp.asarray(t), schedule='cosine', input_scale=0.1)
    z = np.asarray(
      dfn.diffuse(
        x=jnp.asarray(x0, jnp.float64),
        eps=jnp.asarray(eps, jnp.float64),
        logsnr=lg,
      )
    )
  for pred, weighting, mode in _loss_cases(reference):
    x_t = _nhwc(reference[f'loss/{pred}/{weighting}/{mode}/x_t'])
    np.testing.assert_allclose(z, x_t, atol=1e-6)
  z32 = dfn.diffuse(
    x=x0,
    eps=eps,
    logsnr=dfn.logsnr_schedule(
      t.astype(np.float32), schedule='cosine', input_scale=0.1
    ),
  )
  np.testing.assert_allclose(np.asarray(z32), x_t, atol=2e-5)


def test_parity_losses(reference):
  x0 = _nhwc(reference['inputs/x0'])
  eps = _nhwc(reference['inputs/eps'])
  t = reference['inputs/t']
  x_t = _nhwc(reference['loss/x/uniform/plain/x_t'])
  for pred, weighting, mode in _loss_cases(reference):
    prefix = f'loss/{pred}/{weighting}/{mode}/'
    output = _nhwc(reference[f'net/{pred}/output'])
    cfg = dfn.DiffusionConfig(
      schedule='cosine',
      input_scale=0.1,
      prediction=pred,
      weighting=weighting,
      decoupled=mode == 'decoupled',
    )
    want_x = _nhwc(reference[prefix + 'pred_x'])
    want_loss = reference[prefix + 'losses']
    # float64: x0 estimate from the recorded x_t and network output.
    with jax.enable_x64(True):
      t64 = jnp.asarray(t, jnp.float64)
      lg = dfn.config_logsnr(t64, cfg)
      x_hat = np.asarray(
        dfn.predict_x(
          z=jnp.asarray(x_t, jnp.float64),
          output=jnp.asarray(output),
          logsnr=lg,
          prediction=pred,
        )
      )
      w = np.asarray(dfn.loss_weight(t=t64, config=cfg))
    np.testing.assert_allclose(
      x_hat, want_x, rtol=1e-5, atol=1e-5, err_msg=prefix
    )
    np.testing.assert_allclose(
      w * np.mean((x_hat - x0) ** 2, (1, 2, 3)),
      want_loss,
      rtol=1e-5,
      err_msg=prefix,
    )
    # float32, end to end through loss() with the recorded noise.
    losses, aux = dfn.loss(
      lambda z, tt, im, o=output: jnp.asarray(o),
      x0=x0,
      image=_nhwc(reference['inputs/image']),
      rng=jax.random.key(0),
      config=cfg,
      t=t,
      eps=eps,
    )
    # eps-prediction divides by alpha_t (~0.1 at t = 0.93, b = 0.1).
    tol = 2e-3 if pred == 'eps' else 1e-4
    np.testing.assert_allclose(
      np.asarray(aux['x0_hat']), want_x, atol=tol, rtol=tol, err_msg=prefix
    )
    np.testing.assert_allclose(
      np.asarray(losses), want_loss, rtol=tol, err_msg=prefix
    )


def test_ddpm_noise_from_per_example_keys_is_each_example_sampled_alone():
  """sample_loop with [M] keys: example m equals a batch-of-one run with key m."""
  rng = np.random.default_rng(3)
  z_init = rng.normal(size=(3, 4, 4, 1)).astype(np.float32)
  image = rng.uniform(size=(3, 4, 4, 1)).astype(np.float32)
  keys = jax.random.split(jax.random.key(5), 3)
  cfg = dfn.DiffusionConfig()
  sampler = dfn.SamplerConfig(name='ddpm', num_steps=3)

  def denoise_fn(z, t, img):
    return jnp.tanh(0.7 * z + img - t[:, None, None, None])

  batched = dfn.sample_loop(
    denoise_fn,
    image=image,
    z_init=z_init,
    rng=keys,
    diffusion=cfg,
    sampler=sampler,
  )
  for m in range(3):
    alone = dfn.sample_loop(
      denoise_fn,
      image=image[m : m + 1],
      z_init=z_init[m : m + 1],
      rng=keys[m],
      diffusion=cfg,
      sampler=sampler,
    )
    np.testing.assert_allclose(batched[m], alone[0], rtol=1e-5, atol=1e-6)
  assert not np.allclose(batched[0], batched[1])
