"""PPA pieces: Poincaré loss, transforms, candidate selection, and one tiny end-to-end run."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mi_jax.attacks import ppa
from tests.helpers import mesh_of


def test_poincare_loss_matches_its_formula():
  logits = np.array([[2.0, -1.0, 0.5], [0.1, 0.2, -3.0]])
  labels = np.array([0, 2])
  expected = []
  for l, y in zip(logits, labels):
    u = l / np.abs(l).sum()
    v = np.clip(np.eye(3)[y] - 1e-4, 0, 1)
    delta = 2 * np.sum((u - v) ** 2) / ((1 - u @ u) * (1 - v @ v))
    expected.append(np.arccosh(1 + delta))
  np.testing.assert_allclose(ppa.poincare_loss(jnp.asarray(logits), jnp.asarray(labels)), expected, rtol=1e-4)  # float32: 1 − ‖v‖² ≈ 2ξ
  # Closer to the target class → smaller distance.
  near = ppa.poincare_loss(jnp.array([[5.0, 0.1, 0.1]]), jnp.array([0]))
  far = ppa.poincare_loss(jnp.array([[0.1, 5.0, 0.1]]), jnp.array([0]))
  assert float(near[0]) < float(far[0])


def test_select_candidates_picks_the_highest_per_class():
  scores = np.array([0.1, 0.9, 0.5, 0.3, 0.8, 0.2, 0.7])
  labels = np.array([0, 0, 0, 1, 1, 1, 1])
  chosen = ppa.select_candidates(scores, labels, 2)
  np.testing.assert_array_equal(chosen, [1, 2, 4, 6])
  with pytest.raises(ValueError, match='k must be'):
    ppa.select_candidates(scores, labels, 4)


def test_transforms():
  images = jax.random.uniform(jax.random.key(0), (3, 12, 12, 1))
  identity = ppa.TransformSpec(scale=(1.0, 1.0), ratio=(1.0, 1.0), rotation_degrees=0.0)
  np.testing.assert_allclose(ppa.random_transform(images, jax.random.key(1), identity), images, atol=1e-5)
  flip = ppa.TransformSpec(scale=(1.0, 1.0), ratio=(1.0, 1.0), rotation_degrees=0.0, flip_prob=1.0)
  np.testing.assert_allclose(ppa.random_transform(images, jax.random.key(1), flip), images[:, :, ::-1], atol=1e-5)
  moved = ppa.random_transform(images, jax.random.key(1), ppa.TransformSpec(scale=(0.5, 0.6), rotation_degrees=20))
  assert moved.shape == images.shape and float(jnp.abs(moved - images).mean()) > 0.05
  with pytest.raises(ValueError, match='scale'):
    ppa.TransformSpec(scale=(0.5, 1.5))


def test_ppa_attack_moves_toward_the_class():
  """Linear 'target' on a 2-pixel image; the attack's final images are classified as attacked.

  Logits (3a, 3b, 1) from the pixel means a, b: the Poincaré loss of class 0 falls smoothly as a → 1,
  b → 0 (two logits ±3(a − b) would L1-normalise to (±½, ∓½) whatever a, b: a constant loss)."""
  def target(x):
    means = jnp.mean(x.reshape(x.shape[0], 4, 4, 2), axis=(1, 2))
    return jnp.concatenate([3.0 * means, jnp.ones((x.shape[0], 1))], -1)
  generator = lambda z: jax.nn.sigmoid(jnp.tile(z[:, None, None, :2], (1, 4, 4, 1)))
  result = ppa.ppa_attack(target=target, generator=generator, classes=[0, 1], latent_dim=2, generator_classes=0,
                          mesh=mesh_of(2), key=jax.random.key(0), candidates=4, initial_candidates=8, final=2,
                          iterations=20, learning_rate=0.1, selection_transforms=4, log_every=10,
                          transform=ppa.TransformSpec(rotation_degrees=0.0))
  assert result.images.shape == (4, 4, 4, 2)
  np.testing.assert_array_equal(result.labels, [0, 0, 1, 1])
  np.testing.assert_array_equal(np.argmax(np.asarray(target(result.images)), -1), result.labels)
  assert result.losses[-1] < result.losses[0] - 0.1
  # Baseline: prior draws before the target-guided selection, one per reconstruction.
  assert result.initial_images.shape == result.images.shape
  np.testing.assert_allclose(result.initial_images, np.asarray(generator(jnp.asarray(result.initial_latents['z']))),
                             rtol=1e-6)
  assert not np.allclose(result.initial_latents['z'], result.latents['z'])
