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
  cfg = config.defense.nopeek
  if not cfg.weight >= 0:
    raise ValueError(f"defense.nopeek.weight must be >= 0, got {cfg.weight!r}")
  if cfg.layer not in LAYERS:
    raise ValueError(f"defense.nopeek.layer must be one of {LAYERS}, got {cfg.layer!r}")


def split_layer(config) -> str:
  layer = config.defense.nopeek.layer
  if layer == 'leak':
    return 'first' if config.setting == 'split' else 'last_hidden'
  return layer


def make_extra_loss(config):
  """``extra_loss(activations, batch, key) -> (w·dCor, measurements)``."""
  weight = float(config.defense.nopeek.weight)
  layer = split_layer(config)

  def extra_loss(activations, batch, key):
    del batch, key
    dcor = distance_correlation(activations['input'], activations[layer])
    return weight * dcor, {'nopeek_dcor': dcor}

  return extra_loss
