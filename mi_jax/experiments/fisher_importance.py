"""Fisher-information layer importance of a target (TL-DMI §4, methods.md §5).

Per parameterised layer (forward order) :func:`run` reports the mean
empirical Fisher of (i) the classification loss (CE on the held-out split:
private-distribution data the target never trained on) and (ii) the
inversion loss ‖φ(x) − c_y‖₂ (φ = last hidden layer, c_y = class centroid of
the private images' features, x = the private images, or the images of
``config.fisher.reconstructions``). It writes ``fisher.json``, ``fisher.md``
and ``fisher.png`` (two bars per layer: each loss's share of its total
Fisher) into the workdir, atomically; an existing one is never overwritten
(the run stops before it writes anything). TL's expected pattern: inversion
share concentrated in early layers, classification share in late ones.
``fisher.json`` feeds ``defense.transfer.fisher_json``.

The config is ``configs/fisher_importance.py`` (the Sparse-Guard config's
target, plus ``config.fisher``); the command is ``experiments/fisher_importance.py``.
"""

from __future__ import annotations

import io
import json
import os
from typing import Optional

import jax
import numpy as np
from flax import nnx

from mi_jax import data as mi_data
from mi_jax import defenses
from mi_jax.experiments import common
from mi_jax.experiments import surrogate
from mi_jax.analysis import fisher
from mi_jax.utils import config_rules as rules
from mi_jax.utils import results as results_io
from mi_jax.utils import storage

OUTPUTS = ('fisher.json', 'fisher.md', 'fisher.png')

# The rules of config.fisher; the rest of the config is the main experiment's
# (mi_jax.experiments.surrogate.validate_config).
FIELDS = {
    'fisher.samples': rules.integer(low=1),
    'fisher.batch_size': rules.integer(low=1),
    'fisher.checkpoint': rules.optional(rules.TEXT),
    'fisher.reconstructions': rules.optional(rules.TEXT),
}


def validate_config(config, *, num_devices: int, sizes=None) -> None:
  """One-line :class:`mi_jax.experiments.common.ConfigError` for the first bad field, before any work."""
  common.check_fields(config, FIELDS)
  if config.fisher.batch_size % num_devices:
    raise common.ConfigError(f"fisher.batch_size must be divisible by the {num_devices} devices, "
                                 f"got {config.fisher.batch_size!r}")
  surrogate.validate_config(config, num_devices=num_devices, sizes=sizes)


def refuse_existing_outputs(workdir: str) -> None:
  """FileExistsError if the workdir already holds one of :data:`OUTPUTS`."""
  taken = [name for name in OUTPUTS if storage.exists(os.path.join(workdir, name))]
  if taken:
    raise FileExistsError(f'{workdir} already holds {taken}; choose a new --workdir')


def _restored_state(model, tx, checkpoint: str, mesh):
  """(graphdef, state) of the latest step of a 'target' phase checkpoint directory."""
  from mi_jax.train.checkpoint import Checkpointer
  from mi_jax.train.state import init_train_state, replicated

  graphdef, like = init_train_state(model, tx)
  like = jax.device_put(like, replicated(mesh, like))
  checkpointer = Checkpointer(checkpoint)
  step = checkpointer.latest_step()
  if step is None:
    raise FileNotFoundError(f'config.fisher.checkpoint {checkpoint} holds no checkpoint')
  state, _ = checkpointer.restore(step, like)
  checkpointer.close()
  return graphdef, state


def _target(config, split, *, mesh, workdir):
  """(graphdef, params, model_state) of the restored (config.fisher.checkpoint) or freshly trained target.

  Trained with the defense's supervised train step (its extra loss and
  post-step, :func:`mi_jax.defenses.classifier_step_for`); defenses with
  their own training recipe are analysed from a checkpoint of the grid.
  """
  from mi_jax.train.classifier import train_classifier
  from mi_jax.train.state import make_optimizer
  from mi_jax.utils.metric_writer import MetricWriter

  image_shape = tuple(split.private_images.shape[1:])
  model = defenses.build_target(config, image_shape, defenses.num_classes_of(config), rngs=nnx.Rngs(config.seed))
  tx = make_optimizer(config.train)
  if config.fisher.checkpoint:
    graphdef, state = _restored_state(model, tx, config.fisher.checkpoint, mesh)
  else:
    graphdef, state = train_classifier(
        model=model, tx=tx, images=split.private_images, labels=split.private_labels,
        batch_size=config.train.batch_size, epochs=config.train.epochs, seed=config.seed, mesh=mesh,
        workdir=workdir, writer=MetricWriter(workdir), phase='target',
        checkpoint_every=config.train.checkpoint_every_steps, log_every=config.train.log_every_steps,
        make_step=defenses.classifier_step_for(
            config, steps_per_epoch=mi_data.steps_per_epoch(len(split.private_images), config.train.batch_size)))
  return graphdef, jax.device_get(state['params']), jax.device_get(state['model_state'])


def load_reconstructions(path: str, private_images: np.ndarray) -> np.ndarray:
  """The images of a .npy aligned with the private split (uint8, or the decoder's [0, 1] floats)."""
  images = np.load(io.BytesIO(storage.read_bytes(path)), allow_pickle=False)
  if images.shape != private_images.shape:
    raise ValueError(f"config.fisher.reconstructions must have the private images' shape {private_images.shape}, "
                     f'got {images.shape}')
  return images if images.dtype == np.uint8 else images.astype(np.float32)


