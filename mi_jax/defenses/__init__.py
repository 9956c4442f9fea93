"""Defenses: each one changes the target network (a front of layers, noise
hooks, a bottleneck head), adds a loss term to the train step, or brings its
own training recipe; all plug into the same target, train step and attack.

* ``build_target(config, image_shape, num_classes, rngs)`` is the one place
  that turns ``config.defense`` into a model;
* ``extra_loss_for(config)`` is the regulariser for
  ``make_classifier_step(graphdef, tx, extra_loss=...)`` (None: plain CE);
* ``config_blocks()`` are the per-defense hyperparameter blocks, mounted as
  ``config.defense.<name with '_'>``; ``validate(config)`` checks the active
  defense's block with one-line ``ValueError``s;
* ``RECIPES``: defenses that replace supervised training altogether
  (DP-SGD, transfer learning, GAN augmentation, GAN-opt), name → train
  function; registered by their own modules.
"""

from __future__ import annotations

from typing import Callable

from flax import nnx

from mi_jax.defenses import bido, dp_sgd, gan_augmentation, gan_opt, mid, noise, nopeek, sparse_coding, transfer
from mi_jax.defenses.sparse_coding import SparseGuardFront, SparseStandardFront
from mi_jax.models.target import TargetNetwork

# name → front constructor (None: no front layers). Every selectable
# ``config.defense.name`` is a key here.
DEFENSES = {
    'no-defense': None,
    'sparse-standard': SparseStandardFront,
    'sparse-guard': SparseGuardFront,
    'gaussian-noise': None,
    'laplace-noise': None,
    'nopeek': None,
    'mid': None,
    'bido': None,
    dp_sgd.NAME: None,
    transfer.NAME: None,
    gan_augmentation.NAME: None,
    gan_opt.NAME: None,
}
# name → train function, for defenses whose training is not
# ``train_classifier`` with an extra loss (dp-sgd, transfer-learning,
# gan-augmentation, gan-opt). Their modules add themselves here, and
# ``DEFENSES`` gets the same name (front None unless they have one).
RECIPES: dict[str, Callable] = {
    dp_sgd.NAME: dp_sgd.train_dp_target,
    transfer.NAME: transfer.train_transfer_target,
    gan_augmentation.NAME: gan_augmentation.train_gan_augmented_target,
    gan_opt.NAME: gan_opt.train_gan_opt_target,
}
SETTINGS = ('end_to_end', 'split')
PROTOCOLS = ('corrected', 'sg_legacy')
# Leaked layer per setting (SG §4): the attacker reads the first dense layer
# in the split setting and the last hidden layer end to end.
LEAK_OF_SETTING = {'split': 'first', 'end_to_end': 'last_hidden'}

# name → (config block under config.defense, factory, validator).
_BLOCKS = {
    'sparse-standard': ('sparse_standard', sparse_coding.standard_config_block, sparse_coding.validate_standard),
    'gaussian-noise': ('gaussian_noise', noise.gaussian_config_block, noise.validate_gaussian),
    'laplace-noise': ('laplace_noise', noise.laplace_config_block, noise.validate_laplace),
    'nopeek': ('nopeek', nopeek.config_block, nopeek.validate),
    'mid': ('mid', mid.config_block, mid.validate),
    'bido': ('bido', bido.config_block, bido.validate),
    dp_sgd.NAME: ('dp_sgd', dp_sgd.config_block, dp_sgd.validate_config),
    transfer.NAME: ('transfer', transfer.config_block, transfer.validate),
    gan_augmentation.NAME: ('gan_augmentation', gan_augmentation.config_block, gan_augmentation.validate),
    gan_opt.NAME: ('gan_opt', gan_opt.config_block, gan_opt.validate),
}


def uses_lambda(defense_name: str) -> bool:
  return defense_name in ('sparse-standard', 'sparse-guard')


