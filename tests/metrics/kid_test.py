"""KID: the unbiased polynomial-kernel MMD² against float64 references, unbiasedness, growth with a shift."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics.pairwise import polynomial_kernel as sklearn_polynomial_kernel

from mi_jax.metrics import kid as kid_lib


def _reference_mmd2(x, y):
  """Bińkowski et al.'s unbiased MMD² written out pair by pair, k(a, b) = (a·b/d + 1)³."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  d = x.shape[1]
  k = lambda a, b: (float(np.dot(a, b)) / d + 1.0) ** 3
  m, n = len(x), len(y)
  xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
  yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
  xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
  return xx + yy - 2.0 * xy


def test_kernel_is_sklearns_cubic_polynomial_kernel():
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=(7, 12)), rng.normal(size=(5, 12))
  want = sklearn_polynomial_kernel(a, b, degree=3, gamma=1.0 / 12, coef0=1.0)
  np.testing.assert_allclose(kid_lib.polynomial_kernel(a, b), want, rtol=1e-12)


@pytest.mark.parametrize('m,n', [(9, 9), (6, 11)])
def test_mmd2_matches_the_pairwise_reference(m, n):
  rng = np.random.default_rng(m + n)
  x, y = rng.normal(size=(m, 8)) * 2.0, rng.normal(size=(n, 8)) + 0.7
  np.testing.assert_allclose(kid_lib.mmd2_unbiased(x, y), _reference_mmd2(x, y), rtol=1e-10)
  np.testing.assert_allclose(kid_lib.mmd2_unbiased(x, y), kid_lib.mmd2_unbiased(y, x), rtol=1e-12)


def test_one_subset_holding_both_sets_is_the_full_estimate():
  rng = np.random.default_rng(1)
  x, y = rng.normal(size=(12, 6)), rng.normal(size=(12, 6)) + 0.3
  result = kid_lib.kid_from_features(x, y, subsets=5, subset_size=1000)
  assert result.subset_size == 12 and result.subsets == 5
  np.testing.assert_allclose(result.mean, _reference_mmd2(x, y), rtol=1e-10)
  assert result.std < 1e-12  # every subset is a permutation of both whole sets


def test_subset_mean_estimates_the_full_u_statistic():
  """E over random equal-size subsets of the subset U-statistic = the whole-set U-statistic (equal set sizes)."""
  rng = np.random.default_rng(2)
  x, y = rng.normal(size=(40, 5)), rng.normal(size=(40, 5)) * 1.3 + 0.4
  result = kid_lib.kid_from_features(x, y, subsets=3000, subset_size=10, seed=3)
  assert result.subset_size == 10
  assert abs(result.mean - _reference_mmd2(x, y)) < 4 * result.std / np.sqrt(3000)


def test_same_distribution_is_zero_on_average_and_can_be_negative():
  """Unbiased: over many independent pairs of samples of one distribution the estimates average to 0."""
  rng = np.random.default_rng(4)
  values = np.array([kid_lib.mmd2_unbiased(rng.normal(size=(15, 6)), rng.normal(size=(15, 6)))
                     for _ in range(400)])
  assert abs(values.mean()) < 4 * values.std() / np.sqrt(len(values))
  assert (values < 0).any()
  # The V-statistic (diagonal kept) would be biased upward: positive on average by a clear margin.
  biased = lambda x, y: (kid_lib.polynomial_kernel(x, x).mean() + kid_lib.polynomial_kernel(y, y).mean()
                         - 2 * kid_lib.polynomial_kernel(x, y).mean())
  rng = np.random.default_rng(4)
  v_values = np.array([biased(rng.normal(size=(15, 6)), rng.normal(size=(15, 6))) for _ in range(400)])
  assert v_values.mean() > 10 * values.std() / np.sqrt(len(values))


def test_kid_grows_with_a_distribution_shift():
  rng = np.random.default_rng(5)
  reference = rng.normal(size=(300, 16))
  sample = rng.normal(size=(25, 16))  # a small set, as in the GAN experiment (25 reconstructions)
  means = [kid_lib.kid_from_features(reference, sample + shift, subsets=50).mean for shift in (0.0, 0.25, 0.5, 1.0)]
  assert abs(means[0]) < means[1] < means[2] < means[3], means


def test_bad_arguments_are_one_line_errors():
  x = np.zeros((4, 3))
  with pytest.raises(ValueError, match='features_a must be'):
    kid_lib.kid_from_features(np.zeros((1, 3)), x)
  with pytest.raises(ValueError, match='differ in dimension'):
    kid_lib.mmd2_unbiased(x, np.zeros((4, 2)))
  with pytest.raises(ValueError, match='subsets must be'):
    kid_lib.kid_from_features(x, x, subsets=0)
  with pytest.raises(ValueError, match='subset_size must be'):
    kid_lib.kid_from_features(x, x, subset_size=1)
