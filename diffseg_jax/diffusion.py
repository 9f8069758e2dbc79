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

"""Continuous-time variance-preserving diffusion for binary segmentation.

The whole design space of "Diffusion Based Ambiguous Image Segmentation"
(SPEC section 2) as pure JAX functions: noise schedules with input scaling and
the affine endpoint map to logSNR in [logsnr_min, logsnr_max], forward
noising, conversions between x / eps / v parameterisations, loss weightings,
stratified time sampling, the training loss and the samplers (DDPM ancestral,
DDIM and DPM-Solver++(2M)).

Conventions:
  * t in [0, 1]; t = 0 is clean data (logSNR = logsnr_max), t = 1 is noise.
  * z_t = alpha_t * x + sigma_t * eps, alpha^2 = sigmoid(logSNR),
    sigma^2 = sigmoid(-logSNR); v = alpha * eps - sigma * x.
  * Per-example quantities (t, logSNR, weights) have shape [B]; images are
    NHWC. Every conversion broadcasts a [B] logSNR over the trailing axes.
  * All diffusion maths runs in float32 (or float64 when x64 is enabled and
    the inputs are float64). Network outputs of any dtype (e.g. bfloat16) are
    cast to float32 before use.

Numerical notes (float32): alpha and sigma are each computed from a sigmoid,
never as sqrt(1 - other^2), so both stay accurate at logSNR = +-20
(the smaller one is about 4.5e-5 there). x0 from eps divides by alpha and eps
from x divides by sigma: this amplifies float32 rounding of z by at most
exp(10) ~ 2.2e4 (absolute error ~1e-3 at logSNR = -20), and the results are
finite. The training loss keeps such estimates unclipped, as the authors'
code does (parity, SPEC 2a); the samplers clip x0_hat to [-1, 1] (SamplerConfig
.clip_x0), which bounds everything they feed forward.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array
DenoiseFn = Callable[[Array, Array, Array], Array]


# --------------------------------------------------------------------------
# Noise schedules.
# --------------------------------------------------------------------------


def _cosine(t):
  return jnp.cos(0.5 * jnp.pi * t) ** 2, jnp.sin(0.5 * jnp.pi * t) ** 2


def _linear(t):
  log_expm1 = jnp.log(jnp.expm1(1e-4 + 10.0 * t**2))
  return jax.nn.sigmoid(-log_expm1), jax.nn.sigmoid(log_expm1)


def _linear_simple(t):
  return 1.0 - t, t


def _parabola(t):
  return (1.0 - t**2) ** 2, t**2 * (2.0 - t**2)


# Base schedules: name -> f(t) = (gamma(t), 1 - gamma(t)), both computed
# directly so neither loses precision where the other is close to 1.
SCHEDULES: dict[str, Callable[[Array], tuple[Array, Array]]] = {
  'cosine': _cosine,
  'linear': _linear,
  'linear_simple': _linear_simple,
  'parabola': _parabola,
}


def _as_float(t) -> Array:
  t = jnp.asarray(t)
  if not jnp.issubdtype(t.dtype, jnp.floating):
    t = t.astype(jnp.float32)
  return t


def _schedule_fn(schedule: str):
  try:
    return SCHEDULES[schedule]
  except KeyError:
    raise ValueError(
      f'Unknown noise schedule {schedule!r}; choose one of '
      f'{sorted(SCHEDULES)} (DiffusionConfig.schedule).'
    ) from None


def scaled_gamma(t, *, schedule: str = 'cosine', input_scale: float = 1.0):
  """Input-scaled gamma_b(t) and 1 - gamma_b(t) (SPEC 2), before endpoints.

  gamma_b = b^2 gamma / ((b^2 - 1) gamma + 1), i.e. SNR_b = b^2 SNR.

  Args:
    t: times, any shape, float.
    schedule: a key of SCHEDULES.
    input_scale: b > 0.

  Returns:
    (gamma_b, 1 - gamma_b), each shaped like t.
  """
  if not input_scale > 0:
    raise ValueError(f'input_scale must be > 0, got {input_scale}.')
  t = _as_float(t)
  gamma, one_minus_gamma = _schedule_fn(schedule)(t)
  b2 = jnp.asarray(input_scale, t.dtype) ** 2
  denom = b2 * gamma + one_minus_gamma
  return b2 * gamma / denom, one_minus_gamma / denom


def logsnr_schedule(
  t,
  *,
  schedule: str = 'cosine',
  input_scale: float = 1.0,
  logsnr_min: float = -20.0,
  logsnr_max: float = 20.0,
):
  """logSNR(t) of the endpoint-mapped, input-scaled schedule (SPEC 2).

  gamma'(t) = s(min) + (s(max) - s(min)) r(t), s = sigmoid,
  r(t) = (gamma_b(t) - gamma_b(1)) / (gamma_b(0) - gamma_b(1)).
  logSNR = log gamma' - log(1 - gamma') is evaluated in a factored form,
  max + log(r + c1 (1-r)) - log(r + c2 (1-r)) with c1 = s(min)/s(max),
  c2 = s(-min)/s(-max) (for r > 1/2; the mirror form around `min` otherwise),
  so that logSNR(0) = logsnr_max and logSNR(1) = logsnr_min exactly and no
  1 - gamma' cancellation occurs. Both forms are finite everywhere, so
  gradients are too.

  Args:
    t: times in [0, 1], any shape. Computed in t's float dtype.
    schedule: a key of SCHEDULES.
    input_scale: b.
    logsnr_min: logSNR at t = 1.
    logsnr_max: logSNR at t = 0.

  Returns:
    logSNR shaped like t.
  """
  t = _as_float(t)
  dtype = t.dtype
  kw = dict(schedule=schedule, input_scale=input_scale)
  g, h = scaled_gamma(t, **kw)
  g0, h0 = scaled_gamma(jnp.zeros((), dtype), **kw)
  g1, h1 = scaled_gamma(jnp.ones((), dtype), **kw)
  r = (g - g1) / (g0 - g1)
  q = (h - h0) / (h1 - h0)  # 1 - r, without cancellation near t = 0.
  lo = jnp.asarray(logsnr_min, dtype)
  hi = jnp.asarray(logsnr_max, dtype)
  ls = jax.nn.log_sigmoid
  c1 = jnp.exp(ls(lo) - ls(hi))
  c2 = jnp.exp(ls(-lo) - ls(-hi))
  near_start = hi + jnp.log(r + c1 * q) - jnp.log(r + c2 * q)
  near_end = lo + jnp.log(q + r / c1) - jnp.log(q + r / c2)
  return jnp.where(r > 0.5, near_start, near_end)


def dlogsnr_dt(
  t,
  *,
  schedule: str = 'cosine',
  input_scale: float = 1.0,
  logsnr_min: float = -20.0,
  logsnr_max: float = 20.0,
):
  """d logSNR / dt <= 0, elementwise, shaped like t.

  Forward-mode derivative of logsnr_schedule. Where the exact derivative is
  0 (cosine at t = 0 and 1), float rounding of sin/cos can give tiny values of
  either sign amplified by 1/(s(l) s(-l)) ~ 5e8; the schedule is monotone, so
  the result is clamped to <= 0 (a decoupled loss weight never turns negative).
  """
  t = _as_float(t)
  fn = lambda tt: logsnr_schedule(  # pylint: disable=g-long-lambda
    tt,
    schedule=schedule,
    input_scale=input_scale,
    logsnr_min=logsnr_min,
    logsnr_max=logsnr_max,
  )
  return jnp.minimum(jax.jvp(fn, (t,), (jnp.ones_like(t),))[1], 0.0)


def alpha_sigma(logsnr):
  """(alpha, sigma) with alpha^2 = sigmoid(logSNR), sigma^2 = sigmoid(-logSNR)."""
  return (jnp.sqrt(jax.nn.sigmoid(logsnr)), jnp.sqrt(jax.nn.sigmoid(-logsnr)))


# --------------------------------------------------------------------------
# Forward process and parameterisation conversions.
# --------------------------------------------------------------------------


def _expand(a, like):
  """Reshapes per-example a [B] (or scalar) to broadcast against like."""
  a = jnp.asarray(a)
  return a.reshape(a.shape + (1,) * (jnp.ndim(like) - a.ndim))


def _alpha_sigma_like(logsnr, like):
  return alpha_sigma(_expand(logsnr, like))


def diffuse(*, x, eps, logsnr):
  """z = alpha x + sigma eps. x, eps [B, ...]; logsnr [B] or scalar."""
  alpha, sigma = _alpha_sigma_like(logsnr, x)
  return alpha * x + sigma * eps


def predict_x_from_eps(*, z, eps, logsnr):
  alpha, sigma = _alpha_sigma_like(logsnr, z)
  return (z - sigma * eps) / alpha


def predict_eps_from_x(*, z, x, logsnr):
  alpha, sigma = _alpha_sigma_like(logsnr, z)
  return (z - alpha * x) / sigma


def predict_x_from_v(*, z, v, logsnr):
  alpha, sigma = _alpha_sigma_like(logsnr, z)
  return alpha * z - sigma * v


def predict_v_from_x_and_eps(*, x, eps, logsnr):
  alpha, sigma = _alpha_sigma_like(logsnr, x)
  return alpha * eps - sigma * x


def predict_x_from_logit(*, logit):
  """x0 estimate 2 sigmoid(logit) - 1 = tanh(logit / 2) of a foreground logit."""
  return jnp.tanh(0.5 * logit)


# Prediction types: name -> f(z=, output=, logsnr=) -> x0 estimate. 'logit'
# (not in the paper) is x-prediction whose output is the foreground logit
# log(p / (1 - p)), x0_hat = 2p - 1; it is what the 'bce' loss needs.
PREDICTIONS: dict[str, Callable[..., Array]] = {
  'x': lambda *, z, output, logsnr: output,
  'logit': lambda *, z, output, logsnr: predict_x_from_logit(logit=output),
  'eps': lambda *, z, output, logsnr: predict_x_from_eps(
    z=z, eps=output, logsnr=logsnr
  ),
  'v': lambda *, z, output, logsnr: predict_x_from_v(
    z=z, v=output, logsnr=logsnr
  ),
}


def predict_x(*, z, output, logsnr, prediction: str):
  """x0 estimate from a raw network output of the given prediction type.

  The output is cast to z's dtype (float32), so bfloat16 networks are fine.
  """
  try:
    fn = PREDICTIONS[prediction]
  except KeyError:
    raise ValueError(
      f'Unknown prediction type {prediction!r}; choose one of '
      f'{sorted(PREDICTIONS)} (DiffusionConfig.prediction).'
    ) from None
  return fn(z=z, output=jnp.asarray(output).astype(z.dtype), logsnr=logsnr)


# --------------------------------------------------------------------------
# Loss weightings (x-space MSE weights as functions of logSNR).
# --------------------------------------------------------------------------

# name -> w(logsnr, **params). 'sigmoid' takes k: the config string
# 'sigmoid_<k>' (e.g. 'sigmoid_2', 'sigmoid_-1.5') selects it; see
# get_weighting.
WEIGHTINGS: dict[str, Callable[..., Array]] = {
  'uniform': lambda logsnr: jnp.ones_like(logsnr),
  'snr': lambda logsnr: jnp.exp(logsnr),
  'snr_plus1': lambda logsnr: jnp.exp(logsnr) + 1.0,
  'snr_trunc': lambda logsnr: jnp.maximum(jnp.exp(logsnr), 1.0),
  'sigmoid': lambda logsnr, k: jax.nn.sigmoid(logsnr - k),
}


def get_weighting(name: str) -> Callable[[Array], Array]:
  """Weighting function logsnr -> w from a case-insensitive config string."""
  key = name.lower()
  if key in WEIGHTINGS and key != 'sigmoid':
    return WEIGHTINGS[key]
  if key.startswith('sigmoid_'):
    try:
      k = float(key[len('sigmoid_') :])
    except ValueError:
      k = None
    if k is not None and math.isfinite(k):
      return lambda logsnr: WEIGHTINGS['sigmoid'](logsnr, k)
  raise ValueError(
    f'Unknown loss weighting {name!r}; choose uniform, snr, snr_plus1, '
    "snr_trunc or sigmoid_<k> such as 'sigmoid_2' "
    '(DiffusionConfig.weighting).'
  )


# --------------------------------------------------------------------------
# Per-pixel losses between the network's estimate and x0 in {-1, +1}.
# --------------------------------------------------------------------------


def mse_loss(*, x0_hat, x0, output):
  """(x0_hat - x0)^2, the paper's loss (SPEC 2)."""
  del output
  return jnp.square(x0_hat - x0)


