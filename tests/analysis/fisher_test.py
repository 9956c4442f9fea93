"""Empirical Fisher per layer: oracle = a Python loop of single-example grads."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mi_jax.analysis import fisher
from mi_jax.models.target import TargetNetwork
from mi_jax.train.state import split_model
from tests.helpers import mesh_of, synthetic_digits


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
  from experiments import fisher_importance as command

  order = ('first', 'classifier')
  importance = {'classification': {'first': 1.0, 'classifier': 3.0},
                'inversion': {'first': 2.0, 'classifier': 0.0}}
  rows = command.importance_table(importance, order, {'first': 10, 'classifier': 4})
  assert [r['layer'] for r in rows] == list(order) and rows[0]['depth'] == 1
  assert rows[0]['inversion_share'] == 1.0 and rows[1]['classification_share'] == 0.75
  assert rows[0]['inversion_preference'] == pytest.approx(0.75)
  path = tmp_path / 'fisher.md'
  command._write_new(str(path), command.render_markdown(rows, {
      'model': 'm', 'n_validation': 1, 'n_inversion': 1, 'inversion_images': 'private'}).encode())
  assert '| 1 | first | 10 |' in path.read_text()
  with pytest.raises(FileExistsError):
    command._write_new(str(path), b'new')
  assert path.read_text().startswith('# Fisher')
  assert command.render_png(rows)[:4] == b'\x89PNG'
  with pytest.raises(FileExistsError, match='fisher.md'):
    command._check_free(str(tmp_path))
  assert [p.name for p in tmp_path.iterdir()] == ['fisher.md']  # no temp files left
