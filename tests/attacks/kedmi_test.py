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
  clipped = kedmi.reparameterize(mu, log_var, jax.random.key(0), clip=1.0)
  assert float(jnp.abs(clipped).max()) <= 1.0


def test_prior_loss_is_minus_log_sigmoid():
  lse = jnp.array([-3.0, 0.0, 4.0])
  np.testing.assert_allclose(kedmi.kedmi_prior_loss(lse), -jnp.log(jax.nn.sigmoid(lse)), rtol=1e-5)
  # KEDMI's batch form: mean(softplus(lse)) − mean(lse).
  np.testing.assert_allclose(kedmi.kedmi_prior_loss(lse).mean(), jnp.mean(jax.nn.softplus(lse)) - jnp.mean(lse),
                             rtol=1e-5)


def test_kedmi_attack_learns_class_distributions():
  prototypes = jnp.array([[1.0, 0.0, 0.0, 1.0], [0.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
  generator = lambda z: jnp.tanh(z).reshape(z.shape[0], 2, 2, 1) * 0.5 + 0.5
  target = lambda x: -10.0 * jnp.sum((x.reshape(x.shape[0], 1, -1) - prototypes) ** 2, -1)
  discriminator = lambda x: (jnp.zeros(x.shape[0]), jnp.zeros((x.shape[0], 3)))
  result = kedmi.kedmi_attack(target=target, generator=generator, discriminator=discriminator, classes=[0, 1, 2],
                              latent_dim=4, mesh=mesh_of(2), key=jax.random.key(0), attacks_per_class=2,
                              iterations=100, learning_rate=0.1, clip=2.0, log_every=20)
  assert set(result.latents) == {'mu', 'log_var'} and result.latents['mu'].shape == (6, 4)
  assert np.abs(result.latents['mu']).max() <= 2.0
  predicted = np.argmax(np.asarray(target(jnp.asarray(result.images))), -1)
  assert np.mean(predicted == result.labels) >= 5 / 6
  assert result.losses[-1] < result.losses[0]