def bce_loss(*, x0_hat, x0, output):
  """Binary cross-entropy of the foreground logit `output` against x0.

  With y = (x0 + 1) / 2 and p = sigmoid(output):
  -(y log p + (1 - y) log(1 - p)) = y softplus(-output) + (1 - y) softplus(output),
  a stable form that is softplus(-x0 * output) for x0 in {-1, +1} and also takes
  soft targets x0 in [-1, 1] (target='annotation_posterior'). Like the MSE it is
  minimised by the posterior mean x0_hat = E[x0 | z], so the samplers are
  unchanged; unlike the MSE through a saturated tanh its gradient in the logit,
  p - y, does not vanish when the network is confidently wrong.
  """
  del x0_hat
  y = 0.5 * (x0 + 1.0)
  return y * jax.nn.softplus(-output) + (1.0 - y) * jax.nn.softplus(output)


# name -> f(x0_hat=, x0=, output=) -> per-pixel loss; the loss's weight w(t)
# multiplies its mean over pixels.
LOSSES: dict[str, Callable[..., Array]] = {
  'mse': mse_loss,
  'bce': bce_loss,
}
# Losses that read the raw output as a logit need this prediction type.
_LOSS_PREDICTION = {'bce': 'logit'}


TARGETS = ('annotation', 'annotation_posterior')


