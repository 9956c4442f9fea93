"""Shared latent optimisation: sharded equals unsharded, padding, projection, convergence."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mi_jax.attacks import latent
from tests.helpers import mesh_of

W = jax.random.normal(jax.random.key(0), (6, 4))


def _loss(z, y, extras, key):
  # A per-row problem with noise (as the attacks' transforms/reparameterisation).
  noise = 0.01 * jax.random.normal(key, z.shape)
  logits = jnp.tanh(z + noise) @ W
  return latent.identity_loss(logits, y) + (0.0 if extras is None else 0.1 * jnp.sum(extras * z, -1))


@pytest.mark.parametrize('rows', [16, 13])  # 13: padded to 16 on 8 devices
def test_sharded_equals_unsharded(rows):
  init = np.asarray(jax.random.normal(jax.random.key(1), (rows, 6)))
  labels = np.arange(rows) % 4
  extras = np.asarray(jax.random.normal(jax.random.key(2), (rows, 6)))
  runs = []
  for n in (1, 8):
    runs.append(latent.optimize_latents(
        loss_fn=_loss, init=init, labels=labels, extras=extras,
        tx=latent.make_optimizer(name='sgd', learning_rate=0.1), iterations=12, mesh=mesh_of(n),
        key=jax.random.key(3), project=latent.clip_latents(1.0), log_every=5))
  np.testing.assert_allclose(runs[0].latents, runs[1].latents, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(runs[0].losses, runs[1].losses, rtol=1e-5, atol=1e-7)  # a sum, in another order
  assert runs[0].latents.shape == (rows, 6) and len(runs[0].losses) == 3
  assert np.abs(runs[1].latents).max() <= 1.0 + 1e-6


def test_rows_do_not_interact_and_the_loss_falls():
  init = np.zeros((8, 6), np.float32)
  labels = np.arange(8) % 4
  full = latent.optimize_latents(loss_fn=_loss, init=init, labels=labels,
                                 tx=latent.make_optimizer(name='adam', learning_rate=0.05), iterations=30,
                                 mesh=mesh_of(4), key=jax.random.key(0), log_every=10)
  assert full.losses[-1] < full.losses[0] - 0.1
  # Mean reduction over rows: with Adam (scale-free) a row's path does not depend on the others.
  alone = latent.optimize_latents(loss_fn=_loss, init=init[:4], labels=labels[:4],
                                  tx=latent.make_optimizer(name='adam', learning_rate=0.05), iterations=30,
                                  mesh=mesh_of(4), key=jax.random.key(0), log_every=10)
  np.testing.assert_allclose(alone.latents, full.latents[:4], atol=2e-3)


def test_clip_and_optimizer_validation():
  project = latent.clip_latents(0.5, keys=('mu',))
  out = project({'mu': jnp.array([2.0, -2.0]), 'log_var': jnp.array([2.0, 2.0])})
  np.testing.assert_allclose(out['mu'], [0.5, -0.5])
  np.testing.assert_allclose(out['log_var'], [2.0, 2.0])
  with pytest.raises(ValueError, match='optimizer'):
    latent.make_optimizer(name='lbfgs', learning_rate=0.1)
  with pytest.raises(ValueError, match='clip'):
    latent.clip_latents(-1.0)
  np.testing.assert_array_equal(latent.class_attack_labels([3, 1], 2), [3, 3, 1, 1])


def _deterministic_loss(z, y, extras, key):
  del extras, key
  return latent.identity_loss(jnp.tanh(z) @ W, y) + 0.5 * jnp.sum(z ** 2, -1)


@pytest.mark.parametrize('name', ['sgd', 'adam'])
def test_a_latent_follows_the_same_path_alone_and_in_a_padded_batch(name):
  """Sum over rows: each latent's gradient is its own loss's gradient, whatever shares the batch."""
  rng = np.random.default_rng(7)
  init = rng.normal(size=(13, 6)).astype(np.float32) * 2.0  # some coordinates outside the box
  labels = np.arange(13) % 4
  run = lambda rows, devices: latent.optimize_latents(
      loss_fn=_deterministic_loss, init=init[rows], labels=labels[rows],
      tx=latent.make_optimizer(name=name, learning_rate=0.05), iterations=25, mesh=mesh_of(devices),
      key=jax.random.key(0), project=latent.clip_latents(1.5), log_every=5)
  alone = run([5], 1)
  batch = run(list(range(13)), 8)  # 13 rows padded to 16 on 8 devices
  np.testing.assert_allclose(batch.latents[5:6], alone.latents, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(batch.per_example_loss[5:6], alone.per_example_loss, rtol=1e-5)


def test_first_sgd_step_is_the_rows_own_gradient_at_the_unprojected_start():
  """GMI's loop: the gradient is taken at z₀ ~ N(0, I) as drawn, then z ← clip(z − (1+m)·lr·∇ℓᵢ(z₀))."""
  init = np.random.default_rng(8).normal(size=(10, 6)).astype(np.float32) * 2.0
  labels = np.arange(10) % 4
  result = latent.optimize_latents(
      loss_fn=_deterministic_loss, init=init, labels=labels,
      tx=latent.make_optimizer(name='sgd', learning_rate=0.1, momentum=0.9), iterations=1, mesh=mesh_of(2),
      key=jax.random.key(0), project=latent.clip_latents(1.0), log_every=1)
  grads = jax.grad(lambda z: _deterministic_loss(z, labels, None, None).sum())(jnp.asarray(init))
  want = np.clip(init - (1 + 0.9) * 0.1 * np.asarray(grads), -1.0, 1.0)
  np.testing.assert_allclose(result.latents, want, rtol=1e-5, atol=1e-6)
