"""LOMMA (Nguyen et al. 2023): the identity loss as defined, the distillation step, the attacks' switch."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from mi_jax.attacks import gmi, kedmi, latent, lomma
from mi_jax.models.target import TargetNetwork
from mi_jax.train.classifier import train_classifier
from mi_jax.utils.metric_writer import MetricWriter
from tests.helpers import mesh_of, synthetic_digits


def _fake_models():
  """A linear 'target' with 3-d features and two 'students', on flat 4-pixel images."""
  w_feat = jnp.asarray(np.random.default_rng(0).standard_normal((4, 3)), jnp.float32)
  w_head = jnp.asarray(np.random.default_rng(1).standard_normal((3, 5)), jnp.float32)
  target = lambda x: {'last_hidden': x @ w_feat, 'logits': (x @ w_feat) @ w_head}
  students = [lambda x, s=s: x @ jnp.asarray(np.random.default_rng(2 + s).standard_normal((4, 5)), jnp.float32)
              for s in range(2)]
  return target, students


def test_the_logit_loss_is_minus_the_class_logit_plus_the_feature_regulariser():
  target, _ = _fake_models()
  x = jnp.asarray(np.random.default_rng(5).random((6, 4)), jnp.float32)
  y = jnp.asarray([0, 1, 2, 3, 4, 0])
  p_reg = jnp.asarray([0.1, -0.2, 0.3])
  identity = lomma.identity_fn(target_activations=target, logit_loss=True, reg_weight=0.7, p_reg=p_reg)
  acts = {k: np.asarray(v, np.float64) for k, v in target(x).items()}
  expected = -acts['logits'][np.arange(6), np.asarray(y)] + 0.7 * np.mean((acts['last_hidden'] - np.asarray(p_reg)) ** 2, 1)
  np.testing.assert_allclose(np.asarray(identity(x, y)), expected, rtol=1e-5, atol=1e-5)


def test_augmentation_averages_the_identity_term_over_target_and_students_and_regularises_the_target_only():
  target, students = _fake_models()
  x = jnp.asarray(np.random.default_rng(6).random((3, 4)), jnp.float32)
  y = jnp.asarray([1, 2, 3])
  p_reg = jnp.zeros(3)
  both = lomma.identity_fn(target_activations=target, students=students, logit_loss=True, reg_weight=1.0,
                           p_reg=p_reg)
  rows = np.arange(3)
  logit_terms = [-np.asarray(target(x)['logits'])[rows, np.asarray(y)]] + [
      -np.asarray(s(x))[rows, np.asarray(y)] for s in students]
  reg = np.mean(np.asarray(target(x)['last_hidden']) ** 2, 1)
  np.testing.assert_allclose(np.asarray(both(x, y)), np.mean(logit_terms, 0) + reg, rtol=1e-5, atol=1e-5)
  # 'aug' alone: cross-entropy averaged over the models, no regulariser.
  aug = lomma.identity_fn(target_activations=target, students=students, logit_loss=False, reg_weight=1.0,
                          p_reg=None)
  ce = [latent.identity_loss(target(x)['logits'], y)] + [latent.identity_loss(s(x), y) for s in students]
  np.testing.assert_allclose(np.asarray(aug(x, y)), np.mean([np.asarray(c) for c in ce], 0), rtol=1e-5)
  with pytest.raises(ValueError, match='needs p_reg'):
    lomma.identity_fn(target_activations=target, logit_loss=True, reg_weight=1.0, p_reg=None)


def test_the_attacks_use_the_given_identity_loss_in_place_of_cross_entropy():
  target, _ = _fake_models()
  generator = lambda z: jnp.tanh(z[:, :4])
  critic = lambda images: jnp.sum(images, -1)
  identity = lambda images, labels: 3.0 * jnp.sum(images, -1) + labels
  z = jnp.asarray(np.random.default_rng(7).standard_normal((2, 6)), jnp.float32)
  y = jnp.asarray([1, 2])
  # GMI: λ·L_id − D(G(z)), where it had λ·CE − D(G(z)).
  images = generator(z)
  logits = lambda i: target(i)['logits']
  got = gmi.gmi_objective(images, y, target=logits, discriminator=critic, lam=10.0, identity=identity)
  np.testing.assert_allclose(np.asarray(got), np.asarray(10.0 * identity(images, y) - critic(images)), rtol=1e-6)
  default = gmi.gmi_objective(images, y, target=logits, discriminator=critic, lam=10.0)
  np.testing.assert_allclose(np.asarray(default),
                             np.asarray(gmi.gmi_loss(logits(images), critic(images), y, lam=10.0)), rtol=1e-6)
  # KEDMI's per-distribution loss with and without the switch.
  params = {'mu': z, 'log_var': jnp.zeros_like(z)}
  discriminator = lambda images: (jnp.sum(images, -1), None)
  key = jax.random.key(0)
  with_id = kedmi.kedmi_loss(params, y, key, target=lambda i: target(i)['logits'], generator=generator,
                             discriminator=discriminator, lam=10.0, identity=identity)
  sample = generator(kedmi.reparameterize(z, jnp.zeros_like(z), key))
  expected = 10.0 * identity(sample, y) + kedmi.kedmi_prior_loss(jnp.sum(sample, -1))
  np.testing.assert_allclose(np.asarray(with_id), np.asarray(expected), rtol=1e-6)


def test_distillation_makes_a_student_agree_with_its_teacher(tmp_path):
  mesh = mesh_of(2)
  images, labels = synthetic_digits(256, seed=0)
  teacher_model = TargetNetwork(image_shape=(28, 28, 1), num_classes=10, hidden_widths=(32,), rngs=nnx.Rngs(0))
  tg, ts = train_classifier(model=teacher_model, tx=optax.adam(3e-3), images=images, labels=labels, batch_size=32,
                            epochs=3, seed=0, mesh=mesh, workdir=str(tmp_path), writer=MetricWriter(str(tmp_path)),
                            phase='teacher', log_every=1000)
  teacher = latent.target_logits_fn(tg, ts)
  teacher_logits = np.asarray(teacher(jnp.asarray(images, jnp.float32) / 255.0), np.float32)
  student_model = TargetNetwork(image_shape=(28, 28, 1), num_classes=10, hidden_widths=(16,), rngs=nnx.Rngs(1))
  sg, ss = train_classifier(model=student_model, tx=optax.adam(3e-3), images=images, labels=teacher_logits,
                            batch_size=32, epochs=4, seed=1, mesh=mesh, workdir=str(tmp_path),
                            writer=MetricWriter(str(tmp_path)), phase='student', log_every=1000,
                            make_step=lambda g, tx: lomma.make_distillation_step(g, tx))
  student = latent.target_logits_fn(sg, ss)
  agreement = np.mean(np.argmax(np.asarray(student(jnp.asarray(images, jnp.float32) / 255.0)), -1)
                      == np.argmax(teacher_logits, -1))
  assert agreement > 0.9, agreement
