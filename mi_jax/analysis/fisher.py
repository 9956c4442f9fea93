"""Layer importance by Fisher information (TL-DMI, Ho et al. CVPR 2024, §4).

For a task loss L and parameters θ, the Fisher information is
F = E[−∂²L/∂θ²]; TL estimates it per parameter by the *empirical Fisher*,
the mean squared per-example gradient

    F_θ = (1/N) Σ_n (∂L(x_n)/∂θ)²,

and summarises a layer ℓ by the mean over its parameters,
F_ℓ = (1/|θ_ℓ|) Σ_{θ∈ℓ} F_θ. Two task losses (methods.md §5):

* classification: L(x, y) = CE(T(x), y) on a private validation set;
* inversion: L(x, y) = ‖φ(x) − c_y‖₂, φ the target's penultimate
  features ('last_hidden'), c_y the centroid of φ over the private images
  of class y, x the images the attacker would produce (reconstructions, or
  the private images themselves as the attacker's ideal output).

TL's finding: early layers carry the inversion Fisher, late layers the
classification Fisher, which motivates freezing the first layers. The TL
reference code has no Fisher code (fidelity.md #8); this is ours.

Layers. A *layer* is a module that owns parameters directly: its name is
the path of a parameter leaf minus the leaf's own key, joined by '/'
(``('hidden', 0, 'kernel')`` → ``'hidden/0'``). Parameterless modules (ReLU,
pooling, dropout) are not layers. :func:`forward_layer_order` orders layers
by when the forward pass first reads them, from the traced program, so no
model has to declare its order (and dict order, which NNX sorts by name, is
never mistaken for depth).
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mi_jax.data.batching import process_slice, to_global_array
from mi_jax.train.state import merge_model

# Numerical floor inside the ℓ2 norm: ∂‖v‖/∂v = v/‖v‖ is undefined at 0.
_NORM_EPS = 1e-12


def _key_str(key) -> str:
  for attr in ('key', 'idx', 'name'):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def layer_name(path) -> str:
  """'a/0/b' for the parameter leaf at ``path`` (its own key dropped)."""
  return '/'.join(_key_str(k) for k in path[:-1])


def leaf_layers(tree):
  """Same structure as ``tree``: each leaf replaced by its layer name."""
  return jax.tree_util.tree_map_with_path(lambda path, _: layer_name(path), tree)


def layer_sizes(params) -> dict[str, int]:
  """{layer: number of scalar parameters}, in the tree's flattening order."""
  sizes: dict[str, int] = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    name = layer_name(path)
    sizes[name] = sizes.get(name, 0) + int(np.size(leaf))
  return sizes


def _sub_jaxprs(eqn):
  """(inner jaxpr, whether its invars align with ``eqn.invars``) per sub-program."""
  for value in eqn.params.values():
    for item in value if isinstance(value, (tuple, list)) else (value,):
      inner = getattr(item, 'jaxpr', item)
      if hasattr(inner, 'eqns') and hasattr(inner, 'invars'):
        yield inner, len(inner.invars) == len(eqn.invars)


def _first_uses(jaxpr, owner: dict, seen: dict, counter: list) -> None:
  """Records, for every owner id, the global index of the first equation using it."""
  for eqn in jaxpr.eqns:
    used = [owner[v] for v in eqn.invars if not hasattr(v, 'val') and v in owner]
    for inner, aligned in _sub_jaxprs(eqn):
      if aligned:  # descend so layers inside one jitted call keep their order
        inner_owner = {iv: owner[ov] for ov, iv in zip(eqn.invars, inner.invars)
                       if not hasattr(ov, 'val') and ov in owner}
        _first_uses(inner, inner_owner, seen, counter)
    counter[0] += 1
    for o in used:
      seen.setdefault(o, counter[0])
    # Values computed from a parameter alone (a transposed or cast kernel)
    # stay that parameter's, so the first *real* use decides.
    if len(set(used)) == 1 and len(eqn.invars) == len(used):
      for out in eqn.outvars:
        owner[out] = used[0]