def annotation_posterior_mean(*, z, annotations, logsnr):
  """E[x0 | z] when x0 is one of an example's M annotations, drawn uniformly, and z = alpha x0 + sigma eps.

  With annotations in {-1, +1}, ||a_m||^2 is the same for every m, so
  log p(z | x0 = a_m) = alpha <z, a_m> / sigma^2 + const and the weights are a softmax over m.

  Args:
    z: [B, H, W, C].
    annotations: [B, M, H, W, C] in {-1, +1}.
    logsnr: [B].

  Returns:
    [B, H, W, C] float32 in [-1, 1].
  """
  z = jnp.asarray(z, jnp.float32)
  annotations = jnp.asarray(annotations, jnp.float32)
  alpha, sigma = alpha_sigma(jnp.asarray(logsnr, jnp.float32))
  # Elementwise product and sum, not a dot: TPU matmuls default to bfloat16 passes.
  inner = jnp.sum(
    z[:, None] * annotations, axis=tuple(range(2, annotations.ndim))
  )
  weights = jax.nn.softmax(
    inner * (alpha / jnp.square(sigma))[:, None], axis=-1
  )
  return jnp.sum(_expand(weights, annotations) * annotations, axis=1)


# --------------------------------------------------------------------------
# Configuration and training loss.
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DiffusionConfig:
  """Diffusion process and training objective (SPEC 2).

  Attributes:
    schedule: base schedule, a key of SCHEDULES.
    input_scale: b; SNR is multiplied by b^2 before the endpoint map.
    logsnr_min: logSNR at t = 1.
    logsnr_max: logSNR at t = 0.
    prediction: network output type, 'x', 'eps' or 'v'.
    weighting: 'uniform', 'snr', 'snr_plus1', 'snr_trunc' or 'sigmoid_<k>'.
    decoupled: multiply the weight by -d logSNR / dt.
    conditioning: what the network receives as time: 't' (SPEC default) or
      'logsnr'.
    loss: per-pixel loss, 'mse' (the paper) or 'bce' (sigmoid cross-entropy
      on the foreground logit; needs prediction='logit').
    self_condition: self-conditioning on the previous x0 estimate (Chen,
      Zhang & Hinton 2022, "Analog Bits"; not in the paper). denoise_fn then
      takes a fourth argument, `self_cond` [B,H,W,1]: the x0 estimate clipped
      to [-1, 1] (zeros when there is none). Training: with probability
      self_condition_prob per example, a first network pass with zeros gives
      an estimate (gradient stopped) for the second pass; otherwise zeros.
      Sampling: the previous step's estimate (zeros at the first step).
    self_condition_prob: see self_condition.
    target: what x0_hat is regressed on. 'annotation' (the paper): the
      annotation x0 that was noised. 'annotation_posterior' (not in the
      paper): E[x0 | z, the example's annotations], the average of the
      example's annotations weighted by how likely each is to have produced z
      (`annotation_posterior_mean`). Its expectation given z and the image is
      the same posterior mean E[x0 | z, image] (tower rule; the drawn
      annotation is uniform over exchangeable draws), so the loss has the same
      minimiser with less variance (Rao-Blackwell; the per-image form of Xu
      et al. 2023, "Stable Target Field"). It matters where z does not yet
      tell the annotations apart, i.e. at high noise.
  """

  schedule: str = 'cosine'
  input_scale: float = 0.1
  logsnr_min: float = -20.0
  logsnr_max: float = 20.0
  prediction: str = 'x'
  weighting: str = 'snr_plus1'
  decoupled: bool = False
  conditioning: str = 't'
  loss: str = 'mse'
  self_condition: bool = False
  self_condition_prob: float = 0.5
  target: str = 'annotation'

  def __post_init__(self):
    _schedule_fn(self.schedule)
    get_weighting(self.weighting)
    if self.prediction not in PREDICTIONS:
      raise ValueError(
        f'DiffusionConfig.prediction={self.prediction!r}; '
        f'choose one of {sorted(PREDICTIONS)}.'
      )
    if self.conditioning not in ('t', 'logsnr'):
      raise ValueError(
        f'DiffusionConfig.conditioning={self.conditioning!r};'
        " choose 't' or 'logsnr'."
      )
    if self.loss not in LOSSES:
      raise ValueError(
        f'DiffusionConfig.loss={self.loss!r}; choose one of {sorted(LOSSES)}.'
      )
    needs = _LOSS_PREDICTION.get(self.loss)
    if needs is not None and self.prediction != needs:
      raise ValueError(
        f'DiffusionConfig.loss={self.loss!r} reads the network output as a '
        f'logit: set prediction={needs!r} (got {self.prediction!r}).'
      )
    if self.target not in TARGETS:
      raise ValueError(
        f'DiffusionConfig.target={self.target!r}; choose one of {list(TARGETS)}.'
      )
    if not 0.0 <= self.self_condition_prob <= 1.0:
      raise ValueError(
        'DiffusionConfig.self_condition_prob must be in [0, 1], got '
        f'{self.self_condition_prob}.'
      )
    if not self.logsnr_min < self.logsnr_max:
      raise ValueError(
        'DiffusionConfig needs logsnr_min < logsnr_max, got '
        f'{self.logsnr_min} and {self.logsnr_max}.'
      )


