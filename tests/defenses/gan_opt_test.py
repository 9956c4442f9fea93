"""GAN-opt (Gong et al. 2023 as the SCA code runs it) and its "++" EWC
recovery: labels of the fakes, the decoy's set, the recovery step, and the
whole recipe at toy size. Synthetic data (unit tests only)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mi_jax.data.splits import ProtocolSplit
from mi_jax.defenses import gan_augmentation as gan_aug
from mi_jax.defenses import gan_opt
from mi_jax.train.state import make_optimizer, merge_model, split_model
from mi_jax.utils.metric_writer import MetricWriter
from tests.defenses import build
from tests.helpers import load_config, mesh_of, synthetic_digits

TINY_GAN = {'gan_epochs': 1, 'gan_width': 8, 'gan_batch_size': 16, 'latent_dim': 8, 'gan_n_critic': 1}


def opt_config(**overrides):
  config = load_config('tiny')
  config.unlock()
  config.defense.name = 'no-defense'
  config.defense.gan_opt = gan_opt.config_block()
  for key, value in {**TINY_GAN, **overrides}.items():
    config.defense.gan_opt[key] = value
  return config


def toy_split(n_private=32, n_heldout=16):
  images, labels = synthetic_digits(n_private + n_heldout, seed=5)
  return ProtocolSplit(images[:n_private], labels[:n_private], images[n_private:], labels[n_private:])


def label_stamping_generator(monkeypatch):
  """Replaces sampling with images whose every pixel is 100 + the
  conditioning label, so a test can read back what each fake was generated for."""
  calls = []

  def fake_generate(gan, labels, *, seed, salt=0):
    calls.append(np.asarray(labels))
    return np.broadcast_to((100 + np.asarray(labels)).astype(np.uint8)[:, None, None, None],
                           (len(labels), 28, 28, 1)).copy()

  monkeypatch.setattr(gan_aug, 'generate', fake_generate)
  return calls


def test_defaults_and_validation():
  b = gan_opt.config_block()
  gan_opt.validate(b)
  assert (b.variant, b.plus_plus, b.decoy, b.fake_fraction) == ('bgan', False, True, 1.0)
  for field, value, message in [
      ('variant', 'netguard', "gan_opt.variant must be one of ('bgan', 'wogan')"),
      ('fisher_examples', 0, 'gan_opt.fisher_examples must be an integer >= 1'),
      ('decoy_limit', 0, 'gan_opt.decoy_limit must be None or an integer >= 1'),
      ('decoy_dataset', 'cifar10', 'gan_opt.decoy_dataset must be None or one of'),
      ('recovery_epochs', 0, 'gan_opt.recovery_epochs must be an integer >= 1'),
      ('ewc_lambda', -1.0, 'gan_opt.ewc_lambda must be a finite number >= 0'),
      ('gan_loss', 'hinge', 'gan_opt.gan_loss must be one of'),
  ]:
    config = opt_config(**{field: value})
    with pytest.raises(ValueError, match=message.replace('(', r'\(').replace(')', r'\)')):
      gan_opt.validate(config)


@pytest.mark.parametrize('variant', ['bgan', 'wogan'])
def test_target_fakes_carry_their_conditioning_class(variant, monkeypatch):
  calls = label_stamping_generator(monkeypatch)
  config = opt_config(variant=variant)
  split = toy_split()
  images, labels, fake_images, fake_labels = gan_opt.target_training_set(
      config, None, split.private_images, split.private_labels)
  # Each fake is labelled with the class it was generated for (no extra class).
  np.testing.assert_array_equal(fake_images[:, 0, 0, 0].astype(int) - 100, fake_labels)
  np.testing.assert_array_equal(calls[0], fake_labels)
  assert len(fake_labels) == 32 and set(fake_labels) <= set(split.private_labels)
  if variant == 'bgan':
    assert len(labels) == 64
    np.testing.assert_array_equal(images[32:], fake_images)
    np.testing.assert_array_equal(labels[32:], fake_labels)
  else:  # 'wogan': the target sees real data only
    np.testing.assert_array_equal(images, split.private_images)
    np.testing.assert_array_equal(labels, split.private_labels)


def test_decoy_fakes_are_labelled_with_the_public_class_of_the_same_index(monkeypatch):
  label_stamping_generator(monkeypatch)
  config = opt_config(fake_fraction=0.5)
  public_images, public_labels = synthetic_digits(40, seed=9)
  public_labels = (public_labels + 3) % 10  # any labelling of another dataset
  images, labels = gan_opt.decoy_training_set(config, None, public_images, public_labels)
  assert len(labels) == 60
  np.testing.assert_array_equal(images[:40], public_images)
  # Private-looking fake generated for class k is decoy class k.
  np.testing.assert_array_equal(images[40:, 0, 0, 0].astype(int) - 100, labels[40:])
  assert set(labels[40:]) <= set(public_labels)


def test_ewc_gradient_adds_lambda_fisher_displacement():
  params = {'a': jnp.array([1.0, 2.0]), 'b': jnp.array([[3.0]])}
  anchor = {'a': np.array([0.0, 2.5]), 'b': np.array([[1.0]])}
  fisher = {'a': np.array([2.0, 4.0]), 'b': np.array([[0.0]])}
  grads = {'a': jnp.array([0.1, 0.1]), 'b': jnp.array([[0.5]])}
  tx = gan_opt.ewc_gradient(fisher, anchor, strength=10.0)
  out, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(out['a'], [0.1 + 10 * 2 * 1.0, 0.1 + 10 * 4 * -0.5])
  np.testing.assert_allclose(out['b'], [[0.5]])  # zero Fisher: untouched
  # It is the gradient of the penalty.
  g = jax.grad(lambda p: gan_opt.ewc_penalty(p, fisher, anchor, strength=10.0))(params)
  np.testing.assert_allclose(g['a'], out['a'] - grads['a'], rtol=1e-6)
  with pytest.raises(ValueError, match='needs params'):
    tx.update(grads, tx.init(params))


def test_recovery_uses_real_data_only_and_holds_high_fisher_parameters(tmp_path, monkeypatch):
  split = toy_split()
  seen = []
  original = gan_aug.train_on

  def recording(config, images, labels, **kwargs):
    seen.append((kwargs['phase'], images, labels))
    return original(config, images, labels, **kwargs)

  monkeypatch.setattr(gan_aug, 'train_on', recording)
  moved = {}
  for strength in (0.0, 100.0):
    # Plain SGD, lr·λ·F = 1 on the head: each step undoes the previous
    # displacement (Adam would rescale the spring).
    config = opt_config(ewc_lambda=strength, recovery_epochs=2)
    config.train.optimizer, config.train.learning_rate, config.train.momentum = 'sgd', 0.01, 0.0
    graphdef, params, model_state = split_model(build(config))
    state = {'step': jnp.zeros((), jnp.int32), 'params': params, 'model_state': model_state, 'opt_state': None}
    # Fisher 1 on the classifier layer, 0 elsewhere: only it is held.
    fisher = jax.tree_util.tree_map_with_path(
        lambda path, p: np.full(p.shape, 1.0 if 'classifier' in jax.tree_util.keystr(path) else 0.0, np.float32), params)
    workdir = tmp_path / f'lam{strength}'
    _, new = gan_opt.recover_accuracy(config, graphdef, state, fisher, split.private_images, split.private_labels,
                                      num_classes=10, mesh=mesh_of(2), workdir=str(workdir),
                                      writer=MetricWriter(str(workdir)))
    # The target optimiser's own state comes back (what sg_legacy's attack carries on).
    assert jax.tree.structure(new['opt_state']) == jax.tree.structure(make_optimizer(config.train).init(params))
    delta = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(jnp.asarray(a) - b))), new['params'], params)
    flat = jax.tree_util.tree_leaves_with_path(delta)
    moved[strength] = {
        'held': max(v for p, v in flat if 'classifier' in jax.tree_util.keystr(p)),
        'free': max(v for p, v in flat if 'classifier' not in jax.tree_util.keystr(p))}
  phase, images, labels = seen[0]
  assert phase == 'recovery' and all(s[0] == 'recovery' for s in seen)
  np.testing.assert_array_equal(images, split.private_images)  # real data, no fakes
  np.testing.assert_array_equal(labels, split.private_labels)
  assert moved[0.0]['held'] > 0 and moved[100.0]['free'] > 0
  assert moved[100.0]['held'] < 0.5 * moved[0.0]['held']
  # The free layers move about as much with or without the penalty on the head.
  assert moved[100.0]['free'] > 0.3 * moved[0.0]['free']


def test_gan_opt_plus_plus_recipe_end_to_end(tmp_path, monkeypatch):
  config = opt_config(plus_plus=True, recovery_epochs=1, decoy_epochs=1, fisher_examples=16)
  split = toy_split()
  public_images, public_labels = synthetic_digits(16, seed=11)
  seen = []
  original = gan_aug.train_on

  def recording(config, images, labels, **kwargs):
    seen.append((kwargs['phase'], len(labels)))
    return original(config, images, labels, **kwargs)

  monkeypatch.setattr(gan_aug, 'train_on', recording)
  graphdef, state, extras = gan_opt.train_gan_opt_target(
      config, split, mesh=mesh_of(2), workdir=str(tmp_path), writer=MetricWriter(str(tmp_path)),
      public=(public_images, public_labels))
  assert seen == [('decoy', 32), ('target', 64), ('recovery', 32)]
  assert extras == {'gan_epochs': 1, 'n_generated': 32, 'variant': 'bgan', 'plus_plus': True,
                    'n_decoy_generated': 16}
  model = merge_model(graphdef, state['params'], state['model_state'])
  acts = model.activations(split.heldout_images[:4], train=False)
  assert acts['logits'].shape == (4, 10) and np.all(np.isfinite(np.asarray(acts['logits'])))
  assert acts['first'].shape[0] == 4


def test_a_dataset_without_a_decoy_pair_trains_without_the_decoy_and_refuses_one():
  config = load_config('tiny,dermamnist')
  assert config.defense.gan_opt.decoy is False
  config.unlock()
  config.defense.name = 'gan-opt'
  gan_opt.validate(config)
  config.defense.gan_opt.decoy = True
  with pytest.raises(ValueError, match="decoy needs a decoy dataset with other classes; none is paired with dataset 'dermamnist'"):
    gan_opt.validate(config)
  config.defense.name = 'no-defense'  # another defense's config still validates
  gan_opt.validate(config)
