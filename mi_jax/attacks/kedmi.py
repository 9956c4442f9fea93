"""KEDMI: knowledge-enriched distributional model inversion (Chen et al. 2021).

Two changes to GMI. (1) An inversion-specific GAN: its discriminator has K
class logits l(x) over the target's classes and is trained on public images
to predict the target's soft labels p_T(·|x), with real/fake logit
lse(l(x)) (:func:`mi_jax.train.gan.train_gan` with ``loss='kedmi'``).
(2) Distributional recovery (Sec. 3.2): instead of one latent per attack it
learns one latent *distribution* N(μ, diag σ²) per attacked class, by the
reparameterisation trick. Each distribution's loss, with one fresh
ε ~ N(0, I) per distribution per iteration, is

    z = μ + σ ⊙ ε,  σ = exp(½ log σ²)
    ℓ(μ, log σ²; ε) = λ · (−log P_T(y | G(z))) + softplus(−lse(l(G(z))))

exactly as :func:`kedmi_loss` computes it: z is *not* clamped, so every
coordinate of μ and log σ² gets the pathwise gradient (∂z/∂μ = 1,
∂z/∂log σ² = ½ σ ε) and μ is not projected. The prior term is KEDMI's
``mean(softplus(lse)) − mean(lse)`` per row, = softplus(−lse) =
−log sigmoid(lse), "the discriminator thinks G(z) is real". The reference
(``dist_inversion``, SCccc21/Knowledge-Enriched-DMI) optimises the batch
mean of ℓ with Adam, lr 0.02, λ = 100, from μ = 0, log σ² = 1; its
``torch.clamp(z, -clip_range, clip_range)`` after each step only affects
the image it logs, and the images it evaluates are ``num_seeds = 5``
unclamped samples z = μ + σ ε of each learned distribution. We do the same:
:func:`kedmi_attack` returns ``samples_per_class`` unclamped samples per
class. (Adam normalises each coordinate, so our sum over distributions,
see :mod:`mi_jax.attacks.latent`, takes the reference's steps up to Adam's ε.
The TL-DMI code's variant clamps z inside the loss; we follow the paper.)
"""

from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from mi_jax.attacks import latent

DEFAULTS = dict(iterations=3000, learning_rate=0.02, lam=100.0, samples_per_class=5, init_log_var=1.0)


def reparameterize(mu, log_var, key):
  """z = μ + exp(½ log σ²) ⊙ ε with ε ~ N(0, I) drawn from ``key`` (unclamped)."""
  eps = jax.random.normal(key, mu.shape, mu.dtype)
  return mu + jnp.exp(0.5 * log_var) * eps


def kedmi_prior_loss(lse_logit):
  """−log sigmoid(lse(l(G(z)))) = softplus(−lse), per example."""
  return jax.nn.softplus(-lse_logit)


def kedmi_loss(params, labels, key, *, target: Callable, generator: Callable, discriminator: Callable, lam: float,
               identity: Optional[Callable] = None):
  """Per-distribution λ·CE(T(G(z)), y) + softplus(−lse(l(G(z)))), z = μ + σ ε (module docstring).

  ``params = {'mu': (rows, d), 'log_var': (rows, d)}``; ε is
  ``jax.random.normal(key, mu.shape)``. ``identity(images, labels)``
  replaces the CE term (LOMMA's, :func:`mi_jax.attacks.lomma.identity_fn`).
  """
  images = generator(reparameterize(params['mu'], params['log_var'], key))
  lse, _ = discriminator(images)
  term = latent.identity_loss(target(images), labels) if identity is None else identity(images, labels)
  return lam * term + kedmi_prior_loss(lse)


def kedmi_attack(
    *,
    target: Callable,
    generator: Callable,
    discriminator: Callable,
    classes,
    latent_dim: int,
    mesh,
    key,
    samples_per_class: int = DEFAULTS['samples_per_class'],
    iterations: int = DEFAULTS['iterations'],
    learning_rate: float = DEFAULTS['learning_rate'],
    lam: float = DEFAULTS['lam'],
    init_log_var: float = DEFAULTS['init_log_var'],
    log_every: int = 100,
    writer=None,
    identity: Optional[Callable] = None,
) -> latent.AttackResult:
  """Learns N(μ, σ²) per class; returns ``samples_per_class`` unclamped samples of each.

  ``discriminator(images) -> (lse logit, class logits)`` (a class-head
  discriminator from ``train_gan(loss='kedmi')``). The baseline
  ``initial_images`` are G at samples of the *initial* distributions
  N(0, e^{init_log_var} I) with the same ε as the reconstructions.
  """
  if samples_per_class < 1:
    raise ValueError(f"samples_per_class must be >= 1, got {samples_per_class!r}")
  classes = np.asarray(classes, np.int64)
  run_key, sample_key = jax.random.split(key)
  init = {'mu': np.zeros((len(classes), latent_dim), np.float32),
          'log_var': np.full((len(classes), latent_dim), init_log_var, np.float32)}

  def loss_fn(w, y, _extras, step_key):
    return kedmi_loss(w, y, step_key, target=target, generator=generator, discriminator=discriminator, lam=lam,
                      identity=identity)

  result = latent.optimize_latents(
      loss_fn=loss_fn, init=init, labels=classes,
      tx=latent.make_optimizer(name='adam', learning_rate=learning_rate),
      iterations=iterations, mesh=mesh, key=run_key, log_every=log_every, writer=writer, phase='kedmi')
  # samples_per_class draws of each distribution, class-major like the other attacks' rows.
  labels = latent.class_attack_labels(classes, samples_per_class)
  sample = lambda w: np.asarray(reparameterize(*(jnp.repeat(jnp.asarray(w[k]), samples_per_class, axis=0)
                                                 for k in ('mu', 'log_var')), sample_key))
  z, z0 = sample(result.latents), sample(init)
  generate = lambda z: latent.apply_rows(generator, z, mesh=mesh).astype(np.float32)
  return latent.AttackResult(generate(z), labels, {**result.latents, 'z': z}, result.losses,
                             initial_images=generate(z0), initial_latents=z0)