def _schedule_kwargs(config: DiffusionConfig) -> dict[str, Any]:
  return dict(
    schedule=config.schedule,
    input_scale=config.input_scale,
    logsnr_min=config.logsnr_min,
    logsnr_max=config.logsnr_max,
  )


def config_logsnr(t, config: DiffusionConfig):
  """logSNR(t) for a DiffusionConfig."""
  return logsnr_schedule(t, **_schedule_kwargs(config))


def loss_weight(*, t, config: DiffusionConfig):
  """x-space loss weight w(t) [B] (times -dlogSNR/dt if decoupled)."""
  kw = _schedule_kwargs(config)
  w = get_weighting(config.weighting)(logsnr_schedule(t, **kw))
  if config.decoupled:
    w = w * -dlogsnr_dt(t, **kw)
  return w


def stratified_time(rng, *, batch_size: int, dtype=jnp.float32):
  """Low-discrepancy uniform times t_i = (u + i) / B, u ~ U[0, 1): [B]."""
  u = jax.random.uniform(rng, (), dtype=dtype)
  return (u + jnp.arange(batch_size, dtype=dtype)) / batch_size


def _network_time(*, t, logsnr, config: DiffusionConfig):
  return logsnr if config.conditioning == 'logsnr' else t


def _call(denoise_fn, z, time, image, *, self_cond, config: DiffusionConfig):
  """The network call; self_cond is passed only with config.self_condition."""
  if config.self_condition:
    return denoise_fn(z, time, image, jnp.clip(self_cond, -1.0, 1.0))
  return denoise_fn(z, time, image)


