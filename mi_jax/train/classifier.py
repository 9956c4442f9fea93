"""Supervised training of a classifier on an in-memory labelled set.

The one training routine every target (and every defense recipe built on
plain supervised training) shares: resumable, sharded batches from
:mod:`mi_jax.data`, a jitted donated step, orbax checkpoints with resume.
Defenses change the model, the step (an extra loss term, per-example
clipping) or the data; they call this with their own pieces.
"""

from __future__ import annotations

import os
from typing import Callable, Optional

import jax
import numpy as np
import optax
from flax import nnx

from mi_jax import data as mi_data
from mi_jax.train import batch_stats, loop
from mi_jax.train.state import init_train_state, replicated
from mi_jax.train.step import jit_step, make_classifier_step


def train_classifier(
    *,
    model: nnx.Module,
    tx: optax.GradientTransformation,
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    epochs: int,
    seed: int,
    mesh,
    workdir: str,
    writer,
    phase: str = 'target',
    checkpoint_every: int = 500,
    log_every: int = 50,
    make_step: Optional[Callable] = None,
    state=None,
    keep_batch_stats: Optional[Callable[[tuple], bool]] = None,
):
  """Trains ``model`` on (images, labels); returns ``(graphdef, state)``.

  ``make_step(graphdef, tx) -> step_fn`` defaults to cross-entropy
  (:func:`make_classifier_step`). ``state`` starts from a given train state
  (e.g. a pre-trained one) instead of the model's initial parameters.
  Checkpoints go to ``workdir/checkpoints/<phase>``; a killed run resumes.

  A model with BatchNorm gets its statistics recomputed after training over
  one pass of (up to 512 of) ``images`` with the final weights
  (:func:`mi_jax.train.batch_stats.recompute_batch_stats`; the pass is
  deterministic, so a resumed run ends identical); ``keep_batch_stats(path)``
  exempts frozen layers.
  """
  graphdef, initial = init_train_state(model, tx)
  state = initial if state is None else state
  state = jax.device_put(state, replicated(mesh, state))
  steps_per_epoch = mi_data.steps_per_epoch(len(images), batch_size)
  arrays = (images, labels)

  def position_at(step):
    return mi_data.Position(*divmod(step, steps_per_epoch))

  def batch_at(step):
    batch_images, batch_labels = mi_data.local_batch(arrays, batch_size, seed=seed, position=position_at(step))
    return mi_data.to_global_array({'image': batch_images, 'label': batch_labels}, mesh)

  step_fn = (make_step or make_classifier_step)(graphdef, tx)
  state = loop.fit(
      phase=phase, step_fn=jit_step(step_fn, state, mesh),
      state=state, batch_at=batch_at, position_at=lambda s: position_at(s)._asdict(),
      total_steps=epochs * steps_per_epoch, rng=jax.random.key(seed),
      checkpoint_dir=os.path.join(workdir, 'checkpoints', phase),
      checkpoint_every=checkpoint_every, log_every=log_every, writer=writer)
  state = batch_stats.recompute_batch_stats(
      graphdef, state, (images,), forward=lambda m, x: m(x, train=True), batch_size=batch_size,
      mesh=mesh, seed=seed, keep=keep_batch_stats, max_examples=batch_stats.DEFAULT_EXAMPLES)
  return graphdef, state
