"""Pure step functions: ``step(state, batch, rng) -> (state, measurements)``.

They take and return the dict train state of :mod:`mi_jax.train.state`, so
the caller can ``jax.jit`` them with explicit shardings and donate the state.
Per-step randomness is ``fold_in(rng, state['step'])``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from mi_jax.train.state import merge_model, split_model


def make_classifier_step(graphdef, tx: optax.GradientTransformation, *, extra_loss=None, post_step=None):
  """Cross-entropy training of a target network, then the defense's post-step.

  ``extra_loss(activations, batch, key) -> (scalar, measurements)`` adds a
  defense's regulariser (NoPeek, MID, BiDO, label smoothing) to the
  cross-entropy; it sees every named activation of
  ``model.activations(..., train=True)``, and ``batch`` also holds ``'step'``
  (the optimiser step, for scheduled regularisers).
  ``post_step`` (a :class:`mi_jax.defenses.registry.PostStep`, or anything
  with ``collects`` and ``apply``): after the optimiser step,
  ``post_step.apply(model, sown)`` with what the forward pass sowed into the
  ``post_step.collects`` intermediates (the sparse layers' Hebbian update;
  :func:`mi_jax.defenses.classifier_step_for` passes the defense's own).
  """

  def train_step(state, batch, rng):
    key = jax.random.fold_in(rng, state['step'])
    loss_key, extra_key = jax.random.split(key)

    def loss_fn(params):
      model = merge_model(graphdef, params, state['model_state'])
      forward = lambda m, images: m.activations(images, train=True, key=loss_key)
      if post_step is None:
        # Whatever a layer sows is dropped, so it never lands in the model
        # state (a sparse layer's Hebbian batch: without its post-step the
        # dictionary does not learn that way).
        activations, _ = nnx.capture(forward, nnx.Intermediate)(model, batch['image'])
        sown = {}
      else:
        activations, sown = nnx.capture(forward, post_step.collects)(model, batch['image'])
        sown = nnx.to_pure_dict(sown)
      logits = activations['logits']
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch['label']).mean()
      extra = {}
      if extra_loss is not None:
        term, extra = extra_loss(activations, {**batch, 'step': state['step']}, extra_key)
        extra = {'cross_entropy': loss, **extra}
        loss = loss + term
      _, _, model_state = split_model(model)
      return loss, (logits, model_state, sown, extra)

    (loss, (logits, model_state, sown, extra)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(state['params'])
    updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
    params = optax.apply_updates(state['params'], updates)
    if post_step is not None:
      model = merge_model(graphdef, params, model_state)
      post_step.apply(model, sown)
      _, params, model_state = split_model(model)
    measurements = {
        'loss': loss,
        'accuracy': jnp.mean(jnp.argmax(logits, -1) == batch['label']),
        'grad_norm': optax.tree.norm(grads),
        **extra,
    }
    new_state = {'step': state['step'] + 1, 'params': params,
                 'model_state': model_state, 'opt_state': opt_state}
    return new_state, measurements

  return train_step


def jit_step(step_fn, state, mesh):
  """``jax.jit`` of a step with replicated state (donated) and a batch sharded
  along 'data' (the batch arrives as global arrays that carry their sharding).

  Calls run under ``jax.set_mesh(mesh)``, so layers that split per-device
  work explicitly (the sparse coding layers' ``shard_map``) see the mesh.
  """
  state_shardings = jax.tree.map(lambda _: jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()), state)
  jitted = jax.jit(step_fn, in_shardings=(state_shardings, None, None),
                   out_shardings=(state_shardings, None), donate_argnums=0)

  def step(state, batch, rng):
    with jax.set_mesh(mesh):
      return jitted(state, batch, rng)

  return step
