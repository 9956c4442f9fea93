"""GAN augmentation (SG's GAN baseline): config checks, the augmented set,
and the whole recipe at toy size. Synthetic data (unit tests only)."""

import numpy as np
import pytest

from mi_jax.data.splits import ProtocolSplit
from mi_jax.defenses import gan_augmentation as gan_aug
from mi_jax.train.state import merge_model
from mi_jax.utils.metric_writer import MetricWriter
from tests.helpers import load_config, mesh_of, synthetic_digits

# A GAN that trains in seconds on CPU: one epoch, narrow, small latent.
TINY_GAN = {'gan_epochs': 1, 'gan_width': 8, 'gan_batch_size': 16, 'latent_dim': 8, 'gan_n_critic': 1}


def gan_config(**overrides):
  config = load_config('tiny')
  config.unlock()
  config.defense.name = 'no-defense'
  config.defense.gan_augmentation = gan_aug.config_block()
  for key, value in {**TINY_GAN, **overrides}.items():
    config.defense.gan_augmentation[key] = value
  return config


def toy_split(n_private=32, n_heldout=16):
  images, labels = synthetic_digits(n_private + n_heldout, seed=3)
  return ProtocolSplit(images[:n_private], labels[:n_private], images[n_private:], labels[n_private:])


def test_defaults_are_the_sg_code_settings_and_validate():
  b = gan_aug.config_block()
  gan_aug.validate(b)
  assert (b.gan_epochs, b.gan_batch_size, b.gan_learning_rate, b.gan_n_critic, b.latent_dim) == (25, 32, 1e-4, 5, 100)
  assert b.gan_loss == 'dcgan' and b.fake_fraction == 1.0


@pytest.mark.parametrize('field, value, message', [
    ('gan_loss', 'hinge', "gan_augmentation.gan_loss must be one of ('dcgan', 'wgan-gp')"),
    ('fake_fraction', 0.0, 'gan_augmentation.fake_fraction must be a finite number > 0'),
    ('gan_epochs', 0, 'gan_augmentation.gan_epochs must be an integer >= 1'),
    ('gan_beta1', 1.0, 'gan_augmentation.gan_beta1 must be a finite number in [0, 1)'),
])
def test_bad_fields_name_the_field(field, value, message):
  config = gan_config(**{field: value})
  with pytest.raises(ValueError, match=message.replace('(', r'\(').replace(')', r'\)').replace('[', r'\[')):
    gan_aug.validate(config)


def test_missing_block_is_reported():
  config = load_config('tiny')
  with config.unlocked():
    del config.defense['gan_augmentation']  # the config file mounts it; a hand-made config may not
  with pytest.raises(ValueError, match='defense.gan_augmentation is missing'):
    gan_aug.validate(config)


def test_fake_labels_follow_the_private_label_distribution():
  labels = np.array([3] * 90 + [7] * 10)
  drawn = gan_aug.labels_like(labels, 2000, seed=0)
  assert set(np.unique(drawn)) == {3, 7}
  assert 0.85 < np.mean(drawn == 3) < 0.95
  np.testing.assert_array_equal(drawn, gan_aug.labels_like(labels, 2000, seed=0))
  assert gan_aug.n_generated(64, 1.0) == 64 and gan_aug.n_generated(64, 0.25) == 16
  assert gan_aug.n_generated(3, 0.01) == 1


def test_augmented_set_is_real_then_fake_and_checks_dtype():
  real, real_labels = synthetic_digits(5)
  fake = np.full((3, 28, 28, 1), 7, np.uint8)
  images, labels = gan_aug.augmented(real, real_labels, fake, np.array([1, 2, 3]))
  assert images.shape == (8, 28, 28, 1) and images.dtype == np.uint8
  np.testing.assert_array_equal(labels, np.concatenate([real_labels, [1, 2, 3]]))
  np.testing.assert_array_equal(images[5:], fake)
  with pytest.raises(ValueError, match='generated images'):
    gan_aug.augmented(real, real_labels, fake.astype(np.float32) / 255, np.array([1, 2, 3]))
  assert gan_aug.to_uint8(np.array([0.0, 0.5, 1.0, 1.2]))[-2:].tolist() == [255, 255]


def test_recipe_trains_on_real_plus_labelled_fakes_and_returns_a_usable_target(tmp_path, monkeypatch):
  config = gan_config(fake_fraction=0.5)
  split = toy_split()
  seen = {}
  original = gan_aug.train_on

  def recording(config, images, labels, **kwargs):
    seen[kwargs['phase']] = (images, labels)
    return original(config, images, labels, **kwargs)

  monkeypatch.setattr(gan_aug, 'train_on', recording)
  graphdef, state, extras = gan_aug.train_gan_augmented_target(
      config, split, mesh=mesh_of(2), workdir=str(tmp_path), writer=MetricWriter(str(tmp_path)))

  images, labels = seen['target']
  n_fake = 16  # round(0.5 · 32)
  assert extras == {'gan_epochs': 1, 'n_generated': n_fake}
  assert images.shape == (32 + n_fake, 28, 28, 1) and images.dtype == np.uint8
  np.testing.assert_array_equal(images[:32], split.private_images)
  np.testing.assert_array_equal(labels[:32], split.private_labels)
  # Fakes carry their conditioning labels, drawn from the private labels.
  np.testing.assert_array_equal(labels[32:], gan_aug.labels_like(split.private_labels, n_fake, seed=config.seed))
  assert set(labels[32:]) <= set(split.private_labels)
  # They are generator samples, not copies of real images.
  assert not any((images[32:][:, None] == split.private_images[None]).all(axis=(2, 3, 4)).any(axis=1))
  assert (tmp_path / 'checkpoints' / 'gan').is_dir()

  model = merge_model(graphdef, state['params'], state['model_state'])
  acts = model.activations(split.heldout_images[:4], train=False)
  assert acts['logits'].shape == (4, 10) and acts['last_hidden'].shape[0] == 4
  assert np.all(np.isfinite(np.asarray(acts['logits'])))
  assert int(state['step']) == config.train.epochs * (48 // config.train.batch_size)
