"""GMI: the generative model-inversion attack (Zhang et al. 2020, "The Secret Revealer").

The attacker trains a WGAN-GP (generator G, critic D) on public images whose
classes do not overlap the private ones (:func:`mi_jax.train.gan.train_gan`
with ``loss='wgan-gp'``), then for every attacked class y searches the
generator's latent space, white-box on the target T's logits:

    ẑ = argmin_z  λ_i · (−log P_T(y | G(z)))  +  (−D(G(z))),   z ∈ [−c, c]^d

(identity loss weighted by λ_i = 100 and the critic's prior loss, GMI's
``Total_Loss = Prior_Loss + lamda * Iden_Loss``), by SGD with Nesterov
momentum 0.9, lr 0.02, and z clamped to [−1, 1] after every step, from
z ~ N(0, I). TL (App. D.3) runs 3000 iterations with 5 attacks per class;
GMI's own script ran 1500 (its ``iter_times``). Each attack of each class
is one row of the shared latent optimisation (:mod:`mi_jax.attacks.latent`).
"""

from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from mi_jax.attacks import latent

# GMI's script (attack.py / recovery.py): lamda=100, lr=2e-2, momentum=0.9, clip_range=1.
DEFAULTS = dict(iterations=3000, learning_rate=0.02, momentum=0.9, lam=100.0, clip=1.0, attacks_per_class=5)


def gmi_loss(logits, prior_logit, labels, *, lam: float):
  """Per-example λ·CE(logits, y) − D(G(z))."""
  return lam * latent.identity_loss(logits, labels) - prior_logit


def gmi_attack(
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
    momentum: float = DEFAULTS['momentum'],
    lam: float = DEFAULTS['lam'],
    clip: Optional[float] = DEFAULTS['clip'],
    optimizer: str = 'sgd',
    log_every: int = 100,
    writer=None,
) -> latent.AttackResult:
  """Inverts each of ``classes`` ``attacks_per_class`` times.

  ``target(images) -> logits``, ``generator(z) -> images`` and
  ``discriminator(images) -> critic score (N,)`` are traceable functions
  (:func:`mi_jax.attacks.latent.target_logits_fn`,
  :func:`mi_jax.train.gan.generator_fn`, :func:`~mi_jax.train.gan.discriminator_fn`).
  """
  labels = latent.class_attack_labels(classes, attacks_per_class)
  init_key, run_key = jax.random.split(key)
  z0 = np.asarray(jax.random.normal(init_key, (len(labels), latent_dim)))

  def loss_fn(z, y, _extras, _key):
    images = generator(z)
    return gmi_loss(target(images), discriminator(images), y, lam=lam)

  result = latent.optimize_latents(
      loss_fn=loss_fn, init=z0, labels=labels,
      tx=latent.make_optimizer(name=optimizer, learning_rate=learning_rate, momentum=momentum),
      iterations=iterations, mesh=mesh, key=run_key, project=latent.clip_latents(clip),
      log_every=log_every, writer=writer, phase='gmi')
  images = latent.apply_rows(lambda z: generator(z), result.latents, mesh=mesh)
  return latent.AttackResult(np.asarray(images, np.float32), labels, result.latents, result.losses)
