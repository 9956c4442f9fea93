"""Defenses: each one changes the target network (a front of layers, noise
hooks, a bottleneck head), adds a loss term to the train step, brings its
own training recipe, or updates the model after each step; all plug into
the same target, train step and attack.

Every defense is one :class:`~mi_jax.defenses.registry.Defense` descriptor,
declared and registered by its own module (:mod:`mi_jax.defenses.registry`
says what a descriptor holds). Importing this package registers them all,
in the order below (the order of grids and tables). To add a defense, write
its module with a ``register(Defense(...))`` and import it here.

* ``build_target(config, image_shape, num_classes, rngs=)``: the one place
  that turns ``config.defense`` into a model (:mod:`mi_jax.defenses.target`);
* ``extra_loss_for(config)`` / ``classifier_step_for(config)``: its train step;
* ``num_classes_of(config)``: the head's width, the dataset's class count;
* ``config_blocks()``, ``validate(config)``: the per-defense config blocks,
  mounted as ``config.defense.<block>``, checked with one-line ``ValueError``s;
* ``get(name)``, ``names()``: the registry.
"""

from mi_jax.defenses import no_defense  # noqa: F401  (registration order: the baseline first)
from mi_jax.defenses import sparse_coding  # noqa: F401
from mi_jax.defenses import noise, nopeek, mid, bido  # noqa: F401
from mi_jax.defenses import dp_sgd, transfer, gan_augmentation, gan_opt  # noqa: F401
from mi_jax.defenses import label_smoothing  # noqa: F401
from mi_jax.defenses.registry import Defense, Knob, PostStep, get, names, register, unregister
from mi_jax.defenses.target import (
    LEAK_OF_SETTING,
    PROTOCOLS,
    SETTINGS,
    build_target,
    classifier_step_for,
    config_blocks,
    extra_loss_for,
    field_rules,
    num_classes_of,
    validate,
)

__all__ = [
    'Defense', 'Knob', 'LEAK_OF_SETTING', 'PROTOCOLS', 'PostStep', 'SETTINGS', 'build_target',
    'classifier_step_for', 'config_blocks', 'extra_loss_for', 'field_rules', 'get', 'names', 'num_classes_of',
    'register', 'unregister', 'validate',
]