def estimate_x0(
  denoise_fn: DenoiseFn, *, z, t, image, config: DiffusionConfig, self_cond=None
):
  """The network's unclipped x0 estimate from z at times t [B], as the samplers see it.

  self_cond is the self-conditioning input (config.self_condition only; zeros when None).
  """
  logsnr = config_logsnr(t, config)
  if self_cond is None and config.self_condition:
    self_cond = jnp.zeros_like(z)
  output = _call(
    denoise_fn,
    z,
    _network_time(t=t, logsnr=logsnr, config=config),
    image,
    self_cond=self_cond,
    config=config,
  )
  return predict_x(
    z=z, output=output, logsnr=logsnr, prediction=config.prediction
  )


def loss(
  denoise_fn: DenoiseFn,
  *,
  x0,
  image,
  rng,
  config: DiffusionConfig,
  t=None,
  eps=None,
  annotations=None,
):
  """Per-example weighted x-space MSE (SPEC 2).

  Args:
    denoise_fn: (z [B,H,W,1], t [B], image [B,H,W,C]) -> raw network output
      [B,H,W,1] of type config.prediction (any float dtype); with
      config.self_condition it takes a fourth argument self_cond [B,H,W,1].
    x0: target masks in {-1, +1}, [B,H,W,1].
    image: conditioning image [B,H,W,C], passed through unchanged.
    rng: PRNG key; split into a time key and a noise key (and, with
      self-conditioning, folded in for the per-example coin).
    config: DiffusionConfig.
    t: optional times [B]; stratified sampling when None.
    eps: optional noise like x0; standard normal when None.
    annotations: [B, M, H, W, 1] in {-1, +1}, all annotations of each example,
      x0 drawn uniformly among them; needed by config.target
      'annotation_posterior', unused otherwise.

  Returns:
    losses: float32 [B], w(t) * mean over H, W, C of the per-pixel loss
      (config.loss; (x0_hat - x0)^2 for 'mse').
    aux: dict with x0_hat [B,H,W,1] float32, z, t [B], logsnr [B], target
      (what x0_hat is regressed on), mse [B], weight [B] and self_cond (the network's self-conditioning
      input, or None).
  """
  x0 = jnp.asarray(x0, jnp.float32)
  batch = x0.shape[0]
  t_rng, eps_rng = jax.random.split(rng)
  if t is None:
    t = stratified_time(t_rng, batch_size=batch)
  t = jnp.asarray(t, jnp.float32)
  if t.shape != (batch,):
    raise ValueError(f'loss: t must have shape [{batch}], got {t.shape}.')
  if eps is None:
    eps = jax.random.normal(eps_rng, x0.shape, jnp.float32)
  logsnr = config_logsnr(t, config)
  z = diffuse(x=x0, eps=jnp.asarray(eps, jnp.float32), logsnr=logsnr)
  time = _network_time(t=t, logsnr=logsnr, config=config)
  self_cond = None
  if config.self_condition:
    zeros = jnp.zeros_like(z)
    first = _call(denoise_fn, z, time, image, self_cond=zeros, config=config)
    estimate = jax.lax.stop_gradient(
      jnp.clip(
        predict_x(
          z=z, output=first, logsnr=logsnr, prediction=config.prediction
        ),
        -1.0,
        1.0,
      )
    )
    use = jax.random.bernoulli(
      jax.random.fold_in(rng, 2), config.self_condition_prob, (batch,)
    )
    self_cond = jnp.where(_expand(use, z), estimate, zeros)
  output = _call(denoise_fn, z, time, image, self_cond=self_cond, config=config)
  if output.shape != x0.shape:
    raise ValueError(
      f'loss: denoise_fn returned shape {output.shape}, '
      f'expected {x0.shape} (one output channel).'
    )
  x0_hat = predict_x(
    z=z, output=output, logsnr=logsnr, prediction=config.prediction
  )
  target = x0
  if config.target == 'annotation_posterior':
    if annotations is None or annotations.ndim != x0.ndim + 1:
      raise ValueError(
        "loss: config.target='annotation_posterior' needs annotations "
        f'[B, M, H, W, 1], got {None if annotations is None else annotations.shape}.'
      )
    target = annotation_posterior_mean(
      z=z, annotations=annotations, logsnr=logsnr
    )
  axes = tuple(range(1, x0.ndim))
  mse = jnp.mean(jnp.square(x0_hat - target), axis=axes)
  per_example = mse
  if config.loss != 'mse':
    pixel = LOSSES[config.loss](
      x0_hat=x0_hat, x0=target, output=jnp.asarray(output).astype(jnp.float32)
    )
    per_example = jnp.mean(pixel, axis=axes)
  weight = loss_weight(t=t, config=config)
  aux = dict(
    x0_hat=x0_hat,
    z=z,
    t=t,
    logsnr=logsnr,
    target=target,
    mse=mse,
    weight=weight,
    self_cond=self_cond,
  )
  return weight * per_example, aux


