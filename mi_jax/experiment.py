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

import io
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mi_jax import data as mi_data
from mi_jax import defenses
from mi_jax import judge as judge_lib
from mi_jax.attacks.surrogate import legacy_surrogate_attack, query_target, surrogate_attack
from mi_jax.metrics import attack_success, fid
from mi_jax.metrics.image_quality import mean_psnr_ssim
from mi_jax.metrics.legacy import SG_EVAL_SETTINGS, legacy_sg_scores
from mi_jax.train.classifier import train_classifier
from mi_jax.train.inference import apply_in_batches
from mi_jax.train.state import make_optimizer, merge_model
from mi_jax.train.step import make_classifier_step
from mi_jax.utils import results as results_io
from mi_jax.utils.figures import reconstruction_grid, tradeoff_figure
from mi_jax.utils.metric_writer import MetricWriter
from mi_jax.utils import sweep

OPTIMIZERS = ('sgd', 'adam')
THRESHOLDS = ('soft', 'hard')
DICTIONARY_UPDATES = ('frozen', 'hebbian', 'gradient')
GRADS = ('unroll', 'checkpoint', 'stop')
# Which SG reference script each defense's sg_legacy numbers imitate; the
# other baselines' scripts score like the no-defense one (float32, batch 64).
_SG_SCRIPT_FAMILY = {'no-defense': 'no_def', 'sparse-standard': 'sparse_standard',
                     'sparse-guard': 'sparse_guard'}


class ConfigError(ValueError):
  """A config value that cannot run; the message names the field."""


def _check(ok: bool, message: str) -> None:
  if not ok:
    raise ConfigError(message)


def validate_config(config, *, num_devices: int) -> None:
  """One-line :class:`ConfigError` for the first bad field, before any work."""
  _check(config.dataset in mi_data.DATASETS,
         f"dataset must be one of {tuple(mi_data.DATASETS)}, got {config.dataset!r}")
  _check(config.protocol in defenses.PROTOCOLS,
         f"protocol must be one of {defenses.PROTOCOLS}, got {config.protocol!r}")
  _check(config.setting in defenses.SETTINGS,
         f"setting must be one of {defenses.SETTINGS}, got {config.setting!r}")
  _check(config.defense.name in defenses.DEFENSES,
         f"defense.name must be one of {tuple(defenses.DEFENSES)}, got {config.defense.name!r}")
  try:
    defenses.validate(config)
  except ValueError as error:
    raise ConfigError(str(error)) from None
  _check(isinstance(config.seed, int) and config.seed >= 0, f"seed must be an integer >= 0, got {config.seed!r}")
  _check(config.defense.lam >= 0, f"defense.lam must be >= 0, got {config.defense.lam!r}")
  _check(config.defense.tau > 0, f"defense.tau must be > 0, got {config.defense.tau!r}")
  _check(config.defense.dt > 0, f"defense.dt must be > 0, got {config.defense.dt!r}")
  _check(config.defense.n_steps >= 1, f"defense.n_steps must be >= 1, got {config.defense.n_steps!r}")
  _check(len(config.defense.features) == 2 and all(f >= 1 for f in config.defense.features),
         f"defense.features must be two positive ints (one per SCL), got {config.defense.features!r}")
  _check(config.defense.threshold in THRESHOLDS,
         f"defense.threshold must be one of {THRESHOLDS}, got {config.defense.threshold!r}")
  _check(config.defense.grad in GRADS, f"defense.grad must be one of {GRADS}, got {config.defense.grad!r}")
  _check(len(config.defense.dictionary_update) == 2
         and all(u in DICTIONARY_UPDATES for u in config.defense.dictionary_update),
         f"defense.dictionary_update must be two of {DICTIONARY_UPDATES}, got {config.defense.dictionary_update!r}")
  _check(not (config.defense.grad == 'stop' and 'gradient' in config.defense.dictionary_update),
         "defense.dictionary_update 'gradient' needs defense.grad in ('unroll', 'checkpoint'), got 'stop'")
  for block in ('train', 'attack'):
    cfg = config[block]
    _check(cfg.optimizer in OPTIMIZERS, f"{block}.optimizer must be one of {OPTIMIZERS}, got {cfg.optimizer!r}")
    _check(cfg.learning_rate > 0, f"{block}.learning_rate must be > 0, got {cfg.learning_rate!r}")
    _check(cfg.epochs >= 1, f"{block}.epochs must be >= 1, got {cfg.epochs!r}")
    _check(cfg.batch_size >= 1 and cfg.batch_size % num_devices == 0,
           f"{block}.batch_size must be a positive multiple of the {num_devices} devices, got {cfg.batch_size!r}")
  fid_images = config.metrics.fid_images
  _check(fid_images is None or (isinstance(fid_images, int) and fid_images >= 0 and fid_images != 1),
         f"metrics.fid_images must be None (all), 0 (off) or an integer >= 2, got {fid_images!r}")
  _check(config.metrics.fid_batch_size >= 1 and config.metrics.fid_batch_size % num_devices == 0,
         f"metrics.fid_batch_size must be a positive multiple of the {num_devices} devices, "
         f"got {config.metrics.fid_batch_size!r}")
  _check(config.metrics.judge_scale is None or config.metrics.judge_scale in judge_lib.SCALES,
         f"metrics.judge_scale must be None or one of {tuple(judge_lib.SCALES)}, "
         f"got {config.metrics.judge_scale!r}")
  _check(0 < config.data.private_fraction < 1,
         f"data.private_fraction must be in (0, 1), got {config.data.private_fraction!r}")
  if config.sweep.enabled:
    for name, values, allowed in (
        ('sweep.defenses', config.sweep.defenses, tuple(defenses.DEFENSES)),
        ('sweep.settings', config.sweep.settings, defenses.SETTINGS),
        ('sweep.protocols', config.sweep.protocols, defenses.PROTOCOLS)):
      bad = [v for v in values if v not in allowed]
      _check(values and not bad, f"{name} must be a non-empty tuple of {allowed}, got {tuple(values)!r}")
    for defense in config.sweep.defenses:
      key = defense.replace('-', '_')
      if sweep.has_knob(defense) and key in config.sweep.lams:
        lams = config.sweep.lams[key]
        _check(len(lams) > 0 and all(lam >= 0 for lam in lams),
               f"sweep.lams.{key} must be a non-empty tuple of values >= 0, got {lams!r}")


