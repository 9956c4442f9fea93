"""Label smoothing (Struppek et al. 2024): the smoothed loss, its gradient, its schedule."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mi_jax import defenses
from mi_jax.defenses import label_smoothing as ls
from mi_jax.train.state import init_train_state, make_optimizer
from tests.defenses import build, defense_config
from tests.helpers import synthetic_digits


def _loss(alpha, logits, labels, step=0, steps_per_epoch=1, epochs=1):
  """CE + the defense's extra term: what the train step minimises."""
  extra = ls.make_extra_loss(alpha=alpha, epochs=epochs, steps_per_epoch=steps_per_epoch, warmup_fraction=0.0,
                             ramp_fraction=0.0)
  term, _ = extra({'logits': logits}, {'label': labels, 'step': step}, None)
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean() + term


@pytest.mark.parametrize('alpha', [0.1, -0.05, 0.0])
def test_loss_is_cross_entropy_against_the_smoothed_labels(alpha):
  rng = np.random.default_rng(0)
  logits64 = rng.standard_normal((6, 10)) * 3
  labels = rng.integers(0, 10, 6)
  # NumPy float64: −Σ_k y_LS,k log p_k with y_LS = (1 − α) y + α/K.
  log_p = logits64 - logits64.max(1, keepdims=True)
  log_p -= np.log(np.exp(log_p).sum(1, keepdims=True))
  y_ls = (1 - alpha) * np.eye(10)[labels] + alpha / 10
  expected = float(np.mean(-(y_ls * log_p).sum(1)))
  got = float(_loss(alpha, jnp.asarray(logits64, jnp.float32), jnp.asarray(labels)))
  assert got == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_the_uniform_term_averages_over_the_trained_classes_only():
  # A 10-way head trained on 5 classes: y_LS puts α/5 on each trained class and
  # nothing on the others, so a negative α cannot push the untrained logits to −∞.
  rng = np.random.default_rng(2)
  trained = (0, 1, 2, 3, 4)
  logits64 = rng.standard_normal((6, 10)) * 3
  labels = rng.integers(0, 5, 6)
  log_p = logits64 - logits64.max(1, keepdims=True)
  log_p -= np.log(np.exp(log_p).sum(1, keepdims=True))
  alpha = -0.05
  y_ls = (1 - alpha) * np.eye(10)[labels] + alpha / 5 * np.isin(np.arange(10), trained)
  expected = float(np.mean(-(y_ls * log_p).sum(1)))
  extra = ls.make_extra_loss(alpha=alpha, epochs=1, steps_per_epoch=1, warmup_fraction=0.0, ramp_fraction=0.0,
                             trained_classes=trained)
  logits = jnp.asarray(logits64, jnp.float32)
  term, _ = extra({'logits': logits}, {'label': jnp.asarray(labels), 'step': 0}, None)
  got = float(optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(labels)).mean() + term)
  assert got == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_the_config_route_passes_the_private_classes_of_the_gan_attack_protocol():
  config = defense_config('label-smoothing')
  config.defense.label_smoothing.alpha = -0.05
  config.unlock()
  config.private_classes = (0, 1)
  rng = np.random.default_rng(3)
  logits = jnp.asarray(rng.standard_normal((4, 10)), jnp.float32)
  labels = jnp.asarray([0, 1, 0, 1])
  extra = ls.extra_loss_of(config, 10, steps_per_epoch=1)
  explicit = ls.make_extra_loss(alpha=-0.05, epochs=config.train.epochs, steps_per_epoch=1, warmup_fraction=0.5,
                                ramp_fraction=0.25, trained_classes=(0, 1))
  batch = {'label': labels, 'step': 10 ** 6}
  assert float(extra({'logits': logits}, batch, None)[0]) == float(explicit({'logits': logits}, batch, None)[0])
  assert float(explicit({'logits': logits}, batch, None)[0]) != float(
      ls.make_extra_loss(alpha=-0.05, epochs=config.train.epochs, steps_per_epoch=1, warmup_fraction=0.5,
                         ramp_fraction=0.25)({'logits': logits}, batch, None)[0])


