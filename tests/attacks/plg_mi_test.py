"""PLG-MI (Yuan et al. 2023): the max-margin loss, top-n pseudo-labels, the
generator's α·L_inv term, the attack's identity hook, and a tiny end-to-end
run (cGAN training with resume, then the attack) on the 8-device mesh."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from mi_jax.attacks import latent, plg_mi, ppa
from mi_jax.models.gan import ProjectionDiscriminator, spectral_norm
from mi_jax.models.target import TargetNetwork
from mi_jax.train import gan
from mi_jax.train.state import split_model
from tests.helpers import mesh_of

SHAPE = (8, 8, 1)
NO_AUGMENTATION = plg_mi.Augmentation(
    transform=ppa.TransformSpec(scale=(1.0, 1.0), ratio=(1.0, 1.0), rotation_degrees=0.0, flip_prob=0.0),
    brightness=0.0, contrast=0.0)


def _numpy_max_margin(logits, labels):
  logits = np.asarray(logits, np.float64)
  return np.array([-row[y] + max(v for j, v in enumerate(row) if j != y) for row, y in zip(logits, labels)])


def test_max_margin_loss_is_minus_the_class_logit_plus_the_best_other_logit_including_ties():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(6, 5)).astype(np.float32)
  logits[0] = [2.0, 2.0, 0.0, -1.0, 0.5]  # y ties with another class at the top: margin 0
  logits[1] = [1.0, 3.0, 3.0, 0.0, 0.0]  # two others tie above y
  logits[2] = [5.0, 1.0, 1.0, 1.0, 1.0]  # y strictly on top, all the others tied
  labels = np.array([0, 0, 0, 1, 2, 4])
  got = np.asarray(plg_mi.max_margin_loss(jnp.asarray(logits), jnp.asarray(labels)))
  np.testing.assert_allclose(got, _numpy_max_margin(logits, labels), rtol=1e-6, atol=1e-6)
  assert got[0] == 0.0 and got[1] == 2.0 and got[2] == -4.0
  # Away from ties the gradient is −e_y + e_{argmax_{j≠y} l_j}.
  grad = np.asarray(jax.grad(lambda l: jnp.sum(plg_mi.max_margin_loss(l, jnp.asarray(labels))))(jnp.asarray(logits)))
  for i in range(3, 6):
    runner_up = max((j for j in range(5) if j != labels[i]), key=lambda j: logits[i, j])
    expected = np.zeros(5)
    expected[labels[i]], expected[runner_up] = -1.0, 1.0
    np.testing.assert_allclose(grad[i], expected)
  with pytest.raises(ValueError, match='>= 2 classes'):
    plg_mi.max_margin_loss(jnp.zeros((2, 1)), jnp.zeros(2, jnp.int32))


def test_top_n_pseudo_labels_match_a_sort_reference_and_let_classes_share_images():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(40, 6)) * 2
  probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
  probs[7] = probs[9] = probs[3]  # three equal rows: ties go to the lower index
  classes, n = [4, 1, 2], 5
  indices, labels = plg_mi.top_n_pseudo_labels(probs, classes, n)
  reference = [sorted(range(40), key=lambda i: (-probs[i, c], i))[:n] for c in classes]
  np.testing.assert_array_equal(indices, np.concatenate(reference))
  np.testing.assert_array_equal(labels, np.repeat(classes, n))
  for c, chosen in zip(classes, np.split(indices, len(classes))):
    rest = np.setdiff1d(np.arange(40), chosen)
    assert probs[chosen, c].min() >= probs[rest, c].max()
  # One image that every class ranks first is chosen by every class; most images by none.
  probs[11] = 1.0
  indices, _ = plg_mi.top_n_pseudo_labels(probs, classes, 2)
  assert list(indices[::2]) == [11, 11, 11]
  ties = np.tile([[0.5, 0.5]], (4, 1))
  np.testing.assert_array_equal(plg_mi.top_n_pseudo_labels(ties, [1], 3)[0], [0, 1, 2])
  with pytest.raises(ValueError, match='n must be'):
    plg_mi.top_n_pseudo_labels(probs, classes, 41)
  with pytest.raises(ValueError, match='classes must'):
    plg_mi.top_n_pseudo_labels(probs, [6], 1)


def test_hinge_losses_and_the_projection_discriminator():
  real, fake = np.array([2.0, 0.5, -1.0]), np.array([-2.0, 0.0, 0.7])
  np.testing.assert_allclose(gan.hinge_discriminator_loss(jnp.asarray(real), jnp.asarray(fake)),
                             np.mean(np.maximum(0, 1 - real)) + np.mean(np.maximum(0, 1 + fake)), rtol=1e-6)
  np.testing.assert_allclose(gan.hinge_generator_loss(jnp.asarray(fake)), -np.mean(fake), rtol=1e-6)
  # The power-iteration estimate is the top singular value, with gradient u vᵀ.
  # (A matrix with a spectral gap, so that the singular vectors converge too.)
  q1, _ = np.linalg.qr(np.random.default_rng(2).normal(size=(48, 12)))
  q2, _ = np.linalg.qr(np.random.default_rng(3).normal(size=(12, 12)))
  w = q1 @ np.diag(np.r_[3.0, np.linspace(1.0, 0.1, 11)]) @ q2.T
  u, s, vt = np.linalg.svd(w)
  np.testing.assert_allclose(float(spectral_norm(jnp.asarray(w, jnp.float32))), s[0], rtol=1e-3)
  grad = np.asarray(jax.grad(spectral_norm)(jnp.asarray(w, jnp.float32)))
  np.testing.assert_allclose(np.abs(grad), np.abs(np.outer(u[:, 0], vt[0])), atol=1e-4)
  # D(x, y) − D(x, y') = ⟨V_y − V_y', φ(x)⟩ / σ_max(V): the class enters only through the projection.
  d = ProjectionDiscriminator(image_shape=SHAPE, num_classes=3, width=4, rngs=nnx.Rngs(0))
  x = jax.random.uniform(jax.random.key(0), (2, *SHAPE))
  phi, d_a, d_b = nnx.jit(lambda d, x: (d.features(x), d(x, jnp.array([0, 0])), d(x, jnp.array([2, 1]))))(d, x)
  v = np.asarray(d.embed.embedding[...], np.float64)
  v = v / np.linalg.svd(v, compute_uv=False)[0]
  phi, diff = np.asarray(phi, np.float64), np.asarray(d_a) - np.asarray(d_b)
  np.testing.assert_allclose(diff, np.sum((v[[0, 0]] - v[[2, 1]]) * phi, 1), rtol=2e-3, atol=1e-4)


def test_inversion_term_is_the_targets_mean_max_margin_on_the_fakes_of_each_generator_class():
  w = jnp.asarray(np.random.default_rng(3).normal(size=(64, 5)), jnp.float32)
  target = lambda x: x.reshape(x.shape[0], -1) @ w
  classes = (4, 0, 2)  # generator class k is target class classes[k]
  images = jax.random.uniform(jax.random.key(1), (6, *SHAPE))
  k = jnp.array([0, 1, 2, 2, 1, 0])
  inversion = jax.jit(plg_mi.inversion_loss_fn(target, classes, spec=NO_AUGMENTATION))
  expected = np.mean(_numpy_max_margin(np.asarray(target(images)), np.asarray(classes)[np.asarray(k)]))
  np.testing.assert_allclose(float(inversion(images, k, jax.random.key(2))), expected, rtol=1e-4)
  # The authors' augmentation is random per key, stays in [0, 1], and is differentiable.
  spec = plg_mi.augmentation(stage='gan')
  augment = jax.jit(lambda x, key: (plg_mi.augment(x, key, spec),
                                    jax.grad(lambda x: jnp.sum(plg_mi.augment(x, key, spec) ** 2))(x)))
  (a, grad), (b, _) = augment(images, jax.random.key(3)), augment(images, jax.random.key(4))
  assert a.shape == images.shape and not np.allclose(a, b) and 0 <= float(a.min()) and float(a.max()) <= 1
  assert np.abs(np.asarray(grad)).sum() > 0


def test_generator_loss_adds_alpha_times_the_inversion_term():
  """SGD(1) on G with D frozen: the update is −∇L_G; α = 0 gives the pure hinge
  step, and the inversion's contribution to it grows linearly in α."""
  g, d = gan.build_gan(image_shape=SHAPE, latent_dim=4, num_classes=3, conditional=True, loss='sngan', width=4)
  assert isinstance(d, ProjectionDiscriminator)
  g_graphdef, g_state = gan._sub_state(g, optax.sgd(1.0))
  d_graphdef, d_state = gan._sub_state(d, optax.set_to_zero())
  state = {'step': jnp.zeros((), jnp.int32), 'g': g_state, 'd': d_state}
  w = jnp.asarray(np.random.default_rng(4).normal(size=(64, 5)), jnp.float32)
  inversion = plg_mi.inversion_loss_fn(lambda x: x.reshape(x.shape[0], -1) @ w, (4, 0, 2),
                                       spec=plg_mi.augmentation(stage='gan'))
  batch = {'image': jnp.full((4, *SHAPE), 200, jnp.uint8), 'label': jnp.array([0, 1, 2, 0])}

  def run(state, alpha, with_inversion):  # α traced: one compile serves every α
    return gan.make_gan_step(g_graphdef, d_graphdef, optax.sgd(1.0), optax.set_to_zero(), loss='sngan',
                             conditional=True, num_classes=3, latent_dim=4,
                             inversion=inversion if with_inversion else None,
                             inversion_weight=alpha)(state, batch, jax.random.key(0))

  run = jax.jit(run, static_argnums=2)

  def g_step(alpha):
    new, m = run(state, jnp.float32(alpha or 0.0), alpha is not None)
    delta = jax.tree.map(lambda a, b: np.asarray(a, np.float64) - np.asarray(b, np.float64),
                         new['g']['params'], state['g']['params'])
    return np.concatenate([x.ravel() for x in jax.tree.leaves(delta)]), m

  pure, m_pure = g_step(None)
  zero, m_zero = g_step(0.0)
  small, m_small = g_step(0.2)
  large, _ = g_step(0.4)
  np.testing.assert_allclose(zero, pure, rtol=1e-5, atol=1e-7)
  assert 'g_inversion' not in m_pure and float(m_small['g_inversion']) != 0.0
  assert np.linalg.norm(small - zero) > 1e-3 * np.linalg.norm(zero)
  np.testing.assert_allclose(large - zero, 2 * (small - zero), rtol=1e-3, atol=1e-6)
  np.testing.assert_allclose(float(m_small['g_loss']) - float(m_zero['g_loss']), 0.2 * float(m_small['g_inversion']),
                             rtol=1e-4)
  # The hinge D step: L_D = E[max(0, 1 − D(x, y))] + E[max(0, 1 + D(G(z), ỹ))].
  assert float(m_pure['d_loss']) >= 0.0 and {'d_real', 'd_fake'} <= set(m_pure)


