"""Empirical Fisher per layer: oracle = a Python loop of single-example grads."""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mi_jax import data as mi_data
from mi_jax.analysis import fisher
from mi_jax.experiments import fisher_importance as command
from mi_jax.models.target import TargetNetwork
from mi_jax.train.state import split_model
from tests.helpers import ROOT, load_config, mesh_of, synthetic_digits


def small_target(seed=0):
  model = TargetNetwork(image_shape=(28, 28, 1), num_classes=10, hidden_widths=(6, 5), rngs=nnx.Rngs(seed))
  return split_model(model)


def loop_fisher(loss_fn, params, examples):
  """F_θ = mean_n (∂L(x_n)/∂θ)², one jax.grad per example, float64 on the host."""
  n = len(next(iter(examples.values())))
  total = jax.tree.map(lambda p: np.zeros(p.shape, np.float64), params)
  for i in range(n):
    g = jax.grad(loss_fn)(params, {k: jnp.asarray(v[i]) for k, v in examples.items()})
    total = jax.tree.map(lambda t, gi: t + np.square(np.asarray(gi, np.float64)), total, g)
  return jax.tree.map(lambda t: t / n, total)


def assert_trees_close(a, b):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=2e-4, atol=1e-10), a, b)


@pytest.mark.parametrize('devices', [1, 8])
def test_classification_fisher_equals_single_example_loop(devices):
  graphdef, params, model_state = small_target()
  images, labels = synthetic_digits(11)  # 11 = one full batch of 8 + a padded one
  examples = {'image': images, 'label': labels.astype(np.int32)}
  loss = fisher.classification_loss(graphdef, model_state)
  got = fisher.empirical_fisher(loss, params, examples, batch_size=8, mesh=mesh_of(devices))
  assert_trees_close(got, loop_fisher(loss, params, examples))
  assert all(np.all(np.asarray(v) >= 0) for v in jax.tree.leaves(got))
  assert np.asarray(got['classifier']['kernel']).max() > 0


def test_inversion_fisher_and_loss():
  graphdef, params, model_state = small_target(1)
  images, labels = synthetic_digits(9, seed=3)
  feats = np.asarray(fisher.penultimate_features(graphdef, params, model_state, jnp.asarray(images)))
  centroids = fisher.class_centroids(feats, labels, num_classes=10)
  for c in np.unique(labels):
    np.testing.assert_allclose(centroids[c], feats[labels == c].mean(0), rtol=1e-5, atol=1e-6)
  loss = fisher.inversion_loss(graphdef, model_state)
  value = loss(params, {'image': jnp.asarray(images[0]), 'centroid': jnp.asarray(centroids[labels[0]])})
  np.testing.assert_allclose(value, np.linalg.norm(feats[0] - centroids[labels[0]]), rtol=1e-4)
  examples = {'image': images, 'centroid': centroids[labels]}
  got = fisher.empirical_fisher(loss, params, examples, batch_size=8, mesh=mesh_of(8))
  assert_trees_close(got, loop_fisher(loss, params, examples))
  # The classifier is past the penultimate feature: no inversion Fisher.
  assert np.all(np.asarray(got['classifier']['kernel']) == 0)


def test_layer_aggregation_is_the_mean_over_the_layers_parameters():
  tree = {'dense': {'kernel': np.full((2, 3), 2.0), 'bias': np.zeros(3)},
          'blocks': {0: {'bn': {'scale': np.array([1.0, 3.0])}}}}
  per_layer = fisher.layer_fisher(tree)
  assert per_layer == {'blocks/0/bn': 2.0, 'dense': 12.0 / 9.0}
  assert fisher.layer_sizes(tree) == {'blocks/0/bn': 2, 'dense': 9}


def test_layer_importance_and_ranking():
  graphdef, params, model_state = small_target(2)
  images, labels = synthetic_digits(16, seed=4)
  imp = fisher.layer_importance(graphdef, params, model_state, validation_images=images[8:],
                                validation_labels=labels[8:], private_images=images[:8],
                                private_labels=labels[:8], num_classes=10, batch_size=8, mesh=mesh_of(8))
  assert set(imp['classification']) == set(imp['inversion']) == {'first', 'hidden/0', 'classifier'}
  assert imp['inversion']['classifier'] == 0.0
  pref = fisher.inversion_preference(imp)
  np.testing.assert_allclose(sum(pref.values()), 0.0, atol=1e-12)  # two sets of shares
  order = fisher.model_layer_order(graphdef, params, model_state, images[:1])
  ranked = fisher.rank_for_freezing(imp, order)
  assert ranked[-1] == 'classifier'  # all classification, no inversion
  assert sorted(ranked) == sorted(order)


def test_forward_order_ignores_names_and_parameterless_modules():
  class Net(nnx.Module):
    def __init__(self, rngs):
      self.zeta = nnx.Linear(3, 4, rngs=rngs)   # used first
      self.alpha = nnx.Linear(4, 2, rngs=rngs)  # used last
      self.mid = nnx.LayerNorm(4, rngs=rngs)

    def __call__(self, x):
      return self.alpha(jax.nn.relu(self.mid(self.zeta(x))))

  graphdef, params = nnx.split(Net(nnx.Rngs(0)), nnx.Param)
  params = nnx.to_pure_dict(params)
  order = fisher.forward_layer_order(lambda p, x: nnx.merge(graphdef, p)(x), params, jnp.ones((1, 3)))
  assert order == ('zeta', 'mid', 'alpha')


