"""Bring-your-own data: npz files and image folders through the registry, the cache and an experiment.

SYNTHETIC data (tests.helpers.synthetic_digits), written in the user's layouts.
"""

import numpy as np
import pytest
from PIL import Image

from mi_jax import data as mi_data
from mi_jax.data import local, registry
from tests.helpers import load_config, synthetic_digits


@pytest.fixture
def fresh_names():
  """Removes the datasets a test registers."""
  before = set(registry.DATASETS)
  yield
  for name in set(registry.DATASETS) - before:
    del registry.DATASETS[name]


def _npz(path, n=40, with_test=True, **extra):
  images, labels = synthetic_digits(n)
  arrays = {'images': images[..., 0], 'labels': labels, **extra}
  if with_test:
    test_images, test_labels = synthetic_digits(10, seed=1)
    arrays.update(test_images=test_images, test_labels=test_labels)
  np.savez(path, **arrays)
  return images, labels


def test_an_npz_loads_through_the_cache_exactly(tmp_path, fresh_names):
  images, labels = _npz(tmp_path / 'set.npz', class_names=np.array([f'c{k}' for k in range(10)]))
  spec = mi_data.register_local('byo_npz', tmp_path / 'set.npz')
  assert spec.image_shape == (28, 28, 1) and spec.class_names[3] == 'c3'
  got_images, got_labels = mi_data.load('byo_npz', 'train', data_dir=tmp_path / 'cache')
  np.testing.assert_array_equal(got_images, images)
  np.testing.assert_array_equal(got_labels, labels)
  assert mi_data.load('byo_npz', 'test', data_dir=tmp_path / 'cache')[0].shape == (10, 28, 28, 1)
  assert (tmp_path / 'cache' / 'byo_npz' / 'manifest.json').exists()
  # The same file again (another process, a re-imported config): the same spec.
  assert mi_data.register_local('byo_npz', tmp_path / 'set.npz') == spec


def test_float_images_are_scaled_and_a_missing_test_split_is_empty(tmp_path, fresh_names):
  images, labels = synthetic_digits(30)
  np.savez(tmp_path / 'f.npz', images=images.astype(np.float32) / 255, labels=labels)
  mi_data.register_local('byo_float', tmp_path / 'f.npz')
  got, _ = mi_data.load('byo_float', 'train', data_dir=tmp_path / 'cache')
  np.testing.assert_array_equal(got, images)
  assert mi_data.load('byo_float', 'test', data_dir=tmp_path / 'cache')[0].shape == (0, 28, 28, 1)
  # The Sparse-Guard protocol pools both and splits 70/30 itself.
  split = mi_data.load_sparse_guard('byo_float', data_dir=tmp_path / 'cache')
  assert len(split.private_images) + len(split.heldout_images) == 30


def _folder(root, split=None, size=(12, 10), mode='RGB'):
  base = root if split is None else root / split
  rng = np.random.default_rng(0)
  for name in ('cat', 'ant', 'bee'):
    (base / name).mkdir(parents=True)
    for i in range(3):
      shape = (size[1], size[0], 3) if mode == 'RGB' else (size[1], size[0])
      Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode).save(base / name / f'{i}.png')


def test_an_image_folder_registers_with_sorted_class_names(tmp_path, fresh_names):
  _folder(tmp_path / 'imgs', 'train')
  _folder(tmp_path / 'imgs', 'test')
  spec = mi_data.register_local('byo_folder', tmp_path / 'imgs')
  assert spec.class_names == ('ant', 'bee', 'cat') and spec.image_shape == (10, 12, 3)
  images, labels = mi_data.load('byo_folder', 'train', data_dir=tmp_path / 'cache')
  assert images.shape == (9, 10, 12, 3) and images.dtype == np.uint8
  assert labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
  assert spec.splits['test'].num_examples == 9


def test_a_changed_file_is_not_served_as_the_registered_data(tmp_path, fresh_names):
  _npz(tmp_path / 'set.npz', with_test=False)
  mi_data.register_local('byo_changed', tmp_path / 'set.npz')
  _npz(tmp_path / 'set.npz', n=41, with_test=False)  # changed before the first load
  with pytest.raises(mi_data.DataUnavailableError, match='expected uint8'):
    mi_data.load('byo_changed', 'train', data_dir=tmp_path / 'cache')
  with pytest.raises(ValueError, match='already registered with other data'):
    mi_data.register_local('byo_changed', tmp_path / 'set.npz')


@pytest.mark.parametrize('arrays, message', [
    ({'pixels': np.zeros((2, 4, 4), np.uint8)}, "needs the arrays 'images' and 'labels'"),
    ({'images': np.zeros((2, 4, 4), np.uint8), 'labels': np.zeros(3, int)}, 'labels must be 2 integers'),
    ({'images': np.zeros((2, 4, 4), np.uint8), 'labels': np.array([0, -1])}, 'labels must be >= 0'),
    ({'images': np.full((2, 4, 4), 2.0), 'labels': np.array([0, 1])}, 'float images must be finite and in'),
    ({'images': np.zeros((2, 4, 4, 2), np.uint8), 'labels': np.array([0, 1])}, 'with C in (1, 3)'),
    ({'images': np.zeros((2, 4, 4), np.uint8), 'labels': np.array([0, 1]),
      'test_images': np.zeros((1, 4, 4), np.uint8)}, "come together"),
])
def test_bad_files_are_one_line_errors(tmp_path, fresh_names, arrays, message):
  np.savez(tmp_path / 'bad.npz', **arrays)
  with pytest.raises(ValueError, match=message.replace('(', r'\(').replace(')', r'\)')):
    mi_data.register_local('byo_bad', tmp_path / 'bad.npz')
  assert 'byo_bad' not in registry.DATASETS


def test_bad_paths_names_and_mixed_image_sizes(tmp_path, fresh_names):
  with pytest.raises(ValueError, match='path must be an existing .npz file or a folder'):
    mi_data.register_local('byo_x', tmp_path / 'missing.npz')
  _npz(tmp_path / 'set.npz')
  with pytest.raises(ValueError, match='name must start with a letter'):
    mi_data.register_local('my-set', tmp_path / 'set.npz')
  _folder(tmp_path / 'mixed')
  Image.fromarray(np.zeros((5, 5, 3), np.uint8)).save(tmp_path / 'mixed' / 'cat' / 'z.png')
  with pytest.raises(ValueError, match='every image must have one size and mode'):
    mi_data.register_local('byo_mixed', tmp_path / 'mixed')


def test_an_experiment_runs_on_registered_data(tmp_path, fresh_names):
  from mi_jax.experiments import surrogate as experiment
  from tests.helpers import mesh_of
  _npz(tmp_path / 'set.npz', n=120)
  mi_data.register_local('byo_run', tmp_path / 'set.npz')
  config = load_config('tiny')
  with config.unlocked():
    config.dataset = 'byo_run'
    config.data.dir = str(tmp_path / 'cache')
    config.metrics.judge_scale = None  # no evaluation classifier for a user's set
    config.sweep.defenses = ('no-defense',)
    config.sweep.settings = ('split',)
    config.attack.epochs = 1
  rows = experiment.run(config, str(tmp_path / 'run'), mesh=mesh_of(8))
  assert [r['dataset'] for r in rows] == ['byo_run'] and np.isfinite(rows[0]['psnr'])
