"""KEDMI: reparameterisation, prior loss, and a tiny attack run."""

import jax
import jax.numpy as jnp
import numpy as np

from mi_jax.attacks import kedmi
from tests.helpers import mesh_of


def test_reparameterize_statistics_and_gradients():
  mu = jnp.full((20000, 2), jnp.array([0.5, -1.0]))
  log_var = jnp.full((20000, 2), jnp.log(jnp.array([0.25, 4.0])))
  z = kedmi.reparameterize(mu, log_var, jax.random.key(0))
  np.testing.assert_allclose(z.mean(0), [0.5, -1.0], atol=0.05)
  np.testing.assert_allclose(z.std(0), [0.5, 2.0], rtol=0.03)
  # Same key → same ε: z − μ = σ ε exactly.
  eps = jax.random.normal(jax.random.key(0), mu.shape)
  np.testing.assert_allclose(z, mu + jnp.exp(0.5 * log_var) * eps, rtol=1e-6)
  # Pathwise gradients: ∂z/∂μ = 1, ∂z/∂logσ² = ½ σ ε.
  g_mu, g_lv = jax.grad(lambda m, l: kedmi.reparameterize(m, l, jax.random.key(0)).sum(), argnums=(0, 1))(mu, log_var)
  np.testing.assert_allclose(g_mu, 1.0)
  np.testing.assert_allclose(g_lv, 0.5 * jnp.exp(0.5 * log_var) * eps, rtol=1e-5)


def test_prior_loss_is_minus_log_sigmoid():
  lse = jnp.array([-3.0, 0.0, 4.0])
  np.testing.assert_allclose(kedmi.kedmi_prior_loss(lse), -jnp.log(jax.nn.sigmoid(lse)), rtol=1e-5)
  # KEDMI's batch form: mean(softplus(lse)) − mean(lse).
  np.testing.assert_allclose(kedmi.kedmi_prior_loss(lse).mean(), jnp.mean(jax.nn.softplus(lse)) - jnp.mean(lse),
                             rtol=1e-5)


# A linear 'generator', target and class-head discriminator: non-zero gradients everywhere.
_RNG = np.random.default_rng(0)
A, W, V = _RNG.normal(size=(6, 4)), _RNG.normal(size=(4, 3)), _RNG.normal(size=(4, 3))


def _generator(z):
  return (z @ jnp.asarray(A, jnp.float32)).reshape(z.shape[0], 2, 2, 1)


def _target(x):
  return x.reshape(x.shape[0], -1) @ jnp.asarray(W, jnp.float32)


def _discriminator(x):
  class_logits = x.reshape(x.shape[0], -1) @ jnp.asarray(V, jnp.float32)
  return jax.nn.logsumexp(class_logits, -1), class_logits


def _toy():
  return _generator, _target, _discriminator


def test_kedmi_loss_is_the_documented_expression():
  """λ·CE(T(G(μ + σε)), y) + softplus(−lse(l(G(μ + σε)))), ε = normal(key), z unclamped; float64 NumPy."""
  rng = np.random.default_rng(1)
  params = {'mu': jnp.asarray(rng.normal(size=(5, 6)), jnp.float32),
            'log_var': jnp.asarray(rng.normal(size=(5, 6)), jnp.float32)}
  labels = np.array([0, 1, 2, 0, 1])
  key = jax.random.key(3)
  got = kedmi.kedmi_loss(params, jnp.asarray(labels), key, target=_target, generator=_generator,
                         discriminator=_discriminator, lam=7.0)
  eps = np.asarray(jax.random.normal(key, (5, 6)), np.float64)
  z = np.asarray(params['mu'], np.float64) + np.exp(0.5 * np.asarray(params['log_var'], np.float64)) * eps
  assert np.abs(z).max() > 1.0  # checked outside the old [−1, 1] box too
  x = z @ A
  logits, class_logits = x @ W, x @ V
  log_softmax = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  lse = np.log(np.exp(class_logits).sum(-1))
  want = 7.0 * -log_softmax[np.arange(5), labels] + np.log1p(np.exp(-lse))
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_gradient_reaches_mu_where_the_sample_is_outside_the_box():
  generator, target, discriminator = _toy()
  params = {'mu': jnp.zeros((4, 6)), 'log_var': jnp.ones((4, 6))}  # KEDMI's start: σ = e^½ ≈ 1.65
  key = jax.random.key(0)
  eps = np.asarray(jax.random.normal(key, (4, 6)))
  outside = np.abs(np.exp(0.5) * eps) > 1.0
  assert outside.sum() >= 5
  loss = lambda p: kedmi.kedmi_loss(p, jnp.array([0, 1, 2, 0]), key, target=target, generator=generator,
                                    discriminator=discriminator, lam=100.0).sum()
  grads = jax.grad(loss)(params)
  assert np.all(np.abs(np.asarray(grads['mu']))[outside] > 1e-6)
  # Pathwise: ∂ℓ/∂log σ² = ½ σ ε ⊙ ∂ℓ/∂z = ½ σ ε ⊙ ∂ℓ/∂μ.
  np.testing.assert_allclose(grads['log_var'], 0.5 * np.exp(0.5) * eps * np.asarray(grads['mu']), rtol=1e-4,
                             atol=1e-6)