# --------------------------------------------------------------------------
# Samplers.
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
  """Sampler (SPEC 2). Steps run from t = 1 to t = 0 on the grid i / N.

  Attributes:
    name: a key of SAMPLERS: 'ddpm' (ancestral), 'ddim' (deterministic) or
      'dpm_solver_pp_2m'.
    num_steps: N >= 1 network evaluations; the last one returns x0_hat.
    variance: DDPM variance, 'large' (1 - SNR_t/SNR_s) sigmoid(-logSNR_t) or
      'small' (1 - SNR_t/SNR_s) sigmoid(-logSNR_s).
    clip_x0: clip x0_hat to [-1, 1] at every step.
    ddim_eps: DDIM's eps estimate, 'clipped' (from the clipped x0_hat, as
      guided-diffusion and Salimans & Ho) or 'authors' (from the unclipped
      x0_hat, as the authors' code; compare with their numbers in this form).
      The two differ only for eps and v prediction with clip_x0.
  """

  name: str = 'ddpm'
  num_steps: int = 10
  variance: str = 'large'
  clip_x0: bool = True
  ddim_eps: str = 'clipped'

  def __post_init__(self):
    if self.name not in SAMPLERS:
      raise ValueError(
        f'SamplerConfig.name={self.name!r}; choose one of {sorted(SAMPLERS)}.'
      )
    if self.variance not in ('large', 'small'):
      raise ValueError(
        f"SamplerConfig.variance={self.variance!r}; choose 'large' or 'small'."
      )
    if self.ddim_eps not in DDIM_EPS:
      raise ValueError(
        f'SamplerConfig.ddim_eps={self.ddim_eps!r}; choose one of {DDIM_EPS}.'
      )
    if int(self.num_steps) < 1:
      raise ValueError(
        f'SamplerConfig.num_steps must be >= 1, got {self.num_steps}.'
      )


DDIM_EPS = ('clipped', 'authors')


def ddpm_step(*, z_t, x0_hat, logsnr_t, logsnr_s, noise, variance='large'):
  """One ancestral step z_t -> z_s ~ q(z_s | z_t, x = x0_hat), s < t.

  Args:
    z_t: [B, ...]; x0_hat like z_t; noise: standard normal like z_t.
    logsnr_t, logsnr_s: [B] or scalars with logsnr_s > logsnr_t.
    variance: 'large' or 'small' (see SamplerConfig).

  Returns:
    z_s like z_t.
  """
  logsnr_t = _expand(logsnr_t, z_t)
  logsnr_s = _expand(logsnr_s, z_t)
  alpha_t, _ = alpha_sigma(logsnr_t)
  alpha_s, _ = alpha_sigma(logsnr_s)
  ratio = jnp.exp(logsnr_t - logsnr_s)  # SNR_t / SNR_s.
  one_minus_ratio = -jnp.expm1(logsnr_t - logsnr_s)
  mean = ratio * (alpha_s / alpha_t) * z_t + one_minus_ratio * alpha_s * x0_hat
  logsnr_var = logsnr_t if variance == 'large' else logsnr_s
  var = one_minus_ratio * jax.nn.sigmoid(-logsnr_var)
  return mean + jnp.sqrt(var) * noise


def ddim_step(*, z_t, x0_hat, logsnr_t, logsnr_s, x0_for_eps=None):
  """Deterministic DDIM step: z_s = alpha_s x0_hat + sigma_s eps_hat.

  eps_hat = (z_t - alpha_t x0_for_eps) / sigma_t, where x0_for_eps defaults
  to x0_hat; the authors' form passes the unclipped estimate (SPEC 2).
  """
  if x0_for_eps is None:
    x0_for_eps = x0_hat
  eps_hat = predict_eps_from_x(z=z_t, x=x0_for_eps, logsnr=logsnr_t)
  return diffuse(x=x0_hat, eps=eps_hat, logsnr=logsnr_s)


