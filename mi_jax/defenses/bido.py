"""BiDO, bilateral dependency optimisation (Peng et al. 2022, "Bilateral
dependency optimization: defending against model-inversion attacks"):

    L = CE(f(x), y) + Σ_l [ λ_x · d(x, z_l) − λ_y · d(z_l, y) ],

over the hidden layers z_l, with d a kernel dependence measure (HSIC or
COCO, :mod:`mi_jax.defenses.dependence`): weaken the dependence between the
input and every hidden representation, strengthen the one between the
representations and the label.

Following the BiDO code (``AlanPeng0897/Defend_MI``, ``BiDO/engine.py``
``multilayer_hsic``): x is the flattened (normalised) input, y the one-hot
label, the sum runs over every hidden layer's output, the HSIC is its
normalised (NOCCO) form with ε = 1e-5 (here an option: the default is
the scale-free CKA normalisation, see ``config_block``), and y gets the linear kernel (its
``--ktype`` default), i.e. k(y_i, y_j) = [y_i = y_j]. Departure: x and z_l
use Gaussian kernels with the median-heuristic bandwidth (methods.md; the
paper's description) unless ``sigma`` is set; the BiDO code fixes σ = 5 and
scales it by the feature dimension (exp(−‖a − b‖² / 2σ²d)), which ``sigma``
reproduces.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from ml_collections import config_dict

from mi_jax.defenses import dependence

MEASURES = ('hsic', 'coco')
Y_KERNELS = dependence.KERNELS


def config_block() -> config_dict.ConfigDict:
  """``config.defense.bido``."""
  c = config_dict.ConfigDict()
  c.measure = 'hsic'  # 'hsic' | 'coco'
  # The paper's HSIC setting for VGG16 on CelebA (λx = 0.05, λy = 0.5). Never
  # both 0: the BiDO code's shipped default is no defense (fidelity.md #9).
  c.lambda_x = 0.05
  c.lambda_y = 0.5
  # HSIC form. 'normalized' (CKA, in [0, 1] like dCor) keeps λ meaningful
  # at any batch size and width. The BiDO code's 'nocco' saturates at ≈ n − 1
  # with median-heuristic kernels (dependence.py); Gretton's 'biased' is
  # O(1/n), ~1e-2 here, so the paper's λ would do almost nothing with it.
  c.estimator = 'normalized'
  c.y_kernel = 'linear'  # BiDO code's default --ktype for the one-hot labels
  # None: median-heuristic σ per batch and layer; a float: the BiDO code's
  # fixed σ (5.0 there), scaled by √(feature dimension) as it does.
  c.sigma = config_dict.placeholder(float)
  return c


def validate(config) -> None:
  cfg = config.defense.bido
  if cfg.measure not in MEASURES:
    raise ValueError(f"defense.bido.measure must be one of {MEASURES}, got {cfg.measure!r}")
  if cfg.estimator not in dependence.HSIC_ESTIMATORS:
    raise ValueError(f"defense.bido.estimator must be one of {dependence.HSIC_ESTIMATORS}, got {cfg.estimator!r}")
  if cfg.y_kernel not in Y_KERNELS:
    raise ValueError(f"defense.bido.y_kernel must be one of {Y_KERNELS}, got {cfg.y_kernel!r}")
  if not (cfg.lambda_x >= 0 and cfg.lambda_y >= 0):
    raise ValueError(f"defense.bido.lambda_x and lambda_y must be >= 0, got {cfg.lambda_x!r}, {cfg.lambda_y!r}")
  if cfg.lambda_x == 0 and cfg.lambda_y == 0:
    raise ValueError("defense.bido.lambda_x and lambda_y are both 0: that is no defense (fidelity.md #9)")
  if cfg.sigma is not None and not cfg.sigma > 0:
    raise ValueError(f"defense.bido.sigma must be None or > 0, got {cfg.sigma!r}")


def _dimension_sigma(sigma, features):
  """The BiDO code's fixed bandwidth: variance 2σ²·d, i.e. σ·√d."""
  return None if sigma is None else float(sigma) * float(features.reshape(features.shape[0], -1).shape[1]) ** 0.5


def dependence_fn(cfg):
  """d(a, b) for the configured measure, b's kernel given."""

  def d(a, b, *, kernel_b):
    kwargs = dict(kernel_x='gaussian', kernel_y=kernel_b,
                  sigma_x=_dimension_sigma(cfg.sigma, a),
                  sigma_y=_dimension_sigma(cfg.sigma, b) if kernel_b == 'gaussian' else None)
    if cfg.measure == 'coco':
      return dependence.coco(a, b, **kwargs)
    return dependence.hsic(a, b, estimator=cfg.estimator, **kwargs)

  return d


def make_extra_loss(config, *, num_classes: int = 10):
  """``extra_loss(activations, batch, key) -> (Σ_l λx·d(x,z_l) − λy·d(z_l,y), measurements)``."""
  cfg = config.defense.bido
  lambda_x, lambda_y = float(cfg.lambda_x), float(cfg.lambda_y)
  d = dependence_fn(cfg)
  n_hidden = config.model.hidden_layers[config.setting]
  layers = tuple(f'hidden_{k + 1}' for k in range(n_hidden))

  def extra_loss(activations, batch, key):
    del key
    x = activations['input']
    y = jax.nn.one_hot(batch['label'], num_classes, dtype=jnp.float32)
    dx = sum(d(activations[name], x, kernel_b='gaussian') for name in layers)
    dy = sum(d(activations[name], y, kernel_b=cfg.y_kernel) for name in layers)
    name = cfg.measure
    return lambda_x * dx - lambda_y * dy, {f'bido_{name}_xz': dx, f'bido_{name}_yz': dy}

  return extra_loss