def _linear_parts():
  a = jnp.asarray(np.random.default_rng(5).normal(size=(6 + 3, 64)) * 0.3, jnp.float32)
  w = jnp.asarray(np.random.default_rng(6).normal(size=(64, 3)), jnp.float32)
  generator = lambda z, y: jax.nn.sigmoid(jnp.concatenate([z, jax.nn.one_hot(y, 3)], -1) @ a).reshape(-1, *SHAPE)
  target = lambda x: x.reshape(x.shape[0], -1) @ w
  return generator, target


def test_the_attack_uses_the_given_identity_loss_on_each_augmented_view():
  generator, target = _linear_parts()
  identity = lambda x, y: 3.0 * jnp.mean(x.reshape(x.shape[0], -1), -1) + y
  z = jax.random.normal(jax.random.key(7), (4, 6))
  y = jnp.array([0, 1, 2, 1])
  key = jax.random.key(8)
  spec = plg_mi.augmentation(stage='attack')

  @jax.jit
  def parts(z, y, key):
    views = [plg_mi.augment(generator(z, y), k, spec) for k in jax.random.split(key, 2)]
    objective = lambda identity: plg_mi.plg_objective(z, y, key, target=target, generator=generator, spec=spec,
                                                      views=2, identity=identity)
    return views, [target(v) for v in views], objective(identity), objective(None)

  views, logits, got, default = parts(z, y, key)
  np.testing.assert_allclose(np.asarray(got), np.asarray(sum(identity(v, y) for v in views)), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(default), sum(_numpy_max_margin(l, np.asarray(y)) for l in logits),
                             rtol=1e-4, atol=1e-5)
  # Through plg_attack: a constant identity loss (zero gradient) is what it logs, and Adam leaves z alone.
  result = plg_mi.plg_attack(target=target, generator=generator, classes=[0, 2], latent_dim=6, mesh=mesh_of(8),
                             key=jax.random.key(9), attacks_per_class=3, iterations=2, log_every=1,
                             identity=lambda x, y: 7.0 + 0.0 * jnp.sum(x, (1, 2, 3)))
  np.testing.assert_allclose(result.losses, [14.0, 14.0])
  np.testing.assert_allclose(result.latents, result.initial_latents, atol=1e-6)
  np.testing.assert_array_equal(result.labels, [0, 0, 0, 2, 2, 2])
  np.testing.assert_allclose(result.initial_images, np.asarray(generator(jnp.asarray(result.initial_latents),
                                                                         jnp.asarray(result.labels))), rtol=1e-5)