def _to_json(config) -> dict:
  return json.loads(config.to_json_best_effort())


def train_target(config, split, *, mesh, workdir, writer):
  """Trains the defended target on the private set.

  Returns ``(graphdef, state, row_extras)``: defenses with their own recipe
  (DP-SGD, transfer learning, the GAN-based ones) report extra row fields
  (ε, |θ_C|, …); the others train with cross-entropy plus the defense's
  regulariser (NoPeek, MID, BiDO) and report none.
  """
  name = config.defense.name
  if name in defenses.RECIPES:
    return defenses.RECIPES[name](config, split, mesh=mesh, workdir=workdir, writer=writer)
  image_shape = tuple(split.private_images.shape[1:])
  model = defenses.build_target(config, image_shape, 10, rngs=nnx.Rngs(config.seed))
  extra_loss = defenses.extra_loss_for(config)
  graphdef, state = train_classifier(
      model=model, tx=make_optimizer(config.train), images=split.private_images,
      labels=split.private_labels, batch_size=config.train.batch_size, epochs=config.train.epochs,
      seed=config.seed, mesh=mesh, workdir=workdir, writer=writer, phase='target',
      checkpoint_every=config.train.checkpoint_every_steps, log_every=config.train.log_every_steps,
      make_step=lambda g, tx: make_classifier_step(g, tx, extra_loss=extra_loss))
  return graphdef, state, {}


def accuracy(graphdef, state, images, labels, *, batch_size, mesh) -> float:
  """Top-1 accuracy of the target (inference mode) on a labelled set."""

  @jax.jit
  def predict(params, model_state, batch):
    return jnp.argmax(merge_model(graphdef, params, model_state)(batch, train=False), -1)

  predictions = apply_in_batches(lambda b: predict(state['params'], state['model_state'], b),
                                 (images,), batch_size=batch_size, mesh=mesh)
  return float(np.mean(predictions == labels))


