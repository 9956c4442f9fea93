"""One experiment: train defended targets, attack them, measure, write results.

``run(config, workdir)`` expands ``config.sweep`` into points (defense × λ ×
setting × protocol); each point trains its target on the private split,
measures accuracy on the held-out split, runs the surrogate inversion attack
and scores the reconstructions of the whole private set. Every point keeps
its own workdir (``points/<name>/``: config, metrics.jsonl, checkpoints,
row.json), so a killed sweep resumes where it stopped. At the end the
workdir gets ``results.json``, ``results.md`` and one SG Fig. 3-style PNG
per (setting, protocol); an existing ``results.json`` is never overwritten.
"""

from __future__ import annotations

import math
import os
import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mi_jax import data as mi_data
from mi_jax import defenses
from mi_jax.judge import SCALES as JUDGE_SCALES
from mi_jax.models import conv_trunk
from mi_jax.attacks.surrogate import legacy_surrogate_attack, query_target, surrogate_attack
from mi_jax.experiments import common, evaluation, sweep, tables
from mi_jax.train.classifier import train_classifier
from mi_jax.train.inference import apply_in_batches
from mi_jax.train.state import make_optimizer, merge_model
from mi_jax.utils import config_rules as rules
from mi_jax.utils import results as results_io
from mi_jax.utils import storage
from mi_jax.experiments.figures import reconstruction_grid, tradeoff_figure
from mi_jax.utils.metric_writer import MetricWriter
from mi_jax.utils import workdir as workdir_lib

OPTIMIZERS = ('sgd', 'adam')
ATTACKS = ('surrogate',)


ConfigError = common.ConfigError
_check = common.check
check_fields = common.check_fields


# The config file's scales (configs/sparse_guard_mnist.py:<scale>).
CONFIG_SCALES = ('tiny', 'small', 'paper')
_FID_IMAGES = rules.Rule(
    lambda v: v is None or (rules.integer(low=0).allows(v) and v != 1), 'None (all), 0 (off) or an integer >= 2')


def _choices(options, what: str) -> rules.Rule:
  return rules.tuple_of(rules.one_of(options), min_length=1, text=f"a non-empty tuple of {what} from {tuple(options)}")


# The stream of the attacked subset's draw (data.attacked_limit); the
# protocol split's two roles use salts 0 and 1 (mi_jax.data.splits).
_ATTACKED_SALT = 2

# Checked against the registry when a config is validated, not at import: a
# config file may register the user's own data (mi_jax.data.register_local).
REGISTERED_DATASET = rules.Rule(
    lambda v: isinstance(v, str) and v in mi_data.DATASETS,
    "a registered dataset: 'mnist', 'fashion_mnist' or a name given to mi_jax.data.register_local")


