"""The surrogate attack: the decoder learns (corrected); sg_legacy moves the
target instead and leaves the decoder at its initialisation."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mi_jax.attacks.surrogate import legacy_surrogate_attack, query_target, surrogate_attack
from mi_jax.defenses import build_target
from mi_jax.train.state import init_train_state, make_optimizer
from mi_jax.utils.metric_writer import MetricWriter
from tests.helpers import load_config, mesh_of, synthetic_digits


def _attack(tmp_path, protocol, epochs=8):
  config = load_config('tiny')
  with config.unlocked():
    config.protocol = protocol
    config.defense.name = 'no-defense'
    config.setting = 'split'
    config.attack.epochs = epochs
    config.attack.learning_rate = 3e-3
  model = build_target(config, (28, 28, 1), 10, rngs=nnx.Rngs(0))
  graphdef, state = init_train_state(model, make_optimizer(config.train))
  before = jax.tree.map(np.asarray, state)
  aux, _ = synthetic_digits(128, seed=1)
  private, _ = synthetic_digits(32, seed=2)
  mesh = mesh_of(2)
  with jax.set_mesh(mesh):
    if protocol == 'sg_legacy':
      result = legacy_surrogate_attack(
          config=config, target_graphdef=graphdef, target_state=state, leak='first', aux_images=aux,
          private_images=private, mesh=mesh, rng=jax.random.key(0), workdir=str(tmp_path),
          writer=MetricWriter(str(tmp_path)))
    else:
      query = lambda images: query_target(config, graphdef, state, images, leak='first', mesh=mesh,
                                          key=jax.random.key(1))[0]
      result = surrogate_attack(
          config=config, aux_features=query(aux), aux_images=aux, private_features=query(private),
          mesh=mesh, rng=jax.random.key(0), workdir=str(tmp_path), writer=MetricWriter(str(tmp_path)))
  return result, private.astype(np.float32) / 255.0, before, state


def test_corrected_attack_trains_the_decoder_and_leaves_the_target_alone(tmp_path):
  result, originals, before, state = _attack(tmp_path, 'corrected')
  mse = np.mean((result.reconstructions - originals) ** 2)
  untrained = np.mean((result.untrained_reconstructions - originals) ** 2)
  assert mse < 0.5 * untrained, (mse, untrained)
  assert result.reconstructions.shape == originals.shape
  assert 0.0 <= result.reconstructions.min() and result.reconstructions.max() <= 1.0
  for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(jax.tree.map(np.asarray, state))):
    np.testing.assert_array_equal(a, b)  # the frozen target is not touched


def test_legacy_attack_moves_the_target_and_never_trains_the_decoder(tmp_path):
  result, originals, before, _ = _attack(tmp_path, 'sg_legacy', epochs=2)
  # The decoder stayed random: the target drifted toward it, the
  # reconstructions changed, but they are not images of the digits.
  assert not np.allclose(result.reconstructions, result.untrained_reconstructions)
  assert result.normalized_reconstructions is not None
  corrected, _, _, _ = _attack(tmp_path / 'c', 'corrected')
  legacy_mse = np.mean((result.reconstructions - originals) ** 2)
  corrected_mse = np.mean((corrected.reconstructions - originals) ** 2)
  assert legacy_mse > 2 * corrected_mse, (legacy_mse, corrected_mse)