def run_point(config, split, *, mesh, workdir, judge=None, judged_private=None) -> tuple[dict, dict]:
  """Target → accuracy → attack → metrics; returns (results row, figure images).

  ``judge`` (with ``judged_private``, the private images in its feature
  space) adds attack accuracy and KNN distance to the row.
  """
  os.makedirs(workdir, exist_ok=True)
  writer = MetricWriter(workdir)
  started = time.perf_counter()
  graphdef, state, row_extras = train_target(config, split, mesh=mesh, workdir=workdir, writer=writer)
  leak = defenses.LEAK_OF_SETTING[config.setting]
  attack_rng = jax.random.key(config.seed + 7)
  if config.protocol == 'sg_legacy':
    test_accuracy = accuracy(graphdef, state, split.heldout_images, split.heldout_labels,
                             batch_size=config.attack.batch_size, mesh=mesh)
    attack = legacy_surrogate_attack(
        config=config, target_graphdef=graphdef, target_state=state, leak=leak,
        aux_images=split.heldout_images, private_images=split.private_images, mesh=mesh,
        rng=attack_rng, workdir=workdir, writer=writer)
  else:
    # One pass over the held-out set serves both the accuracy and the
    # attacker's queries.
    query = lambda images, salt: query_target(config, graphdef, state, images, leak=leak, mesh=mesh,
                                              key=jax.random.fold_in(attack_rng, salt))
    aux_features, predictions = query(split.heldout_images, 0)
    test_accuracy = float(np.mean(predictions == split.heldout_labels))
    private_features, _ = query(split.private_images, 1)
    attack = surrogate_attack(
        config=config, aux_features=aux_features, aux_images=split.heldout_images,
        private_features=private_features, mesh=mesh, rng=attack_rng, workdir=workdir, writer=writer)
  originals = split.private_images.astype(np.float32) / 255.0
  quality = mean_psnr_ssim(originals, attack.reconstructions)
  baseline = mean_psnr_ssim(originals, attack.untrained_reconstructions)
  lam = sweep.get_knob(config, config.defense.name)
  row = {
      'dataset': config.dataset, 'setting': config.setting, 'defense': config.defense.name,
      'lam': lam, 'knob': sweep.knob_symbol(config.defense.name), 'protocol': config.protocol, 'seed': config.seed,
      'accuracy': test_accuracy, 'psnr': quality.psnr, 'ssim': quality.ssim,
      'psnr_untrained_decoder': baseline.psnr, 'ssim_untrained_decoder': baseline.ssim,
      'leak': leak, 'n_private': len(originals), 'n_heldout': len(split.heldout_images),
      'config_hash': results_io.config_hash(_to_json(config)),
      'code_version': results_io.code_version(),
      **row_extras,
      'seconds': round(time.perf_counter() - started, 1),
  }
  if config.protocol == 'sg_legacy':
    # The SG code's own numbers on Normalize()d tensors (fidelity.md #2, #3),
    # next to the correct [0, 1] ones under their own names.
    mean, std = config.data.normalization
    # The SG scripts score shuffled DataLoader batches, float16 and 32 per
    # batch in its LCA scripts, float32 and 64 in its baselines.
    order = np.random.default_rng([config.seed, 2]).permutation(len(originals))
    legacy = legacy_sg_scores((originals[order] - mean) / std, attack.normalized_reconstructions[order],
                              **SG_EVAL_SETTINGS[_SG_SCRIPT_FAMILY.get(config.defense.name, 'no_def')])
    row.update({'psnr': legacy.psnr, 'ssim': legacy.ssim, 'sg_row_frechet': legacy.row_frechet,
                'psnr_unit_range': quality.psnr, 'ssim_unit_range': quality.ssim})
  if judge is not None:
    # Every private image is an attacked instance of its own label.
    top1, top5 = attack_success.attack_accuracy(judge.logits(attack.reconstructions), split.private_labels)
    row.update({
        'attack_top1': top1, 'attack_top5': top5,
        'knn_distance': attack_success.knn_distance(
            judge.features(attack.reconstructions), split.private_labels, judged_private,
            split.private_labels),
        'judge': judge.name, 'judge_test_accuracy': judge.test_accuracy})
  fid_images = config.metrics.fid_images
  if fid_images != 0:
    n = len(originals) if fid_images is None else min(fid_images, len(originals))
    row['fid'] = fid.fid(originals[:n], attack.reconstructions[:n], batch_size=config.metrics.fid_batch_size,
                         weights_path=config.metrics.fid_weights_path, mesh=mesh)
    row['fid_images'] = n
  shown = config.attack.figure_images
  figure = {'originals': originals[:shown], 'reconstructions': attack.reconstructions[:shown]}
  writer.write('result', 0, {k: v for k, v in row.items() if isinstance(v, (int, float))})
  return row, figure