def importance_table(importance, order, sizes) -> list[dict]:
  """One row per layer in forward order, with each loss's share and s_ℓ."""
  pref = fisher.inversion_preference(importance)
  totals = {task: sum(v.values()) or 1.0 for task, v in importance.items()}
  return [{
      'depth': i + 1, 'layer': name, 'parameters': sizes[name],
      'classification': importance['classification'][name],
      'inversion': importance['inversion'][name],
      'classification_share': importance['classification'][name] / totals['classification'],
      'inversion_share': importance['inversion'][name] / totals['inversion'],
      'inversion_preference': pref[name],
  } for i, name in enumerate(order)]


def render_markdown(rows, meta) -> str:
  """fisher.md: what was measured, then one table row per layer."""
  lines = [
      '# Fisher-information layer importance (TL-DMI)', '',
      f"Target: {meta['model']}; classification Fisher on {meta['n_validation']} held-out images, "
      f"inversion Fisher on {meta['n_inversion']} {meta['inversion_images']} images. "
      'F = mean over the layer of the empirical Fisher E[(dL/dθ)²]; shares are of each loss\'s total; '
      's = inversion share − classification share (freeze_by=fisher freezes the largest s).', '',
      '| depth | layer | params | F classification | F inversion | share cls | share inv | s |',
      '|---:|---|---:|---:|---:|---:|---:|---:|',
  ]
  for r in rows:
    lines.append(f"| {r['depth']} | {r['layer']} | {r['parameters']} | {r['classification']:.3e} | "
                 f"{r['inversion']:.3e} | {r['classification_share']:.3f} | {r['inversion_share']:.3f} | "
                 f"{r['inversion_preference']:+.3f} |")
  return '\n'.join(lines) + '\n'


def render_png(rows) -> bytes:
  """fisher.png: per layer, each loss's share of its total Fisher."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  fig = Figure(figsize=(max(4.0, 0.9 * len(rows) + 1.5), 3.2), dpi=120)
  FigureCanvasAgg(fig)
  ax = fig.add_subplot(1, 1, 1)
  x = np.arange(len(rows))
  ax.bar(x - 0.2, [r['classification_share'] for r in rows], 0.4, label='classification')
  ax.bar(x + 0.2, [r['inversion_share'] for r in rows], 0.4, label='inversion')
  ax.set_xticks(x, [r['layer'] for r in rows], rotation=30, ha='right', fontsize=8)
  ax.set_ylabel("share of the loss's Fisher")
  ax.set_title('Layer importance (mean empirical Fisher)', fontsize=9)
  ax.legend(fontsize=8)
  fig.tight_layout()
  buffer = io.BytesIO()
  fig.savefig(buffer, format='png')
  return buffer.getvalue()


def write_outputs(workdir: str, rows, meta) -> None:
  """fisher.{json,md,png}, each atomically and never over an existing file."""
  results_io.write_json_atomic(os.path.join(workdir, 'fisher.json'), {'layers': rows, 'meta': meta},
                               overwrite=False)
  results_io.write_text_atomic(os.path.join(workdir, 'fisher.md'), render_markdown(rows, meta), overwrite=False)
  results_io.write_bytes_atomic(os.path.join(workdir, 'fisher.png'), render_png(rows), overwrite=False)


def run(config, workdir: str, *, mesh=None) -> list[dict]:
  """Target → per-layer Fisher for both losses → fisher.{json,md,png}; returns the rows.

  Before anything is written: the config is validated and the workdir must
  not hold any of :data:`OUTPUTS`.
  """
  mesh = mesh if mesh is not None else mi_data.make_data_mesh()
  num_devices = mesh.devices.size
  validate_config(config, num_devices=num_devices)
  refuse_existing_outputs(workdir)
  split = mi_data.load_sparse_guard(
      config.dataset, seed=config.seed, private_fraction=config.data.private_fraction,
      private_limit=config.data.private_limit, heldout_limit=config.data.heldout_limit,
      data_dir=config.data.dir)
  validate_config(config, num_devices=num_devices,
                  sizes={'private': len(split.private_labels), 'heldout': len(split.heldout_labels)})
  private_images, private_labels = split.private_images, split.private_labels
  reconstructions: Optional[str] = config.fisher.reconstructions
  inversion_images = load_reconstructions(reconstructions, private_images) if reconstructions else private_images
  storage.makedirs(workdir)
  graphdef, params, model_state = _target(config, split, mesh=mesh, workdir=workdir)
  # Deterministic subsets: the first `samples` of each role (already shuffled by the split).
  n_inv = min(config.fisher.samples, len(private_labels))
  n_val = min(config.fisher.samples, len(split.heldout_labels))
  # Centroids from every private image; the inversion Fisher on the first n_inv.
  importance = fisher.layer_importance(
      graphdef, params, model_state,
      validation_images=split.heldout_images[:n_val], validation_labels=split.heldout_labels[:n_val],
      private_images=private_images, private_labels=private_labels, num_classes=defenses.num_classes_of(config),
      batch_size=config.fisher.batch_size, mesh=mesh,
      inversion_images=inversion_images[:n_inv], inversion_labels=private_labels[:n_inv])
  order = fisher.model_layer_order(graphdef, params, model_state, private_images[:1])
  rows = importance_table(importance, order, fisher.layer_sizes(params))
  meta = {'model': f'{config.defense.name} target, {config.setting}, {config.dataset}',
          'checkpoint': config.fisher.checkpoint, 'n_validation': n_val, 'n_inversion': n_inv,
          'inversion_images': 'reconstructed' if reconstructions else 'private',
          'config': json.loads(config.to_json_best_effort())}
  if jax.process_index() == 0:
    write_outputs(workdir, rows, meta)
    for r in rows:
      print(f"{r['layer']:>12}  cls {r['classification_share']:.3f}  inv {r['inversion_share']:.3f}")
  return rows
