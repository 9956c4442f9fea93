"""Noise defenses: GAUSSIAN-NOISE and LAPLACE-NOISE (SG App. B; Titcombe et
al. 2021, "Practical defences against model inversion attacks for split
neural networks").

* gaussian-noise: h ← h + σ·ε, ε ~ N(0, I), on one hidden dense layer's
  output (after its ReLU); σ = 0.5.
* laplace-noise: h ← tanh(W x + b) + ε, ε ~ Laplace(0, b) i.i.d., on the
  split layer. The tanh bounds the features to [−1, 1] so that b is a scale
  relative to a known range (Titcombe's bounded intermediate tensor);
  b = 0.5 (SG App. B also reports 1.0).

Where the noise sits (``layer``): ``'leak'`` (default) is the layer the
attacker reads in the configured setting, ``hidden_1`` in the split setting
and ``hidden_L`` end to end, so the leak includes the noise; ``'input'`` or
``'hidden_<k>'`` name a layer explicitly. Noise is drawn whenever a key is
given: in every training step, and at the attacker's query unless
``attack.noise_at_query`` is False (fidelity.md #4). The reported accuracy
is measured with the attacker's queries, noise included (one rule for every
defense and both protocols); rows also carry ``accuracy_noise_free``, the
network without a key.

``protocol='sg_legacy'`` reproduces the SG/SCA scripts instead
(``mariamsaed19/SCA-code-modified``, ``MNIST/mnist_gaussiannoise.py`` for the
split setting, ``MNIST/mnist_etn_gn.py`` end to end): their ``GaussianNoise``
returns x + σ·x (its "noise" is the constant tensor 1), only in training
mode, on the input and after the first layer (split), or after the first and
the last hidden layer (end to end); the ``layer`` field is ignored there.
Their ``LaplacianNoise`` does draw Laplace(0, b) noise, also only in training
mode and without a tanh bound; legacy laplace-noise keeps that on ``layer``.
Either way the attacker of the SG code queries a noise-free network.
"""

from __future__ import annotations

from ml_collections import config_dict

from mi_jax.defenses.registry import Defense, Knob, register
from mi_jax.models.target import NoiseSpec
from mi_jax.utils import config_rules as rules

BOUNDS = ('tanh', 'none')


def gaussian_config_block() -> config_dict.ConfigDict:
  """``config.defense.gaussian_noise``."""
  c = config_dict.ConfigDict()
  c.sigma = 0.5  # SG App. B and the SG code's GaussianNoise(sigma=0.5)
  # 'leak': the attacked layer of the setting, so the attacker sees the noise.
  c.layer = 'leak'
  return c


def laplace_config_block() -> config_dict.ConfigDict:
  """``config.defense.laplace_noise``."""
  c = config_dict.ConfigDict()
  c.scale = 0.5  # Laplace b: SG App. B (0.5, and 1.0 in a second row); SG code's default
  c.layer = 'leak'
  # Titcombe et al. bound the split features before adding noise, so b is
  # relative to the range [−1, 1]; 'none' keeps the ReLU (SG code).
  c.bound = 'tanh'
  return c


def _n_hidden(config) -> int:
  return config.model.hidden_layers[config.setting]


def resolve_layer(config, layer: str) -> str:
  """'leak' → the hidden layer the attacker reads in ``config.setting``."""
  if layer == 'leak':
    return 'hidden_1' if config.setting == 'split' else f'hidden_{_n_hidden(config)}'
  return layer


def _check_layer(config, field: str, layer) -> None:
  allowed = ('leak', 'input', *(f'hidden_{k + 1}' for k in range(_n_hidden(config))))
  if layer not in allowed:
    raise ValueError(f"{field} must be one of {allowed}, got {layer!r}")


def validate_gaussian(config) -> None:
  """One-line ``ValueError`` for a bad ``defense.gaussian_noise`` field."""
  rules.check_fields(config, {'defense.gaussian_noise.sigma': rules.number(low=0)})
  _check_layer(config, 'defense.gaussian_noise.layer', config.defense.gaussian_noise.layer)


def validate_laplace(config) -> None:
  """One-line ``ValueError`` for a bad ``defense.laplace_noise`` field."""
  rules.check_fields(config, {'defense.laplace_noise.scale': rules.number(low=0),
                              'defense.laplace_noise.bound': rules.one_of(BOUNDS)})
  _check_layer(config, 'defense.laplace_noise.layer', config.defense.laplace_noise.layer)


def gaussian_hooks(config) -> dict:
  """TargetNetwork keyword arguments (``noise``, ``tanh_layers``) for gaussian-noise."""
  cfg = config.defense.gaussian_noise
  if config.protocol == 'sg_legacy':
    spec = NoiseSpec('relative', float(cfg.sigma), train_only=True)
    places = ('input', 'hidden_1') if config.setting == 'split' else ('hidden_1', f'hidden_{_n_hidden(config)}')
    return {'noise': {name: spec for name in places}, 'tanh_layers': ()}
  return {'noise': {resolve_layer(config, cfg.layer): NoiseSpec('gaussian', float(cfg.sigma))},
          'tanh_layers': ()}


def laplace_hooks(config) -> dict:
  """TargetNetwork keyword arguments (``noise``, ``tanh_layers``) for laplace-noise."""
  cfg = config.defense.laplace_noise
  layer = resolve_layer(config, cfg.layer)
  legacy = config.protocol == 'sg_legacy'
  spec = NoiseSpec('laplace', float(cfg.scale), train_only=legacy)
  bounded = cfg.bound == 'tanh' and not legacy and layer != 'input'
  return {'noise': {layer: spec}, 'tanh_layers': (layer,) if bounded else ()}


register(Defense(
    name='gaussian-noise',
    summary='Gaussian noise on the leaked layer (SG App. B)',
    block='gaussian_noise', config_block=gaussian_config_block, validate=validate_gaussian,
    knob=Knob('gaussian_noise.sigma', 'σ'),
    target_hooks=gaussian_hooks,
))
register(Defense(
    name='laplace-noise',
    summary='Laplace noise on the (tanh-bounded) leaked layer (Titcombe et al.)',
    block='laplace_noise', config_block=laplace_config_block, validate=validate_laplace,
    knob=Knob('laplace_noise.scale', 'b'),
    target_hooks=laplace_hooks,
))