def run(config, workdir: str, *, mesh=None) -> list[dict]:
  """Runs every point of ``config`` and writes the results files."""
  mesh = mesh if mesh is not None else mi_data.make_data_mesh()
  num_devices = mesh.devices.size
  validate_config(config, num_devices=num_devices)
  points = sweep.expand(config)
  for _, point in points:
    validate_config(point, num_devices=num_devices)
  results_path = os.path.join(workdir, 'results.json')
  if os.path.exists(results_path):
    raise FileExistsError(
        f"{results_path} exists: this workdir holds a finished run; choose a new --workdir")
  split = mi_data.load_sparse_guard(
      config.dataset, seed=config.seed, private_fraction=config.data.private_fraction,
      private_limit=config.data.private_limit, heldout_limit=config.data.heldout_limit,
      data_dir=config.data.dir)
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() == 0:
    results_io.write_json_atomic(os.path.join(workdir, 'config.json'), _to_json(config), overwrite=True)
  judge, judged_private = None, None
  if config.metrics.judge_scale is not None:
    judge = judge_lib.load_or_train_judge(
        config.dataset, root=os.path.join(workdir, 'judge'), mesh=mesh, scale=config.metrics.judge_scale,
        seed=config.seed, data_dir=config.data.dir)
    judged_private = judge.features(split.private_images)
  rows, figures = [], []
  for index, (name, point) in enumerate(points):
    point_dir = os.path.join(workdir, 'points', name)
    row_path, figure_path = os.path.join(point_dir, 'row.json'), os.path.join(point_dir, 'figure.npz')
    print(f"=== point {index + 1}/{len(points)}: {name}", flush=True)
    point_config_path = os.path.join(point_dir, 'config.json')
    if os.path.exists(point_config_path):
      with open(point_config_path) as f:
        if json.load(f) != _to_json(point):
          raise FileExistsError(
              f"{point_dir} was started with a different config; resume with the same config "
              "or choose a new --workdir")
    if os.path.exists(row_path) and os.path.exists(figure_path):
      with open(row_path) as f:
        row = json.load(f)
      with np.load(figure_path) as saved:
        figure = dict(saved)
      print(f"    already done ({row_path})", flush=True)
    else:
      os.makedirs(point_dir, exist_ok=True)
      if jax.process_index() == 0:
        results_io.write_json_atomic(point_config_path, _to_json(point), overwrite=True)
      row, figure = run_point(point, split, mesh=mesh, workdir=point_dir, judge=judge,
                              judged_private=judged_private)
      if jax.process_index() == 0:
        _write_npz_atomic(figure_path, figure)
        results_io.write_json_atomic(row_path, row, overwrite=True)
    rows.append(row)
    figures.append((row, figure))
    print(f"    accuracy {row['accuracy']:.4f}  PSNR {row['psnr']:.2f}  SSIM {row['ssim']:.3f}"
          f"  (untrained decoder: PSNR {row['psnr_untrained_decoder']:.2f})", flush=True)
  if jax.process_index() == 0:
    _write_outputs(rows, figures, workdir)
  return rows


def _write_npz_atomic(path, arrays) -> None:
  buffer = io.BytesIO()
  np.savez_compressed(buffer, **arrays)
  results_io.write_bytes_atomic(path, buffer.getvalue(), overwrite=True)


def _write_outputs(rows, figures, workdir) -> None:
  """results.md, one figure per (setting, protocol), then results.json last
  (its presence marks the run as finished)."""
  results_io.write_text_atomic(os.path.join(workdir, 'results.md'), results_io.results_markdown(rows),
                               overwrite=True)
  groups = {}
  for row, figure in figures:
    groups.setdefault((row['setting'], row['protocol']), []).append((row, figure))
  written = []
  for (setting, protocol), members in sorted(groups.items()):
    originals = members[0][1]['originals']
    by_defense = {results_io.defense_label(row['defense'], row['lam'], row.get('knob', 'λ')): figure['reconstructions']
                  for row, figure in members}
    path = os.path.join(workdir, f"reconstructions_{setting}_{protocol}.png")
    written.append(reconstruction_grid(originals, by_defense, path, overwrite=True))
  for protocol in sorted({row['protocol'] for row in rows}):
    chosen = [row for row in rows if row['protocol'] == protocol]
    if len({(row['defense'], row['lam']) for row in chosen}) > 1:
      written.append(tradeoff_figure(chosen, os.path.join(workdir, f"tradeoff_{protocol}.png"),
                                     overwrite=True))
  results_io.write_json_atomic(os.path.join(workdir, 'results.json'), rows)
  print(f"results table: {os.path.join(workdir, 'results.md')}")
  for path in written:
    print(f"figure: {path}")
