"""The surrogate attack: the decoder learns (corrected); sg_legacy moves the
target instead and leaves the decoder at its initialisation."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from mi_jax.experiments import surrogate as experiment
from mi_jax.attacks.surrogate import legacy_surrogate_attack, query_target, surrogate_attack
from mi_jax.defenses import build_target
from mi_jax.train.state import init_train_state, make_optimizer
from mi_jax.utils.metric_writer import MetricWriter
from tests.helpers import load_config, mesh_of, synthetic_digits


def _attack(tmp_path, protocol, epochs=8, setting='split', defense='no-defense', patience=100):
  config = load_config('tiny')
  with config.unlocked():
    config.attack.patience = patience
    config.protocol = protocol
    config.defense.name = defense
    config.setting = setting
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
      [result] = legacy_surrogate_attack(
          target_graphdef=graphdef, target_state=state,
          leak='first' if setting == 'split' else 'last_hidden', aux_images=aux,
          private_images=private, mesh=mesh, rng=jax.random.key(0), workdir=str(tmp_path),
          writer=MetricWriter(str(tmp_path)), seeds=[config.seed], **experiment.legacy_attacker_settings(config))
    else:
      query = lambda images: query_target(graphdef, state, images, leak='first', mesh=mesh, key=jax.random.key(1),
                                          batch_size=config.attack.batch_size,
                                          noise_at_query=config.attack.noise_at_query)[0]
      [result] = surrogate_attack(
          aux_features=query(aux), aux_images=aux, private_features=query(private), mesh=mesh,
          rng=jax.random.key(0), workdir=str(tmp_path), writer=MetricWriter(str(tmp_path)), seeds=[config.seed],
          **experiment.attacker_settings(config))
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
  # 60 epochs: the tiny MLP decoder needs them to get past the mean image
  # (MSE 0.016 after 8 epochs, 0.005 after 60 on these blobs).
  corrected, _, _, _ = _attack(tmp_path / 'c', 'corrected', epochs=60)
  legacy_mse = np.mean((result.reconstructions - originals) ** 2)
  corrected_mse = np.mean((corrected.reconstructions - originals) ** 2)
  assert legacy_mse > 2 * corrected_mse, (legacy_mse, corrected_mse)


def test_legacy_end_to_end_reads_the_row_map_with_the_sg_row_decoder(tmp_path, monkeypatch):
  """fidelity #14: the SG end-to-end leak is a C×H×500 map (the last hidden
  layer, row by row), read by the row-wise attacker, not a flat vector."""
  from mi_jax.attacks import surrogate
  built = []
  real = surrogate.LegacyRowDecoder
  monkeypatch.setattr(surrogate, 'LegacyRowDecoder',
                      lambda shape, *a, **k: built.append(tuple(shape)) or real(shape, *a, **k))
  config = load_config('tiny')
  for defense, channels in (('no-defense', 1), ('sparse-guard', config.defense.features[1])):
    built.clear()
    result, originals, _, _ = _attack(tmp_path / defense, 'sg_legacy', epochs=1, setting='end_to_end',
                                      defense=defense)
    assert built == [(channels, 28, config.model.hidden_width)]
    assert result.reconstructions.shape == originals.shape


def test_attack_resumes_from_its_end_of_run_checkpoint(tmp_path):
  """Checkpoints by wall time and at the end: a run stopped after 2 of 4
  epochs and resumed ends where an uninterrupted run ends."""
  whole, _, _, _ = _attack(tmp_path / 'whole', 'corrected', epochs=4)
  _attack(tmp_path / 'cut', 'corrected', epochs=2)
  resumed, _, _, _ = _attack(tmp_path / 'cut', 'corrected', epochs=4)
  np.testing.assert_allclose(resumed.reconstructions, whole.reconstructions, rtol=1e-5, atol=1e-6)


def test_legacy_attack_with_cached_sparse_codes_equals_the_full_forward(tmp_path, monkeypatch):
  """Frozen dictionaries and grad='stop': the codes of the last sparse layer
  are computed once per image; the attack must not change because of it."""
  from mi_jax.models.target import TargetNetwork
  cached, _, _, _ = _attack(tmp_path / 'cached', 'sg_legacy', epochs=1, defense='sparse-guard')
  calls = []
  monkeypatch.setattr(TargetNetwork, 'front_codes_are_fixed', lambda self: calls.append(1) and False)
  full, _, _, _ = _attack(tmp_path / 'full', 'sg_legacy', epochs=1, defense='sparse-guard')
  assert calls
  np.testing.assert_allclose(cached.normalized_reconstructions, full.normalized_reconstructions,
                             rtol=1e-4, atol=1e-4)
  assert not np.allclose(cached.reconstructions, cached.untrained_reconstructions)


def test_early_stopping_keeps_the_best_decoder_and_a_rerun_stops_where_it_stopped(tmp_path):
  """The attack trains until the held-out slice of the auxiliary set stops
  improving for `patience` epochs; a rerun in the same workdir resumes at the
  stop and changes nothing."""
  first, originals, _, _ = _attack(tmp_path, 'corrected', epochs=60, patience=2)
  assert first.epochs_run < 60 and first.epochs_run == first.best_epoch + 2
  assert 0 < first.validation_mse < np.finfo(np.float32).max
  again, _, _, _ = _attack(tmp_path, 'corrected', epochs=60, patience=2)
  assert (again.best_epoch, again.epochs_run) == (first.best_epoch, first.epochs_run)
  np.testing.assert_allclose(again.reconstructions, first.reconstructions, rtol=1e-6, atol=1e-7)


def test_validation_split_is_fixed_disjoint_and_refuses_an_empty_training_set():
  from mi_jax.attacks.surrogate import validation_split
  train, val = validation_split(100, 0.1, seed=0)
  assert len(val) == 10 and len(train) == 90 and not set(train) & set(val)
  np.testing.assert_array_equal(validation_split(100, 0.1, seed=0)[1], val)
  with pytest.raises(ValueError, match='validation_fraction leaves no training images'):
    validation_split(1, 0.5, seed=0)


def test_seeds_trained_together_equal_each_seed_trained_alone(tmp_path):
  """The decoders of several seeds train stacked (split over the devices,
  padded to a multiple of their count) and each stops on its own: every
  seed's result is the one it gets alone."""
  config = load_config('tiny')
  # Chosen so that the three seeds stop at different epochs (38, 4 and 3).
  settings = {**experiment.attacker_settings(config), 'epochs': 60, 'patience': 2, 'decoder_hidden': 64,
              'tx': optax.adam(1e-2)}
  aux, _ = synthetic_digits(160, seed=1)
  private, _ = synthetic_digits(24, seed=2)
  project = np.random.default_rng(0).normal(size=(784, 24)).astype(np.float32) / 28
  features = lambda images: np.tanh(images.reshape(len(images), -1) / 255.0 @ project).astype(np.float32)
  mesh = mesh_of(2)
  run = lambda seeds, folder: surrogate_attack(
      aux_features=features(aux), aux_images=aux, private_features=features(private), mesh=mesh,
      rng=jax.random.key(0), workdir=str(tmp_path / folder), writer=MetricWriter(str(tmp_path / folder)),
      seeds=seeds, **settings)
  together = run([0, 1000, 2000], 'together')  # 3 seeds on 2 devices: one padding seed
  alone = [run([seed], f'alone{seed}')[0] for seed in (0, 1000, 2000)]
  assert len({result.epochs_run for result in together}) > 1  # they stopped at different epochs
  for joint, single in zip(together, alone):
    assert (joint.best_epoch, joint.epochs_run) == (single.best_epoch, single.epochs_run)
    assert joint.epochs_run == joint.best_epoch + 2
    np.testing.assert_allclose(joint.validation_mse, single.validation_mse, rtol=1e-4)
    np.testing.assert_allclose(joint.reconstructions, single.reconstructions, atol=2e-3)
    np.testing.assert_array_equal(joint.untrained_reconstructions, single.untrained_reconstructions)


def test_attack_refuses_an_empty_seed_list(tmp_path):
  with pytest.raises(ValueError, match='seeds must name at least one attacker seed'):
    surrogate_attack(seeds=[], aux_features=None, aux_images=None, private_features=None, mesh=mesh_of(1),
                     rng=None, workdir=str(tmp_path), writer=None, tx=None, decoder='mlp', decoder_hidden=8,
                     batch_size=4, epochs=1, validation_fraction=0.1, patience=1, split_seed=0)
