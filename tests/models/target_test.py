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
                        row_wise_layers=1, noise={'hidden_1': NoiseSpec('relative', 0.5, train_only=True)},
                        rngs=nnx.Rngs(0))
  out = model.activations(IMAGES, train=True)
  plain = model.activations(IMAGES, train=False)
  assert out['first'].shape == (6, 28 * 8)
  np.testing.assert_allclose(out['first'], 1.5 * plain['first'], rtol=1e-6)


def _torch_style_rows(model, images, mean=0.0, std=1.0):
  """NumPy float64 re-derivation of the SG end-to-end network, NCHW as torch
  has it: every Linear acts on the last axis, view(-1, C·H·500) before the
  classifier (its Linear(28·28·500, 10) / Linear(1·28·500, 10))."""
  x = (np.asarray(images, np.float64) / 255.0 - mean) / std
  x = np.transpose(x, (0, 3, 1, 2))  # NCHW
  layers = (model.first, *model.hidden)
  h = x
  for k, layer in enumerate(layers):
    h = h @ np.asarray(layer.kernel[...], np.float64) + np.asarray(layer.bias[...], np.float64)
    if k < len(layers) - 1:
      h = np.maximum(h, 0.0)
  flat = h.reshape(len(h), -1)
  logits = flat @ np.asarray(model.classifier.kernel[...], np.float64) + np.asarray(model.classifier.bias[...])
  return flat, logits


def test_sg_end_to_end_layout_matches_the_sg_code_row_by_row():
  """sg_legacy end to end (fidelity #14): 500, 500, 28, 500 along the width
  axis, the last linear, the leak a C×H×500 map, flattened for the classifier."""
  model = TargetNetwork(image_shape=(28, 28, 1), num_classes=10, hidden_widths=(10, 10, 28, 10),
                        row_wise_layers=4, linear_layers=('hidden_4',), rngs=nnx.Rngs(0))
  assert model.first.kernel.shape == (28, 10) and model.hidden[1].kernel.shape == (10, 28)
  assert model.classifier.kernel.shape == (1 * 28 * 10, 10)
  assert model.leak_row_shape('last_hidden') == (1, 28, 10) and model.leak_row_shape('first') == (1, 28, 10)
  out = model.activations(IMAGES)
  leak, logits = _torch_style_rows(model, IMAGES)
  np.testing.assert_allclose(out['last_hidden'], leak, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(out['logits'], logits, rtol=1e-4, atol=1e-4)
  assert (np.asarray(out['last_hidden']) < 0).any()  # no ReLU on the leaked layer


def test_sg_split_layout_flattens_after_the_first_layer():
  model = TargetNetwork(image_shape=(28, 28, 1), num_classes=10, hidden_widths=(10, 7), row_wise_layers=1,
                        rngs=nnx.Rngs(0))
  assert model.hidden[0].kernel.shape == (28 * 10, 7) and model.classifier.kernel.shape == (7, 10)
  assert model.leak_row_shape('first') == (1, 28, 10) and model.leak_row_shape('last_hidden') is None
  with pytest.raises(ValueError, match=r'row_wise_layers must be in \[0, 2\]'):
    TargetNetwork(image_shape=(28, 28, 1), num_classes=10, hidden_widths=(10, 7), row_wise_layers=3,
                  rngs=nnx.Rngs(0))


def test_stochastic_at_inference():
  assert not _net().stochastic_at_inference()
  assert _net(bottleneck=4).stochastic_at_inference()
  assert _net(noise={'hidden_1': NoiseSpec('laplace', 0.5)}).stochastic_at_inference()
  assert not _net(noise={'hidden_1': NoiseSpec('laplace', 0.5, train_only=True)}).stochastic_at_inference()
  assert not _net(noise={'input': NoiseSpec('relative', 0.5)}).stochastic_at_inference()
