"""BiDO: CE + λx·Σ d(x, z_l) − λy·Σ d(z_l, y) through the real train step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mi_jax import defenses
from mi_jax.defenses import dependence
from tests.defenses import build, defense_config, train_steps
from tests.helpers import synthetic_digits


# ---- NumPy float64 oracle of the BiDO code's HSIC term ----------------------
# Written from the formula, deliberately in the reference code's own form
# (one-sided centring K·H and explicit inverses) rather than ours (H·K·H,
# expm1, solve), so an algebra slip on either side shows.

def _np_gaussian(a, sigma=5.0):
  """exp(−‖a_i − a_j‖² / (2σ²·d)), d the feature dimension."""
  sq = ((a[:, None, :] - a[None, :, :]) ** 2).sum(-1)
  return np.exp(-sq / (2 * sigma ** 2 * a.shape[1]))


def _np_nocco(k, l, eps=1e-5):
  n = len(k)
  h = np.eye(n) - np.ones((n, n)) / n
  kc, lc = k @ h, l @ h
  rx = kc @ np.linalg.inv(kc + eps * n * np.eye(n))
  ry = lc @ np.linalg.inv(lc + eps * n * np.eye(n))
  return np.sum(rx * ry.T)


def _np_bido(images, labels, hiddens, lambda_x=0.05, lambda_y=0.5):
  x = images.reshape(len(images), -1).astype(np.float64) / 255.0  # pixel units
  onehot = np.eye(10)[labels]
  dx = sum(_np_nocco(_np_gaussian(z), _np_gaussian(x)) for z in hiddens)
  dy = sum(_np_nocco(_np_gaussian(z), onehot @ onehot.T) for z in hiddens)
  return dx, dy, lambda_x * dx - lambda_y * dy


def _activations(config, n=16):
  model = build(config)
  images, labels = synthetic_digits(n)
  acts = model.activations(jnp.asarray(images), train=True, key=jax.random.key(0))
  return images, labels, acts


@pytest.mark.parametrize('setting', ['split', 'end_to_end'])
def test_default_is_the_bido_code_estimator_and_kernels(setting):
  config = defense_config('bido', setting=setting)
  images, labels, acts = _activations(config)
  n_hidden = config.model.hidden_layers[setting]
  hiddens = [np.asarray(acts[f'hidden_{k + 1}'], np.float64).reshape(len(images), -1) for k in range(n_hidden)]
  dx, dy, total = _np_bido(images, labels, hiddens)
  term, m = defenses.extra_loss_for(config)(acts, {'label': jnp.asarray(labels)}, None)
  assert float(m['bido_hsic_xz']) == pytest.approx(dx, rel=2e-5)
  assert float(m['bido_hsic_yz']) == pytest.approx(dy, rel=2e-5)
  assert float(m['bido_regulariser']) == pytest.approx(total, rel=1e-4)
  assert float(term) == float(m['bido_regulariser'])
  # NOCCO's y-term is at most (number of classes − 1) per layer; CKA's ≤ 1.
  assert n_hidden < dy <= 9 * n_hidden


def test_cka_and_median_heuristic_remain_options():
  config = defense_config('bido')
  config.defense.bido.estimator = 'normalized'
  config.defense.bido.sigma = None
  defenses.validate(config)
  images, labels, acts = _activations(config, n=12)
  _, m = defenses.extra_loss_for(config)(acts, {'label': jnp.asarray(labels)}, None)
  onehot = jax.nn.one_hot(labels, 10)
  layers = ('hidden_1', 'hidden_2')
  # The median heuristic is scale-free, so pixel units and the standardised
  # input give the same value.
  dx = sum(float(dependence.hsic(acts[l], acts['input'], estimator='normalized')) for l in layers)
  dy = sum(float(dependence.hsic(acts[l], onehot, kernel_y='linear', estimator='normalized')) for l in layers)
  assert float(m['bido_hsic_xz']) == pytest.approx(dx, rel=1e-5)
  assert float(m['bido_hsic_yz']) == pytest.approx(dy, rel=1e-5)
  assert 0 < dx <= 2 and 0 < dy <= 2


def test_fixed_width_kernel_sees_pixel_units_not_the_standardised_input():
  config = defense_config('bido')
  images, labels, acts = _activations(config, n=12)
  _, m = defenses.extra_loss_for(config)(acts, {'label': jnp.asarray(labels)}, None)
  d_in, width = 28 * 28, config.model.hidden_width
  def dx_of(x):
    return sum(float(dependence.hsic(acts[l], x, estimator='nocco', sigma_x=5.0 * width ** 0.5,
                                     sigma_y=5.0 * d_in ** 0.5)) for l in ('hidden_1', 'hidden_2'))
  on_pixels = dx_of(jnp.asarray(images, jnp.float32) / 255.0)
  on_standardised = dx_of(acts['input'])
  assert float(m['bido_hsic_xz']) == pytest.approx(on_pixels, rel=1e-5)
  assert abs(on_standardised - on_pixels) > 1e-2 * on_pixels  # the choice matters


@pytest.mark.parametrize('measure', ['hsic', 'coco'])
def test_bido_train_step_logs_the_regulariser_next_to_cross_entropy(measure):
  config = defense_config('bido', setting='split')
  config.defense.bido.measure = measure
  _, _, history = train_steps(config, n_steps=2)
  for h in history:
    dx, dy, total = h[f'bido_{measure}_xz'], h[f'bido_{measure}_yz'], h['bido_regulariser']
    assert np.isfinite(h['loss']) and dx >= 0 and dy >= 0
    assert total == pytest.approx(0.05 * dx - 0.5 * dy, rel=1e-5, abs=1e-6)
    assert h['loss'] == pytest.approx(h['cross_entropy'] + total, rel=1e-5, abs=1e-5)


def test_bido_validation():
  config = defense_config('bido')
  config.defense.bido.lambda_x = 0.0
  config.defense.bido.lambda_y = 0.0
  with pytest.raises(ValueError, match='both 0'):
    defenses.validate(config)
  for field, value, message in (('measure', 'mmd', 'defense.bido.measure must be one of'),
                                ('y_kernel', 'imq', 'defense.bido.y_kernel must be one of'),
                                ('estimator', 'unbiased', 'defense.bido.estimator must be one of'),
                                ('sigma', -1.0, 'defense.bido.sigma must be None or a finite number > 0')):
    config = defense_config('bido')
    config.defense.bido[field] = value
    with pytest.raises(ValueError, match=message):
      defenses.validate(config)
