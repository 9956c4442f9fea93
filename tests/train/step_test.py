"""The target train step: same numbers on 1 and 8 devices; dictionary rules."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mi_jax.defenses import build_target
from mi_jax.data import to_global_array
from mi_jax.train.state import init_train_state, make_optimizer
from mi_jax.defenses.sparse_coding import HEBBIAN_POST_STEP
from mi_jax.train.step import jit_step, make_classifier_step
from tests.helpers import load_config, mesh_of, synthetic_digits


def _setup(protocol='corrected', defense='sparse-guard'):
  config = load_config('tiny')
  with config.unlocked():
    config.protocol = protocol
    config.defense.name = defense
  model = build_target(config, (28, 28, 1), 10, rngs=nnx.Rngs(0))
  tx = make_optimizer(config.train)
  graphdef, state = init_train_state(model, tx)
  return config, graphdef, state, tx


def _run_steps(n_devices, n_steps=2):
  config, graphdef, state, tx = _setup()
  mesh = mesh_of(n_devices)
  state = jax.device_put(state, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
  step = jit_step(make_classifier_step(graphdef, tx, post_step=HEBBIAN_POST_STEP), state, mesh)
  images, labels = synthetic_digits(16 * n_steps)
  losses = []
  with jax.set_mesh(mesh):
    for i in range(n_steps):
      rows = slice(16 * i, 16 * (i + 1))
      batch = to_global_array({'image': images[rows], 'label': labels[rows]}, mesh)
      state, measurements = step(state, batch, jax.random.key(0))
      losses.append(float(measurements['loss']))
  return losses, jax.device_get(state)


def test_one_and_eight_devices_agree():
  losses_1, state_1 = _run_steps(1)
  losses_8, state_8 = _run_steps(8)
  np.testing.assert_allclose(losses_8, losses_1, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(state_1), jax.tree.leaves(state_8)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-5)


def test_hebbian_layer_learns_and_frozen_layer_does_not():
  _, graphdef, before, tx = _setup()
  _, after = _run_steps(1, n_steps=1)
  front_before, front_after = before['model_state']['front'], after['model_state']['front']
  d1 = (front_before['scl1']['dictionary'], front_after['scl1']['dictionary'])
  d2 = (front_before['scl2']['dictionary'], front_after['scl2']['dictionary'])
  np.testing.assert_array_equal(np.asarray(d1[0]), np.asarray(d1[1]))  # first SCL frozen
  assert np.abs(np.asarray(d2[1]) - np.asarray(d2[0])).max() > 1e-6  # second SCL Hebbian
  np.testing.assert_allclose(np.sqrt((np.asarray(d2[1]) ** 2).sum(axis=(0, 1, 2))), 1.0, atol=1e-5)
  assert not np.allclose(np.asarray(front_after['bn1']['mean']), np.asarray(front_before['bn1']['mean']))
  assert 'hebbian_batch' not in str(jax.tree_util.tree_structure(after))  # popped, not stored


def test_legacy_protocol_keeps_dictionaries_frozen_and_normalises_inputs():
  config, graphdef, state, tx = _setup(protocol='sg_legacy')
  model = nnx.merge(graphdef, state['params'], state['model_state'])
  assert model.front.scl1.normalize_input and model.front.scl2.normalize_input
  assert model.front.scl2.dictionary_update == 'frozen'
  assert model.row_wise_layers == (1 if config.setting == 'split' else 4)
  mesh = mesh_of(1)
  step = jit_step(make_classifier_step(graphdef, tx, post_step=HEBBIAN_POST_STEP), state, mesh)
  images, labels = synthetic_digits(16)
  before = np.asarray(state['model_state']['front']['scl2']['dictionary'])
  with jax.set_mesh(mesh):
    new_state, _ = step(jax.tree.map(jnp.copy, state),
                        to_global_array({'image': images, 'label': labels}, mesh),
                        jax.random.key(0))
  np.testing.assert_array_equal(np.asarray(new_state['model_state']['front']['scl2']['dictionary']), before)


def test_gradient_trained_dictionary_is_a_param_and_stays_normalised():
  config, graphdef, state, tx = _setup()
  with config.unlocked():
    config.defense.dictionary_update = ('gradient', 'gradient')
    config.defense.grad = 'unroll'
  model = build_target(config, (28, 28, 1), 10, rngs=nnx.Rngs(0))
  graphdef, state = init_train_state(model, tx)
  assert 'dictionary' in state['params']['front']['scl1']
  mesh = mesh_of(1)
  step = jit_step(make_classifier_step(graphdef, tx, post_step=HEBBIAN_POST_STEP), state, mesh)
  images, labels = synthetic_digits(16)
  before = np.asarray(state['params']['front']['scl1']['dictionary'])
  with jax.set_mesh(mesh):
    new_state, _ = step(state, to_global_array({'image': images, 'label': labels}, mesh),
                        jax.random.key(0))
  after = np.asarray(new_state['params']['front']['scl1']['dictionary'])
  assert np.abs(after - before).max() > 1e-7
  np.testing.assert_allclose(np.sqrt((after ** 2).sum(axis=(0, 1, 2))), 1.0, atol=1e-5)


def test_gradient_dictionary_without_gradients_is_refused():
  config = load_config('tiny')
  with config.unlocked():
    config.defense.dictionary_update = ('gradient', 'frozen')
  with pytest.raises(ValueError, match="dictionary_update='gradient' needs gradients"):
    build_target(config, (28, 28, 1), 10, rngs=nnx.Rngs(0))


@pytest.mark.parametrize('defense', ['no-defense', 'sparse-standard', 'sparse-guard'])
@pytest.mark.parametrize('protocol', ['corrected', 'sg_legacy'])
def test_leaks_have_the_documented_shapes(defense, protocol):
  config, graphdef, state, _ = _setup(protocol=protocol, defense=defense)
  model = nnx.merge(graphdef, state['params'], state['model_state'])
  images, _ = synthetic_digits(3)
  first = model.leak(jnp.asarray(images), 'first')
  last = model.leak(jnp.asarray(images), 'last_hidden')
  width = config.model.hidden_width
  if protocol == 'corrected':
    assert first.shape == (3, width) and last.shape == (3, width)
  else:  # width-axis Linears on (N, C, H, W); legacy sparse-standard ends in Conv2d(4 → 6)
    channels = {'no-defense': 1, 'sparse-standard': 6, 'sparse-guard': 6}[defense]
    assert first.shape == (3, channels * 28 * width)
    # End to end the SG networks stay row-wise up to the classifier.
    assert last.shape == ((3, channels * 28 * width) if config.setting == 'end_to_end' else (3, width))
  assert model(jnp.asarray(images)).shape == (3, 10)
  with pytest.raises(ValueError, match=r"leak must be one of \('first', 'last_hidden'\)"):
    model.leak(jnp.asarray(images), 'penultimate')


def test_sparse_standard_dictionary_is_trained_by_backprop_by_default():
  """SG footnote 1: the experiments update the first sparse layer by
  backpropagation; Sparse-Standard's one layer is that layer."""
  config, graphdef, state, tx = _setup(defense='sparse-standard')
  assert 'dictionary' in state['params']['front']['scl']  # an nnx.Param, seen by the optimiser
  mesh = mesh_of(8)
  step = jit_step(make_classifier_step(graphdef, tx, post_step=HEBBIAN_POST_STEP), state, mesh)
  images, labels = synthetic_digits(16)
  before = np.asarray(state['params']['front']['scl']['dictionary'])
  with jax.set_mesh(mesh):
    after, _ = step(jax.tree.map(jnp.copy, state), to_global_array({'image': images, 'label': labels}, mesh),
                    jax.random.key(0))
  after = np.asarray(after['params']['front']['scl']['dictionary'])
  assert np.abs(after - before).max() > 1e-6
  np.testing.assert_allclose(np.sqrt((after ** 2).sum(axis=(0, 1, 2))), 1.0, atol=1e-5)  # renormalised
  with config.unlocked():
    config.defense.sparse_standard.dictionary_update = 'frozen'
  frozen = build_target(config, (28, 28, 1), 10, rngs=nnx.Rngs(0))
  _, _, frozen_state = nnx.split(frozen, nnx.Param, ...)
  assert 'dictionary' in nnx.to_pure_dict(frozen_state)['front']['scl']  # not a parameter
