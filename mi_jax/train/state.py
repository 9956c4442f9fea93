"""The train state: a plain dict pytree around an NNX model.

    state = {'step': int32, 'params': {...}, 'model_state': {...}, 'opt_state': ...}

``params`` are the ``nnx.Param`` leaves (what the optimiser updates);
``model_state`` holds everything else a model carries (BatchNorm statistics,
frozen or Hebbian dictionaries). Both are pure nested dicts, so orbax,
shardings and ``jax.tree`` see ordinary pytrees; ``nnx.merge(graphdef, …)``
rebuilds the module inside a jitted step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P


def split_model(model: nnx.Module):
  """(graphdef, params, model_state) with pure-dict states."""
  graphdef, params, model_state = nnx.split(model, nnx.Param, ...)
  return graphdef, nnx.to_pure_dict(params), nnx.to_pure_dict(model_state)


def merge_model(graphdef, params, model_state) -> nnx.Module:
  return nnx.merge(graphdef, params, model_state)


def init_train_state(model: nnx.Module, tx: optax.GradientTransformation):
  """(graphdef, state) for a freshly built model."""
  graphdef, params, model_state = split_model(model)
  state = {
      'step': jnp.zeros((), jnp.int32),
      'params': params,
      'model_state': model_state,
      'opt_state': tx.init(params),
  }
  return graphdef, state


def replicated(mesh, tree):
  """Replicated NamedShardings for every leaf of ``tree``."""
  return jax.tree.map(lambda _: NamedSharding(mesh, P()), tree)


def make_optimizer(cfg) -> optax.GradientTransformation:
  """optax transform from a ``train``/``attack`` config block."""
  name = cfg.optimizer
  if name == 'sgd':
    # torch SGD's weight_decay adds wd·θ to the gradient before momentum.
    return optax.chain(
        optax.add_decayed_weights(cfg.get('weight_decay', 0.0)),
        optax.sgd(cfg.learning_rate, momentum=cfg.get('momentum', 0.0) or None),
    )
  if name == 'adam':
    return optax.chain(
        optax.add_decayed_weights(cfg.get('weight_decay', 0.0)),
        optax.adam(cfg.learning_rate),
    )
  raise ValueError(f"optimizer must be one of ('sgd', 'adam'), got {name!r}")