# Every field of configs/sparse_guard_mnist.py except those the defenses own
# (their blocks ``config.defense.<block>``, checked by
# :func:`mi_jax.defenses.validate`, and the fields they read under
# ``config.defense``, :func:`mi_jax.defenses.field_rules`) and ``sweep.knob_values``
# (its keys vary; :func:`_check_sweep_knob_values`). A field added to the config
# without a rule fails tests/hardening/config_validation_test.py.
FIELDS = {
    'scale': rules.one_of(CONFIG_SCALES),
    'dataset': REGISTERED_DATASET,
    'seed': rules.integer(low=0),
    'protocol': rules.one_of(defenses.PROTOCOLS),
    'setting': rules.one_of(defenses.SETTINGS),
    'data.dir': rules.optional(rules.TEXT),
    'data.private_fraction': rules.number(above=0, below=1),
    'data.private_limit': rules.optional(rules.integer(low=1)),
    'data.heldout_limit': rules.optional(rules.integer(low=1)),
    'data.attacked_limit': rules.optional(rules.integer(low=1)),
    'data.normalization': rules.tuple_of(rules.number(), length=2, text='(mean, std), two finite numbers'),
    'model.hidden_width': rules.integer(low=1),
    'model.hidden_layers.end_to_end': rules.integer(low=1),
    'model.hidden_layers.split': rules.integer(low=1),
    'model.trunk': rules.one_of(conv_trunk.TRUNKS),
    'model.trunk_width': rules.number(above=0),
    'train.optimizer': rules.one_of(OPTIMIZERS),
    'train.learning_rate': rules.number(above=0),
    'train.momentum': rules.number(low=0, below=1),
    'train.weight_decay': rules.number(low=0),
    'train.batch_size': rules.integer(low=1),
    'train.epochs': rules.integer(low=1),
    'train.checkpoint_every_steps': rules.integer(low=1),
    'train.log_every_steps': rules.integer(low=1),
    'attack.name': rules.one_of(ATTACKS),
    'attack.optimizer': rules.one_of(OPTIMIZERS),
    'attack.learning_rate': rules.number(above=0),
    'attack.batch_size': rules.integer(low=1),
    'attack.epochs': rules.integer(low=1),
    'attack.validation_fraction': rules.number(above=0, below=1),
    'attack.patience': rules.integer(low=1),
    'attack.num_seeds': rules.integer(low=1),
    'attack.legacy_epochs': rules.integer(low=1),
    'attack.decoder': rules.one_of(('mlp', 'conv')),
    'attack.decoder_hidden': rules.integer(low=1),
    'attack.noise_at_query': rules.BOOLEAN,
    'attack.checkpoint_every_seconds': rules.optional(rules.number(above=0)),
    'attack.figure_images': rules.integer(low=1),
    'metrics.fid_images': _FID_IMAGES,
    'metrics.fid_batch_size': rules.integer(low=1),
    'metrics.fid_weights_path': rules.optional(rules.TEXT),
    'metrics.judge_scale': rules.optional(rules.one_of(tuple(JUDGE_SCALES))),
    'sweep.enabled': rules.BOOLEAN,
    'sweep.settings': _choices(defenses.SETTINGS, 'settings'),
    'sweep.protocols': _choices(defenses.PROTOCOLS, 'protocols'),
    'sweep.target_seeds': rules.integer(low=1),
}


def field_rules() -> dict:
  """:data:`FIELDS` with the rules that depend on the registered defenses."""
  return {**FIELDS,
          'defense.name': rules.one_of(defenses.names()),
          'sweep.defenses': _choices(defenses.names(), 'defense names'),
          **defenses.field_rules()}


def _check_sweep_knob_values(config) -> None:
  """``sweep.knob_values.<defense>``: a defense with a knob, and values its knob can take."""
  for key in config.sweep.knob_values.keys():
    defense = key.replace('_', '-')
    with_knob = tuple(name.replace('-', '_') for name in defenses.names() if sweep.has_knob(name))
    _check(key in with_knob, f"sweep.knob_values.{key} is not a defense with a knob; the keys are {with_knob}")
    # The knob's own type decides: transfer-learning freezes a whole number of layers.
    if isinstance(sweep.get_knob(config, defense), int):
      values = rules.tuple_of(rules.integer(low=0), min_length=1, text='a non-empty tuple of integers >= 0')
    elif defenses.get(defense).knob.signed:
      values = rules.tuple_of(rules.number(), min_length=1, text='a non-empty tuple of finite numbers')
    else:
      values = rules.tuple_of(rules.number(low=0), min_length=1, text='a non-empty tuple of finite numbers >= 0')
    check_fields(config, {f'sweep.knob_values.{key}': values})


def _private_batches(config) -> dict:
  """The active defense's own batches over the private set (a GAN's), {field: size}."""
  defense = defenses.get(config.defense.name)
  return {} if defense.private_batches is None else dict(defense.private_batches(config))


def _check_devices(config, num_devices: int) -> None:
  """Global batches split evenly over the data-parallel devices."""
  sizes = {'train.batch_size': config.train.batch_size, 'attack.batch_size': config.attack.batch_size,
           'metrics.fid_batch_size': config.metrics.fid_batch_size}
  sizes.update(_private_batches(config))
  for field, size in sizes.items():
    _check(size % num_devices == 0, f"{field} must be a positive multiple of the {num_devices} devices, got {size!r}")


