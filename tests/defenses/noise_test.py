"""Gaussian and Laplace noise defenses: where the noise sits, its scale, when
it is on (key / train mode), and the SG code's legacy variant."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mi_jax import defenses
from mi_jax.defenses import noise
from tests.defenses import build, defense_config, train_steps
from tests.helpers import synthetic_digits

IMAGES = jnp.asarray(synthetic_digits(16)[0])


def _clean_twin(config):
  """The same network (same init) with the noise hooks off."""
  twin = defense_config('no-defense', setting=config.setting, protocol=config.protocol)
  return build(twin)


@pytest.mark.parametrize('setting, layer', [('split', 'first'), ('end_to_end', 'last_hidden')])
def test_gaussian_noise_sits_on_the_leak_and_has_scale_sigma(setting, layer):
  config = defense_config('gaussian-noise', setting=setting)
  model, clean = build(config), _clean_twin(config)
  reference = clean.leak(IMAGES, layer)
  np.testing.assert_array_equal(model.leak(IMAGES, layer), reference)  # key None: noise-free
  noisy = model.leak(IMAGES, layer, key=jax.random.key(0))
  assert float(jnp.std(noisy - reference)) == pytest.approx(0.5, rel=0.1)
  assert abs(float(jnp.mean(noisy - reference))) < 0.05
  other = model.leak(IMAGES, layer, key=jax.random.key(1))
  assert not np.allclose(noisy, other)


def test_gaussian_noise_legacy_is_relative_and_train_only():
  for setting in ('split', 'end_to_end'):
    config = defense_config('gaussian-noise', setting=setting, protocol='sg_legacy')
    model, clean = build(config), _clean_twin(config)
    # Eval mode (what the SG attacker queries): no noise even with a key.
    np.testing.assert_array_equal(model.leak(IMAGES, 'first', key=jax.random.key(0)),
                                  clean.leak(IMAGES, 'first'))
    train = model.activations(IMAGES, train=True, key=None)
    base = clean.activations(IMAGES, train=True)
    if setting == 'split':  # on the input and on the first layer
      np.testing.assert_allclose(train['input'], 1.5 * base['input'], rtol=1e-6)
    else:  # after the first and the last hidden layer
      np.testing.assert_allclose(train['first'], 1.5 * base['first'], rtol=1e-5)
    # Deterministic: two keys give the same training forward.
    again = model.activations(IMAGES, train=True, key=jax.random.key(3))
    np.testing.assert_allclose(again['logits'], train['logits'], rtol=1e-6)


def test_legacy_end_to_end_relative_noise_on_both_layers():
  config = defense_config('gaussian-noise', setting='end_to_end', protocol='sg_legacy')
  model = build(config)
  out = model.activations(IMAGES, train=True)
  first = out['first']
  # The SG end-to-end network is row-wise (fidelity #14): hidden_2 from the
  # noisy first layer, unaltered; hidden_L = 1.5·(W h + b), its last layer linear.
  rows = first.reshape(len(first), 1, 28, -1)
  h = rows
  for k, layer in enumerate(model.hidden):
    h = layer(h) if k == len(model.hidden) - 1 else jax.nn.relu(layer(h))
  np.testing.assert_allclose(out['last_hidden'], 1.5 * h.reshape(len(h), -1), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out['hidden_2'], jax.nn.relu(model.hidden[0](rows)).reshape(len(rows), -1),
                             rtol=1e-6)


def test_laplace_noise_tanh_bound_scale_and_off_without_key():
  config = defense_config('laplace-noise', setting='split')
  config.model.hidden_width = 512  # enough samples for the scale estimate
  model = build(config)
  clean = model.leak(IMAGES, 'first')
  assert float(jnp.max(jnp.abs(clean))) <= 1.0  # tanh-bounded features
  assert float(jnp.min(clean)) < 0.0  # tanh, not ReLU
  np.testing.assert_array_equal(model.leak(IMAGES, 'first'), clean)
  noise_draw = model.leak(IMAGES, 'first', key=jax.random.key(0)) - clean
  # Laplace(0, b): E|ε| = b, Var ε = 2b².
  assert float(jnp.mean(jnp.abs(noise_draw))) == pytest.approx(0.5, rel=0.05)
  assert float(jnp.var(noise_draw)) == pytest.approx(2 * 0.25, rel=0.1)
  assert not np.allclose(model.leak(IMAGES, 'first', key=jax.random.key(1)) - clean, noise_draw)


def test_laplace_noise_end_to_end_and_legacy():
  config = defense_config('laplace-noise', setting='end_to_end')
  assert noise.laplace_hooks(config)['tanh_layers'] == ('hidden_4',)
  legacy = defense_config('laplace-noise', setting='split', protocol='sg_legacy')
  model = build(legacy)
  assert float(jnp.min(model.leak(IMAGES, 'first'))) >= 0.0  # ReLU kept
  np.testing.assert_array_equal(model.leak(IMAGES, 'first', key=jax.random.key(0)), model.leak(IMAGES, 'first'))
  train = model.activations(IMAGES, train=True, key=jax.random.key(0))['first']
  assert not np.allclose(train, model.leak(IMAGES, 'first'))


def test_noise_layer_field_and_validation():
  config = defense_config('gaussian-noise', setting='end_to_end')
  config.defense.gaussian_noise.layer = 'hidden_2'
  assert list(noise.gaussian_hooks(config)['noise']) == ['hidden_2']
  defenses.validate(config)
  config.defense.gaussian_noise.layer = 'hidden_9'
  with pytest.raises(ValueError, match='defense.gaussian_noise.layer must be one of'):
    defenses.validate(config)
  config.defense.gaussian_noise.layer = 'leak'
  config.defense.gaussian_noise.sigma = -1.0
  with pytest.raises(ValueError, match='defense.gaussian_noise.sigma must be a finite number >= 0'):
    defenses.validate(config)
  config = defense_config('laplace-noise')
  config.defense.laplace_noise.bound = 'clip'
  with pytest.raises(ValueError, match='defense.laplace_noise.bound must be one of'):
    defenses.validate(config)


@pytest.mark.parametrize('name', ['gaussian-noise', 'laplace-noise'])
def test_noise_defense_trains_and_its_leak_is_random_only_with_a_key(name):
  config = defense_config(name, setting='split')
  graphdef, state, history = train_steps(config, n_steps=2)
  assert all(np.isfinite(h['loss']) for h in history)
  from mi_jax.train.state import merge_model
  model = merge_model(graphdef, state['params'], state['model_state'])
  a = model.leak(IMAGES, 'first', key=jax.random.key(0))
  b = model.leak(IMAGES, 'first', key=jax.random.key(1))
  assert not np.allclose(a, b)
  np.testing.assert_array_equal(model.leak(IMAGES, 'first'), model.leak(IMAGES, 'first'))
