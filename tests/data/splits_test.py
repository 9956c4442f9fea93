"""The Sparse-Guard 70/30 split and stratified subsampling (synthetic arrays)."""

import numpy as np
import pytest

from mi_jax.data import cache, registry, splits
from tests.data import fixtures

N = 1000


def _pool(n=N, num_classes=10):
  """Images that encode their own index, so roles can be traced back."""
  images = np.arange(n, dtype=np.int64).reshape(n, 1, 1, 1)
  labels = np.arange(n, dtype=np.int64) % num_classes
  return images, labels


def test_sizes_are_70_30_of_the_pool_and_roles_partition_it():
  images, labels = _pool()
  s = splits.sparse_guard_split(images, labels, seed=0)
  assert len(s.private_images) == len(s.private_labels) == 700
  assert len(s.heldout_images) == len(s.heldout_labels) == 300
  private, heldout = s.private_images.ravel(), s.heldout_images.ravel()
  assert not set(private) & set(heldout)
  assert sorted(np.concatenate([private, heldout])) == list(range(N))
  np.testing.assert_array_equal(s.private_labels, private % 10)  # labels travel with images


def test_full_mnist_sizes():
  private, heldout = splits.split_permutation(70000, seed=0)
  assert (len(private), len(heldout)) == (49000, 21000)


def test_same_seed_same_split_other_seed_other_split():
  images, labels = _pool()
  a = splits.sparse_guard_split(images, labels, seed=3)
  b = splits.sparse_guard_split(images, labels, seed=3)
  c = splits.sparse_guard_split(images, labels, seed=4)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  assert not np.array_equal(a.private_images, c.private_images)


def test_split_is_pinned_to_numpy_default_rng():
  # The protocol's definition; a change here changes every experiment.
  private, _ = splits.split_permutation(10, seed=0)
  want = np.random.default_rng([0, 0]).permutation(10)[:7]
  np.testing.assert_array_equal(private, want)


@pytest.mark.parametrize('fraction', [0, 1, -0.1, 1.5, float('nan'), True, '0.7', None])
def test_fraction_must_be_in_open_unit_interval(fraction):
  images, labels = _pool()
  with pytest.raises(ValueError, match=r'private_fraction must be a number in \(0, 1\), got') as error:
    splits.sparse_guard_split(images, labels, private_fraction=fraction)
  assert '\n' not in str(error.value)


def test_fraction_that_empties_a_role_is_refused():
  images, labels = _pool(n=3)
  with pytest.raises(ValueError, match='leaves an empty role for 3 examples'):
    splits.sparse_guard_split(images, labels, private_fraction=0.1)


@pytest.mark.parametrize('seed', [-1, 1.5, 'a', None])
def test_seed_must_be_a_non_negative_integer(seed):
  with pytest.raises(ValueError, match='seed must be an integer >= 0'):
    splits.split_permutation(10, seed=seed)


def test_limits_subsample_each_role_stratified_and_deterministically():
  images, labels = _pool()
  full = splits.sparse_guard_split(images, labels, seed=1)
  small = splits.sparse_guard_split(images, labels, seed=1, private_limit=50, heldout_limit=20)
  again = splits.sparse_guard_split(images, labels, seed=1, private_limit=50, heldout_limit=20)
  for x, y in zip(small, again):
    np.testing.assert_array_equal(x, y)
  assert len(small.private_labels) == 50 and len(small.heldout_labels) == 20
  # Every class kept, balanced within one example.
  for role_labels, per_class in ((small.private_labels, 5), (small.heldout_labels, 2)):
    counts = np.bincount(role_labels, minlength=10)
    assert counts.min() >= 1 and abs(counts - per_class).max() <= 1
  # Subsets of their own role, in the role's order.
  assert set(small.private_images.ravel()) <= set(full.private_images.ravel())
  assert set(small.heldout_images.ravel()) <= set(full.heldout_images.ravel())
  position = {v: i for i, v in enumerate(full.private_images.ravel())}
  assert np.all(np.diff([position[v] for v in small.private_images.ravel()]) > 0)


def test_a_limit_on_one_role_leaves_the_other_untouched():
  images, labels = _pool()
  full = splits.sparse_guard_split(images, labels, seed=2)
  limited = splits.sparse_guard_split(images, labels, seed=2, heldout_limit=30)
  np.testing.assert_array_equal(full.private_images, limited.private_images)


def test_small_subsets_keep_rare_classes():
  labels = np.array([0] * 95 + [1] * 4 + [2] * 1)
  keep = splits.stratified_subsample(labels, 5, seed=0)
  assert len(keep) == 5 and set(labels[keep]) == {0, 1, 2}


def test_class_quotas_are_proportional_and_sum_to_the_limit():
  quotas = splits.class_quotas(np.array([600, 300, 100]), 10)
  assert quotas.tolist() == [6, 3, 1]
  quotas = splits.class_quotas(np.array([5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]), 1000)
  assert quotas.sum() == 1000 and quotas.min() >= 90


@pytest.mark.parametrize('limit,pattern', [
    (5, r'private_limit must be an integer in \[10, 700\] \(one per class up to the whole set\), got 5'),
    (701, r'private_limit must be an integer in \[10, 700\]'),
    (50.0, r'private_limit must be an integer'),
])
def test_bad_limits_are_one_line_value_errors(limit, pattern):
  images, labels = _pool()
  with pytest.raises(ValueError, match=pattern) as error:
    splits.sparse_guard_split(images, labels, private_limit=limit)
  assert '\n' not in str(error.value)


def test_load_sparse_guard_pools_train_then_test(monkeypatch, tmp_path):
  arrays = fixtures.make_arrays()
  monkeypatch.setitem(registry.DATASETS, 'tiny', fixtures.make_spec(arrays))
  cache.write_dataset(tmp_path, 'tiny', arrays, source='fixture')
  images, labels = splits.pooled('tiny', data_dir=tmp_path)
  np.testing.assert_array_equal(images, np.concatenate([arrays['train'][0], arrays['test'][0]]))
  s = splits.load_sparse_guard('tiny', seed=0, data_dir=tmp_path)
  want = splits.sparse_guard_split(images, labels, seed=0)
  for x, y in zip(s, want):
    np.testing.assert_array_equal(x, y)
  assert len(s.private_labels) == round(0.7 * 18) and s.private_images.dtype == np.uint8