def _check_relations(config, num_devices: int) -> None:
  """Rules that tie fields together (after every field passed its own rule)."""
  _check_devices(config, num_devices)
  _check(config.data.normalization[1] > 0, f"data.normalization must be (mean, std) with std > 0, "
         f"got {tuple(config.data.normalization)!r}")
  _check(not (config.protocol == 'sg_legacy' and config.setting == 'end_to_end'
              and config.model.hidden_layers.end_to_end != 4),
         f"model.hidden_layers.end_to_end must be 4 under protocol='sg_legacy' (the SG end-to-end networks), "
         f"got {config.model.hidden_layers.end_to_end!r}")
  _check(not (config.protocol == 'sg_legacy' and config.model.trunk == 'vgg16'),
         "model.trunk='vgg16' has no protocol='sg_legacy' form (the SG code has no face target); "
         "use protocol='corrected' or model.trunk in ('none', 'sg_cnn')")
  if config.model.trunk == 'vgg16':
    h, w, _ = mi_data.get_spec(config.dataset).image_shape
    multiple = conv_trunk.VGG16_DOWNSAMPLING
    _check(h % multiple == 0 and w % multiple == 0,
           f"model.trunk='vgg16' needs images whose sides are multiples of {multiple}; "
           f"dataset {config.dataset!r} has {h}×{w}")
  _check_defenses(config, only_active=True)  # again: the point's knob value, in the point's setting


def _check_defenses(config, *, only_active: bool = False) -> None:
  try:
    defenses.validate(config, only_active=only_active)
  except ValueError as error:
    raise ConfigError(str(error)) from None


def _check_sizes(config, sizes) -> None:
  """Batches that fit the data: ``sizes`` = {'private': n, 'heldout': n} (a missing or
  None entry is not checked); each value is the number of images or the configured limit."""
  private, heldout = sizes.get('private'), sizes.get('heldout')
  fits = []  # (field, batch, set size, which set)
  if private is not None:
    fits.append(('train.batch_size', config.train.batch_size, private, 'private set'))
    for field, size in _private_batches(config).items():
      fits.append((field, size, private, 'private set'))
  if heldout is not None:
    # The surrogate attacker trains on the held-out set, less (corrected
    # protocol) the slice it keeps for early stopping.
    if config.protocol == 'corrected':
      train = heldout - max(1, math.ceil(config.attack.validation_fraction * heldout))
      fits.append(('attack.batch_size', config.attack.batch_size, train,
                   'held-out set the attacker trains on (less attack.validation_fraction)'))
    else:
      fits.append(('attack.batch_size', config.attack.batch_size, heldout, 'held-out set'))
  for field, batch, n, what in fits:
    _check(batch <= n, f"{field} must be at most the {n} images of the {what}, got {batch!r}")
  attacked = config.data.attacked_limit
  if attacked is not None and private is not None:
    _check(attacked <= private, f"data.attacked_limit must be at most the {private} images of the private set "
           f"(or None: all of them), got {attacked!r}")
  defense = defenses.get(config.defense.name)
  if defense.check_sizes is not None:
    try:
      defense.check_sizes(config, sizes)
    except ValueError as error:
      raise ConfigError(str(error)) from None