def test_outputs_are_written_once_and_never_overwritten(tmp_path):
  order = ('first', 'classifier')
  importance = {'classification': {'first': 1.0, 'classifier': 3.0},
                'inversion': {'first': 2.0, 'classifier': 0.0}}
  rows = command.importance_table(importance, order, {'first': 10, 'classifier': 4})
  assert [r['layer'] for r in rows] == list(order) and rows[0]['depth'] == 1
  assert rows[0]['inversion_share'] == 1.0 and rows[1]['classification_share'] == 0.75
  assert rows[0]['inversion_preference'] == pytest.approx(0.75)
  meta = {'model': 'm', 'n_validation': 1, 'n_inversion': 1, 'inversion_images': 'private'}
  command.write_outputs(str(tmp_path), rows, meta)
  assert '| 1 | first | 10 |' in (tmp_path / 'fisher.md').read_text()
  assert json.loads((tmp_path / 'fisher.json').read_text()) == {'layers': rows, 'meta': meta}
  assert (tmp_path / 'fisher.png').read_bytes()[:4] == b'\x89PNG'
  before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
  with pytest.raises(FileExistsError, match='fisher.json'):
    command.write_outputs(str(tmp_path), rows, {**meta, 'model': 'other'})
  with pytest.raises(FileExistsError, match='fisher.json'):
    command.refuse_existing_outputs(str(tmp_path))
  # Nothing replaced, no temp files left.
  assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


# ------------------------------------------------------------------ run() on a tiny synthetic split


@pytest.fixture
def synthetic_split(monkeypatch):
  """SYNTHETIC data (unit test only) in place of the real loader."""
  split = mi_data.ProtocolSplit(*synthetic_digits(64, seed=3), *synthetic_digits(32, seed=4))
  monkeypatch.setattr(command.mi_data, 'load_sparse_guard', lambda *a, **k: split)
  return split


def tiny_config(**fisher):
  config = load_config('tiny', 'configs/fisher_importance.py')
  config.fisher.samples = 16  # keeps the per-example gradients cheap
  for key, value in fisher.items():
    config.fisher[key] = value
  return config


def test_run_trains_a_target_writes_its_outputs_and_reads_its_checkpoint_back(tmp_path, synthetic_split):
  trained = tmp_path / 'trained'
  rows = command.run(tiny_config(), str(trained), mesh=mesh_of(8))
  depth = load_config('tiny', 'configs/fisher_importance.py').model.hidden_layers.end_to_end
  assert [r['layer'] for r in rows] == ['first', *(f'hidden/{i}' for i in range(depth - 1)), 'classifier']
  assert [r['depth'] for r in rows] == list(range(1, depth + 2))
  assert sum(r['classification_share'] for r in rows) == pytest.approx(1.0)
  assert rows[-1]['inversion'] == 0.0  # the classifier is past the inverted feature
  saved = json.loads((trained / 'fisher.json').read_text())
  assert saved['layers'] == json.loads(json.dumps(rows))
  meta = saved['meta']
  assert (meta['n_validation'], meta['n_inversion'], meta['inversion_images']) == (16, 16, 'private')
  assert meta['checkpoint'] is None and meta['config']['fisher']['samples'] == 16
  assert meta['model'] == 'no-defense target, end_to_end, mnist'
  assert '| 1 | first |' in (trained / 'fisher.md').read_text()
  assert (trained / 'fisher.png').read_bytes()[:4] == b'\x89PNG'
  # The target it trained, restored: the same layers and numbers, no training.
  restored = tmp_path / 'restored'
  checkpoint = str(trained / 'checkpoints' / 'target')
  assert command.run(tiny_config(checkpoint=checkpoint), str(restored), mesh=mesh_of(8)) == rows
  assert json.loads((restored / 'fisher.json').read_text())['meta']['checkpoint'] == checkpoint
  assert not (restored / 'checkpoints').exists()


def test_run_refuses_before_it_writes_anything(tmp_path, synthetic_split):
  (tmp_path / 'fisher.md').write_text('an earlier run')
  with pytest.raises(FileExistsError, match=r"already holds \['fisher.md'\]"):
    command.run(tiny_config(), str(tmp_path), mesh=mesh_of(8))
  assert [p.name for p in tmp_path.iterdir()] == ['fisher.md']
  np.save(tmp_path / 'wrong.npy', np.zeros((3, 28, 28, 1), np.uint8))
  with pytest.raises(ValueError, match="reconstructions must have the private images' shape"):
    command.run(tiny_config(reconstructions=str(tmp_path / 'wrong.npy')), str(tmp_path / 'new'), mesh=mesh_of(8))
  with pytest.raises(ValueError, match='fisher.batch_size must be divisible by the 8 devices'):
    command.run(tiny_config(batch_size=12), str(tmp_path / 'new'), mesh=mesh_of(8))
  assert not (tmp_path / 'new').exists()


def test_run_with_reconstructions_uses_them_for_the_inversion_loss(tmp_path, synthetic_split):
  np.save(tmp_path / 'reconstructions.npy', np.full(synthetic_split.private_images.shape, 0.5, np.float32))
  rows = command.run(tiny_config(reconstructions=str(tmp_path / 'reconstructions.npy')), str(tmp_path / 'run'),
                     mesh=mesh_of(8))
  meta = json.loads((tmp_path / 'run' / 'fisher.json').read_text())['meta']
  assert meta['inversion_images'] == 'reconstructed'
  assert all(np.isfinite(r['inversion']) for r in rows)


def test_the_command_exits_2_with_one_line_for_a_bad_field(tmp_path):
  done = subprocess.run(
      [sys.executable, '-m', 'experiments.fisher_importance', '--config=configs/fisher_importance.py:tiny',
       '--config.fisher.samples=0', f'--workdir={tmp_path / "run"}'],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert done.returncode == 2, done.stderr[-2000:]
  assert done.stderr == 'error: fisher.samples must be an integer >= 1, got 0\n'
  assert not (tmp_path / 'run').exists()
