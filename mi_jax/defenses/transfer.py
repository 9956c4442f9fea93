"""Transfer-learning defense, TL-DMI (Ho et al., "Model inversion robustness:
can transfer learning help?", CVPR 2024; methods.md §5).

The target T = C ∘ E is trained in two stages:

1. pre-train all of T on *public* data whose classes do not intersect the
   private ones;
2. freeze E, the first layers (parameters **and** normalisation statistics),
   and fine-tune only C on the private data.

Only θ_C is fitted to private data; |θ_C| is TL's knob (smaller |θ_C| → lower
attack accuracy at some cost in accuracy). TL's reasoning via Fisher
information: early layers matter most for inversion, late layers for
classification (:mod:`mi_jax.analysis.fisher`).

Freezing here is an optax partition over parameter paths,
``optax.multi_transform({'train': tx, 'freeze': optax.set_to_zero()}, labels)``,
at *layer* granularity, a layer being a module that owns parameters (a
Linear, a Conv, a BatchNorm's γ/β). Corrections to the reference code
(fidelity.md #8):

* depth counts parameterised layers in forward order (TL counts every
  child module, ReLU and pooling included, and ``freeze_layers=0`` freezes
  everything there); ``depth=0`` here freezes nothing;
* BatchNorm statistics of frozen layers stay fixed (TL's keep updating in
  ``train()`` mode): the step restores them, bit for bit, and
  :func:`freeze_batch_norm` makes frozen BNs normalise with their running
  statistics during fine-tuning (the inference behaviour the frozen
  encoder was pre-trained to feed), for models that let each BN follow its
  own flag (:class:`mi_jax.models.mobilenet_v2.MobileNetV2`);
* |θ_C| and |θ_T| are reported for every run;
* checkpoints are never picked on the test set: both stages train a fixed
  number of epochs and the last state is the result.

MNIST-scale public data (setting (a)): ``public='other_dataset'`` pre-trains
on Fashion-MNIST when the private set is MNIST (and vice versa; labels are
of different things, so the head is re-initialised for stage 2), or
``public='other_classes'`` pre-trains on the dataset's classes outside
``private_classes`` (the private split must then hold only private classes:
:func:`restrict_to_classes`). Setting (b), an ImageNet backbone, is
:func:`mi_jax.models.mobilenet_v2.load_mobilenet_v2` frozen with the same
:func:`freeze_mask` / :func:`make_transfer_step`.
"""

from __future__ import annotations

import json
from typing import Optional, Sequence

import jax
import numpy as np
import optax
from flax import nnx
from ml_collections import config_dict

from mi_jax import data as mi_data
from mi_jax.analysis.fisher import layer_name, layer_sizes, model_layer_order, rank_for_freezing
from mi_jax.defenses.registry import Defense, Knob, register
from mi_jax.data.registry import get_spec
from mi_jax.defenses.target import build_target, num_classes_of
from mi_jax.models.conv_trunk import parameterised_layers
from mi_jax.train.classifier import train_classifier
from mi_jax.train.state import make_optimizer, merge_model, split_model
from mi_jax.train.step import make_classifier_step
from mi_jax.utils import config_rules as rules
from mi_jax.utils import storage

NAME = 'transfer-learning'
PUBLIC_SOURCES = ('other_dataset', 'other_classes')
FREEZE_BY = ('depth', 'layers', 'fisher')
# The dataset whose classes are disjoint from each private dataset's.
OTHER_DATASET = {'mnist': 'fashion_mnist', 'fashion_mnist': 'mnist'}


# ------------------------------------------------------------- freezing

def _matches(name: str, prefix: str) -> bool:
  return name == prefix or name.startswith(prefix.rstrip('/') + '/')