def validate_config(config, *, num_devices: int, sizes=None) -> None:
  """One-line :class:`ConfigError` for the first bad field, before any work.

  Every field has a rule (:data:`FIELDS`, the defense blocks'
  :func:`mi_jax.defenses.validate`, :func:`_check_sweep_knob_values`): numbers are
  finite and in range, integers are integers, choices are known. Then the
  relations: batches split over ``num_devices`` and fit the data (``sizes``:
  {'private': n, 'heldout': n}; default, the configured ``data.private_limit``
  and ``data.heldout_limit``), and each point of a sweep passes too (the
  message then names the point).
  """
  check_fields(config, field_rules())
  _check_sweep_knob_values(config)
  _check_defenses(config)  # every block's fields, before a sweep copies them into its points
  if sizes is None:
    sizes = {'private': config.data.private_limit, 'heldout': config.data.heldout_limit}
  points = sweep.expand(config) if config.sweep.enabled else [(None, config)]
  for name, point in points:
    try:
      _check_relations(point, num_devices)
      _check_sizes(point, sizes)
    except ConfigError as error:
      raise ConfigError(str(error) if name is None else f"{error} (sweep point {name})") from None


def train_target(config, split, *, mesh, workdir, writer):
  """Trains the defended target on the private set.

  Returns ``(graphdef, state, row_extras)``: defenses with their own recipe
  (DP-SGD, transfer learning, the GAN-based ones) report extra row fields
  (ε, |θ_C|, …); the others train with cross-entropy plus the defense's
  regulariser (NoPeek, MID, BiDO) and report none.
  """
  defense = defenses.get(config.defense.name)
  if defense.recipe is not None:
    return defense.recipe(config, split, mesh=mesh, workdir=workdir, writer=writer)
  image_shape = tuple(split.private_images.shape[1:])
  model = defenses.build_target(config, image_shape, defenses.num_classes_of(config), rngs=nnx.Rngs(config.seed))
  graphdef, state = train_classifier(
      model=model, tx=make_optimizer(config.train), images=split.private_images,
      labels=split.private_labels, batch_size=config.train.batch_size, epochs=config.train.epochs,
      seed=config.seed, mesh=mesh, workdir=workdir, writer=writer, phase='target',
      checkpoint_every=config.train.checkpoint_every_steps, log_every=config.train.log_every_steps,
      make_step=defenses.classifier_step_for(
          config, steps_per_epoch=mi_data.steps_per_epoch(len(split.private_images), config.train.batch_size)))
  return graphdef, state, {}


def accuracy(graphdef, state, images, labels, *, batch_size, mesh) -> float:
  """Top-1 accuracy of the target in inference mode without a noise key
  (noise-free; MID's z = μ), on a labelled set."""

  @jax.jit
  def predict(params, model_state, batch):
    return jnp.argmax(merge_model(graphdef, params, model_state)(batch, train=False), -1)

  predictions = apply_in_batches(lambda b: predict(state['params'], state['model_state'], b),
                                 (images,), batch_size=batch_size, mesh=mesh)
  return float(np.mean(predictions == labels))


def attacker_settings(config) -> dict:
  """The corrected attacker's keyword arguments (:func:`mi_jax.attacks.surrogate.surrogate_attack`)
  from ``config.attack``; the validation slice is drawn with ``config.seed``."""
  a = config.attack
  return dict(tx=make_optimizer(a), decoder=a.decoder, decoder_hidden=a.decoder_hidden, batch_size=a.batch_size,
              epochs=a.epochs, validation_fraction=a.validation_fraction, patience=a.patience,
              split_seed=config.seed, checkpoint_every_seconds=a.checkpoint_every_seconds)


def legacy_attacker_settings(config) -> dict:
  """The SG code's attack loop's keyword arguments: the target's optimiser, ``attack.legacy_epochs``."""
  a = config.attack
  return dict(tx=make_optimizer(config.train), normalization=tuple(config.data.normalization),
              decoder_hidden=a.decoder_hidden, batch_size=a.batch_size, epochs=a.legacy_epochs,
              checkpoint_every_seconds=a.checkpoint_every_seconds)


def attacked_indices(config, split) -> Optional[np.ndarray]:
  """Indices of the private images the attack inverts and the metrics score:
  all of them (None) unless ``data.attacked_limit`` asks for a class-stratified
  subset (drawn with ``config.seed``, in the private set's order).

  The target still trains on the whole private set: a larger training set
  buys target accuracy, and a subset keeps the attacker's queries and the
  metrics at a fixed cost (on a CPU a query of a sparse target is an LCA
  pass, ~10 ms per image).
  """
  limit = config.data.attacked_limit
  if limit is None:
    return None
  try:
    return mi_data.stratified_subsample(split.private_labels, limit, seed=config.seed, salt=_ATTACKED_SALT,
                                        field='data.attacked_limit')
  except ValueError as error:
    raise ConfigError(str(error)) from None