def test_gradient_with_respect_to_the_logits_is_p_minus_the_smoothed_labels():
  rng = np.random.default_rng(1)
  logits = jnp.asarray(rng.standard_normal((4, 10)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 10, 4))
  alpha = -0.05
  grad = jax.grad(lambda z: _loss(alpha, z, labels))(logits)
  y_ls = (1 - alpha) * jax.nn.one_hot(labels, 10) + alpha / 10
  np.testing.assert_allclose(np.asarray(grad), np.asarray((jax.nn.softmax(logits) - y_ls) / 4), atol=1e-6)


def test_negative_factor_waits_then_ramps_per_epoch_and_a_positive_one_does_not():
  epochs = 8  # warm-up 4 epochs, ramp 2
  values = [float(ls.smoothing_at_epoch(e, alpha=-0.1, epochs=epochs, warmup_fraction=0.5, ramp_fraction=0.25))
            for e in range(epochs)]
  np.testing.assert_allclose(values, [0, 0, 0, 0, -0.05, -0.1, -0.1, -0.1], atol=1e-7)
  assert float(ls.smoothing_at_epoch(0, alpha=0.1, epochs=epochs, warmup_fraction=0.5, ramp_fraction=0.25)) \
      == pytest.approx(0.1)
  # The authors' 100-epoch schedule: 0 until epoch 50, α at epoch 74 and after.
  paper = [float(ls.smoothing_at_epoch(e, alpha=-0.05, epochs=100, warmup_fraction=0.5, ramp_fraction=0.25))
           for e in (49, 50, 74, 99)]
  np.testing.assert_allclose(paper, [0.0, -0.05 / 25, -0.05, -0.05], atol=1e-8)


def test_the_train_step_follows_the_schedule_through_its_step_counter():
  config = defense_config('label-smoothing')
  config.train.epochs = 4
  config.defense.label_smoothing.alpha = -0.2
  images, labels = synthetic_digits(16)
  tx = make_optimizer(config.train)
  graphdef, state = init_train_state(build(config), tx)
  step = jax.jit(defenses.classifier_step_for(config, steps_per_epoch=2)(graphdef, tx))
  batch = {'image': jnp.asarray(images), 'label': jnp.asarray(labels)}
  alphas = []
  for _ in range(8):  # 4 epochs of 2 steps: 2 epochs at 0, a 1-epoch ramp, then α
    state, measurements = step(state, batch, jax.random.key(0))
    alphas.append(float(measurements['label_smoothing_alpha']))
    assert np.isfinite(float(measurements['loss']))
  np.testing.assert_allclose(alphas, [0, 0, 0, 0, -0.2, -0.2, -0.2, -0.2], atol=1e-7)


def test_a_schedule_without_the_data_size_is_refused():
  config = defense_config('label-smoothing')
  with pytest.raises(ValueError, match='needs the steps per epoch'):
    defenses.extra_loss_for(config)


@pytest.mark.parametrize('field, value, message', [
    ('alpha', 1.0, 'defense.label_smoothing.alpha must be a finite number < 1'),
    ('alpha', float('nan'), 'defense.label_smoothing.alpha must be a finite number'),
    ('warmup_fraction', 0.9, 'warmup_fraction \\+ ramp_fraction must be <= 1'),
    ('ramp_fraction', -0.1, 'defense.label_smoothing.ramp_fraction must be'),
])
def test_bad_fields_are_one_line_errors(field, value, message):
  config = defense_config('label-smoothing')
  config.defense.label_smoothing[field] = value
  with pytest.raises(ValueError, match=message):
    defenses.validate(config)


def test_its_knob_is_the_smoothing_factor():
  knob = defenses.get('label-smoothing').knob
  assert (knob.field, knob.symbol, knob.name) == ('label_smoothing.alpha', 'α', 'alpha')