def test_plg_end_to_end_on_the_8_device_mesh_and_cgan_resume(tmp_path):
  mesh = mesh_of(8)
  model = TargetNetwork(image_shape=(28, 28, 1), num_classes=5, hidden_widths=(16,), rngs=nnx.Rngs(0))
  graphdef, params, model_state = split_model(model)
  target = latent.target_logits_fn(graphdef, {'params': params, 'model_state': model_state})
  public = np.random.default_rng(10).integers(0, 256, (48, 28, 28, 1), dtype=np.uint8)
  classes = (3, 0, 1)
  # 48 pseudo-labelled images, batch 16: 3 steps an epoch, 6 in all, checkpoints after steps 3 and 6.
  kwargs = dict(public_images=public, target=target, classes=classes, mesh=mesh, seed=0, top_n=16, latent_dim=8,
                batch_size=16, width=4, n_critic=2, log_every=3, checkpoint_every=3, epochs=2)
  plg = plg_mi.train_plg_gan(workdir=str(tmp_path / 'whole'), **kwargs)
  assert plg.classes == classes
  # Pseudo-labels: each class's 16 top images by the target's softmax over the attacked classes' logits.
  logits = np.asarray(jax.jit(target)(jnp.asarray(public, jnp.float32) / 255.0), np.float64)[:, classes]
  probs = np.exp(logits - logits.max(1, keepdims=True))
  probs /= probs.sum(1, keepdims=True)
  reference = [sorted(range(48), key=lambda i: (-probs[i, k], i))[:16] for k in range(3)]
  np.testing.assert_array_equal(plg.indices, np.concatenate(reference))
  np.testing.assert_array_equal(plg.labels, np.repeat(classes, 16))
  records = lambda run: [json.loads(line) for line in open(tmp_path / run / 'metrics.jsonl')]
  assert [r['step'] for r in records('whole')] == [3, 6] and all(r['g_inversion'] != 0 for r in records('whole'))
  # Killed after step 3 (its checkpoint, without step 6's), then rerun: the uninterrupted run's parameters.
  saved = tmp_path / 'whole' / 'checkpoints' / 'gan_plg'
  assert sorted(os.listdir(saved)) == ['3', '6']
  shutil.copytree(saved / '3', tmp_path / 'killed' / 'checkpoints' / 'gan_plg' / '3')
  resumed = plg_mi.train_plg_gan(workdir=str(tmp_path / 'killed'), **kwargs)
  assert [r['step'] for r in records('killed')] == [6]  # it resumed, rather than starting again
  for a, b in ((plg.gan.generator_state, resumed.gan.generator_state),
               (plg.gan.discriminator_state, resumed.gan.discriminator_state)):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6), a, b)

  result = plg_mi.plg_attack(target=target, generator=plg_mi.plg_generator(plg), classes=[0, 3], latent_dim=8,
                             mesh=mesh, key=jax.random.key(0), attacks_per_class=3, iterations=4, log_every=2)
  assert result.images.shape == (6, 28, 28, 1) and result.images.dtype == np.float32
  assert np.all(np.isfinite(result.images)) and 0 <= result.images.min() and result.images.max() <= 1
  assert result.initial_images.shape == (6, 28, 28, 1) and result.losses.shape == (2,)
  assert np.all(np.abs(result.latents - result.initial_latents).max(1) > 0.1)
  np.testing.assert_array_equal(result.labels, [0, 0, 0, 3, 3, 3])