def run_point(config, split, *, mesh, workdir, judge=None, judged_private=None,
              attacked=None) -> tuple[dict, dict]:
  """Target → accuracy → attack → metrics; returns (results row, figure images).

  ``judge`` (with ``judged_private``, the private images in its feature
  space) adds attack accuracy and KNN distance to the row. ``attacked``
  (:func:`attacked_indices`) selects the private images attacked and scored;
  None: all of them.
  """
  storage.makedirs(workdir)
  writer = MetricWriter(workdir)
  started = time.perf_counter()
  graphdef, state, row_extras = train_target(config, split, mesh=mesh, workdir=workdir, writer=writer)
  # Wall time of the target's training alone (a resumed point counts only
  # this process's share), what a defense costs its owner.
  target_seconds = round(time.perf_counter() - started, 1)
  # The attacked images; the KNN distance still searches the whole private
  # set (judged_private, labelled split.private_labels).
  private_images, private_labels = split.private_images, split.private_labels
  if attacked is not None:
    private_images, private_labels = private_images[attacked], private_labels[attacked]
  leak = defenses.LEAK_OF_SETTING[config.setting]
  attack_rng = jax.random.key(config.seed + 7)
  query = lambda images, salt, leak: query_target(
      graphdef, state, images, leak=leak, mesh=mesh, key=jax.random.fold_in(attack_rng, salt),
      batch_size=config.attack.batch_size, noise_at_query=config.attack.noise_at_query)
  # One rule in both protocols: accuracy is measured on the model exactly as
  # the attacker queries it (stochastic defenses on iff attack.noise_at_query;
  # MID then samples z), so a defense's utility cost and its protection are
  # measured at the same operating point. Stochastic targets also report the
  # noise-free accuracy (no key; MID's z = μ) as 'accuracy_noise_free'.
  target = merge_model(graphdef, state['params'], state['model_state'])
  if target.stochastic_at_inference() and config.attack.noise_at_query:
    row_extras = {**row_extras, 'accuracy_noise_free': accuracy(
        graphdef, state, split.heldout_images, split.heldout_labels, batch_size=config.attack.batch_size,
        mesh=mesh)}
  # Attacker seeds: the same features (or codes), a fresh decoder and batch
  # order each, so the rows carry the attacker's own variance.
  seeds = [config.seed + 1000 * k for k in range(config.attack.num_seeds)]
  if config.protocol == 'sg_legacy':
    test_accuracy = float(np.mean(query(split.heldout_images, 0, None) == split.heldout_labels))
    attacks = legacy_surrogate_attack(
        target_graphdef=graphdef, target_state=state, leak=leak, aux_images=split.heldout_images,
        private_images=private_images, mesh=mesh, rng=attack_rng, workdir=workdir, writer=writer,
        seeds=seeds, **legacy_attacker_settings(config))
  else:
    # One pass over the held-out set serves both the accuracy and the
    # attacker's queries.
    aux_features, predictions = query(split.heldout_images, 0, leak)
    test_accuracy = float(np.mean(predictions == split.heldout_labels))
    private_features, _ = query(private_images, 1, leak)
    attacks = surrogate_attack(
        aux_features=aux_features, aux_images=split.heldout_images, private_features=private_features,
        mesh=mesh, rng=attack_rng, workdir=workdir, writer=writer, seeds=seeds, **attacker_settings(config))
  originals = private_images.astype(np.float32) / 255.0
  per_seed = [evaluation.surrogate_scores(
      originals, attack, labels=private_labels, protocol=config.protocol,
      normalization=config.data.normalization, seed=config.seed,
      legacy_script=defenses.get(config.defense.name).legacy_script, judge=judge, judged_private=judged_private,
      judged_labels=split.private_labels)
      for attack in attacks]
  n_heldout = len(split.heldout_images)
  row = {
      'dataset': config.dataset, 'setting': config.setting, 'defense': config.defense.name,
      **sweep.knob_fields(config, config.defense.name), 'protocol': config.protocol, 'seed': config.seed,
      'accuracy': test_accuracy,
      # Binomial standard error of the held-out accuracy.
      'accuracy_se': float(np.sqrt(test_accuracy * (1.0 - test_accuracy) / n_heldout)),
      **_aggregate(per_seed),
      'attack_seeds': len(seeds),
      # n_private: the target's training set; n_attacked: the private images attacked and scored.
      'leak': leak, 'n_private': len(split.private_labels), 'n_attacked': len(originals), 'n_heldout': n_heldout,
      'num_devices': int(mesh.devices.size), 'num_processes': jax.process_count(),
      'backend': jax.default_backend(),
      'config_hash': results_io.config_hash(point_json(config)),
      'code_version': results_io.code_version(),
      **row_extras,
  }
  if attacks[0].best_epoch is not None:
    row['attack_best_epochs'] = [a.best_epoch for a in attacks]
  row['attack_epochs_run'] = [a.epochs_run for a in attacks]
  if judge is not None:
    row.update({'judge': judge.name, 'judge_test_accuracy': judge.test_accuracy})
  fid_images = config.metrics.fid_images
  if fid_images != 0:
    # On the first attacker seed only (an Inception pass per image is costly).
    n = len(originals) if fid_images is None else min(fid_images, len(originals))
    row['fid'] = evaluation.fid_of(originals[:n], attacks[0].reconstructions[:n],
                                   batch_size=config.metrics.fid_batch_size,
                                   weights_path=config.metrics.fid_weights_path, mesh=mesh)
    row['fid_images'] = n
  row['seconds'] = round(time.perf_counter() - started, 1)
  row['target_seconds'] = target_seconds
  shown = config.attack.figure_images
  figure = {'originals': originals[:shown], 'reconstructions': attacks[0].reconstructions[:shown]}
  writer.rewind('result', -1)  # a point killed after this line and rerun logs its result once
  writer.write('result', 0, {k: v for k, v in row.items() if isinstance(v, (int, float))})
  return row, figure