def freeze_mask(params, *, layers: Optional[Sequence[str]] = None, depth: Optional[int] = None,
                fisher_rank: Optional[int] = None, order: Optional[Sequence[str]] = None,
                importance=None):
  """Bool pytree like ``params``: True where the parameter is frozen.

  Exactly one selector:

  * ``layers``: layer names or path prefixes ('first', 'hidden/0',
    'features/3'); each must match at least one layer;
  * ``depth=k``: the first k parameterised layers in forward ``order``
    (:func:`mi_jax.analysis.fisher.model_layer_order`); parameterless
    modules do not count; 0 ≤ k ≤ number of layers;
  * ``fisher_rank=k``: the k layers with the largest inversion preference
    s_ℓ = F_inv,ℓ/ΣF_inv − F_cls,ℓ/ΣF_cls (most important to inversion,
    least to classification; :func:`mi_jax.analysis.fisher.inversion_preference`),
    from ``importance`` = {'classification': {layer: F}, 'inversion': {...}}.
  """
  chosen = [k for k, v in (('layers', layers), ('depth', depth), ('fisher_rank', fisher_rank)) if v is not None]
  if len(chosen) != 1:
    raise ValueError(f'freeze_mask needs exactly one of layers, depth, fisher_rank; got {chosen or "none"}')
  names = tuple(layer_sizes(params))
  if layers is not None:
    if isinstance(layers, str):
      raise ValueError(f'layers must be a sequence of layer names, got the string {layers!r}')
    for prefix in layers:
      if not any(_matches(n, prefix) for n in names):
        raise ValueError(f'layers: {prefix!r} matches no layer; layers are {names}')
    frozen = {n for n in names if any(_matches(n, p) for p in layers)}
  else:
    k = depth if depth is not None else fisher_rank
    field = chosen[0]
    if order is None or sorted(order) != sorted(names):
      raise ValueError(f'{field} needs order= listing every layer {names} in forward order, got {order!r}')
    if not (isinstance(k, (int, np.integer)) and 0 <= k <= len(names)):
      raise ValueError(f'{field} must be an int in [0, {len(names)}], got {k!r}')
    if depth is not None:
      frozen = set(order[:k])
    else:
      if importance is None:
        raise ValueError('fisher_rank needs importance= (classification and inversion Fisher per layer)')
      frozen = set(rank_for_freezing(importance, tuple(order))[:k])
  return jax.tree_util.tree_map_with_path(lambda path, _: layer_name(path) in frozen, params)


def frozen_layers(mask, order: Optional[Sequence[str]] = None) -> tuple[str, ...]:
  """Names of the frozen layers (forward ``order`` when given)."""
  names = []
  for path, frozen in jax.tree_util.tree_leaves_with_path(mask):
    if frozen and layer_name(path) not in names:
      names.append(layer_name(path))
  if order is not None:
    names.sort(key=list(order).index)
  return tuple(names)


