"""The Flax port of advertorch's LeNet-5 against a float64 NCHW numpy forward."""

from __future__ import annotations

import numpy as np
import pytest

from mi_jax.models import lenet5


def _random_state_dict(seed=0):
  rng = np.random.default_rng(seed)
  return {name: rng.normal(scale=0.1, size=shape).astype(np.float32)
          for name, shape in lenet5._SHAPES.items()}


def _torch_like_forward(weights, images_nchw):
  """advertorch's forward written literally in torch's layout, float64."""
  w = {k: v.astype(np.float64) for k, v in weights.items()}

  def conv_same(x, kernel, bias):  # cross-correlation, padding 1, stride 1
    n, c, h, wd = x.shape
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    out = np.zeros((n, kernel.shape[0], h, wd))
    for dy in range(3):
      for dx in range(3):
        out += np.einsum('nchw,oc->nohw', padded[:, :, dy:dy + h, dx:dx + wd], kernel[:, :, dy, dx])
    return out + bias[None, :, None, None]

  def pool(x):
    n, c, h, wd = x.shape
    return x.reshape(n, c, h // 2, 2, wd // 2, 2).max(axis=(3, 5))

  relu = lambda x: np.maximum(x, 0)
  x = pool(relu(conv_same(images_nchw, w['conv1.weight'], w['conv1.bias'])))
  x = pool(relu(conv_same(x, w['conv2.weight'], w['conv2.bias'])))
  x = x.reshape(len(x), -1)  # torch's .view: (c, h, w) order
  features = relu(x @ w['linear1.weight'].T + w['linear1.bias'])
  return features, features @ w['linear2.weight'].T + w['linear2.bias']


def test_port_matches_torch_layout_forward():
  weights = _random_state_dict()
  model = lenet5.lenet5_from_weights(weights)
  images = np.random.default_rng(1).integers(0, 256, (3, 28, 28, 1)).astype(np.uint8)
  want_features, want_logits = _torch_like_forward(weights, images.transpose(0, 3, 1, 2) / 255.0)
  np.testing.assert_allclose(model.features(images), want_features, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(model(images), want_logits, rtol=1e-4, atol=1e-4)
  # Inputs are [0, 1] without mean/std normalisation (advertorch's ToTensor only).
  np.testing.assert_allclose(model(images / np.float32(255.0)), want_logits, rtol=1e-4, atol=1e-4)


def test_rejects_wrong_weights():
  weights = _random_state_dict()
  del weights['conv2.bias']
  with pytest.raises(ValueError, match='conv2.bias'):
    lenet5.lenet5_from_weights(weights)
  weights = _random_state_dict()
  weights['linear1.weight'] = weights['linear1.weight'][:, :100]
  with pytest.raises(ValueError, match='linear1.weight'):
    lenet5.lenet5_from_weights(weights)


def _cached_weights():
  from mi_jax.weights import WeightsUnavailableError, asset_path
  try:
    return asset_path(lenet5.ASSET, download=False)
  except WeightsUnavailableError as error:
    pytest.skip(f'advertorch LeNet-5 weights not in the cache: {str(error).splitlines()[0]}')


@pytest.mark.real_data
def test_pretrained_weights_classify_real_mnist():
  path = _cached_weights()
  from mi_jax import data as mi_data
  try:
    images, labels = mi_data.load('mnist', 'test')
  except Exception as error:  # noqa: BLE001 - any failure means "no prepared data here"
    pytest.skip(f'MNIST not prepared: {error}')
  model = lenet5.load_lenet5(path)
  logits = np.asarray(model(images[:1000]))
  # advertorch reports 98.9% on the full test split; 1000 images leave slack.
  assert np.mean(np.argmax(logits, 1) == labels[:1000]) > 0.97
