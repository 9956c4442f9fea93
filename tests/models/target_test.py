"""TargetNetwork hooks: named activations, noise hooks, tanh, bottleneck."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mi_jax.models.target import NoiseSpec, TargetNetwork, add_noise
from tests.helpers import synthetic_digits

IMAGES = jnp.asarray(synthetic_digits(6)[0])


def _net(**kw):
  return TargetNetwork(image_shape=(28, 28, 1), num_classes=10, hidden_widths=(16, 12, 8),
                       normalization=(0.1307, 0.3081), rngs=nnx.Rngs(0), **kw)


def test_without_hooks_the_forward_is_the_plain_mlp():
  model = _net()
  x = (IMAGES.astype(jnp.float32) / 255.0 - 0.1307) / 0.3081
  h1 = jax.nn.relu(model.first(x.reshape(6, -1)))
  h2 = jax.nn.relu(model.hidden[0](h1))
  h3 = jax.nn.relu(model.hidden[1](h2))
  out = model.activations(IMAGES, train=True, key=jax.random.key(0))
  np.testing.assert_array_equal(out['input'], x)
  for name, expected in (('hidden_1', h1), ('first', h1), ('hidden_2', h2), ('hidden_3', h3),
                         ('last_hidden', h3), ('logits', model.classifier(h3))):
    np.testing.assert_array_equal(out[name], expected)
  assert 'front' not in out and 'mid_z' not in out


def test_stop_at_any_name_and_bad_names():
  model = _net()
  assert set(model.activations(IMAGES, stop_at='input')) == {'input'}
  assert set(model.activations(IMAGES, stop_at='hidden_2')) == {'input', 'hidden_1', 'first', 'hidden_2'}
  assert 'logits' not in model.activations(IMAGES, stop_at='last_hidden')
  with pytest.raises(ValueError, match='stop_at must be one of'):
    model.activations(IMAGES, stop_at='hidden_7')
  with pytest.raises(ValueError, match='leak must be one of'):
    model.leak(IMAGES, 'hidden_2')
  with pytest.raises(ValueError, match='noise layer must be one of'):
    _net(noise={'logits': NoiseSpec('gaussian', 1.0)})
  with pytest.raises(ValueError, match='noise kind must be one of'):
    NoiseSpec('uniform', 1.0)


def test_noise_hook_is_part_of_the_named_output_and_of_what_follows():
  clean, noisy = _net(), _net(noise={'hidden_2': NoiseSpec('gaussian', 1.0)})
  key = jax.random.key(4)
  a, b = clean.activations(IMAGES), noisy.activations(IMAGES, key=key)
  np.testing.assert_array_equal(a['hidden_1'], b['hidden_1'])
  assert not np.allclose(a['hidden_2'], b['hidden_2'])
  np.testing.assert_allclose(b['hidden_3'], jax.nn.relu(noisy.hidden[1](b['hidden_2'])), rtol=1e-6)
  np.testing.assert_array_equal(noisy.activations(IMAGES)['logits'], a['logits'])  # no key: off


def test_two_noise_layers_draw_independent_noise():
  model = _net(noise={'hidden_1': NoiseSpec('gaussian', 1.0), 'hidden_2': NoiseSpec('gaussian', 1.0)})
  key = jax.random.key(0)
  n1 = jax.random.normal(jax.random.fold_in(key, 1), (6, 16))
  n2 = jax.random.normal(jax.random.fold_in(key, 2), (6, 12))
  assert not np.allclose(n1[:, :12], n2)
  out, clean = model.activations(IMAGES, key=key), model.activations(IMAGES)
  np.testing.assert_allclose(out['hidden_1'] - clean['hidden_1'], n1, rtol=1e-5, atol=1e-6)


def test_add_noise_modes():
  h = jnp.ones((3, 4))
  key = jax.random.key(0)
  np.testing.assert_array_equal(add_noise(h, NoiseSpec('relative', 0.5, train_only=True), train=False, key=key), h)
  np.testing.assert_array_equal(add_noise(h, NoiseSpec('relative', 0.5), train=False, key=None), 1.5 * h)
  np.testing.assert_array_equal(add_noise(h, NoiseSpec('laplace', 0.5), train=True, key=None), h)
  assert not np.allclose(add_noise(h, NoiseSpec('laplace', 0.5), train=False, key=key), h)


def test_tanh_layers_and_bottleneck():
  model = _net(tanh_layers=('hidden_1',), bottleneck=5)
  out = model.activations(IMAGES)
  np.testing.assert_allclose(out['hidden_1'], jnp.tanh(model.first(out['input'].reshape(6, -1))), rtol=1e-6)
  assert out['mid_mu'].shape == (6, 5) and out['logits'].shape == (6, 10)
  np.testing.assert_array_equal(out['last_hidden'], out['mid_mu'])
  with pytest.raises(ValueError, match='tanh_layers must be among'):
    _net(tanh_layers=('input',))


def test_width_axis_linear_keeps_its_shape_with_hooks():
  model = TargetNetwork(image_shape=(28, 28, 1), num_classes=10, hidden_widths=(8, 6),
                        width_axis_linear=True, noise={'hidden_1': NoiseSpec('relative', 0.5, train_only=True)},
                        rngs=nnx.Rngs(0))
  out = model.activations(IMAGES, train=True)
  plain = model.activations(IMAGES, train=False)
  assert out['first'].shape == (6, 28 * 8)
  np.testing.assert_allclose(out['first'], 1.5 * plain['first'], rtol=1e-6)
