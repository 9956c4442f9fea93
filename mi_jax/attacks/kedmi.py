"""KEDMI: knowledge-enriched distributional model inversion (Chen et al. 2021).

Two changes to GMI. (1) An inversion-specific GAN: its discriminator has K
class logits l(x) over the target's classes and is trained on public images
to predict the target's soft labels p_T(·|x), with real/fake logit
lse(l(x)) (:func:`mi_jax.train.gan.train_gan` with ``loss='kedmi'``).
(2) Instead of one latent per attack it learns a latent *distribution*
N(μ, diag σ²) per (class, attack), by the reparameterisation trick:

    z = μ + σ ⊙ ε,  ε ~ N(0, I),  σ = exp(½ log σ²)
    L(μ, log σ²) = E_ε[ λ · (−log P_T(y | G(z))) + softplus(−lse(l(G(z)))) ]

(the prior term is KEDMI's ``mean(softplus(lse)) − mean(lse)`` =
−log sigmoid(lse), "the discriminator thinks G(z) is real"), one ε per
distribution per iteration, Adam with lr 0.02, λ = 100, μ = 0 and
log σ² = 1 at the start (their ``dist_inversion``). Reconstructions are
samples z clipped to [−c, c] (c = 1, their ``clip_range``); μ is kept in
the same box after every step.
"""

from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from mi_jax.attacks import latent

DEFAULTS = dict(iterations=3000, learning_rate=0.02, lam=100.0, clip=1.0, attacks_per_class=5,
                init_log_var=1.0)


def reparameterize(mu, log_var, key, *, clip: Optional[float] = None):
  """z = μ + exp(½ log σ²) ⊙ ε with ε ~ N(0, I), optionally clipped to [−clip, clip]."""
  eps = jax.random.normal(key, mu.shape, mu.dtype)
  z = mu + jnp.exp(0.5 * log_var) * eps
  return z if clip is None else jnp.clip(z, -clip, clip)


def kedmi_prior_loss(lse_logit):
  """−log sigmoid(lse(l(G(z)))) = softplus(−lse), per example."""
  return jax.nn.softplus(-lse_logit)


def kedmi_attack(
    *,
    target: Callable,
    generator: Callable,
    discriminator: Callable,
    classes,
    latent_dim: int,
    mesh,
    key,
    attacks_per_class: int = DEFAULTS['attacks_per_class'],
    iterations: int = DEFAULTS['iterations'],
    learning_rate: float = DEFAULTS['learning_rate'],
    lam: float = DEFAULTS['lam'],
    clip: Optional[float] = DEFAULTS['clip'],
    init_log_var: float = DEFAULTS['init_log_var'],
    log_every: int = 100,
    writer=None,
) -> latent.AttackResult:
  """Learns N(μ, σ²) per (class, attack); returns one clipped sample of each.

  ``discriminator(images) -> (lse logit, class logits)`` (a class-head
  discriminator from ``train_gan(loss='kedmi')``).
  """
  labels = latent.class_attack_labels(classes, attacks_per_class)
  run_key, sample_key = jax.random.split(key)
  init = {'mu': np.zeros((len(labels), latent_dim), np.float32),
          'log_var': np.full((len(labels), latent_dim), init_log_var, np.float32)}

  def loss_fn(w, y, _extras, step_key):
    z = reparameterize(w['mu'], w['log_var'], step_key, clip=clip)
    images = generator(z)
    lse, _ = discriminator(images)
    return lam * latent.identity_loss(target(images), y) + kedmi_prior_loss(lse)

  result = latent.optimize_latents(
      loss_fn=loss_fn, init=init, labels=labels,
      tx=latent.make_optimizer(name='adam', learning_rate=learning_rate),
      iterations=iterations, mesh=mesh, key=run_key,
      project=latent.clip_latents(clip, keys=('mu',)), log_every=log_every, writer=writer, phase='kedmi')
  z = np.asarray(reparameterize(jnp.asarray(result.latents['mu']), jnp.asarray(result.latents['log_var']),
                                sample_key, clip=clip))
  images = latent.apply_rows(lambda z: generator(z), z, mesh=mesh)
  return latent.AttackResult(np.asarray(images, np.float32), labels, result.latents, result.losses)