def dpm_solver_pp_2m_step(
  *, z_t, x0_hat, x0_prev, logsnr_t, logsnr_s, logsnr_prev, first
):
  """DPM-Solver++(2M) step (data prediction, multistep) in lambda = logSNR/2.

  z_s = (sigma_s/sigma_t) z_t + alpha_s (1 - exp(-h)) D, h = lambda_s -
  lambda_t, D = (1 + 1/(2r)) x0_hat - x0_prev/(2r), r = (lambda_t -
  lambda_prev)/h; D = x0_hat on the first step (DPM-Solver++(1) = DDIM).

  Args:
    z_t, x0_hat, x0_prev: [B, ...]; x0_prev is the previous step's x0_hat.
    logsnr_t, logsnr_s, logsnr_prev: [B] or scalars.
    first: bool scalar, True on the first step.

  Returns:
    z_s like z_t.
  """
  lam_t = _expand(logsnr_t, z_t) / 2
  lam_s = _expand(logsnr_s, z_t) / 2
  lam_prev = _expand(logsnr_prev, z_t) / 2
  _, sigma_t = alpha_sigma(2 * lam_t)
  alpha_s, sigma_s = alpha_sigma(2 * lam_s)
  h = lam_s - lam_t
  half_inv_r = jnp.where(first, 0.0, h / (2 * (lam_t - lam_prev)))
  d = (1 + half_inv_r) * x0_hat - half_inv_r * x0_prev
  return (sigma_s / sigma_t) * z_t - alpha_s * jnp.expm1(-h) * d


class StepInputs(NamedTuple):
  """What sample_loop hands a SAMPLERS entry at step `index` (t -> s < t).

  z [M, ...] is z_t; x0_hat is the network's x0 estimate (clipped if
  SamplerConfig.clip_x0), x0_unclipped the same before clipping, x0_prev the
  previous step's x0_hat (zeros on the first step); logsnr_* are [M]; rng is
  the sampler's key (DDPM folds in the index).
  """

  z: Array
  x0_hat: Array
  x0_unclipped: Array
  x0_prev: Array
  logsnr_t: Array
  logsnr_s: Array
  logsnr_prev: Array
  index: Array
  rng: Array


def _step_noise(rng, index, z) -> Array:
  """N(0, I) like z from fold_in(rng, index); [M] typed keys draw each example's row from its own key."""
  if jnp.ndim(rng) == 1 and jax.dtypes.issubdtype(
    rng.dtype, jax.dtypes.prng_key
  ):
    return jax.vmap(
      lambda k: jax.random.normal(
        jax.random.fold_in(k, index), z.shape[1:], z.dtype
      )
    )(rng)
  return jax.random.normal(jax.random.fold_in(rng, index), z.shape, z.dtype)


def _ddpm(x: StepInputs, sampler: SamplerConfig) -> Array:
  noise = _step_noise(x.rng, x.index, x.z)
  return ddpm_step(
    z_t=x.z,
    x0_hat=x.x0_hat,
    logsnr_t=x.logsnr_t,
    logsnr_s=x.logsnr_s,
    noise=noise,
    variance=sampler.variance,
  )


def _ddim(x: StepInputs, sampler: SamplerConfig) -> Array:
  x0_for_eps = x.x0_unclipped if sampler.ddim_eps == 'authors' else x.x0_hat
  return ddim_step(
    z_t=x.z,
    x0_hat=x.x0_hat,
    logsnr_t=x.logsnr_t,
    logsnr_s=x.logsnr_s,
    x0_for_eps=x0_for_eps,
  )


def _dpm_solver_pp_2m(x: StepInputs, sampler: SamplerConfig) -> Array:
  del sampler
  return dpm_solver_pp_2m_step(
    z_t=x.z,
    x0_hat=x.x0_hat,
    x0_prev=x.x0_prev,
    logsnr_t=x.logsnr_t,
    logsnr_s=x.logsnr_s,
    logsnr_prev=x.logsnr_prev,
    first=x.index == 0,
  )


# Samplers: name -> (StepInputs, SamplerConfig) -> z_s; sample_loop calls the
# entry of SamplerConfig.name once per step.
SAMPLERS: dict[str, Callable[[StepInputs, SamplerConfig], Array]] = {
  'ddpm': _ddpm,
  'ddim': _ddim,
  'dpm_solver_pp_2m': _dpm_solver_pp_2m,
}


def _check_num_steps(num_steps) -> None:
  try:
    concrete = int(num_steps)
  except (
    jax.errors.ConcretizationTypeError,
    jax.errors.TracerIntegerConversionError,
  ):
    return  # traced: the caller guarantees >= 1.
  if concrete < 1:
    raise ValueError(f'sample_loop: num_steps must be >= 1, got {concrete}.')


