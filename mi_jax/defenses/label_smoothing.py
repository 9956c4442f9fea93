"""LABEL-SMOOTHING, positive and negative (Struppek, Hintersdorf & Kersting,
"Be Careful What You Smooth For: Label Smoothing Can Be a Privacy Shield
but Also a Catalyst for Model Inversion Attacks", ICLR 2024).

The target trains on smoothed labels (Szegedy et al. 2016; the paper's
Sec. 2 definition), with K classes and smoothing factor α:

    y_LS = (1 − α)·y + α/K,
    L_LS = −Σ_k y_LS,k log p_k = (1 − α)·CE(f(x), y) + α·U(x),   U(x) = −(1/K)·Σ_k log p_k(x),

so ∂L_LS/∂logits = p − y_LS. The train step adds it to its cross-entropy
as the regulariser α·(U − CE). The paper's finding: the usual positive α
tightens each class's cluster and makes GAN-prior inversion attacks
*stronger*; a negative α (the true class's target above 1, the others below
0) pushes the non-target log-probabilities apart, blurs what a class's
logit says about its inputs, and defends, at some accuracy cost. The knob
is α; sweep e.g. (0.1, −0.05) to see both sides.

Schedule: training with a negative α from the first step is unstable, so
the authors' code (``train_model.py``, ``ls_scheduler``, 100 epochs) trains
with α = 0 for the first 50 epochs, ramps it linearly over the next 25
and keeps it for the rest. We keep those fractions of ``train.epochs``
(``warmup_fraction`` 0.5, ``ramp_fraction`` 0.25) and change α once per
epoch as they do:

    α(e) = 0                              for e < W,
    α(e) = α·(e + 1 − W)/R                for W ≤ e < W + R,
    α(e) = α                              after,

with W = round(warmup_fraction·E), R = max(1, round(ramp_fraction·E)).
Departure: their ramp divides by (E − 50), not by its 25 epochs, so at
E = 100 it reaches α/2 and then jumps to α; ours reaches α continuously.
A positive α is used from the first step (no schedule), as theirs is
(torch's ``CrossEntropyLoss(label_smoothing=α)``).

K is the number of classes the target is *trained* on. In the GAN-attack
protocol the target keeps a 10-way head but trains on the private digits
only; averaging U over all 10 logits let a negative α push the never-trained
classes' logits down with nothing to oppose it, and the target diverged
within 30 steps (loss −1.7·10³, accuracy at chance; measured). U over the
trained classes (``config.private_classes`` where set) keeps it at 94.6%
in the same 4-epoch run. A negative α remains unbounded below (scaling the
logits of a separable training set raises U for ever), so longer training
still drifts: 20 epochs at Adam 1e-3 reached a loss of −10⁶ and 84%.
"""

from __future__ import annotations

from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import optax
from ml_collections import config_dict

from mi_jax.defenses.registry import Defense, Knob, register
from mi_jax.utils import config_rules as rules


def config_block() -> config_dict.ConfigDict:
  """``config.defense.label_smoothing``."""
  c = config_dict.ConfigDict()
  # The paper's defending factor for its face classifiers; a positive value
  # (0.1, the paper's "standard" smoothing) makes the attack stronger.
  c.alpha = -0.05
  # The authors' schedule for negative α, as fractions of train.epochs
  # (their 50 and 25 of 100 epochs); ignored for α ≥ 0.
  c.warmup_fraction = 0.5
  c.ramp_fraction = 0.25
  return c


def validate(config) -> None:
  """One-line ``ValueError`` for a bad ``defense.label_smoothing`` field."""
  cfg = config.defense.label_smoothing
  # α < 1 keeps the true class's weight 1 − α positive.
  rules.check_fields(cfg, {'alpha': rules.number(below=1.0),
                           'warmup_fraction': rules.number(low=0.0, high=1.0),
                           'ramp_fraction': rules.number(low=0.0, high=1.0)}, 'defense.label_smoothing')
  if cfg.warmup_fraction + cfg.ramp_fraction > 1.0:
    raise ValueError("defense.label_smoothing.warmup_fraction + ramp_fraction must be <= 1, got "
                     f"{cfg.warmup_fraction} + {cfg.ramp_fraction}")


def smoothing_at_epoch(epoch, *, alpha: float, epochs: int, warmup_fraction: float, ramp_fraction: float):
  """α(e) of the module docstring (works on ints and on traced arrays)."""
  if alpha >= 0:
    return jnp.full(jnp.shape(epoch), alpha, jnp.float32)
  warmup = int(round(warmup_fraction * epochs))
  ramp = max(1, int(round(ramp_fraction * epochs)))
  progress = jnp.clip((jnp.asarray(epoch, jnp.float32) + 1 - warmup) / ramp, 0.0, 1.0)
  return jnp.where(jnp.asarray(epoch) < warmup, 0.0, alpha * progress)


def make_extra_loss(*, alpha: float, epochs: int, steps_per_epoch: Optional[int], warmup_fraction: float,
                    ramp_fraction: float, trained_classes: Optional[Sequence[int]] = None):
  """``extra_loss(activations, batch, key) -> (α(e)·(U − CE), measurements)``: added to
  the step's cross-entropy it makes the loss L_LS at the epoch e of ``batch['step']``.

  ``trained_classes``: the logits U averages over (the module docstring's K);
  all of them when None."""
  if alpha < 0 and not steps_per_epoch:
    raise ValueError("defense.label_smoothing with alpha < 0 needs the steps per epoch for its schedule "
                     "(the training data's size); got none")
  alpha = float(alpha)
  columns = None if trained_classes is None else jnp.asarray(sorted(set(int(c) for c in trained_classes)))

  def extra_loss(activations, batch, key):
    del key
    epoch = batch['step'] // steps_per_epoch if steps_per_epoch else 0
    current = smoothing_at_epoch(epoch, alpha=alpha, epochs=epochs, warmup_fraction=warmup_fraction,
                                 ramp_fraction=ramp_fraction)
    logits, labels = activations['logits'], batch['label']
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    log_p = jax.nn.log_softmax(logits)
    uniform = -jnp.mean(log_p if columns is None else log_p[:, columns], axis=-1)
    return current * jnp.mean(uniform - ce), {'label_smoothing_alpha': current}

  return extra_loss


def extra_loss_of(config, num_classes, steps_per_epoch=None):
  cfg = config.defense.label_smoothing
  # The GAN-attack protocol trains a num_classes-way head on its private classes only.
  trained = config.get('private_classes', None) or range(num_classes)
  return make_extra_loss(alpha=cfg.alpha, epochs=config.train.epochs, steps_per_epoch=steps_per_epoch,
                         warmup_fraction=cfg.warmup_fraction, ramp_fraction=cfg.ramp_fraction,
                         trained_classes=tuple(trained))


register(Defense(
    name='label-smoothing',
    summary='training on smoothed labels; a negative factor defends (Struppek et al., ICLR 2024)',
    block='label_smoothing', config_block=config_block, validate=validate,
    knob=Knob('label_smoothing.alpha', 'α', signed=True),
    extra_loss=extra_loss_of,
))
