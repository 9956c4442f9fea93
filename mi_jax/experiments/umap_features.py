r"""SG Fig. 4: UMAP of the features after two layers of three small models.

Per dataset of ``config.umap.datasets``, on ``config.umap.n_points`` random
official *test* images:

* ``linear``: two dense layers (784 → 256 → 256, ReLU; the library's
  :class:`~mi_jax.models.target.TargetNetwork` without a front), trained
  ``umap.epochs`` with a linear classifier head on ``umap.train_limit``
  train images;
* ``conv``: two conv layers (3×3, 32 and 64 channels, ReLU, 2×2 max-pool),
  trained the same way;
* ``sparse``: the Sparse-Guard front [SCL → BN] × 2 of the config's
  defense (its LCA settings: λ, τ, steps, 16/28 features, 5×5 atoms),
  forward only at initialisation (SG's first layer is a frozen random
  dictionary anyway; training the Hebbian second layer is out of scope
  for this figure's budget).

Each panel is a 2-D UMAP of one model's flattened features, coloured by
class; rows are datasets. Writes ``<workdir>/umap_fig4.png`` and
``<workdir>/umap_fig4.json`` (the settings and the probes' test accuracies),
atomically; the run refuses to start if either exists. Measured: 4.7 min on
2 shared CPU cores with the defaults (probe test accuracy: MNIST linear
90.1%, conv 94.0%; Fashion-MNIST 80.4%, 81.3%); the sparse column scatters
the classes, as in SG Fig. 4.

The config is ``configs/umap_features.py``; the command is
``experiments/umap_features.py``.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from flax import nnx
from ml_collections import config_dict

from mi_jax import data as mi_data
from mi_jax.experiments import common
from mi_jax.experiments import surrogate
from mi_jax.defenses import build_target
from mi_jax.models.evaluation_cnn import to_unit_float
from mi_jax.models.target import TargetNetwork
from mi_jax.train.classifier import train_classifier
from mi_jax.train.inference import apply_in_batches
from mi_jax.train.state import make_optimizer, merge_model
from mi_jax.utils import config_rules as rules
from mi_jax.utils import results as results_io
from mi_jax.utils import storage
from mi_jax.utils import umap_figure
from mi_jax.utils.metric_writer import MetricWriter

MODELS = ('linear', 'conv', 'sparse')
FIGURE, SUMMARY = 'umap_fig4.png', 'umap_fig4.json'
BATCH_SIZE = 128  # Probe training batch; divisible by 1, 2, 4, 8, 16 devices.
LINEAR_WIDTH = 256  # Both dense layers of the linear probe.
# The settings of the sparse column, recorded in the summary.
SPARSE_FRONT_FIELDS = ('features', 'kernel_size', 'stride', 'lam', 'tau', 'dt', 'n_steps', 'threshold', 'nonneg')

# The rules of config.umap; the rest of the config is the main experiment's
# (mi_jax.experiments.surrogate.validate_config).
FIELDS = {
    'umap.datasets': rules.tuple_of(rules.one_of(tuple(mi_data.DATASETS)), min_length=1,
                                    text=f'a non-empty tuple of datasets from {tuple(mi_data.DATASETS)}'),
    # UMAP needs more points than its neighbourhood.
    'umap.n_points': rules.integer(low=umap_figure.N_NEIGHBORS + 1),
    'umap.train_limit': rules.integer(low=1),
    'umap.epochs': rules.integer(low=1),
}


def validate_config(config, *, num_devices: int) -> None:
  """One-line :class:`mi_jax.experiments.common.ConfigError` for the first bad field, before any work."""
  common.check_fields(config, FIELDS)
  surrogate.validate_config(config, num_devices=num_devices)


class TwoConv(nnx.Module):
  """x → [conv3×3(32) → ReLU → pool] → [conv3×3(64) → ReLU → pool] (= features) → dense(classes).

  The figure's conv probe; no library model has this shape (the judge's
  CNN has two convs per block and a dense feature layer).
  """

  def __init__(self, *, image_shape, num_classes: int, rngs: nnx.Rngs):
    h, w, c = image_shape
    self.layers = nnx.List([nnx.Conv(c, 32, kernel_size=(3, 3), rngs=rngs),
                            nnx.Conv(32, 64, kernel_size=(3, 3), rngs=rngs)])
    self.head = nnx.Linear((h // 4) * (w // 4) * 64, num_classes, rngs=rngs)

  def activations(self, images, *, train=False, key=None, stop_at='logits'):
    x = to_unit_float(images)
    for layer in self.layers:
      x = nnx.max_pool(jax.nn.relu(layer(x)), window_shape=(2, 2), strides=(2, 2))
    return {'features': x, 'logits': self.head(x.reshape(x.shape[0], -1))}


def linear_probe(*, image_shape, num_classes: int, rngs: nnx.Rngs) -> TargetNetwork:
  """x → dense(256) → ReLU → dense(256) → ReLU (= 'hidden_2') → dense(classes), on [0, 1] pixels."""
  return TargetNetwork(image_shape=image_shape, num_classes=num_classes,
                       hidden_widths=(LINEAR_WIDTH, LINEAR_WIDTH), rngs=rngs)


def linear_outputs(model: TargetNetwork, images) -> dict:
  """The linear probe's features (its second hidden layer) and logits."""
  acts = model.activations(images)
  return {'features': acts['hidden_2'], 'logits': acts['logits']}


