"""NoPeek (Vepakomma et al. 2020; Titcombe et al. 2021): decorrelate the
split features from the raw input while training the classifier,

    L = CE(f(x), y) + w · dCor(x, z),

with dCor the sample distance correlation over the batch
(:func:`mi_jax.defenses.dependence.distance_correlation`, Euclidean
distances; fidelity.md #11), x the preprocessed input image and z the split
layer's output. The attacker then sees features that carry less (nonlinear)
information about the image.
"""

from __future__ import annotations

from ml_collections import config_dict

from mi_jax.defenses.dependence import distance_correlation
from mi_jax.defenses.registry import Defense, Knob, register
from mi_jax.utils import config_rules as rules

# Activation names the regulariser may decorrelate from the input.
LAYERS = ('leak', 'first', 'last_hidden')


def config_block() -> config_dict.ConfigDict:
  """``config.defense.nopeek``."""
  c = config_dict.ConfigDict()
  # Titcombe et al.'s reference code (TTitcombe/NoPeekNN, NoPeekLoss
  # dcor_weighting=0.1) and the middle of methods.md's range w ∈ {0.05…1}.
  c.weight = 0.1
  # 'leak': the attacked layer of the setting ('first' split, 'last_hidden'
  # end to end), the layer NoPeek is meant to protect.
  c.layer = 'leak'
  return c


def validate(config) -> None:
  """One-line ``ValueError`` for a bad ``defense.nopeek`` field."""
  rules.check_fields(config.defense.nopeek, {'weight': rules.number(low=0), 'layer': rules.one_of(LAYERS)},
                     'defense.nopeek')


def split_layer(config) -> str:
  layer = config.defense.nopeek.layer
  if layer == 'leak':
    return 'first' if config.setting == 'split' else 'last_hidden'
  return layer


def make_extra_loss(*, weight: float, layer: str):
  """``extra_loss(activations, batch, key) -> (w·dCor(x, h_layer), measurements)``."""
  weight = float(weight)

  def extra_loss(activations, batch, key):
    del batch, key
    dcor = distance_correlation(activations['input'], activations[layer])
    return weight * dcor, {'nopeek_dcor': dcor}

  return extra_loss


register(Defense(
    name='nopeek',
    summary='distance-correlation penalty between the input and the leaked layer (Vepakomma et al.)',
    block='nopeek', config_block=config_block, validate=validate,
    knob=Knob('nopeek.weight', 'w'),
    extra_loss=lambda config, num_classes, steps_per_epoch: make_extra_loss(weight=config.defense.nopeek.weight,
                                                           layer=split_layer(config)),
))
