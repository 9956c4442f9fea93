"""Precise BatchNorm statistics: population moments with the final weights.

A BatchNorm's running averages, r ← m·r + (1 − m)·(batch moment) with
m = 0.9 (torch's momentum 0.1), start at mean 0 and variance 1 and forget
them only as m^t. Sparse codes have variances of 1e-4 to 1e-2, so after the
~50 steps of a small run the running variance still holds 0.9^50 ≈ 0.005 of
its initial 1, several times the true value: in inference mode the layer
then shrinks its input, the next sparse layer codes far fewer atoms and the
dense layers see inputs they never saw in training (the 30-point accuracy
"cost" of Sparse-Guard at small scale was this artefact). Even converged
averages mix in the moments of earlier weights (dictionaries, layers
before).

So after training, every BatchNorm's statistics are replaced by the
population moments of its input over one pass of the training inputs with
the final weights ("precise BN", Wu & Johnson 2021, "Rethinking 'Batch' in
BatchNorm", §3). Over K equal global batches with per-batch moments μ_k, σ²_k
(biased variance, as the layer computes them in training):

    μ = (1/K) Σ_k μ_k,        σ² = (1/K) Σ_k (σ²_k + μ_k²) − μ².

As in training, a BatchNorm that follows another sees its input normalised
with batch moments. The last partial batch is dropped (batch moments of
padded rows would be wrong); a set smaller than one batch is used whole
(rounded down to a multiple of the devices).
"""

from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mi_jax import data as mi_data
from mi_jax.train.state import merge_model

# Examples per recomputation pass by default: 512 images give each
# convolutional BatchNorm ~400k positions per channel (28×28 codes), far
# more than its two moments need, and keep the pass cheap when a forward
# pass costs tens of milliseconds per image (two LCA loops on a CPU).
DEFAULT_EXAMPLES = 512


def has_batch_norm(model: nnx.Module) -> bool:
  return any(isinstance(node, nnx.BatchNorm) for _, node in nnx.iter_graph(model))


def _batch_norm_paths(graphdef, state) -> list[tuple]:
  model = merge_model(graphdef, state['params'], state['model_state'])
  return [tuple(path) for path, node in nnx.iter_graph(model) if isinstance(node, nnx.BatchNorm)]


def _get(tree, path):
  for key in path:
    tree = tree[key]
  return tree


def _set(tree: dict, path, value) -> dict:
  """A copy of nested dict ``tree`` with ``tree[path]`` replaced (other leaves shared)."""
  head, *rest = path
  return {**tree, head: _set(tree[head], rest, value) if rest else value}


def _usable_batch_size(num_examples: int, batch_size: int, num_devices: int) -> int:
  if num_examples >= batch_size:
    return batch_size
  usable = num_examples // num_devices * num_devices
  if usable < 1:
    raise ValueError(f"recomputing BatchNorm statistics needs at least {num_devices} examples "
                     f"(one per device), got {num_examples}")
  return usable


def recompute_batch_stats(
    graphdef,
    state: dict,
    arrays: tuple,
    *,
    forward: Callable,
    batch_size: int,
    mesh,
    seed: int = 0,
    max_examples: Optional[int] = None,
    keep: Optional[Callable[[tuple], bool]] = None,
) -> dict:
  """``state`` with every BatchNorm's (mean, var) set to its population moments.

  ``forward(model, *batch)`` runs the model in training mode (BatchNorm on
  batch moments; e.g. ``lambda m, x: m(x, train=True)``); its output is
  discarded. ``arrays`` are the training inputs (aligned, one example per
  row); ``max_examples`` caps the pass (None: all). ``keep(path) -> True``
  leaves the BatchNorm at module path ``path`` untouched (frozen layers of a
  transfer-learned model). A model without BatchNorm comes back unchanged.
  """
  paths = [p for p in _batch_norm_paths(graphdef, state) if keep is None or not keep(p)]
  if not paths:
    return state
  n = len(arrays[0]) if max_examples is None else min(len(arrays[0]), max_examples)
  order = np.random.default_rng([seed, 0xB7]).permutation(len(arrays[0]))[:n]
  arrays = tuple(np.asarray(a)[order] for a in arrays)
  batch_size = _usable_batch_size(n, batch_size, mesh.devices.size)

  @jax.jit
  def batch_moments(params, model_state, batch):
    model = merge_model(graphdef, params, model_state)
    for _, node in nnx.iter_graph(model):
      if isinstance(node, nnx.BatchNorm):
        node.momentum = 0.0  # the stored statistics become this batch's moments
    nnx.capture(forward, nnx.Intermediate)(model, *batch)  # intermediates (Hebbian batches) discarded
    stats = nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))
    return [(_get(stats, p)['mean'], _get(stats, p)['var']) for p in paths]

  steps = mi_data.steps_per_epoch(n, batch_size)
  sums = None
  for step in range(steps):
    local = mi_data.local_batch(arrays, batch_size, seed=seed, position=mi_data.Position(0, step))
    with jax.set_mesh(mesh):
      moments = batch_moments(state['params'], state['model_state'], mi_data.to_global_array(local, mesh))
    # Per layer: Σ μ_k and Σ (σ²_k + μ_k²), accumulated in float64 on the host.
    moments = [(np.asarray(mu, np.float64), np.asarray(var, np.float64) + np.square(np.asarray(mu, np.float64)))
               for mu, var in jax.device_get(moments)]
    sums = moments if sums is None else [(a + mu, b + sq) for (a, b), (mu, sq) in zip(sums, moments)]
  model_state = state['model_state']
  for path, (sum_mu, sum_sq) in zip(paths, sums):
    mean = sum_mu / steps
    var = np.maximum(sum_sq / steps - np.square(mean), 0.0)
    old = _get(model_state, path)
    model_state = _set(model_state, path, {
        **old,
        'mean': jax.device_put(jnp.asarray(mean, old['mean'].dtype), old['mean'].sharding),
        'var': jax.device_put(jnp.asarray(var, old['var'].dtype), old['var'].sharding)})
  return {**state, 'model_state': model_state}
