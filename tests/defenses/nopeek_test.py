"""NoPeek: CE + w·dCor(input, split features) through the real train step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mi_jax import defenses
from mi_jax.defenses import nopeek
from mi_jax.defenses.dependence import distance_correlation
from mi_jax.train.state import merge_model, split_model
from tests.defenses import build, defense_config, train_steps
from tests.helpers import synthetic_digits


@pytest.mark.parametrize('setting, layer', [('split', 'first'), ('end_to_end', 'last_hidden')])
def test_extra_loss_is_weight_times_dcor_of_input_and_leak(setting, layer):
  config = defense_config('nopeek', setting=setting)
  config.defense.nopeek.weight = 0.3
  model = build(config)
  images, labels = synthetic_digits(12)
  acts = model.activations(jnp.asarray(images), train=True, key=jax.random.key(0))
  term, measurements = defenses.extra_loss_for(config)(acts, {'label': jnp.asarray(labels)}, jax.random.key(1))
  expected = distance_correlation(acts['input'], acts[layer])
  assert float(measurements['nopeek_dcor']) == pytest.approx(float(expected), rel=1e-6)
  assert float(term) == pytest.approx(0.3 * float(expected), rel=1e-6)
  assert nopeek.split_layer(config) == layer


def test_nopeek_train_step_reports_dcor_and_its_gradient_reaches_the_front_layer():
  config = defense_config('nopeek', setting='split')
  _, _, history = train_steps(config, n_steps=2)
  for h in history:
    assert np.isfinite(h['loss']) and 0.0 <= h['nopeek_dcor'] <= 1.0
    assert h['loss'] == pytest.approx(h['cross_entropy'] + 0.1 * h['nopeek_dcor'], rel=1e-5)
  # The regulariser alone moves the first layer (what the attacker reads).
  model = build(config)
  images = jnp.asarray(synthetic_digits(12)[0])

  graphdef, params, model_state = split_model(model)

  def dcor_of(params):
    acts = merge_model(graphdef, params, model_state).activations(images, stop_at='first')
    return distance_correlation(acts['input'], acts['first'])

  grad = jax.grad(dcor_of)(params)['first']['kernel']
  assert float(jnp.linalg.norm(grad)) > 0 and np.all(np.isfinite(np.asarray(grad)))


def test_nopeek_validation():
  config = defense_config('nopeek')
  config.defense.nopeek.weight = -0.1
  with pytest.raises(ValueError, match='defense.nopeek.weight must be a finite number >= 0'):
    defenses.validate(config)
  config.defense.nopeek.weight = 0.1
  config.defense.nopeek.layer = 'logits'
  with pytest.raises(ValueError, match='defense.nopeek.layer must be one of'):
    defenses.validate(config)