def statistics_mask(model_state, frozen: Sequence[str]):
  """Bool pytree like ``model_state``: True for variables of frozen layers
  (BatchNorm running mean/var, fixed dictionaries) — they must not move."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: any(_matches(layer_name(path), f) for f in frozen), model_state)


def count_parameters(params, mask) -> tuple[int, int]:
  """(|θ_C|, |θ_T|): scalars trained on private data, and all of them."""
  sizes = [(int(np.size(p)), bool(m)) for p, m in zip(jax.tree.leaves(params), jax.tree.leaves(mask))]
  total = sum(s for s, _ in sizes)
  return total - sum(s for s, m in sizes if m), total


def transfer_optimizer(tx: optax.GradientTransformation, mask) -> optax.GradientTransformation:
  """``tx`` on trained parameters, zero updates (and no state) on frozen ones."""
  labels = jax.tree.map(lambda frozen: 'freeze' if frozen else 'train', mask)
  return optax.multi_transform({'train': tx, 'freeze': optax.set_to_zero()}, labels)


def freeze_batch_norm(model: nnx.Module, frozen: Sequence[str]) -> list[str]:
  """Sets ``use_running_average=True`` on the BatchNorms of frozen layers.

  A model whose BN calls pass ``use_running_average=None`` in training
  (MobileNetV2 here) then normalises the frozen part with its pre-trained
  statistics; models that pass the flag explicitly (the Sparse-Guard front)
  keep batch statistics in the forward pass, and :func:`make_transfer_step`
  still keeps their stored statistics fixed. Returns the BN layers set.
  """
  done = []
  for path, node in nnx.iter_graph(model):
    if isinstance(node, nnx.BatchNorm):
      name = '/'.join(str(k) for k in path)
      if any(_matches(name, f) for f in frozen):
        node.use_running_average = True
        done.append(name)
  return done


def make_transfer_step(graphdef, tx, *, params_mask, stats_mask, extra_loss=None):
  """:func:`mi_jax.train.step.make_classifier_step` that keeps frozen layers fixed.

  ``tx`` already zeroes frozen updates (:func:`transfer_optimizer`); the step
  also restores the frozen parameters and model-state variables (BatchNorm
  statistics, dictionaries a Hebbian rule would move) from the incoming
  state, so they stay bit-identical whatever the layers do in ``train`` mode.
  """
  inner = make_classifier_step(graphdef, tx, extra_loss=extra_loss)

  def keep(mask, old, new):
    return jax.tree.map(lambda frozen, o, n: o if frozen else n, mask, old, new)

  def train_step(state, batch, rng):
    new_state, measurements = inner(state, batch, rng)
    new_state = dict(new_state,
                     params=keep(params_mask, state['params'], new_state['params']),
                     model_state=keep(stats_mask, state['model_state'], new_state['model_state']))
    return new_state, measurements

  return train_step


# --------------------------------------------------------------- config

def config_block() -> config_dict.ConfigDict:
  """``config.defense.transfer``: where the public data comes from and what to freeze."""
  b = config_dict.ConfigDict()
  # 'other_dataset': Fashion-MNIST for MNIST and vice versa (methods.md §7's
  # MNIST-scale analogue of TL's disjoint public identities);
  # 'other_classes': the private dataset's classes outside private_classes.
  b.public = 'other_dataset'
  b.public_dataset = config_dict.placeholder(str)  # default: OTHER_DATASET[config.dataset]
  b.private_classes = (0, 1, 2, 3, 4)  # only for public='other_classes'; the other half is public
  # Stratified subsample of the public training set; None = as many as
  # config.data.private_limit (so small runs stay small), or all of it.
  b.public_limit = config_dict.placeholder(int)
  b.pretrain_epochs = config_dict.placeholder(int)  # default: config.train.epochs
  b.freeze_by = 'depth'  # 'depth' | 'layers' | 'fisher'
  # First 2 parameterised layers: with the grid's MLP (split: 2 hidden +
  # classifier; end to end: 4 + classifier) this freezes the layers TL's
  # Fisher analysis ties to inversion and leaves ≥ 1 hidden layer plus the
  # head to fit the private classes.
  b.freeze_depth = 2
  b.freeze_layers = ()  # layer names / path prefixes, for freeze_by='layers'
  b.fisher_rank = 2  # for freeze_by='fisher'
  # fisher.json written by experiments/fisher_importance.py for a target of
  # the same architecture (TL ranks layers on a privately trained model).
  b.fisher_json = config_dict.placeholder(str)
  # Re-initialise the classifier head for stage 2: public labels name other
  # things (sandals are not 5s), so the pre-trained head is no head start.
  b.reset_head = True
  return b


def _block(config_or_block):
  if 'defense' in config_or_block:
    if 'transfer' not in config_or_block.defense:
      raise ValueError('defense.transfer is missing: defense.name=transfer-learning needs its config block')
    return config_or_block.defense.transfer
  return config_or_block


def validate(config_or_block) -> None:
  """One-line ``ValueError`` for a bad ``defense.transfer`` field (block or full config).

  Given the full config, ``freeze_depth`` and ``fisher_rank`` must also leave
  a layer to train: the transfer target is the no-defense MLP,
  ``model.hidden_layers[setting]`` hidden layers plus the classifier.
  """
  b = _block(config_or_block)
  rules.check_fields(b, {
      'public': rules.one_of(PUBLIC_SOURCES),
      'public_dataset': rules.optional(rules.one_of(tuple(OTHER_DATASET))),
      'private_classes': rules.tuple_of(rules.integer(low=0, high=9), min_length=1,
                                        text='1-9 distinct classes in [0, 10)'),
      'public_limit': rules.optional(rules.integer(low=1)),
      'pretrain_epochs': rules.optional(rules.integer(low=0)),
      'freeze_by': rules.one_of(FREEZE_BY),
      'freeze_depth': rules.integer(low=0),
      'freeze_layers': rules.tuple_of(rules.TEXT, text='a tuple of layer names'),
      'fisher_rank': rules.integer(low=0),
      'fisher_json': rules.optional(rules.TEXT),
      'reset_head': rules.BOOLEAN,
  }, 'defense.transfer')
  classes = tuple(b.private_classes)
  if len(set(classes)) != len(classes) or len(classes) >= 10:
    raise ValueError(f'defense.transfer.private_classes must be 1-9 distinct classes in [0, 10), got {classes!r}')
  if b.freeze_by == 'layers' and not b.freeze_layers:
    raise ValueError(f'defense.transfer.freeze_layers must be a non-empty tuple of layer names when '
                     f'freeze_by=layers, got {b.freeze_layers!r}')
  if b.freeze_by == 'fisher' and b.fisher_json is None:
    raise ValueError('defense.transfer.fisher_json must name a fisher.json (experiments/fisher_importance.py) when freeze_by=fisher')
  if 'defense' in config_or_block:
    config = config_or_block
    classes_of_dataset = get_spec(config.dataset).num_classes
    if config.defense.name == NAME and b.public == 'other_classes' and max(classes) >= classes_of_dataset:
      raise ValueError(f'defense.transfer.private_classes must lie in [0, {classes_of_dataset}) (the classes of '
                       f'{config.dataset}), got {classes!r}')
    # Only for the active defense: a config of another defense (or a sweep
    # point of one) on a dataset without a pair must still validate.
    if (config.defense.name == NAME and b.public == 'other_dataset' and b.public_dataset is None
        and config.dataset not in OTHER_DATASET):
      raise ValueError(f"defense.transfer.public='other_dataset' needs a dataset with other classes; none is "
                       f"paired with dataset {config.dataset!r} (known pairs: {OTHER_DATASET}): set "
                       f"defense.transfer.public_dataset or defense.transfer.public='other_classes'")
    hidden = config.model.hidden_layers[config.setting]
    trunk = parameterised_layers(config.model.get('trunk', 'none'))
    layers = hidden + 1 + trunk
    field = {'depth': 'freeze_depth', 'fisher': 'fisher_rank'}.get(b.freeze_by)
    if field is not None and not b[field] < layers:
      raise ValueError(
          f'defense.transfer.{field} must be below the number of layers of the transfer target, {layers} '
          f'({trunk} of model.trunk, model.hidden_layers.{config.setting} = {hidden} hidden + the classifier), '
          f'so that a layer trains; got {b[field]!r}')


# ----------------------------------------------------------------- data

def restrict_to_classes(split, classes: Sequence[int]):
  """The ``ProtocolSplit`` with only ``classes`` in both roles (other_classes setting)."""
  keep = np.asarray(tuple(classes))
  p = np.isin(split.private_labels, keep)
  h = np.isin(split.heldout_labels, keep)
  return type(split)(split.private_images[p], split.private_labels[p],
                     split.heldout_images[h], split.heldout_labels[h])


def public_data(config, *, limit: Optional[int]):
  """(images, labels, source name) of the stage-1 public set (real data)."""
  b = config.defense.transfer
  if b.public == 'other_dataset':
    name = b.public_dataset or OTHER_DATASET[config.dataset]
    images, labels = mi_data.load(name, 'train', data_dir=config.data.dir)
  else:
    name = f'{config.dataset} classes not in {tuple(b.private_classes)}'
    images, labels = mi_data.load(config.dataset, 'train', data_dir=config.data.dir)
    keep = ~np.isin(labels, np.asarray(tuple(b.private_classes)))
    images, labels = images[keep], labels[keep]
  if limit is not None and limit < len(labels):
    idx = mi_data.stratified_subsample(labels, limit, seed=config.seed, salt=17,
                                       field='defense.transfer.public_limit')
    images, labels = images[idx], labels[idx]
  return images, labels, name


# ------------------------------------------------------------- training

def _no_defense(config):
  c = config.copy_and_resolve_references()
  with c.unlocked():
    c.defense.name = 'no-defense'
  return c


def _load_importance(path: str) -> dict:
  payload = json.loads(storage.read_text(path))
  return {'classification': {r['layer']: float(r['classification']) for r in payload['layers']},
          'inversion': {r['layer']: float(r['inversion']) for r in payload['layers']}}


def _mask_from_config(block, params, order):
  if block.freeze_by == 'depth':
    return freeze_mask(params, depth=int(block.freeze_depth), order=order)
  if block.freeze_by == 'layers':
    return freeze_mask(params, layers=tuple(block.freeze_layers))
  return freeze_mask(params, fisher_rank=int(block.fisher_rank), order=order,
                     importance=_load_importance(block.fisher_json))


def train_transfer_target(config, split, *, mesh, workdir: str, writer, num_classes: Optional[int] = None,
                          public: Optional[tuple[np.ndarray, np.ndarray]] = None):
  """TL-DMI's two stages; returns ``(graphdef, state, row_extras)``.

  Stage 1 ('pretrain' phase): the grid's no-defense target
  (:func:`mi_jax.defenses.build_target`) trained on the public set for
  ``pretrain_epochs``. Stage 2 ('target' phase): freeze the selected layers
  (:func:`freeze_mask`) and fine-tune the rest on ``split.private_*`` for
  ``config.train.epochs``. Both with :func:`mi_jax.train.classifier.train_classifier`
  (resumable per phase) and ``config.train``'s optimiser; fixed epochs, the
  last state is kept (no checkpoint selection, least of all on test data).

  ``public``: (images, labels) overriding the configured public source
  (unit tests pass synthetic data here; experiments never should).
  ``row_extras``: {'theta_c', 'theta_t', 'frozen_layers', 'public_source'}.
  ``num_classes``: the head's width (None: the dataset's class count).
  """

  validate(config)
  num_classes = num_classes_of(config) if num_classes is None else num_classes
  b = config.defense.transfer
  if b.public == 'other_classes':
    leaked = sorted(set(np.unique(split.private_labels)) - set(int(c) for c in b.private_classes))
    if leaked:
      raise ValueError(f'split.private_labels hold public classes {leaked}; pass restrict_to_classes(split, defense.transfer.private_classes)')
  if public is None:
    limit = b.public_limit if b.public_limit is not None else config.data.private_limit
    public_images, public_labels, source = public_data(config, limit=limit)
  else:
    public_images, public_labels = public
    source = 'given'
  image_shape = tuple(split.private_images.shape[1:])
  if tuple(public_images.shape[1:]) != image_shape:
    raise ValueError(f'public images have shape {public_images.shape[1:]}, private {image_shape}')
  base = _no_defense(config)
  train_cfg = config.train
  pretrain_epochs = train_cfg.epochs if b.pretrain_epochs is None else int(b.pretrain_epochs)

  # Stage 1: everything trains on public data.
  model = build_target(base, image_shape, num_classes, rngs=nnx.Rngs(config.seed))
  graphdef, state = train_classifier(
      model=model, tx=make_optimizer(train_cfg), images=public_images, labels=public_labels,
      batch_size=train_cfg.batch_size, epochs=pretrain_epochs, seed=config.seed, mesh=mesh,
      workdir=workdir, writer=writer, phase='pretrain',
      checkpoint_every=train_cfg.checkpoint_every_steps, log_every=train_cfg.log_every_steps)
  params, model_state = jax.device_get(state['params']), jax.device_get(state['model_state'])
  order = model_layer_order(graphdef, params, model_state, split.private_images[:1])

  # Stage 2: freeze, fresh head, fine-tune on the private split.
  if b.reset_head:
    fresh = build_target(base, image_shape, num_classes, rngs=nnx.Rngs(config.seed + 1))
    _, fresh_params, _ = split_model(fresh)
    head = order[-1]
    params = jax.tree_util.tree_map_with_path(
        lambda path, old, new: new if layer_name(path) == head else old, params, fresh_params)
  mask = _mask_from_config(b, params, order)
  frozen = frozen_layers(mask, order)
  model = merge_model(graphdef, params, model_state)
  freeze_batch_norm(model, frozen)
  _, _, model_state = split_model(model)
  stats_mask = statistics_mask(model_state, frozen)
  tx = transfer_optimizer(make_optimizer(train_cfg), mask)
  graphdef, state = train_classifier(
      model=model, tx=tx, images=split.private_images, labels=split.private_labels,
      batch_size=train_cfg.batch_size, epochs=train_cfg.epochs, seed=config.seed, mesh=mesh,
      workdir=workdir, writer=writer, phase='target',
      checkpoint_every=train_cfg.checkpoint_every_steps, log_every=train_cfg.log_every_steps,
      make_step=lambda g, t: make_transfer_step(g, t, params_mask=mask, stats_mask=stats_mask),
      keep_batch_stats=lambda path: any(_matches('/'.join(map(str, path)), f) for f in frozen))
  theta_c, theta_t = count_parameters(params, mask)
  extras = {'theta_c': theta_c, 'theta_t': theta_t, 'frozen_layers': ','.join(frozen),
            'public_source': source}
  return graphdef, state, extras


def check_sizes(config, sizes) -> None:
  """Stage 1's batch fits the public set (``public_limit``, default ``data.private_limit``)."""
  del sizes  # the public set's size is configured, not measured here
  t = config.defense.transfer
  public = t.public_limit if t.public_limit is not None else config.data.private_limit
  if public is not None and config.train.batch_size > public:
    raise ValueError(f"train.batch_size must be at most the {public} images of the public set "
                     f"(defense.transfer.public_limit), got {config.train.batch_size!r}")


register(Defense(
    name=NAME,
    summary='transfer learning: pre-train on public data, fine-tune only the last layers on private data (TL-DMI)',
    block='transfer', config_block=config_block, validate=validate,
    knob=Knob('transfer.freeze_depth', 'frozen'), recipe=train_transfer_target, check_sizes=check_sizes,
))
