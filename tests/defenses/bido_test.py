"""BiDO: CE + λx·Σ d(x, z_l) − λy·Σ d(z_l, y) through the real train step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mi_jax import defenses
from mi_jax.defenses import dependence
from tests.defenses import build, defense_config, train_steps
from tests.helpers import synthetic_digits


def test_extra_loss_sums_over_every_hidden_layer():
  config = defense_config('bido', setting='split')
  model = build(config)
  images, labels = synthetic_digits(12)
  acts = model.activations(jnp.asarray(images), train=True, key=jax.random.key(0))
  term, m = defenses.extra_loss_for(config)(acts, {'label': jnp.asarray(labels)}, None)
  onehot = jax.nn.one_hot(labels, 10)
  layers = ('hidden_1', 'hidden_2')
  dx = sum(float(dependence.hsic(acts[l], acts['input'], estimator='normalized')) for l in layers)
  dy = sum(float(dependence.hsic(acts[l], onehot, kernel_y='linear', estimator='normalized')) for l in layers)
  assert float(m['bido_hsic_xz']) == pytest.approx(dx, rel=1e-5)
  assert float(m['bido_hsic_yz']) == pytest.approx(dy, rel=1e-5)
  assert float(term) == pytest.approx(0.05 * dx - 0.5 * dy, rel=1e-5)


@pytest.mark.parametrize('measure', ['hsic', 'coco'])
def test_bido_train_step_reports_both_dependences(measure):
  config = defense_config('bido', setting='split')
  config.defense.bido.measure = measure
  _, _, history = train_steps(config, n_steps=2)
  for h in history:
    dx, dy = h[f'bido_{measure}_xz'], h[f'bido_{measure}_yz']
    assert np.isfinite(h['loss']) and dx >= 0 and dy >= 0
    assert h['loss'] == pytest.approx(h['cross_entropy'] + 0.05 * dx - 0.5 * dy, rel=1e-4, abs=1e-5)


def test_bido_fixed_sigma_is_scaled_by_dimension_as_in_the_bido_code():
  config = defense_config('bido', setting='split')
  config.defense.bido.sigma = 5.0
  model = build(config)
  images, labels = synthetic_digits(8)
  acts = model.activations(jnp.asarray(images))
  _, m = defenses.extra_loss_for(config)(acts, {'label': jnp.asarray(labels)}, None)
  d_in = 28 * 28
  width = config.model.hidden_width
  expected = sum(float(dependence.hsic(acts[l], acts['input'], estimator='normalized',
                                       sigma_x=5.0 * width ** 0.5, sigma_y=5.0 * d_in ** 0.5))
                 for l in ('hidden_1', 'hidden_2'))
  assert float(m['bido_hsic_xz']) == pytest.approx(expected, rel=1e-5)


def test_bido_validation_rejects_no_defense_weights():
  config = defense_config('bido')
  config.defense.bido.lambda_x = 0.0
  config.defense.bido.lambda_y = 0.0
  with pytest.raises(ValueError, match='both 0'):
    defenses.validate(config)
  config = defense_config('bido')
  config.defense.bido.measure = 'mmd'
  with pytest.raises(ValueError, match='defense.bido.measure must be one of'):
    defenses.validate(config)
  config = defense_config('bido')
  config.defense.bido.y_kernel = 'imq'
  with pytest.raises(ValueError, match='defense.bido.y_kernel must be one of'):
    defenses.validate(config)
