"""MobileNetV2 port: architecture, torch name mapping, pretrained regression."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mi_jax.models import mobilenet_v2 as mnv2
from mi_jax.weights import WeightsUnavailableError, asset_path

TINY_SETTING = ((1, 8, 1, 1), (2, 16, 2, 2))


def tiny(seed=0):
  return mnv2.MobileNetV2(num_classes=7, width_mult=0.25, setting=TINY_SETTING, last_channel=16,
                          rngs=nnx.Rngs(seed))


def fixed_input():
  yy, xx = np.mgrid[:64, :64]
  return np.stack([(4 * xx) % 256, (4 * yy) % 256, (2 * (xx + yy)) % 256], -1).astype(np.uint8)[None]


def test_tiny_network_shapes_and_named_activations():
  model = tiny()
  x = jnp.asarray(np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8))
  acts = model.activations(x)
  assert acts['features_0'].shape == (2, 16, 16, 8)       # stride-2 stem
  assert acts['features_3'].shape == (2, 8, 8, 8)  # stride-2 stage (16 × 0.25 → 8)
  assert acts['features_4'].shape == (2, 8, 8, 16)  # last_channel
  assert acts['pooled'].shape == acts['last_hidden'].shape == (2, 16)
  assert acts['logits'].shape == (2, 7)
  assert model.features[3].residual and not model.features[2].residual
  np.testing.assert_array_equal(model.leak(x, 'first'), acts['features_0'])
  with pytest.raises(ValueError, match='stop_at must be one of'):
    model.activations(x, stop_at='nope')


def test_make_divisible_matches_torchvision():
  assert [mnv2.make_divisible(v) for v in (32 * 0.25, 16 * 0.35, 1280, 24 * 0.75, 91)] == [8, 8, 1280, 24, 88]


def test_full_architecture_matches_the_torchvision_state_dict_names():
  model = nnx.eval_shape(lambda: mnv2.MobileNetV2(rngs=nnx.Rngs(0)))
  names = mnv2.torch_name_map(model)
  # torchvision mobilenet_v2: 52 conv+BN pairs (4 BN tensors each) + 52
  # conv weights + classifier weight and bias = 314 tensors (besides
  # num_batches_tracked).
  assert len(names) == 52 * 5 + 2
  _, variables = nnx.split(model)
  assert set(names.values()) == set(dict(nnx.to_flat_state(variables)))
  assert names['features.17.conv.2.weight'] == ('features', 17, 'project', 'conv', 'kernel')
  assert names['features.1.conv.1.weight'] == ('features', 1, 'project', 'conv', 'kernel')
  assert names['features.18.1.running_var'] == ('features', 18, 'bn', 'var')


def test_load_state_dict_transposes_torch_layouts():
  source = tiny(1)
  _, variables = nnx.split(source)
  flat = {path: np.asarray(v.get_value()) for path, v in nnx.to_flat_state(variables)}
  tensors = {}
  for torch_name, path in mnv2.torch_name_map(source).items():
    value = flat[path]
    if path[-1] == 'kernel':
      value = np.transpose(value, (3, 2, 0, 1)) if value.ndim == 4 else value.T
    tensors[torch_name] = value
  tensors['features.0.1.num_batches_tracked'] = np.array(5)
  loaded = mnv2.load_torch_state_dict(nnx.eval_shape(lambda: tiny(2)), tensors)
  x = jnp.asarray(np.random.default_rng(1).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8))
  np.testing.assert_array_equal(loaded(x), source(x))
  with pytest.raises(ValueError, match='unexpected'):
    mnv2.load_torch_state_dict(tiny(2), {**tensors, 'features.99.weight': np.zeros(1)})
  with pytest.raises(ValueError, match='does not fit'):
    mnv2.load_torch_state_dict(tiny(2), {**tensors, 'classifier.1.bias': np.zeros(3)})


def test_pretrained_logits_regression():
  try:
    path = asset_path('mobilenet_v2_imagenet', download=False)
  except WeightsUnavailableError as error:
    pytest.skip(f'MobileNetV2 ImageNet weights not cached offline '
                f'(python -m mi_jax.weights.fetch mobilenet_v2_imagenet): {error}')
  model = mnv2.load_mobilenet_v2(path)
  logits = np.asarray(nnx.jit(lambda m, x: m(x))(model, fixed_input()))
  assert logits.shape == (1, 1000)
  # Recorded with this port, whose logits match a torch forward of the same
  # file to 2e-5 on foolbox's ImageNet samples (scripts/verify_mobilenet_v2.py).
  idx = [0, 1, 100, 500, 999, 851]
  expected = [-1.71939, 3.10823, 2.02333, -0.88299, 0.71654, 8.71684]
  np.testing.assert_allclose(logits[0, idx], expected, atol=2e-3)
  assert int(logits.argmax()) == 851


@pytest.mark.slow
def test_pretrained_backbone_frozen_fine_tuning_keeps_imagenet_statistics():
  """Setting (b): ImageNet MobileNetV2, everything but a new 5-way head frozen."""
  import optax

  from mi_jax.analysis.fisher import model_layer_order
  from mi_jax.defenses import transfer
  from mi_jax.train.state import init_train_state, split_model

  try:
    path = asset_path('mobilenet_v2_imagenet', download=False)
  except WeightsUnavailableError as error:
    pytest.skip(f'MobileNetV2 ImageNet weights not cached offline: {error}')
  model = mnv2.replace_head(mnv2.load_mobilenet_v2(path), 5, rngs=nnx.Rngs(0))
  g, p, s = split_model(model)
  x = np.random.default_rng(0).integers(0, 256, (4, 64, 64, 3), dtype=np.uint8)
  order = model_layer_order(g, p, s, x)
  assert len(order) == 52 * 2 + 1 and order[-1] == 'classifier'
  mask = transfer.freeze_mask(p, depth=len(order) - 1, order=order)
  frozen = transfer.frozen_layers(mask, order)
  assert len(transfer.freeze_batch_norm(model, frozen)) == 52
  theta_c, theta_t = transfer.count_parameters(p, mask)
  assert (theta_c, theta_t) == (1280 * 5 + 5, 2_223_872 + 1280 * 5 + 5)
  tx = transfer.transfer_optimizer(optax.adam(1e-2), mask)
  graphdef, state = init_train_state(model, tx)
  step = jax.jit(transfer.make_transfer_step(
      graphdef, tx, params_mask=mask, stats_mask=transfer.statistics_mask(state['model_state'], frozen)))
  before = jax.tree.map(np.asarray, state)
  state, _ = step(state, {'image': jnp.asarray(x), 'label': jnp.arange(4) % 5}, jax.random.key(0))
  jax.tree.map(np.testing.assert_array_equal, before['model_state'], jax.tree.map(np.asarray, state['model_state']))
  jax.tree.map(np.testing.assert_array_equal, before['params']['features'], jax.tree.map(np.asarray, state['params']['features']))
  assert not np.array_equal(before['params']['classifier']['kernel'], state['params']['classifier']['kernel'])
