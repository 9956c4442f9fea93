"""GMI end to end on synthetic digits: target on classes 0–4, attack accuracy
(by a separately trained evaluation classifier) above chance.

The attacker's GAN is trained on a disjoint synthetic sample (another seed):
synthetic digits encode the class by blob position, so a GAN trained only on
classes 5–9 (the bottom row) could never draw a top-row blob; the real
experiment (mi_jax.gan_experiment) uses the class-disjoint MNIST protocol.
A non-saturating GAN keeps the test fast (WGAN-GP needs several times more
steps to leave the grey-blur stage); GMI's prior term reads any real/fake logit."""

import jax
import numpy as np
import optax
from flax import nnx

from mi_jax.attacks import gmi, latent
from mi_jax.models.target import TargetNetwork
from mi_jax.train import gan
from mi_jax.train.classifier import train_classifier
from mi_jax.utils.metric_writer import MetricWriter
from tests.helpers import mesh_of, synthetic_digits


def _classifier(images, labels, seed, workdir, mesh):
  model = TargetNetwork(image_shape=(28, 28, 1), num_classes=5, hidden_widths=(32,), rngs=nnx.Rngs(seed))
  graphdef, state = train_classifier(model=model, tx=optax.adam(3e-3), images=images, labels=labels, batch_size=32,
                                     epochs=3, seed=seed, mesh=mesh, workdir=workdir, writer=MetricWriter(workdir),
                                     phase=f'clf{seed}', log_every=1000)
  return latent.target_logits_fn(graphdef, state)


def test_gmi_beats_chance_on_synthetic_digits(tmp_path):
  mesh = mesh_of(2)
  images, labels = synthetic_digits(600, seed=0)
  private = labels < 5
  target = _classifier(images[private], labels[private], 0, str(tmp_path), mesh)
  evaluator = _classifier(images[private], labels[private], 1, str(tmp_path), mesh)
  public_images, _ = synthetic_digits(320, seed=1)
  result = gan.train_gan(images=public_images, loss='dcgan', latent_dim=16, epochs=10, batch_size=32,
                         learning_rate=2e-3, seed=0, mesh=mesh, workdir=str(tmp_path), writer=MetricWriter(str(tmp_path)),
                         width=8, log_every=1000)
  attack = gmi.gmi_attack(
      target=target, generator=gan.generator_fn(result.generator_graphdef, result.generator_state),
      discriminator=gan.discriminator_fn(result.discriminator_graphdef, result.discriminator_state),
      classes=range(5), latent_dim=16, mesh=mesh, key=jax.random.key(0), attacks_per_class=2, iterations=60,
      log_every=30)
  assert attack.images.shape == (10, 28, 28, 1)
  assert np.abs(attack.latents).max() <= 1.0
  accuracy = float(np.mean(np.argmax(np.asarray(evaluator(attack.images)), -1) == attack.labels))
  assert accuracy > 1 / 5 + 0.2, accuracy
