"""The real MNIST and Fashion-MNIST, as prepared by `python -m mi_jax.data.prepare`.

Slow (tens of MB per dataset) and skipped, with the command to run, where
the data have not been prepared. Run with: pytest tests/data -m slow
"""

import pathlib

import numpy as np
import pytest

import mi_jax.data
from mi_jax.data import cache, registry, sources

pytestmark = [pytest.mark.slow, pytest.mark.real_data]

OFFICIAL_COUNTS = {
    'mnist': {
        'train': [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949],
        'test': [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009],
    },
    'fashion_mnist': {'train': [6000] * 10, 'test': [1000] * 10},
}


def _require_prepared(name):
  root = cache.resolve_data_dir()
  try:
    cache.read_manifest(root, name)
  except cache.CacheMiss:
    pytest.skip(f'{name} is not prepared under {root}; run: python -m mi_jax.data.prepare {name}')


@pytest.mark.parametrize('name', ['mnist', 'fashion_mnist'])
@pytest.mark.parametrize('split', ['train', 'test'])
def test_real_split_has_official_shape_dtype_and_class_counts(name, split):
  _require_prepared(name)
  images, labels = mi_jax.data.load(name, split)
  n = {'train': 60000, 'test': 10000}[split]
  assert images.shape == (n, 28, 28, 1) and images.dtype == np.uint8
  assert labels.shape == (n,) and labels.dtype == np.int64
  assert np.bincount(labels, minlength=10).tolist() == OFFICIAL_COUNTS[name][split]
  assert images.min() == 0 and images.max() == 255


@pytest.mark.parametrize('name', ['mnist', 'fashion_mnist'])
def test_real_pool_is_70k_and_splits_49k_21k_with_every_class(name):
  _require_prepared(name)
  s = mi_jax.data.load_sparse_guard(name, seed=0)
  assert len(s.private_labels) + len(s.heldout_labels) == 70000
  assert (len(s.private_labels), len(s.heldout_labels)) == (49000, 21000)
  assert set(np.unique(s.private_labels)) == set(np.unique(s.heldout_labels)) == set(range(10))
  small = mi_jax.data.load_sparse_guard(name, seed=0, private_limit=1000, heldout_limit=100)
  assert np.bincount(small.private_labels, minlength=10).min() >= 80
  assert np.bincount(small.heldout_labels, minlength=10).min() >= 8


def test_the_first_mnist_test_digit_is_the_famous_seven():
  _require_prepared('mnist')
  _, labels = mi_jax.data.load('mnist', 'test')
  assert labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]


def test_debian_fashion_files_verify_when_installed(tmp_path):
  route = registry.get_spec('fashion_mnist').routes[1]
  assert isinstance(route, sources.DebianRoute)
  if not pathlib.Path(route.directory).is_dir():
    pytest.skip(f'{route.directory} absent; run: apt-get install -y {route.package}')
  spec = registry.get_spec('fashion_mnist')
  arrays = route.fetch(spec, sources.FetchContext(tmp_path))
  for split in spec.splits:
    registry.verify_arrays(spec, split, *arrays[split], origin=route.name)


def test_real_medical_mnist_matches_the_documented_sizes():
  _require_prepared('medical_mnist')
  spec = registry.get_spec('medical_mnist')
  for split in ('train', 'test'):
    images, labels = mi_jax.data.load('medical_mnist', split)
    assert images.shape == (spec.splits[split].num_examples, 28, 28, 1)
    assert tuple(np.bincount(labels, minlength=6)) == spec.splits[split].class_counts
  s = mi_jax.data.load_sparse_guard('medical_mnist', seed=0)
  assert len(s.private_labels) + len(s.heldout_labels) == 58954
