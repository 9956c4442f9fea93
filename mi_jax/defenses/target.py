"""The defended target: ``config.defense`` → a model, its loss and its step.

This module imports only the registry (not the defense modules), so a
defense's training recipe can import :func:`build_target` at its top.

* ``build_target(config, image_shape, num_classes, rngs=)``: the network;
* ``num_classes_of(config)``: the width of the classifier head, the
  dataset's class count;
* ``extra_loss_for(config)``: the regulariser of the train step (None: CE);
* ``classifier_step_for(config)``: ``make_step(graphdef, tx)`` for
  :func:`mi_jax.train.classifier.train_classifier` with the defense's
  extra loss and post-step;
* ``config_blocks()``, ``validate(config)``: the defenses' config blocks.
"""

from __future__ import annotations

from typing import Optional

from flax import nnx

from mi_jax.data.registry import get_spec
from mi_jax.defenses import registry
from mi_jax.models.conv_trunk import build_trunk
from mi_jax.models.target import TargetNetwork
from mi_jax.train.step import make_classifier_step

SETTINGS = ('end_to_end', 'split')
PROTOCOLS = ('corrected', 'sg_legacy')
# Leaked layer per setting (SG §4): the attacker reads the first dense layer
# in the split setting and the last hidden layer end to end.
LEAK_OF_SETTING = {'split': 'first', 'end_to_end': 'last_hidden'}


def config_blocks() -> dict:
  """{'gaussian_noise': ConfigDict, ...}: mount each as ``config.defense.<key>``."""
  return {d.block: d.config_block() for d in registry.all_defenses() if d.block is not None}


def field_rules() -> dict:
  """Rules of the fields defenses read directly under ``config.defense`` ('defense.lam', ...)."""
  rules = {}
  for defense in registry.all_defenses():
    rules.update(defense.fields)
  return rules


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
  registry.get(name)  # a known name
  for defense in registry.all_defenses():
    if only_active and defense.name != name:
      continue
    if defense.block is not None and defense.block not in config.defense:
      if defense.name == name:
        raise ValueError(f"defense.{defense.block} is missing: defense.name={name!r} needs its config block")
      continue
    if defense.validate is not None:
      defense.validate(config)


def num_classes_of(config) -> int:
  """The classifier head's width: the class count of ``config.dataset``
  (10 for the digits and CIFAR-10, 6 for Medical MNIST, 9 for PathMNIST …)."""
  return get_spec(config.dataset).num_classes


def build_target(config, image_shape, num_classes, *, rngs: nnx.Rngs) -> TargetNetwork:
  """The defended target network described by ``config``.

  The front is the defense's when it has one (its sparse layers take the
  place of a convolutional trunk's convolutions, as in the SG paper's CNN),
  else the trunk of ``model.trunk`` (:mod:`mi_jax.models.conv_trunk`;
  'none', the MLP on pixels, when the config has no such field).
  """
  defense = registry.get(config.defense.name)
  legacy = config.protocol == 'sg_legacy'
  if defense.front is not None:
    front = defense.front(config.defense, image_shape, legacy=legacy, rngs=rngs)
  else:
    front = build_trunk(config.model.get('trunk', 'none'), image_shape, features=tuple(config.defense.features),
                        width=config.model.get('trunk_width', 1.0), rngs=rngs)
  hooks = {} if defense.target_hooks is None else defense.target_hooks(config)
  return TargetNetwork(
      image_shape=image_shape,
      num_classes=num_classes,
      front=front,
      front_out_shape=None if front is None else front.out_shape,
      normalization=tuple(config.data.normalization),
      rngs=rngs,
      **_layout(config, image_shape),
      **hooks,
  )


def _layout(config, image_shape) -> dict:
  """The dense layers: widths, and where they act.

  Corrected: ``model.hidden_layers[setting]`` layers of ``model.hidden_width``
  on the flattened input. ``sg_legacy`` builds the SG scripts' networks
  (docs/fidelity.md #14): split, one width-axis layer (the leak) then flat
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


def extra_loss_for(config, *, num_classes: Optional[int] = None, steps_per_epoch: Optional[int] = None):
  """The ``extra_loss`` of ``make_classifier_step`` for the active defense, or None.
  ``num_classes``: the head's width (None: :func:`num_classes_of`).
  ``steps_per_epoch`` (the training data's) serves regularisers with an epoch schedule."""
  defense = registry.get(config.defense.name)
  num_classes = num_classes_of(config) if num_classes is None else num_classes
  return None if defense.extra_loss is None else defense.extra_loss(config, num_classes, steps_per_epoch)


def classifier_step_for(config, *, num_classes: Optional[int] = None, steps_per_epoch: Optional[int] = None):
  """``make_step(graphdef, tx)``: the active defense's supervised train step."""
  defense = registry.get(config.defense.name)
  extra_loss = extra_loss_for(config, num_classes=num_classes, steps_per_epoch=steps_per_epoch)
  return lambda graphdef, tx: make_classifier_step(graphdef, tx, extra_loss=extra_loss,
                                                   post_step=defense.post_step)
