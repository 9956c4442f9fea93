"""Convolutional trunks: VGG16-BN's published size, the SG CNN's forward
against a float64 NumPy convolution, and what each dataset word builds."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import base
from mi_jax import data as mi_data
from mi_jax import defenses
from mi_jax.models import conv_trunk
from mi_jax.models.sparse_coding import SparseCodingLayer
from tests.helpers import load_config


def _param_count(module) -> int:
  return sum(int(np.size(x)) for x in jax.tree.leaves(nnx.state(module, nnx.Param)))


def test_vgg16_at_width_one_is_torchvisions_vgg16_bn_features():
  # torchvision.models.vgg16_bn().features: 14,723,136 parameters (13 convs,
  # 13 BatchNorm scale/bias pairs).
  front = conv_trunk.VGG16Front((64, 64, 3), width=1.0, rngs=nnx.Rngs(0))
  assert _param_count(front) == 14_723_136
  assert front.out_shape == (2, 2, 512)
  assert len(front.convs) == 13 and sum(front.pool_after) == 5
  out = front(jnp.zeros((2, 64, 64, 3)), train=False)
  assert out.shape == (2, 2, 2, 512)


def test_vgg16_width_scales_the_channels_and_refuses_sides_off_the_pooling_grid():
  front = conv_trunk.VGG16Front((32, 32, 3), width=1 / 16, rngs=nnx.Rngs(0))
  assert front.out_shape == (1, 1, 32)
  assert conv_trunk.vgg16_channels(1 / 16)[:3] == (4, 4, 'M')
  with pytest.raises(ValueError, match='multiples of 32'):
    conv_trunk.VGG16Front((28, 28, 1), rngs=nnx.Rngs(0))


def _conv_same_f64(x, kernel, bias):
  """'same' cross-correlation in float64 (NHWC, HWIO), the definition."""
  k = kernel.shape[0]
  pad = k // 2
  xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  n, h, w, _ = x.shape
  out = np.zeros((n, h, w, kernel.shape[-1]))
  for i in range(k):
    for j in range(k):
      out += np.einsum('nhwc,cf->nhwf', xp[:, i:i + h, j:j + w, :], kernel[i, j])
  return out + bias


def test_sg_cnn_is_two_relu_convolutions_against_float64():
  front = conv_trunk.SGConvFront((12, 10, 3), (5, 7), rngs=nnx.Rngs(1))
  x = np.random.default_rng(0).normal(size=(2, 12, 10, 3))
  h = np.maximum(_conv_same_f64(x, np.asarray(front.conv1.kernel[...], np.float64),
                                np.asarray(front.conv1.bias[...], np.float64)), 0)
  expected = np.maximum(_conv_same_f64(h, np.asarray(front.conv2.kernel[...], np.float64),
                                       np.asarray(front.conv2.bias[...], np.float64)), 0)
  got = front(jnp.asarray(x, jnp.float32))
  assert front.out_shape == (12, 10, 7)
  np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-4, atol=1e-4)
  assert not front.codes_are_fixed() and front.sparse_layers() == ()


def test_trunk_layers_count_convolutions_and_batch_norms():
  for trunk, expected in (('none', 0), ('sg_cnn', 2), ('vgg16', 26)):
    assert conv_trunk.parameterised_layers(trunk) == expected
  front = conv_trunk.VGG16Front((32, 32, 3), width=1 / 16, rngs=nnx.Rngs(0))
  layers = {'/'.join(str(getattr(k, 'key', k)) for k in path[:2])
            for path, _ in jax.tree_util.tree_leaves_with_path(nnx.state(front, nnx.Param))}
  assert len(layers) == 26
  with pytest.raises(ValueError, match=r"model.trunk must be one of \('none', 'sg_cnn', 'vgg16'\)"):
    conv_trunk.parameterised_layers('resnet')


def _config(dataset, defense='no-defense'):
  config = load_config(f'tiny,{dataset}')
  config.unlock()
  config.defense.name = defense
  return config


@pytest.mark.parametrize('dataset', tuple(base.NORMALIZATION))
def test_each_dataset_word_builds_its_family_with_the_datasets_head(dataset):
  config = _config(dataset)
  spec = mi_data.get_spec(dataset)
  model = defenses.build_target(config, spec.image_shape, defenses.num_classes_of(config), rngs=nnx.Rngs(0))
  assert model.classifier.out_features == spec.num_classes
  expected = {'none': type(None), 'sg_cnn': conv_trunk.SGConvFront, 'vgg16': conv_trunk.VGG16Front}
  assert isinstance(model.front, expected[config.model.trunk])
  logits = model(jnp.zeros((2, *spec.image_shape), jnp.uint8))
  assert logits.shape == (2, spec.num_classes)


def test_a_sparse_front_takes_the_place_of_the_trunks_convolutions():
  config = _config('cifar10', 'sparse-guard')
  assert config.model.trunk == 'sg_cnn'
  model = defenses.build_target(config, (32, 32, 3), 10, rngs=nnx.Rngs(0))
  assert not isinstance(model.front, conv_trunk.SGConvFront)
  assert all(isinstance(layer, SparseCodingLayer) for layer in model.front.sparse_layers())
  assert len(model.front.sparse_layers()) == 2
