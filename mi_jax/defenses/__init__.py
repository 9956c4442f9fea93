"""Defenses: each one is a front of layers (and, later, losses and hooks)
that plugs into the same target network, train step and attack.

``build_target(config, image_shape, num_classes, rngs)`` is the one place
that turns ``config.defense`` into a model.
"""

from __future__ import annotations

from flax import nnx

from mi_jax.defenses.sparse_coding import SparseGuardFront, SparseStandardFront
from mi_jax.models.target import TargetNetwork

# name → front constructor (None: no front layers).
DEFENSES = {
    'no-defense': None,
    'sparse-standard': SparseStandardFront,
    'sparse-guard': SparseGuardFront,
}
SETTINGS = ('end_to_end', 'split')
PROTOCOLS = ('corrected', 'sg_legacy')
# Leaked layer per setting (SG §4): the attacker reads the first dense layer
# in the split setting and the last hidden layer end to end.
LEAK_OF_SETTING = {'split': 'first', 'end_to_end': 'last_hidden'}


def uses_lambda(defense_name: str) -> bool:
  return defense_name in ('sparse-standard', 'sparse-guard')


def build_target(config, image_shape, num_classes, *, rngs: nnx.Rngs) -> TargetNetwork:
  """The defended target network described by ``config``."""
  name = config.defense.name
  if name not in DEFENSES:
    raise ValueError(f"defense.name must be one of {tuple(DEFENSES)}, got {name!r}")
  legacy = config.protocol == 'sg_legacy'
  front_cls = DEFENSES[name]
  front = None if front_cls is None else front_cls(config.defense, image_shape, legacy=legacy, rngs=rngs)
  n_hidden = config.model.hidden_layers[config.setting]
  return TargetNetwork(
      image_shape=image_shape,
      num_classes=num_classes,
      hidden_widths=(config.model.hidden_width,) * n_hidden,
      front=front,
      front_out_shape=None if front is None else front.out_shape,
      normalization=tuple(config.data.normalization),
      width_axis_linear=legacy,
      rngs=rngs,
  )
