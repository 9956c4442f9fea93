"""The evaluation classifier ("judge") per dataset: trained once, cached, reused.

Attack accuracy and KNN distance (:mod:`mi_jax.metrics.attack_success`) are
judged by a classifier that is not the target (fidelity.md #7): an
:class:`~mi_jax.models.evaluation_cnn.EvaluationCNN` trained by us on the
dataset's official *train* split and scored on its official *test* split. As
in GMI/KEDMI, the judge has seen the private classes (it must recognise them)
and possibly some private images; it is never the attacked model.

``load_or_train_judge`` keeps the judge under ``<root>/judge_<dataset>_<scale>_seed<seed>/``
(orbax checkpoints and ``judge.json`` with its config and test accuracy); a
later call with the same config restores it instead of training, a different
config in the same folder is refused.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Optional

import jax
import numpy as np
from flax import nnx

from mi_jax import data as mi_data
from mi_jax.models.evaluation_cnn import EvaluationCNN
from mi_jax.train.classifier import train_classifier
from mi_jax.train.inference import apply_in_batches
from mi_jax.train.state import make_optimizer, merge_model
from mi_jax.utils import results as results_io
from mi_jax.utils import storage
from mi_jax.utils.metric_writer import MetricWriter

# Training budget per scale. 'small' reaches ~98% on MNIST in about a minute
# on 2 CPU cores; 'paper' trains on all 60k images.
SCALES = {
    'tiny': dict(train_limit=256, test_limit=256, epochs=3, width=8, feature_width=32, batch_size=32),
    'small': dict(train_limit=10000, test_limit=None, epochs=2, width=16, feature_width=128, batch_size=64),
    'paper': dict(train_limit=None, test_limit=None, epochs=10, width=32, feature_width=128, batch_size=128),
}


@dataclasses.dataclass
class Judge:
  """A trained evaluation classifier: logits and penultimate features of any image set."""
  name: str
  graphdef: object
  state: dict
  test_accuracy: float
  mesh: object
  batch_size: int

  def _apply(self, method: str, images: np.ndarray) -> np.ndarray:
    graphdef = self.graphdef

    @jax.jit
    def run(params, model_state, batch):
      return getattr(merge_model(graphdef, params, model_state), method)(batch)

    return apply_in_batches(lambda b: run(self.state['params'], self.state['model_state'], b),
                            (np.asarray(images),), batch_size=self.batch_size, mesh=self.mesh)

  def logits(self, images: np.ndarray) -> np.ndarray:
    return self._apply('__call__', images)

  def features(self, images: np.ndarray) -> np.ndarray:
    return self._apply('features', images)


def load_or_train_judge(dataset: str, *, root: str, mesh, scale: str = 'small', seed: int = 0,
                        data_dir: Optional[str] = None, train_data=None, test_data=None) -> Judge:
  """The judge of ``dataset`` at ``scale``, trained on first use.

  ``train_data``/``test_data`` ((images, labels)) replace the official
  splits — for unit tests on synthetic data only.
  """
  if scale not in SCALES:
    raise ValueError(f"judge scale must be one of {tuple(SCALES)}, got {scale!r}")
  settings = SCALES[scale]
  devices = mesh.devices.size
  batch_size = -(-settings['batch_size'] // devices) * devices
  train_images, train_labels = train_data or mi_data.load(dataset, 'train', data_dir=data_dir)
  test_images, test_labels = test_data or mi_data.load(dataset, 'test', data_dir=data_dir)
  if settings['train_limit'] and settings['train_limit'] < len(train_labels):
    keep = mi_data.stratified_subsample(train_labels, settings['train_limit'], seed=seed)
    train_images, train_labels = train_images[keep], train_labels[keep]
  if settings['test_limit'] and settings['test_limit'] < len(test_labels):
    keep = mi_data.stratified_subsample(test_labels, settings['test_limit'], seed=seed)
    test_images, test_labels = test_images[keep], test_labels[keep]
  num_classes = int(max(train_labels.max(), test_labels.max())) + 1
  record = {'dataset': dataset, 'scale': scale, 'seed': seed, 'settings': settings,
            'num_classes': num_classes, 'n_train': int(len(train_labels)),
            'train_sha': results_io.config_hash({'labels': train_labels[:64].tolist(), 'n': len(train_labels)})}
  workdir = os.path.join(root, f"judge_{dataset}_{scale}_seed{seed}")
  record_path = os.path.join(workdir, 'judge.json')
  if storage.exists(record_path):
    saved = json.loads(storage.read_text(record_path))
    if saved['config'] != json.loads(json.dumps(record)):
      raise FileExistsError(f"{workdir} holds a judge trained with a different config; remove it or "
                            "choose another root")
  storage.makedirs(workdir)
  model = EvaluationCNN(image_shape=tuple(train_images.shape[1:]), num_classes=num_classes,
                        width=settings['width'], feature_width=settings['feature_width'],
                        rngs=nnx.Rngs(seed))
  optimizer = _adam(1e-3)
  # Resumes from (or, when finished, just restores) the checkpoints in workdir.
  graphdef, state = train_classifier(
      model=model, tx=make_optimizer(optimizer), images=train_images, labels=train_labels,
      batch_size=batch_size, epochs=settings['epochs'], seed=seed, mesh=mesh, workdir=workdir,
      writer=MetricWriter(workdir), phase='judge', checkpoint_every=500, log_every=100)
  judge = Judge(name=f"evaluation_cnn_{dataset}_{scale}", graphdef=graphdef, state=state,
                test_accuracy=float('nan'), mesh=mesh, batch_size=batch_size)
  if storage.exists(record_path):
    judge.test_accuracy = saved['test_accuracy']
  else:
    predictions = np.argmax(judge.logits(test_images), -1)
    judge.test_accuracy = float(np.mean(predictions == test_labels))
    if jax.process_index() == 0:
      results_io.write_json_atomic(record_path, {'config': record, 'test_accuracy': judge.test_accuracy,
                                                 'n_test': int(len(test_labels))})
  print(f"judge {judge.name}: test accuracy {judge.test_accuracy:.4f}", flush=True)
  return judge


def _adam(learning_rate):
  from ml_collections import config_dict
  return config_dict.ConfigDict({'optimizer': 'adam', 'learning_rate': learning_rate, 'weight_decay': 0.0})
