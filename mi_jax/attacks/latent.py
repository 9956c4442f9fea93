"""Latent optimisation shared by the GAN-prior attacks (GMI, KEDMI, PPA).

Every attack optimises a batch of latents, one row per (class, attack), for

    minimise_w  Σ_i  m_i · ℓ(w_i, y_i, key_t)

where ℓ is the attack's per-example loss and m_i ∈ {0, 1} masks the padding
rows. The reduction is a *sum*: row i's gradient is ∇ℓ(w_i) itself, so the
step each latent takes does not depend on how many rows share the batch
(with a mean, SGD's step would shrink as 1/rows). The reference codes
average over their batch of identities instead (GMI's ``Total_Loss =
Prior_Loss + lamda * Iden_Loss`` with ``CrossEntropyLoss`` and ``label.mean()``
over ``bs`` rows), so their SGD learning rate lr is a per-latent step of
lr / bs: pass that quotient (see ``configs/gan_attacks_mnist.py``). Adam
(KEDMI, PPA) normalises each coordinate's gradient, so sum and mean give the
same steps up to its ε.

Rows never interact, so the problem is embarrassingly parallel: the rows are
sharded over the 'data' mesh axis (padded to a multiple of the device count
with copies of row 0, whose mask is 0) and the same program runs on 1 or
many devices with equal results.

The first gradient is taken at ``init`` as given (GMI draws z ~ N(0, I) and
clamps only after its first update); after every update ``project`` maps the
latents back to the feasible set (GMI's ``z.clamp(-clip_range, clip_range)``,
see :func:`clip_latents`). Iterations run in jitted ``lax.fori_loop`` chunks
of ``log_every`` so the loss is logged without a host round-trip per step;
per-iteration randomness is ``fold_in(key, iteration)``.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from mi_jax.data.batching import DATA_AXIS


class AttackResult(NamedTuple):
  """What every GAN-prior attack returns."""

  images: np.ndarray  # (rows, H, W, C) float32 [0, 1]: the reconstructions
  labels: np.ndarray  # (rows,) the attacked class of each reconstruction
  latents: object  # the optimised latents (pytree of host arrays)
  losses: np.ndarray  # logged mean (over rows) losses
  # Baseline: the generator's images at the latents the attack starts from,
  # before any target-guided step (one per reconstruction, same labels).
  initial_images: np.ndarray
  initial_latents: object


def target_logits_fn(graphdef, state) -> Callable:
  """``images [0, 1] NHWC -> logits`` of a trained target (inference mode), traceable."""
  from mi_jax.train.state import merge_model

  def logits(images):
    return merge_model(graphdef, state['params'], state['model_state'])(images, train=False)

  return logits


def target_activations_fn(graphdef, state) -> Callable:
  """``images [0, 1] NHWC -> named activations`` (``'last_hidden'``, ``'logits'``, …) in inference mode."""
  from mi_jax.train.state import merge_model

  def activations(images):
    return merge_model(graphdef, state['params'], state['model_state']).activations(images, train=False)

  return activations


def identity_loss(logits, labels):
  """−log P_T(y | x) per example."""
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


class LatentResult(NamedTuple):
  latents: object  # pytree of host arrays, leading axis = rows
  losses: np.ndarray  # (n_logged,) mean loss at each logged iteration
  per_example_loss: np.ndarray  # (rows,) final per-row loss


def clip_latents(bound: Optional[float], *, keys: Optional[tuple] = None) -> Callable:
  """Projection onto the box [−bound, bound] (all leaves, or the named dict ``keys``)."""
  if bound is None:
    return lambda latents: latents
  if bound <= 0:
    raise ValueError(f"clip must be > 0 or None, got {bound!r}")

  def project(latents):
    if keys is None:
      return jax.tree.map(lambda x: jnp.clip(x, -bound, bound), latents)
    return {k: (jnp.clip(v, -bound, bound) if k in keys else v) for k, v in latents.items()}

  return project


def make_optimizer(*, name: str, learning_rate: float, momentum: float = 0.9) -> optax.GradientTransformation:
  """'sgd' (Nesterov momentum, GMI's hand-written update), or 'adam' (KEDMI, PPA)."""
  if learning_rate <= 0:
    raise ValueError(f"learning_rate must be > 0, got {learning_rate!r}")
  if name == 'sgd':
    # GMI: v ← m·v − lr·g;  z ← z − m·v_prev + (1 + m)·v, Sutskever's
    # Nesterov form, which optax's nesterov=True implements.
    return optax.sgd(learning_rate, momentum=momentum, nesterov=True)
  if name == 'adam':
    return optax.adam(learning_rate)
  raise ValueError(f"optimizer must be one of ('sgd', 'adam'), got {name!r}")


def _pad_rows(tree, rows: int):
  def pad(x):
    x = np.asarray(x)
    extra = rows - x.shape[0]
    return x if extra == 0 else np.concatenate([x, np.repeat(x[:1], extra, axis=0)])
  return jax.tree.map(pad, tree)


def optimize_latents(
    *,
    loss_fn: Callable,
    init,
    labels: np.ndarray,
    tx: optax.GradientTransformation,
    iterations: int,
    mesh,
    key,
    project: Callable = lambda w: w,
    log_every: int = 100,
    writer=None,
    phase: str = 'latent',
    extras=None,
) -> LatentResult:
  """Minimises ``Σ_i loss_fn(w, labels, extras, key)[i]`` over the latents ``w`` (module docstring).

  ``loss_fn(latents, labels, extras, key) -> (rows,)`` per-row losses;
  ``init`` a pytree of arrays with leading axis = rows (the same as
  ``labels``); ``extras`` an optional pytree of constant per-row arrays
  (e.g. a conditional generator's class input), sharded like the latents.
  Returns the projected latents after ``iterations`` updates; ``losses``
  logs the mean per-row loss (the sum divided by the number of real rows).
  """
  if iterations < 1:
    raise ValueError(f"iterations must be >= 1, got {iterations!r}")
  if log_every < 1:
    raise ValueError(f"log_every must be >= 1, got {log_every!r}")
  rows = len(labels)
  devices = mesh.shape[DATA_AXIS]
  padded = -(-rows // devices) * devices
  mask = np.zeros(padded, np.float32)
  mask[:rows] = 1.0
  sharding = NamedSharding(mesh, P(DATA_AXIS))
  put = lambda tree: jax.tree.map(lambda x: jax.device_put(x, sharding), tree)
  latents = put(jax.tree.map(jnp.asarray, _pad_rows(init, padded)))
  labels_d = put(_pad_rows(np.asarray(labels).astype(np.int32), padded))
  mask_d = put(mask)
  extras_d = None if extras is None else put(_pad_rows(extras, padded))

  def objective(w, iteration):
    per_row = loss_fn(w, labels_d, extras_d, jax.random.fold_in(key, iteration))
    return jnp.sum(per_row * mask_d), per_row

  @jax.jit
  def init_opt(w):
    return tx.init(w)

  def run_chunk(w, opt_state, start, count):
    def body(i, carry):
      w, opt_state, _ = carry
      (loss, _), grads = jax.value_and_grad(objective, has_aux=True)(w, start + i)
      updates, opt_state = tx.update(grads, opt_state, w)
      return project(optax.apply_updates(w, updates)), opt_state, loss
    return jax.lax.fori_loop(0, count, body, (w, opt_state, jnp.zeros((), jnp.float32)))

  chunk = jax.jit(run_chunk, static_argnums=3, donate_argnums=(0, 1))
  final_loss = jax.jit(lambda w, iteration: objective(w, iteration)[1])
  opt_state = init_opt(latents)
  losses, done = [], 0
  while done < iterations:
    count = min(log_every, iterations - done)
    latents, opt_state, loss = chunk(latents, opt_state, jnp.int32(done), count)
    done += count
    losses.append(float(loss) / rows)
    if writer is not None:
      writer.write(phase, done, {'loss': losses[-1]})
  per_row = np.asarray(final_loss(latents, jnp.int32(iterations)))[:rows]
  out = jax.tree.map(lambda x: np.asarray(x)[:rows], latents)
  return LatentResult(out, np.asarray(losses), per_row)


def class_attack_labels(classes, attacks_per_class: int) -> np.ndarray:
  """Row labels for ``attacks_per_class`` attacks on each class: c₀…c₀, c₁…c₁, …"""
  if attacks_per_class < 1:
    raise ValueError(f"attacks_per_class must be >= 1, got {attacks_per_class!r}")
  return np.repeat(np.asarray(classes, np.int64), attacks_per_class)


def apply_rows(fn: Callable, tree, *, mesh, batch_size: int = 256):
  """``fn(chunk)`` over the rows of a pytree, sharded and padded; host outputs."""
  rows = len(jax.tree.leaves(tree)[0])
  devices = mesh.shape[DATA_AXIS]
  batch_size = -(-min(batch_size, rows) // devices) * devices
  sharding = NamedSharding(mesh, P(DATA_AXIS))
  jitted = jax.jit(fn)
  outputs = []
  for start in range(0, rows, batch_size):
    part = jax.tree.map(lambda x: np.asarray(x)[start:start + batch_size], tree)
    valid = len(jax.tree.leaves(part)[0])
    part = jax.tree.map(lambda x: jax.device_put(x, sharding), _pad_rows(part, batch_size))
    outputs.append(jax.tree.map(lambda r: np.asarray(r)[:valid], jitted(part)))
  return jax.tree.map(lambda *p: np.concatenate(p), *outputs)
