"""Fisher-information layer importance of a target (TL-DMI §4, methods.md §5).

  # Analyse a target trained by the grid (its 'target' phase checkpoints):
  python -m experiments.fisher_importance --config=configs/sparse_guard_mnist.py:small \
      --config.defense.name=no-defense --config.sweep.enabled=False \
      --checkpoint=results/sg_mnist_small/<point>/checkpoints/target --workdir=results/fisher_small

  # Or let it train a no-defense target itself (tiny: ~1 min on 2 CPU cores):
  python -m experiments.fisher_importance --config=configs/sparse_guard_mnist.py:tiny \
      --config.defense.name=no-defense --workdir=/tmp/fisher_tiny

Per parameterised layer (forward order) it reports the mean empirical Fisher
of (i) the classification loss (CE on the held-out split: private-
distribution data the target never trained on) and (ii) the inversion loss
‖φ(x) − c_y‖₂ (φ = last hidden layer, c_y = class centroid of the private
images' features, x = the private images, or ``--reconstructions``).
Writes ``fisher.json``, ``fisher.md`` and ``fisher.png`` (two bars per
layer: each loss's share of its total Fisher) into the workdir, atomically;
an existing file is never overwritten (the run stops first). TL's expected
pattern: inversion share concentrated in early layers, classification share
in late ones. ``fisher.json`` feeds ``defense.transfer.fisher_json``.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from typing import Optional

import jax
import numpy as np
from absl import app, flags, logging
from flax import nnx
from ml_collections import config_flags

OUTPUTS = ('fisher.json', 'fisher.md', 'fisher.png')

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Where fisher.{json,md,png} (and a trained target) go.')
_CHECKPOINT = flags.DEFINE_string('checkpoint', None, "A 'target' phase checkpoint directory; default: train one.")
_RECONSTRUCTIONS = flags.DEFINE_string(
    'reconstructions', None, '.npy of images aligned with the private split (default: the private images).')
_SAMPLES = flags.DEFINE_integer('samples', 512, 'At most this many examples per Fisher estimate.')
_BATCH = flags.DEFINE_integer('batch_size', 64, 'Per-example-gradient batch (a multiple of the device count).')
flags.mark_flags_as_required(['config', 'workdir'])


def _write_new(path: str, payload: bytes) -> None:
  """Atomic and never overwriting: a temp file, then a hard link (fails if ``path`` exists)."""
  directory = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(dir=directory, prefix='.tmp-' + os.path.basename(path))
  try:
    with os.fdopen(fd, 'wb') as f:
      f.write(payload)
    os.chmod(tmp, 0o644)
    os.link(tmp, path)
  finally:
    os.unlink(tmp)


def _check_free(workdir: str) -> None:
  taken = [name for name in OUTPUTS if os.path.exists(os.path.join(workdir, name))]
  if taken:
    raise FileExistsError(f'{workdir} already holds {taken}; choose a new --workdir')


def _target(config, split, *, mesh, workdir, checkpoint: Optional[str]):
  """(graphdef, params, model_state) of a restored or freshly trained target."""
  from mi_jax import defenses
  from mi_jax.train.checkpoint import Checkpointer
  from mi_jax.train.classifier import train_classifier
  from mi_jax.train.state import init_train_state, make_optimizer, replicated
  from mi_jax.utils.metric_writer import MetricWriter

  image_shape = tuple(split.private_images.shape[1:])
  model = defenses.build_target(config, image_shape, 10, rngs=nnx.Rngs(config.seed))
  tx = make_optimizer(config.train)
  if checkpoint:
    graphdef, like = init_train_state(model, tx)
    like = jax.device_put(like, replicated(mesh, like))
    checkpointer = Checkpointer(checkpoint)
    step = checkpointer.latest_step()
    if step is None:
      raise FileNotFoundError(f'--checkpoint {checkpoint} holds no checkpoint')
    state, _ = checkpointer.restore(step, like)
    checkpointer.close()
  else:
    graphdef, state = train_classifier(
        model=model, tx=tx, images=split.private_images, labels=split.private_labels,
        batch_size=config.train.batch_size, epochs=config.train.epochs, seed=config.seed, mesh=mesh,
        workdir=workdir, writer=MetricWriter(workdir), phase='target',
        checkpoint_every=config.train.checkpoint_every_steps, log_every=config.train.log_every_steps)
  return graphdef, jax.device_get(state['params']), jax.device_get(state['model_state'])


def importance_table(importance, order, sizes) -> list[dict]:
  """One row per layer in forward order, with each loss's share and s_ℓ."""
  from mi_jax.analysis.fisher import inversion_preference

  pref = inversion_preference(importance)
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
  import io

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


