"""One descriptor per defense: everything the experiments need to know about it.

A defense module declares a frozen :class:`Defense` and calls
:func:`register` on it at import (the shape of ``mi_jax.data.registry``'s
``DatasetSpec``). The experiments, the sweep and the train step then ask the
registry instead of naming defenses, so adding one means writing its module
and adding it to the import list of ``mi_jax/defenses/__init__.py``.

A defense changes the target in at most these ways, each a field here:

* ``front``: layers between the input and the dense layers (the sparse
  coding defenses), ``front(defense_config, image_shape, *, legacy, rngs)``;
* ``target_hooks(config) -> dict``: keyword arguments of
  :class:`mi_jax.models.target.TargetNetwork` (noise layers, a stochastic
  bottleneck);
* ``extra_loss(config, num_classes, steps_per_epoch) -> fn | None``: the
  regulariser of :func:`mi_jax.train.step.make_classifier_step`
  (``steps_per_epoch``: the training data's, or None where unknown);
* ``recipe(config, split, *, mesh, workdir, writer)``: training that
  replaces supervised training altogether (DP-SGD, transfer learning, the
  GAN-based defenses);
* ``post_step``: an update applied after each optimiser step from what the
  forward pass sowed (:class:`PostStep`; the Hebbian dictionary update).

Its configuration: ``block`` (its fields under ``config.defense.<block>``,
made by ``config_block()``, checked by ``validate(config)``), ``fields``
(rules for fields it reads directly under ``config.defense``), a ``knob``
the sweep varies, and checks that need the data sizes or device count.
Descriptor functions that take ``config`` are the defense's boundary with
the experiment layer: they read the config and call library code with
explicit arguments.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional


@dataclasses.dataclass(frozen=True)
class Knob:
  """The one hyperparameter a sweep varies for a defense.

  ``field``: its path under ``config.defense`` ('lam', 'gaussian_noise.sigma');
  ``symbol``: how tables show it ('λ', 'σ'). ``name`` (the last part of the
  path) names it in point names and in results rows (``knob_name``).
  """

  field: str
  symbol: str
  # Whether negative values are meaningful (label smoothing's α); other knobs
  # (noise scales, weights, λ) are >= 0.
  signed: bool = False

  @property
  def name(self) -> str:
    return self.field.split('.')[-1]

  def get(self, config):
    node = config.defense
    for part in self.field.split('.'):
      node = node[part]
    return node

  def set(self, config, value) -> None:
    """Sets the value in an unlocked ``config``, keeping the field's type (int stays int)."""
    *parents, leaf = self.field.split('.')
    node = config.defense
    for part in parents:
      node = node[part]
    node[leaf] = type(node[leaf])(value) if isinstance(node[leaf], (int, float)) else value


@dataclasses.dataclass(frozen=True)
class PostStep:
  """An update after each optimiser step: ``apply(model, sown)`` where ``sown``
  is the pure dict of the ``collects`` intermediates the forward pass sowed."""

  collects: type
  apply: Callable[[Any, Any], None]


@dataclasses.dataclass(frozen=True)
class Defense:
  """Everything about one defense (module docstring). Only ``name`` is required."""

  name: str
  summary: str = ''
  block: Optional[str] = None
  config_block: Optional[Callable[[], Any]] = None
  validate: Optional[Callable[[Any], None]] = None
  fields: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  knob: Optional[Knob] = None
  front: Optional[Callable[..., Any]] = None
  target_hooks: Optional[Callable[[Any], dict]] = None
  extra_loss: Optional[Callable[[Any, int], Optional[Callable]]] = None
  recipe: Optional[Callable[..., Any]] = None
  post_step: Optional[PostStep] = None
  # (config) -> {field: global batch}: batches besides train/attack/FID
  # that must split over the devices and fit the private set (a GAN's).
  private_batches: Optional[Callable[[Any], Mapping[str, int]]] = None
  # (config, sizes) -> None: checks that need the data sizes
  # ({'private': n, 'heldout': n}, None when unknown); raise ValueError.
  check_sizes: Optional[Callable[[Any, Mapping[str, Optional[int]]], None]] = None
  # The SG reference script whose metric settings sg_legacy imitates
  # (mi_jax.metrics.legacy.SG_EVAL_SETTINGS).
  legacy_script: str = 'no_def'
  # Whether its target has LCA layers a white-box attack differentiates through.
  sparse_coding: bool = False

  def __post_init__(self):
    if (self.block is None) != (self.config_block is None):
      raise ValueError(f"defense {self.name!r}: block and config_block come together")


_REGISTRY: dict[str, Defense] = {}


def register(defense: Defense) -> Defense:
  """Adds ``defense``; a second registration of the same name is an error."""
  if defense.name in _REGISTRY:
    raise ValueError(f"defense {defense.name!r} is already registered")
  taken = {d.block for d in _REGISTRY.values() if d.block is not None}
  if defense.block is not None and defense.block in taken:
    raise ValueError(f"defense {defense.name!r}: config block {defense.block!r} is already taken")
  _REGISTRY[defense.name] = defense
  return defense


def unregister(name: str) -> None:
  """Removes a defense (tests that register a toy one clean up with this)."""
  _REGISTRY.pop(name, None)


def names() -> tuple[str, ...]:
  """Every registered defense, in registration order."""
  return tuple(_REGISTRY)


def get(name: str) -> Defense:
  if name not in _REGISTRY:
    raise ValueError(f"defense.name must be one of {names()}, got {name!r}")
  return _REGISTRY[name]


def all_defenses() -> tuple[Defense, ...]:
  return tuple(_REGISTRY.values())
