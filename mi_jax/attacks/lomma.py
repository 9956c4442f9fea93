"""LOMMA (Nguyen, Tran, Yang & Cheung, CVPR 2023, "Re-thinking Model
Inversion Attacks Against Deep Neural Networks"): two changes to a GAN-prior
attack's identity loss, switched on for GMI and KEDMI as the attacks
``gmi+lomma`` and ``kedmi+lomma``.

1. **Logit loss** (the paper's L_logit, Sec. 4). Cross-entropy keeps
   improving by pushing the *other* classes' logits down once the target
   class wins, without making the image more like the class. LOMMA
   maximises the target class's logit itself, with a regulariser that keeps
   the penultimate features φ_T(x) near those of natural images:

       L_id(x, y) = −T_y(x) + λ_reg · (1/d) ‖φ_T(x) − p_reg‖²,

   p_reg the mean of φ_T over (up to 5000) public images. The authors' code
   (``attack.py``: ``get_act_reg``, ``reg_loss``) draws a reparameterised
   sample around that mean and then overwrites it with the mean itself, so
   the mean is what it uses, and so do we; λ_reg = 1 (their attack configs'
   ``lam``).
2. **Model augmentation** (L_aug, Sec. 5): K students S_k distilled from
   the target on the public images (KL(softmax(T/τ) ‖ softmax(S_k/τ))·τ²,
   τ = 1, their ``train_augmodel``), and the identity term averaged over the
   target and the students; the feature regulariser uses the target alone:

       L_id(x, y) = (1/(K+1)) Σ_{M ∈ {T, S_1..S_K}} ℓ(M(x), y) + λ_reg · (1/d) ‖φ_T(x) − p_reg‖²,

   with ℓ the logit loss (−M_y) or, with the logit loss off, cross-entropy.
   The authors' students are other architectures than the target
   (EfficientNet-B0..B2 for a VGG16 or IR152); ours are the target's MLP
   family at other widths.

The attack then minimises its own prior term plus λ·L_id per latent (GMI:
λ·L_id − D(G(z)); KEDMI: λ·L_id + softplus(−lse)), exactly where it had
λ·CE. As everywhere in :mod:`mi_jax.attacks.latent`, the loss is per
latent (the authors average over their batch).
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mi_jax.attacks import latent
from mi_jax.train.state import merge_model, split_model

VARIANTS = ('logit', 'aug', 'both')  # the authors' L_logit, L_aug and "ours"
DEFAULTS = dict(variant='both', reg_weight=1.0, p_reg_images=5000, students=3, temperature=1.0)


def logit_identity_loss(logits, labels):
  """−T_y(x) per example: the target class's raw logit, maximised."""
  return -jnp.take_along_axis(logits, labels[:, None], axis=-1)[:, 0]


def feature_regulariser(features, p_reg):
  """(1/d) ‖φ(x) − p_reg‖² per example."""
  return jnp.mean(jnp.square(features - p_reg), axis=-1)


def feature_mean(activations_fn: Callable, images: np.ndarray, *, limit: int, batch_size: int, mesh) -> np.ndarray:
  """p_reg: the mean penultimate feature of the first ``limit`` images (uint8 NHWC)."""
  from mi_jax.train.gan import to_unit
  from mi_jax.train.inference import apply_in_batches
  images = images[:limit]
  features = apply_in_batches(jax.jit(lambda x: activations_fn(to_unit(x))['last_hidden']), (images,),
                              batch_size=batch_size, mesh=mesh)
  return np.asarray(features, np.float64).mean(axis=0).astype(np.float32)


def identity_fn(*, target_activations: Callable, students: Sequence[Callable] = (), logit_loss: bool,
                reg_weight: float, p_reg) -> Callable:
  """``identity(images [0, 1], labels) -> per-example L_id`` (module docstring).

  ``target_activations(images) -> {'last_hidden': φ_T, 'logits': T}``;
  ``students``: ``images -> logits`` functions (empty: no augmentation).
  Without the logit loss the regulariser is off too (the authors' L_aug
  alone: cross-entropy averaged over the models).
  """
  term = logit_identity_loss if logit_loss else latent.identity_loss
  p_reg = jnp.asarray(p_reg) if p_reg is not None else None
  if logit_loss and p_reg is None:
    raise ValueError("the logit loss needs p_reg (the mean penultimate feature of public images)")

  def identity(images, labels):
    acts = target_activations(images)
    losses = [term(acts['logits'], labels)] + [term(student(images), labels) for student in students]
    loss = sum(losses) / len(losses)
    if logit_loss:
      loss = loss + reg_weight * feature_regulariser(acts['last_hidden'], p_reg)
    return loss

  return identity


def make_distillation_step(graphdef, tx: optax.GradientTransformation, *, temperature: float = 1.0):
  """A train step of ``mi_jax.train.classifier.train_classifier`` whose
  ``batch['label']`` holds the teacher's logits: KL(softmax(t/τ) ‖ softmax(s/τ))·τ², batch mean."""

  def step(state, batch, rng):
    del rng

    def loss_fn(params):
      model = merge_model(graphdef, params, state['model_state'])
      student = model(batch['image'], train=True)
      teacher = jax.nn.log_softmax(batch['label'] / temperature)
      kl = jnp.sum(jnp.exp(teacher) * (teacher - jax.nn.log_softmax(student / temperature)), axis=-1)
      _, _, model_state = split_model(model)
      return jnp.mean(kl) * temperature ** 2, (student, model_state)

    (loss, (student, model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state['params'])
    updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
    params = optax.apply_updates(state['params'], updates)
    agreement = jnp.mean(jnp.argmax(student, -1) == jnp.argmax(batch['label'], -1))
    return ({'step': state['step'] + 1, 'params': params, 'model_state': model_state, 'opt_state': opt_state},
            {'loss': loss, 'agreement': agreement})

  return step