def sample_loop(
  denoise_fn: DenoiseFn,
  *,
  image,
  z_init,
  rng,
  diffusion: DiffusionConfig,
  sampler: SamplerConfig,
  num_steps=None,
):
  """Runs the sampler from z_init at t = 1; returns the final x0_hat.

  One lax.fori_loop over the steps whose bound, the step count, is an int32
  value of the trace: a jitted caller that passes `num_steps` as an argument
  compiles once for every step count. With num_steps=None the count is
  sampler.num_steps, a constant of the trace (SamplerConfig is static, so a
  caller that changes it compiles again).

  Args:
    denoise_fn: (z [M,H,W,1], time [M], image [M,H,W,C]) -> output; with
      diffusion.self_condition a fourth argument, the previous step's x0_hat
      clipped to [-1, 1] (zeros at the first step).
    image: [M,H,W,C] conditioning images.
    z_init: [M,H,W,1] float32 starting noise.
    rng: PRNG key for DDPM noise, or [M] typed keys (`jax.random.key`), one per
      example: then each example's noise depends on its own key only, as if it
      were sampled alone.
    diffusion: DiffusionConfig.
    sampler: SamplerConfig; its name picks the SAMPLERS entry.
    num_steps: optional step count N >= 1 (int or int scalar array, may be
      traced) overriding sampler.num_steps.

  Returns:
    x0_hat [M,H,W,1] float32 from the last step (clipped if clip_x0).
  """
  if num_steps is None:
    num_steps = sampler.num_steps
  _check_num_steps(num_steps)
  num_steps = jnp.asarray(num_steps, jnp.int32)
  step = SAMPLERS[sampler.name]
  m = z_init.shape[0]
  z_init = jnp.asarray(z_init, jnp.float32)

  def body(i, carry):
    z, x0_prev, logsnr_prev = carry
    t = jnp.full((m,), (num_steps - i) / num_steps, jnp.float32)
    s = jnp.full((m,), (num_steps - i - 1) / num_steps, jnp.float32)
    logsnr_t = config_logsnr(t, diffusion)
    logsnr_s = config_logsnr(s, diffusion)
    x0_unclipped = estimate_x0(
      denoise_fn, z=z, t=t, image=image, config=diffusion, self_cond=x0_prev
    )
    x0_hat = x0_unclipped
    if sampler.clip_x0:
      x0_hat = jnp.clip(x0_hat, -1.0, 1.0)
    z = step(
      StepInputs(
        z=z,
        x0_hat=x0_hat,
        x0_unclipped=x0_unclipped,
        x0_prev=x0_prev,
        logsnr_t=logsnr_t,
        logsnr_s=logsnr_s,
        logsnr_prev=logsnr_prev,
        index=i,
        rng=rng,
      ),
      sampler,
    )
    return z, x0_hat, logsnr_t

  init = (z_init, jnp.zeros_like(z_init), jnp.zeros((m,), jnp.float32))
  return jax.lax.fori_loop(0, num_steps, body, init)[1]


def sample(
  denoise_fn: DenoiseFn,
  *,
  image,
  rng,
  num_samples: int,
  diffusion: DiffusionConfig,
  sampler: SamplerConfig,
  return_soft: bool = False,
  num_steps=None,
):
  """Draws num_samples masks per image with one batched network call a step.

  Args:
    denoise_fn: (z [B*N,H,W,1], time [B*N], image [B*N,H,W,C]) -> raw
      network output [B*N,H,W,1] (any float dtype).
    image: [B,H,W,C]; repeated N times inside (example b's samples are rows
      b*N .. b*N+N-1 of the network batch).
    rng: PRNG key.
    num_samples: N.
    diffusion: DiffusionConfig.
    sampler: SamplerConfig.
    return_soft: also return the final x0_hat.
    num_steps: optional (possibly traced) step count, see sample_loop.

  Returns:
    masks: bool [B, N, H, W], x0_hat > 0; with return_soft, a tuple
    (masks, x0_hat float32 [B, N, H, W]).
  """
  image = jnp.asarray(image)
  if image.ndim != 4:
    raise ValueError(f'sample: image must be [B,H,W,C], got {image.shape}.')
  b, hgt, wid, _ = image.shape
  images = jnp.repeat(image, num_samples, axis=0)
  init_rng, loop_rng = jax.random.split(rng)
  z_init = jax.random.normal(
    init_rng, (b * num_samples, hgt, wid, 1), jnp.float32
  )
  x0_hat = sample_loop(
    denoise_fn,
    image=images,
    z_init=z_init,
    rng=loop_rng,
    diffusion=diffusion,
    sampler=sampler,
    num_steps=num_steps,
  )
  soft = x0_hat.reshape(b, num_samples, hgt, wid)
  masks = soft > 0
  return (masks, soft) if return_soft else masks
