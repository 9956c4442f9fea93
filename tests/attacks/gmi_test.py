"""GMI end to end on synthetic digits: target on classes 0–4, attack accuracy
(by a separately trained evaluation classifier) above chance.

The attacker's GAN is trained on a disjoint synthetic sample (another seed):
synthetic digits encode the class by blob position, so a GAN trained only on
classes 5–9 (the bottom row) could never draw a top-row blob; the real
experiment (mi_jax.experiments.gan_attacks) uses the class-disjoint MNIST protocol.
A non-saturating GAN keeps the test fast (WGAN-GP needs several times more
steps to leave the grey-blur stage); GMI's prior term reads any real/fake logit."""

import jax
import jax.numpy as jnp
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


def test_first_step_is_nesterov_sgd_on_each_latents_own_loss():
  """z₁ = clip(z₀ − (1 + m)·η·∇ℓ(z₀)) with ℓ = λ·CE − D per latent, whatever the number of rows."""
  rng = np.random.default_rng(0)
  a, w, v = rng.normal(size=(6, 4)), rng.normal(size=(4, 3)), rng.normal(size=4)
  generator = lambda z: (z @ jnp.asarray(a, jnp.float32)).reshape(z.shape[0], 2, 2, 1)
  target = lambda x: x.reshape(x.shape[0], -1) @ jnp.asarray(w, jnp.float32)
  discriminator = lambda x: x.reshape(x.shape[0], -1) @ jnp.asarray(v, jnp.float32)
  result = gmi.gmi_attack(target=target, generator=generator, discriminator=discriminator, classes=[0, 1, 2],
                          latent_dim=6, mesh=mesh_of(4), key=jax.random.key(1), attacks_per_class=3, iterations=1,
                          learning_rate=0.01, momentum=0.9, lam=5.0, log_every=1)
  z0 = np.asarray(result.initial_latents, np.float64)
  assert np.abs(z0).max() > 1.0  # the gradient is taken at the unclamped draw, as in GMI's loop
  # ∇ℓ by hand (float64): x = zA, ∂CE/∂logits = softmax − onehot, ∂D/∂x = v.
  logits = z0 @ a @ w
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  grad = 5.0 * (probs - np.eye(3)[result.labels]) @ w.T @ a.T - v @ a.T
  np.testing.assert_allclose(result.latents, np.clip(z0 - 1.9 * 0.01 * grad, -1, 1), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(result.initial_images, np.asarray(generator(jnp.asarray(z0, jnp.float32))), rtol=1e-5)