def config_blocks() -> dict:
  """{'gaussian_noise': ConfigDict, ...}: mount each as ``config.defense.<key>``."""
  return {field: factory() for field, factory, _ in _BLOCKS.values()}


def _check_name(name) -> None:
  if name not in DEFENSES:
    raise ValueError(f"defense.name must be one of {tuple(DEFENSES)}, got {name!r}")


def validate(config, *, only_active: bool = False) -> None:
  """One-line ``ValueError`` for a bad field of a defense block in the config.

  By default every mounted block is checked, not only the active defense's:
  a sweep or the GAN experiment trains several defenses from one config, and
  a bad value should stop the run before anything is written, whichever point
  would have used it. ``only_active``: the active defense's block alone (a
  sweep's point, whose setting may differ from the base config's). Only the
  active defense's block must be present.
  """
  name = config.defense.name
  _check_name(name)
  for block_name, (field, _, validator) in _BLOCKS.items():
    if only_active and block_name != name:
      continue
    if field in config.defense:
      validator(config)
    elif block_name == name:
      raise ValueError(f"defense.{field} is missing: defense.name={name!r} needs its config block")


def _hooks(config) -> dict:
  """TargetNetwork keyword arguments for the active defense's model changes."""
  name = config.defense.name
  if name == 'gaussian-noise':
    return noise.gaussian_hooks(config)
  if name == 'laplace-noise':
    return noise.laplace_hooks(config)
  if name == 'mid':
    return {'bottleneck': mid.bottleneck_width(config),
            'bottleneck_std_shift': float(config.defense.mid.std_shift)}
  return {}


def build_target(config, image_shape, num_classes, *, rngs: nnx.Rngs) -> TargetNetwork:
  """The defended target network described by ``config``."""
  name = config.defense.name
  _check_name(name)
  legacy = config.protocol == 'sg_legacy'
  front_cls = DEFENSES[name]
  front = None if front_cls is None else front_cls(config.defense, image_shape, legacy=legacy, rngs=rngs)
  return TargetNetwork(
      image_shape=image_shape,
      num_classes=num_classes,
      front=front,
      front_out_shape=None if front is None else front.out_shape,
      normalization=tuple(config.data.normalization),
      rngs=rngs,
      **_layout(config, image_shape),
      **_hooks(config),
  )


def _layout(config, image_shape) -> dict:
  """The dense layers: widths, and where they act.

  Corrected: ``model.hidden_layers[setting]`` layers of ``model.hidden_width``
  on the flattened input. ``sg_legacy`` builds the SG scripts' networks
  (fidelity.md #14): split, one width-axis layer (the leak) then flat
  layers; end to end, the four hidden layers 500, 500, 28 (the image width),
  500 all along the width axis, the last without ReLU, flattened only for
  the classifier.
  """
  n_hidden = config.model.hidden_layers[config.setting]
  width = config.model.hidden_width
  if config.protocol != 'sg_legacy':
    return {'hidden_widths': (width,) * n_hidden}
  if config.setting == 'split':
    return {'hidden_widths': (width,) * n_hidden, 'row_wise_layers': 1}
  if n_hidden != 4:
    raise ValueError(f"model.hidden_layers.end_to_end must be 4 under protocol='sg_legacy' (the SG "
                     f"end-to-end networks), got {n_hidden!r}")
  return {'hidden_widths': (width, width, image_shape[1], width), 'row_wise_layers': 4,
          'linear_layers': ('hidden_4',)}


def extra_loss_for(config, *, num_classes: int = 10):
  """The ``extra_loss`` of ``make_classifier_step`` for the active defense, or None."""
  name = config.defense.name
  _check_name(name)
  if name == 'nopeek':
    return nopeek.make_extra_loss(config)
  if name == 'mid':
    return mid.make_extra_loss(config)
  if name == 'bido':
    return bido.make_extra_loss(config, num_classes=num_classes)
  return None
