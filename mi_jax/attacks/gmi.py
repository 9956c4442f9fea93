"""GMI: the generative model-inversion attack (Zhang et al. 2020, "The Secret Revealer").

The attacker trains a WGAN-GP (generator G, critic D) on public images whose
classes do not overlap the private ones (:func:`mi_jax.train.gan.train_gan`
with ``loss='wgan-gp'``), then for every attacked class y searches the
generator's latent space, white-box on the target T's logits. Each attack
of each class is one latent z_i with its own loss

    ℓ(z_i) = λ_i · (−log P_T(y_i | G(z_i)))  −  D(G(z_i)),   z_i ∈ [−c, c]^d

(identity loss weighted by λ_i = 100 and the critic's prior loss, GMI's
``Total_Loss = Prior_Loss + lamda * Iden_Loss``), minimised by SGD with
Nesterov momentum 0.9 from z_i ~ N(0, I), clamping z to [−1, 1] after every
step. The rows share one optimisation (:mod:`mi_jax.attacks.latent`) whose
objective is Σ_i ℓ(z_i), so each latent steps on its own gradient:

    v ← m v − η ∇ℓ(z_i),   z_i ← clip(z_i − m v_prev + (1 + m) v).

GMI's code takes the *mean* over its batch of ``bs`` identities with
lr = 0.02, i.e. a per-latent step η = 0.02 / bs (GMI's attack.py: bs = 100;
the KEDMI and TL-DMI codes: bs = 60, so η = 0.02 / 60 ≈ 3.3e-4, our
default). TL (App. D.3) runs 3000 iterations with 5 attacks per class;
GMI's own script ran 1500 (its ``iter_times``).
"""

from __future__ import annotations

from typing import Callable, Optional

import jax
import numpy as np

from mi_jax.attacks import latent

# GMI's script (attack.py / recovery.py): lamda=100, lr=2e-2 on the mean over bs=60 identities
# (TL-DMI / KEDMI's recovery.py), momentum=0.9, clip_range=1.
REFERENCE_LR, REFERENCE_BATCH = 0.02, 60
DEFAULTS = dict(iterations=3000, learning_rate=REFERENCE_LR / REFERENCE_BATCH, momentum=0.9, lam=100.0, clip=1.0,
                attacks_per_class=5)


def gmi_loss(logits, prior_logit, labels, *, lam: float):
  """Per-example λ·CE(logits, y) − D(G(z))."""
  return lam * latent.identity_loss(logits, labels) - prior_logit


def gmi_objective(images, labels, *, target: Callable, discriminator: Callable, lam: float,
                  identity: Optional[Callable] = None):
  """Per-latent λ·L_id(G(z), y) − D(G(z)): L_id is −log P_T(y | x) unless ``identity`` is given."""
  if identity is None:
    return gmi_loss(target(images), discriminator(images), labels, lam=lam)
  return lam * identity(images, labels) - discriminator(images)


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
    identity: Optional[Callable] = None,
) -> latent.AttackResult:
  """Inverts each of ``classes`` ``attacks_per_class`` times.

  ``identity(images, labels) -> per-example loss`` replaces the identity
  term −log P_T(y | x) (LOMMA's, :func:`mi_jax.attacks.lomma.identity_fn`).

  ``learning_rate`` is the per-latent step η (module docstring), not the
  reference code's lr on a batch mean.

  ``target(images) -> logits``, ``generator(z) -> images`` and
  ``discriminator(images) -> critic score (N,)`` are traceable functions
  (:func:`mi_jax.attacks.latent.target_logits_fn`,
  :func:`mi_jax.train.gan.generator_fn`, :func:`~mi_jax.train.gan.discriminator_fn`).
  """
  labels = latent.class_attack_labels(classes, attacks_per_class)
  init_key, run_key = jax.random.split(key)
  z0 = np.asarray(jax.random.normal(init_key, (len(labels), latent_dim)))

  def loss_fn(z, y, _extras, _key):
    return gmi_objective(generator(z), y, target=target, discriminator=discriminator, lam=lam, identity=identity)

  result = latent.optimize_latents(
      loss_fn=loss_fn, init=z0, labels=labels,
      tx=latent.make_optimizer(name=optimizer, learning_rate=learning_rate, momentum=momentum),
      iterations=iterations, mesh=mesh, key=run_key, project=latent.clip_latents(clip),
      log_every=log_every, writer=writer, phase='gmi')
  generate = lambda z: latent.apply_rows(generator, z, mesh=mesh).astype(np.float32)
  return latent.AttackResult(generate(result.latents), labels, result.latents, result.losses,
                             initial_images=generate(z0), initial_latents=z0)
