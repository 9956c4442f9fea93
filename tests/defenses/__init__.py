"""Shared helpers of the defense tests."""

import jax
import jax.numpy as jnp
from flax import nnx

from mi_jax import defenses
from mi_jax.train.state import init_train_state, make_optimizer
from tests.helpers import load_config, synthetic_digits


def defense_config(name, *, setting='split', protocol='corrected'):
  """The tiny config with every defense block mounted (as the lead will)."""
  config = load_config('tiny')
  config.unlock()
  for field, block in defenses.config_blocks().items():
    config.defense[field] = block
  config.defense.name = name
  config.setting = setting
  config.protocol = protocol
  return config


def build(config, seed=0):
  return defenses.build_target(config, (28, 28, 1), 10, rngs=nnx.Rngs(seed))


def train_steps(config, n_steps=2, batch=16):
  """``n_steps`` real train steps on synthetic digits; returns (model graphdef, state, measurements)."""
  images, labels = synthetic_digits(batch)
  tx = make_optimizer(config.train)
  graphdef, state = init_train_state(build(config), tx)
  step = jax.jit(defenses.classifier_step_for(config)(graphdef, tx))
  batch = {'image': jnp.asarray(images), 'label': jnp.asarray(labels)}
  history = []
  for _ in range(n_steps):
    state, measurements = step(state, batch, jax.random.key(1))
    history.append({k: float(v) for k, v in measurements.items()})
  return graphdef, state, history