def test_every_mu_coordinate_moves_on_the_first_adam_step():
  """Adam's first step is −lr·g/(|g| + ε) ≈ −lr·sign(g): every coordinate moves unless its gradient is 0."""
  generator, target, discriminator = _toy()
  result = kedmi.kedmi_attack(target=target, generator=generator, discriminator=discriminator, classes=[0, 1, 2],
                              latent_dim=6, mesh=mesh_of(2), key=jax.random.key(0), samples_per_class=2,
                              iterations=1, learning_rate=0.1, log_every=1)
  np.testing.assert_allclose(np.abs(result.latents['mu']), 0.1, rtol=1e-3)


def test_mu_and_the_evaluated_samples_are_not_projected():
  """A target that rewards a large first pixel pulls μ far beyond ±1; the samples stay unclamped."""
  generator = lambda z: z[:, :4].reshape(z.shape[0], 2, 2, 1)
  target = lambda x: jnp.stack([x[:, 0, 0, 0], -x[:, 0, 0, 0]], -1)  # CE = softplus(−2 z₀): never flat
  discriminator = lambda x: (jnp.zeros(x.shape[0]), jnp.zeros((x.shape[0], 2)))
  result = kedmi.kedmi_attack(target=target, generator=generator, discriminator=discriminator, classes=[0],
                              latent_dim=4, mesh=mesh_of(1), key=jax.random.key(0), samples_per_class=3,
                              iterations=60, learning_rate=0.2, lam=1.0, log_every=20)
  assert result.latents['mu'][0, 0] > 2.0  # the old loop kept μ in [−1, 1]
  assert result.latents['z'].shape == (3, 4) and result.latents['z'][:, 0].max() > 1.0
  np.testing.assert_allclose(result.images[:, 0, 0, 0], result.latents['z'][:, 0], rtol=1e-6)


def test_kedmi_attack_learns_class_distributions():
  prototypes = jnp.array([[1.0, 0.0, 0.0, 1.0], [0.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
  generator = lambda z: jnp.tanh(z).reshape(z.shape[0], 2, 2, 1) * 0.5 + 0.5
  target = lambda x: -10.0 * jnp.sum((x.reshape(x.shape[0], 1, -1) - prototypes) ** 2, -1)
  discriminator = lambda x: (jnp.zeros(x.shape[0]), jnp.zeros((x.shape[0], 3)))
  result = kedmi.kedmi_attack(target=target, generator=generator, discriminator=discriminator, classes=[0, 1, 2],
                              latent_dim=4, mesh=mesh_of(2), key=jax.random.key(0), samples_per_class=4,
                              iterations=100, learning_rate=0.1, log_every=20)
  # One distribution per class, samples_per_class samples of each, class-major.
  assert set(result.latents) == {'mu', 'log_var', 'z'} and result.latents['mu'].shape == (3, 4)
  np.testing.assert_array_equal(result.labels, np.repeat([0, 1, 2], 4))
  assert result.images.shape == result.initial_images.shape == (12, 2, 2, 1)
  predicted = np.argmax(np.asarray(target(jnp.asarray(result.images))), -1)
  assert np.mean(predicted == result.labels) >= 10 / 12
  assert result.losses[-1] < result.losses[0]
  # The baseline: the same ε through the initial N(0, e·I).
  eps = (result.latents['z'] - np.repeat(result.latents['mu'], 4, 0)) / np.exp(
      0.5 * np.repeat(result.latents['log_var'], 4, 0))
  np.testing.assert_allclose(result.initial_latents, np.exp(0.5) * eps, rtol=1e-4, atol=1e-5)