def _aggregate(per_seed: list[dict]) -> dict:
  """Mean over attacker seeds under each metric's name; ``<metric>_sd`` (the
  sample standard deviation, ddof = 1; 0 for one seed) and
  ``<metric>_per_seed`` beside it."""
  out = {}
  for key in per_seed[0]:
    values = np.asarray([scores[key] for scores in per_seed], np.float64)
    out[key] = float(np.mean(values))
    out[f'{key}_sd'] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    out[f'{key}_per_seed'] = [float(v) for v in values]
  return out


def _split_sizes(split) -> dict:
  return {'private': len(split.private_labels), 'heldout': len(split.heldout_labels)}


def point_json(point) -> dict:
  """A point's config without the ``sweep`` block: what its ``config.json`` holds
  and its row's ``config_hash`` hashes. The sweep that produced a point does
  not change its numbers, so a grid grown by a defense or a knob value reuses
  the points it already finished."""
  out = common.config_json(point)
  out.pop('sweep', None)
  return out


def _check_workdir(config, points, workdir) -> dict:
  """Refuses a workdir that holds a finished run or another config, before anything is
  written; returns {point name: (row, figure)} of the points finished earlier."""
  finished = common.check_workdir(
      config, workdir, [common.Point(name, os.path.join(workdir, 'points', name), point_json(point))
                        for name, point in points],
      figure_keys=('originals', 'reconstructions'), point_configs=True,
      may_differ=('sweep',))
  for name, (row, _) in finished.items():
    try:
      results_io.validate_row(row)
    except ValueError as error:
      row_path = os.path.join(workdir, 'points', name, 'row.json')
      raise ValueError(f"{row_path}: {error}; delete it to recompute the point") from None
  return finished