# Per probe: its constructor and its {'features', 'logits'} of a batch.
PROBES = {
    'linear': (linear_probe, linear_outputs),
    'conv': (TwoConv, lambda model, images: model.activations(images)),
}


def subset(n_total: int, n: int, seed: int) -> np.ndarray:
  """Sorted indices of ``min(n, n_total)`` items drawn without replacement."""
  return np.sort(np.random.default_rng(seed).permutation(n_total)[:min(n, n_total)])


def _apply(model, fn, images, mesh):
  """``fn(model, batch)`` over ``images`` in sharded batches of about 256."""
  graphdef, state = nnx.split(model)
  run = jax.jit(lambda state, batch: fn(nnx.merge(graphdef, state), batch))
  batch = -(-256 // mesh.shape['data']) * mesh.shape['data']
  return apply_in_batches(lambda b: run(state, b), (images,), batch_size=batch, mesh=mesh)


def probe_features(dataset: str, config, *, mesh, workdir: str):
  """{model: (features (n, …), labels)} on ``umap.n_points`` test images, and the probes' test accuracies."""
  seed, settings = config.seed, config.umap
  train_images, train_labels = mi_data.load(dataset, 'train')
  test_images, test_labels = mi_data.load(dataset, 'test')
  keep = subset(len(train_labels), settings.train_limit, seed)
  train_images, train_labels = train_images[keep], train_labels[keep]
  shown = subset(len(test_labels), settings.n_points, seed + 1)
  images, labels = test_images[shown], test_labels[shown]
  image_shape, num_classes = tuple(train_images.shape[1:]), int(train_labels.max()) + 1
  out, accuracies = {}, {}
  for name, (build, features_and_logits) in PROBES.items():
    model = build(image_shape=image_shape, num_classes=num_classes, rngs=nnx.Rngs(seed))
    tx = make_optimizer(config_dict.ConfigDict({'optimizer': 'adam', 'learning_rate': 1e-3}))
    probe_dir = os.path.join(workdir, 'probes', dataset, name)
    graphdef, state = train_classifier(
        model=model, tx=tx, images=train_images, labels=train_labels, batch_size=BATCH_SIZE,
        epochs=settings.epochs, seed=seed, mesh=mesh, workdir=probe_dir, writer=MetricWriter(probe_dir),
        phase=name)
    trained = merge_model(graphdef, state['params'], state['model_state'])
    acts = _apply(trained, features_and_logits, test_images, mesh)
    accuracies[name] = float(np.mean(np.argmax(acts['logits'], 1) == test_labels))
    out[name] = (acts['features'][shown], labels)
  sparse_config = config.copy_and_resolve_references()
  sparse_config.defense.name = 'sparse-guard'  # The figure's third column is always the Sparse-Guard front.
  target = build_target(sparse_config, image_shape, num_classes, rngs=nnx.Rngs(seed))
  out['sparse'] = (_apply(target, lambda m, b: m.activations(b, stop_at='front')['front'], images, mesh), labels)
  return out, accuracies


def summary(config, accuracies) -> dict:
  """umap_fig4.json: the figure's settings, the sparse front's and the probes' test accuracies."""
  settings, defense = config.umap, config.defense
  return {
      'figure': FIGURE, 'datasets': list(settings.datasets), 'models': list(MODELS),
      'n_points': settings.n_points, 'train_limit': settings.train_limit, 'epochs': settings.epochs,
      'seed': config.seed, 'probe_test_accuracy': accuracies,
      'sparse_front': {k: defense[k] for k in SPARSE_FRONT_FIELDS},
      'sparse_trained': False, 'code_version': results_io.code_version(),
  }


def run(config, workdir: str, *, mesh=None) -> dict:
  """Probes → features → UMAP figure and summary; returns the summary.

  Before anything is written: the config is validated and the workdir must
  not hold the figure or the summary.
  """
  mesh = mesh if mesh is not None else mi_data.make_data_mesh()
  validate_config(config, num_devices=mesh.devices.size)
  figure, summary_path = os.path.join(workdir, FIGURE), os.path.join(workdir, SUMMARY)
  for path in (figure, summary_path):
    if storage.exists(path):
      raise FileExistsError(f"{path} already exists; choose another --workdir")
  storage.makedirs(workdir)
  features, accuracies = {}, {}
  for dataset in config.umap.datasets:
    features[dataset], accuracies[dataset] = probe_features(dataset, config, mesh=mesh, workdir=workdir)
    print(f"[umap] {dataset}: probe test accuracies {accuracies[dataset]}", flush=True)
  result = summary(config, accuracies)
  if jax.process_index() == 0:
    umap_figure.umap_features_figure(features, figure, seed=config.seed, overwrite=False)
    results_io.write_json_atomic(summary_path, result, overwrite=False)
    print(f"[umap] wrote {figure}", flush=True)
  return result