def run(config, workdir: str, *, checkpoint: Optional[str] = None, reconstructions: Optional[str] = None,
        samples: int = 512, batch_size: int = 64, mesh=None) -> list[dict]:
  """Target → per-layer Fisher for both losses → fisher.{json,md,png}; returns the rows."""
  from mi_jax import data as mi_data
  from mi_jax.analysis import fisher

  if samples < 1:
    raise ValueError(f'samples must be >= 1, got {samples!r}')
  os.makedirs(workdir, exist_ok=True)
  _check_free(workdir)
  mesh = mesh if mesh is not None else mi_data.make_data_mesh()
  mi_data.check_batch_size(batch_size, mesh)
  split = mi_data.load_sparse_guard(
      config.dataset, seed=config.seed, private_fraction=config.data.private_fraction,
      private_limit=config.data.private_limit, heldout_limit=config.data.heldout_limit,
      data_dir=config.data.dir)
  graphdef, params, model_state = _target(config, split, mesh=mesh, workdir=workdir, checkpoint=checkpoint)
  private_images, private_labels = split.private_images, split.private_labels
  inversion_images = None
  if reconstructions:
    inversion_images = np.load(reconstructions, allow_pickle=False)
    if inversion_images.shape != private_images.shape:
      raise ValueError(f'--reconstructions must have the private images\' shape {private_images.shape}, '
                       f'got {inversion_images.shape}')
    if inversion_images.dtype != np.uint8:  # the decoder's [0, 1] floats
      inversion_images = inversion_images.astype(np.float32)
  # Deterministic subsets: the first `samples` of each role (already shuffled by the split).
  n_inv = min(samples, len(private_labels))
  n_val = min(samples, len(split.heldout_labels))
  # Centroids from every private image; the inversion Fisher on the first n_inv.
  importance = fisher.layer_importance(
      graphdef, params, model_state,
      validation_images=split.heldout_images[:n_val], validation_labels=split.heldout_labels[:n_val],
      private_images=private_images, private_labels=private_labels, num_classes=10,
      batch_size=batch_size, mesh=mesh,
      inversion_images=(private_images if inversion_images is None else inversion_images)[:n_inv],
      inversion_labels=private_labels[:n_inv])
  order = fisher.model_layer_order(graphdef, params, model_state, private_images[:1])
  rows = importance_table(importance, order, fisher.layer_sizes(params))
  meta = {'model': f'{config.defense.name} target, {config.setting}, {config.dataset}',
          'checkpoint': checkpoint, 'n_validation': n_val, 'n_inversion': n_inv,
          'inversion_images': 'reconstructed' if reconstructions else 'private',
          'config': json.loads(config.to_json_best_effort())}
  if jax.process_index() == 0:
    _write_new(os.path.join(workdir, 'fisher.json'),
               json.dumps({'layers': rows, 'meta': meta}, indent=2).encode())
    _write_new(os.path.join(workdir, 'fisher.md'), render_markdown(rows, meta).encode())
    _write_new(os.path.join(workdir, 'fisher.png'), render_png(rows))
  return rows


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  if os.environ.get('MI_JAX_DISTRIBUTED') == '1':
    jax.distributed.initialize()
  from mi_jax.data import DataUnavailableError
  try:
    rows = run(_CONFIG.value, _WORKDIR.value, checkpoint=_CHECKPOINT.value,
               reconstructions=_RECONSTRUCTIONS.value, samples=_SAMPLES.value, batch_size=_BATCH.value)
  except (DataUnavailableError, FileExistsError, FileNotFoundError, ValueError) as error:
    print(f'error: {error}', file=sys.stderr)
    sys.exit(2)
  for r in rows:
    print(f"{r['layer']:>12}  cls {r['classification_share']:.3f}  inv {r['inversion_share']:.3f}")


if __name__ == '__main__':
  app.run(main)