def run(config, workdir: str, *, mesh=None) -> list[dict]:
  """Runs every point of ``config`` and writes the results files.

  Before anything is written: the config is validated (every field, the
  sweep's points, batches against the loaded data), then, holding the
  workdir's lock (:mod:`mi_jax.utils.workdir`; process 0), the workdir must
  not hold a finished run, another config, or rows of another config.
  """
  mesh = mesh if mesh is not None else mi_data.make_data_mesh()
  num_devices = mesh.devices.size
  validate_config(config, num_devices=num_devices)
  points = sweep.expand(config)
  split = mi_data.load_sparse_guard(
      config.dataset, seed=config.seed, private_fraction=config.data.private_fraction,
      private_limit=config.data.private_limit, heldout_limit=config.data.heldout_limit,
      data_dir=config.data.dir)
  validate_config(config, num_devices=num_devices, sizes=_split_sizes(split))
  attacked = attacked_indices(config, split)
  writes = jax.process_index() == 0
  with workdir_lib.locked(workdir, enabled=writes):
    finished = _check_workdir(config, points, workdir)
    common.start_run(config, workdir, writes=writes)
    judge, judged_private = None, None
    if config.metrics.judge_scale is not None:
      judge = evaluation.load_judge(config.dataset, workdir=workdir, scale=config.metrics.judge_scale,
                                    seed=config.seed, data_dir=config.data.dir, mesh=mesh)
      judged_private = judge.features(split.private_images)
    rows, figures = [], []
    for index, (name, point) in enumerate(points):
      point_dir = os.path.join(workdir, 'points', name)
      print(f"=== point {index + 1}/{len(points)}: {name}", flush=True)
      if name in finished:
        row, figure = finished[name]
        print(f"    already done ({os.path.join(point_dir, 'row.json')})", flush=True)
      else:
        storage.makedirs(point_dir)
        if writes:
          results_io.write_json_atomic(os.path.join(point_dir, 'config.json'), point_json(point), overwrite=True)
        row, figure = run_point(point, split, mesh=mesh, workdir=point_dir, judge=judge,
                                judged_private=judged_private, attacked=attacked)
        common.save_point(point_dir, row, figure, writes=writes)
      rows.append(row)
      figures.append((row, figure))
      print(f"    accuracy {row['accuracy']:.4f}  PSNR {row['psnr']:.2f}  SSIM {row['ssim']:.3f}"
            f"  (untrained decoder: PSNR {row['psnr_untrained_decoder']:.2f})", flush=True)
    if writes:
      _write_outputs(rows, figures, workdir)
  return rows


def _write_outputs(rows, figures, workdir) -> None:
  """One figure per (setting, protocol), results.md, then results.json last
  (its presence marks the run as finished)."""
  groups = {}
  for row, figure in figures:
    groups.setdefault((row['setting'], row['protocol']), []).append((row, figure))
  written = []
  for (setting, protocol), members in sorted(groups.items()):
    originals = members[0][1]['originals']
    by_defense = {}  # one column per defense: its first target seed's reconstructions
    for row, figure in members:
      by_defense.setdefault(tables.defense_label(row['defense'], row['lam'], row.get('knob', 'λ')),
                            figure['reconstructions'])
    path = os.path.join(workdir, f"reconstructions_{setting}_{protocol}.png")
    written.append(reconstruction_grid(originals, by_defense, path, overwrite=True))
  for protocol in sorted({row['protocol'] for row in rows}):
    chosen = [row for row in rows if row['protocol'] == protocol]
    if len({(row['defense'], row['lam']) for row in chosen}) > 1:
      written.append(tradeoff_figure(chosen, os.path.join(workdir, f"tradeoff_{protocol}.png"),
                                     overwrite=True))
  common.finish_run(workdir, rows, markdown=tables.results_markdown(rows), figures=written)
