"""MID: the variational bottleneck head and its KL term."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mi_jax import defenses
from mi_jax.defenses import mid
from tests.defenses import build, defense_config, train_steps
from tests.helpers import synthetic_digits

IMAGES = jnp.asarray(synthetic_digits(8)[0])


def test_kl_equals_closed_form_and_monte_carlo():
  rng = np.random.default_rng(0)
  mu = rng.normal(size=(4, 6))
  std = np.exp(rng.normal(scale=0.3, size=(4, 6)))
  closed = 0.5 * np.sum(mu ** 2 + std ** 2 - 1.0 - 2.0 * np.log(std), axis=-1)
  got = np.asarray(mid.gaussian_kl(jnp.asarray(mu), jnp.asarray(std)))
  np.testing.assert_allclose(got, closed, rtol=1e-5)
  # Monte Carlo: E_q[log q(z) − log p(z)] with z ~ N(μ, σ²).
  z = mu + std * rng.normal(size=(200_000, 4, 6))
  log_q = -0.5 * ((z - mu) / std) ** 2 - np.log(std)
  log_p = -0.5 * z ** 2
  estimate = np.mean(np.sum(log_q - log_p, axis=-1), axis=0)
  np.testing.assert_allclose(got, estimate, rtol=0.02, atol=0.02)


def test_bottleneck_head_statistics_and_sampling():
  config = defense_config('mid', setting='end_to_end')
  model = build(config)
  k = config.model.hidden_width // 2
  out = model.activations(IMAGES)  # no key: z = μ
  n = config.model.hidden_layers['end_to_end']
  stats = model.mid(out[f'hidden_{n}'])
  np.testing.assert_allclose(out['mid_mu'], stats[:, :k], rtol=1e-6)
  np.testing.assert_allclose(out['mid_std'], jax.nn.softplus(stats[:, k:] - 5.0), rtol=1e-6)
  np.testing.assert_allclose(out['mid_log_std'], np.log(np.asarray(out['mid_std'])), rtol=1e-5)
  np.testing.assert_array_equal(out['mid_z'], out['mid_mu'])
  np.testing.assert_array_equal(out['last_hidden'], out['mid_z'])  # the classifier's input leaks
  assert out['logits'].shape == (8, 10)
  a = model.activations(IMAGES, key=jax.random.key(0))
  b = model.activations(IMAGES, key=jax.random.key(1))
  eps = (a['mid_z'] - a['mid_mu']) / a['mid_std']
  assert abs(float(jnp.std(eps)) - 1.0) < 0.15
  assert not np.allclose(a['last_hidden'], b['last_hidden'])
  np.testing.assert_array_equal(model.leak(IMAGES, 'last_hidden'), model.leak(IMAGES, 'last_hidden'))


def test_log_std_stays_finite_far_in_the_tail():
  config = defense_config('mid')
  config.defense.mid.std_shift = 200.0  # σ underflows to 0 in float32
  out = build(config).activations(IMAGES)
  assert np.all(np.isfinite(np.asarray(out['mid_log_std'])))


def test_mid_train_step_reports_kl():
  config = defense_config('mid', setting='split')
  _, _, history = train_steps(config, n_steps=2)
  for h in history:
    assert np.isfinite(h['loss']) and h['mid_kl'] > 0
    assert h['loss'] == pytest.approx(h['cross_entropy'] + 3e-3 * h['mid_kl'], rel=1e-5)


def test_mid_config_and_validation():
  config = defense_config('mid')
  config.defense.mid.bottleneck = 7
  assert build(config).classifier.in_features == 7
  config.defense.mid.beta = -1.0
  with pytest.raises(ValueError, match='defense.mid.beta must be a finite number >= 0'):
    defenses.validate(config)
  config.defense.mid.beta = 1e-2
  config.defense.mid.bottleneck = 0
  with pytest.raises(ValueError, match='defense.mid.bottleneck must be None or an integer >= 1'):
    defenses.validate(config)