def forward_layer_order(apply_fn: Callable, params, *args) -> tuple[str, ...]:
  """Layers of ``params`` in the order ``apply_fn(params, *args)`` first reads them.

  ``apply_fn`` is traced once (abstractly, nothing runs); a layer's position
  is the earliest equation that consumes any of its parameters. Layers the
  forward pass never reads come last, in flattening order.
  """
  leaves, _ = jax.tree_util.tree_flatten_with_path(params)
  closed = jax.make_jaxpr(apply_fn)(params, *args)
  jaxpr = closed.jaxpr
  n = len(leaves)
  owner = {var: i for i, var in enumerate(jaxpr.invars[:n])}
  seen: dict[int, int] = {}
  _first_uses(jaxpr, owner, seen, [0])
  first: dict[str, float] = {}
  for i, (path, _) in enumerate(leaves):
    name = layer_name(path)
    first[name] = min(first.get(name, np.inf), seen.get(i, np.inf))
  names = list(dict.fromkeys(layer_name(p) for p, _ in leaves))
  return tuple(sorted(names, key=lambda name: (first[name], names.index(name))))


def model_layer_order(graphdef, params, model_state, sample_images) -> tuple[str, ...]:
  """:func:`forward_layer_order` of an NNX model's logits on ``sample_images``."""

  def logits(p, images):
    return merge_model(graphdef, p, model_state)(images, train=False)

  return forward_layer_order(logits, params, sample_images[:1])


# ----------------------------------------------------------------- losses

def classification_loss(graphdef, model_state) -> Callable:
  """``loss(params, example)``: CE of one example {'image', 'label'}.

  Inference mode (BatchNorm on its running statistics, no noise): the
  Fisher of the model as deployed, and per-example batch statistics would
  be meaningless.
  """

  def loss(params, example):
    model = merge_model(graphdef, params, model_state)
    logits = model(example['image'][None], train=False)
    return optax.softmax_cross_entropy_with_integer_labels(logits, example['label'][None])[0]

  return loss


def penultimate_features(graphdef, params, model_state, images, *, feature: str = 'last_hidden'):
  """φ(images): the named activation ``feature`` in inference mode."""
  model = merge_model(graphdef, params, model_state)
  return model.activations(images, train=False, stop_at=feature)[feature]


def inversion_loss(graphdef, model_state, *, feature: str = 'last_hidden') -> Callable:
  """``loss(params, example)`` = ‖φ(x) − c‖₂ for one example {'image', 'centroid'}.

  The centroid c is a constant of the loss: it is the point in feature
  space the attacker steers towards, computed once with the same
  parameters (:func:`class_centroids`), not differentiated through.
  """

  def loss(params, example):
    phi = penultimate_features(graphdef, params, model_state, example['image'][None], feature=feature)[0]
    diff = phi.reshape(-1) - jax.lax.stop_gradient(example['centroid']).reshape(-1)
    return jnp.sqrt(jnp.sum(diff * diff) + _NORM_EPS)

  return loss


def class_centroids(features: np.ndarray, labels: np.ndarray, *, num_classes: int) -> np.ndarray:
  """(num_classes, D): mean feature per class (zeros for an absent class)."""
  features = np.asarray(features, np.float64).reshape(len(features), -1)
  sums = np.zeros((num_classes, features.shape[1]))
  np.add.at(sums, np.asarray(labels), features)
  counts = np.bincount(np.asarray(labels), minlength=num_classes)[:, None]
  return (sums / np.maximum(counts, 1)).astype(np.float32)


# ----------------------------------------------------------------- Fisher

def squared_gradient_sum(loss_fn: Callable, params, batch, weights):
  """Σ_n w_n (∂L(x_n)/∂θ)², per parameter, via ``vmap(grad)`` over the batch.

  ``weights`` (0/1 per example) drops padding rows. The batch may be
  sharded over 'data': the sum over examples is the one cross-device
  reduction, so the code is the same on 1 or 8 devices.
  """
  grads = jax.vmap(jax.grad(loss_fn), in_axes=(None, 0))(params, batch)
  return jax.tree.map(
      lambda g: jnp.einsum('n,n...->...', weights, jnp.square(g)), grads)


