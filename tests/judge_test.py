"""The evaluation classifier: learns, reports its test accuracy, is cached and reused."""

import json

import numpy as np
import pytest

from mi_jax import judge as judge_lib
from tests.helpers import mesh_of, synthetic_digits


def test_judge_learns_caches_and_refuses_a_different_config(tmp_path):
  train = synthetic_digits(256, seed=0)  # SYNTHETIC (unit test only)
  test = synthetic_digits(64, seed=1)
  judge = judge_lib.load_or_train_judge('mnist', root=str(tmp_path), mesh=mesh_of(8), scale='tiny',
                                        train_data=train, test_data=test)
  assert judge.test_accuracy > 0.3  # chance is 0.1
  assert judge.logits(test[0]).shape == (64, 10)
  features = judge.features(test[0][:5])
  assert features.shape == (5, 32) and np.all(features >= 0)
  record = json.loads((tmp_path / 'judge_mnist_tiny_seed0' / 'judge.json').read_text())
  assert record['test_accuracy'] == judge.test_accuracy
  again = judge_lib.load_or_train_judge('mnist', root=str(tmp_path), mesh=mesh_of(8), scale='tiny',
                                        train_data=train, test_data=test)
  np.testing.assert_array_equal(again.logits(test[0]), judge.logits(test[0]))
  with pytest.raises(FileExistsError, match='different config'):
    judge_lib.load_or_train_judge('mnist', root=str(tmp_path), mesh=mesh_of(8), scale='tiny',
                                  train_data=synthetic_digits(200, seed=5), test_data=test)
  with pytest.raises(ValueError, match='judge scale must be one of'):
    judge_lib.load_or_train_judge('mnist', root=str(tmp_path), mesh=mesh_of(8), scale='huge')