def empirical_fisher(loss_fn: Callable, params, examples: Mapping[str, np.ndarray], *,
                     batch_size: int, mesh):
  """Per-parameter empirical Fisher F_θ = mean_n (∂L(x_n)/∂θ)² over ``examples``.

  ``examples``: aligned host arrays (the fields ``loss_fn`` reads). Batches
  are sharded over the mesh's 'data' axis; the last one is padded and its
  padding weighted out.
  """
  names = tuple(examples)
  n = len(examples[names[0]])
  if n < 1:
    raise ValueError('examples must hold at least one example, got 0')
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  params = jax.device_put(params, replicated)
  step = jax.jit(lambda p, batch, w: squared_gradient_sum(loss_fn, p, batch, w))
  mine = process_slice(batch_size, jax.process_index(), jax.process_count())
  total = None
  for start in range(0, n, batch_size):
    chunk = {k: np.asarray(examples[k][start:start + batch_size]) for k in names}
    valid = len(chunk[names[0]])
    weights = np.zeros(batch_size, np.float32)
    weights[:valid] = 1.0
    if valid < batch_size:  # static shapes: pad with copies of row 0, weight 0
      chunk = {k: np.concatenate([v, np.repeat(v[:1], batch_size - valid, axis=0)])
               for k, v in chunk.items()}
    local = ({k: v[mine] for k, v in chunk.items()}, weights[mine])
    batch, w = to_global_array(local, mesh)
    part = step(params, batch, w)
    total = part if total is None else jax.tree.map(jnp.add, total, part)
  return jax.tree.map(lambda t: np.asarray(t, np.float64) / n, total)


def layer_fisher(fisher) -> dict[str, float]:
  """{layer: mean of F_θ over the layer's parameters}, flattening order."""
  sums: dict[str, float] = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(fisher):
    name = layer_name(path)
    sums[name] = sums.get(name, 0.0) + float(np.sum(np.asarray(leaf, np.float64)))
  sizes = layer_sizes(fisher)
  return {name: sums[name] / sizes[name] for name in sums}


def layer_importance(graphdef, params, model_state, *, validation_images: np.ndarray,
                     validation_labels: np.ndarray, private_images: np.ndarray,
                     private_labels: np.ndarray, num_classes: int, batch_size: int, mesh,
                     inversion_images: np.ndarray | None = None,
                     inversion_labels: np.ndarray | None = None,
                     feature: str = 'last_hidden') -> dict[str, dict[str, float]]:
  """{'classification': {layer: F}, 'inversion': {layer: F}} of a trained target.

  Classification Fisher: CE on (``validation_images``, ``validation_labels``),
  private-distribution data the target did not train on. Inversion Fisher:
  ‖φ(x_n) − c_{y_n}‖ with c the class centroids of φ(``private_images``) and
  (x_n, y_n) = (``inversion_images``, ``inversion_labels``): reconstructions
  and their classes; default the private images and labels themselves.
  """
  feats = np.asarray(jax.jit(
      lambda p, x: penultimate_features(graphdef, p, model_state, x, feature=feature)
  )(params, jnp.asarray(private_images)))
  centroids = class_centroids(feats, private_labels, num_classes=num_classes)
  inv_images = private_images if inversion_images is None else inversion_images
  inv_labels = private_labels if inversion_labels is None else inversion_labels
  if len(inv_images) != len(inv_labels):
    raise ValueError(f'inversion_images must align with inversion_labels ({len(inv_labels)}), got {len(inv_images)}')
  cls = empirical_fisher(classification_loss(graphdef, model_state), params,
                         {'image': validation_images, 'label': np.asarray(validation_labels, np.int32)},
                         batch_size=batch_size, mesh=mesh)
  inv = empirical_fisher(inversion_loss(graphdef, model_state, feature=feature), params,
                         {'image': inv_images, 'centroid': centroids[np.asarray(inv_labels)]},
                         batch_size=batch_size, mesh=mesh)
  return {'classification': layer_fisher(cls), 'inversion': layer_fisher(inv)}


def inversion_preference(importance: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
  """s_ℓ = F_inv,ℓ / Σ F_inv − F_cls,ℓ / Σ F_cls, per layer.

  Each Fisher is first turned into shares of its own total, because the two
  losses have unrelated scales; s_ℓ > 0 means layer ℓ matters more to
  inversion than to classification. Freezing by Fisher rank freezes the k
  layers with the largest s_ℓ (most for inversion, least for
  classification), ties broken by depth.
  """
  cls, inv = importance['classification'], importance['inversion']
  if set(cls) != set(inv):
    raise ValueError(f'importance layers differ: classification {sorted(cls)} vs inversion {sorted(inv)}')
  total_c = sum(cls.values()) or 1.0
  total_i = sum(inv.values()) or 1.0
  return {name: inv[name] / total_i - cls[name] / total_c for name in cls}


def rank_for_freezing(importance, order: Sequence[str]) -> tuple[str, ...]:
  """Layers sorted by :func:`inversion_preference`, most inversion-heavy first."""
  pref = inversion_preference(importance)
  missing = [name for name in order if name not in pref]
  if missing:
    raise ValueError(f'importance lacks layers {missing}')
  return tuple(sorted(order, key=lambda name: (-pref[name], order.index(name))))
