"""Kernel Inception Distance (Bińkowski et al., ICLR 2018, "Demystifying MMD GANs", Sec. 4).

KID is the squared maximum mean discrepancy between two sets of InceptionV3
pool3 features (the same 2048-d features as FID,
:func:`mi_jax.metrics.fid.inception_features`) under the cubic polynomial
kernel

    k(x, y) = (xᵀy / d + 1)³,    d = feature dimension,

estimated without bias (the U-statistic; it can be slightly negative when
the two sets come from one distribution):

    MMD²_u = 1/(m(m−1)) Σ_{i≠j} k(xᵢ, xⱼ) + 1/(n(n−1)) Σ_{i≠j} k(yᵢ, yⱼ)
             − 2/(mn) Σ_{i,j} k(xᵢ, yⱼ).

Unlike FID, this estimator's expectation does not depend on the set sizes,
so KID is the number to read when only a few dozen reconstructions exist
(FID from 25 images is dominated by its small-sample bias). As in the paper
(and torchmetrics, torch-fidelity, clean-fid) the estimate is repeated on
``subsets`` random subsets of ``subset_size`` rows drawn without
replacement from each set, and the mean and the (population) standard
deviation over subsets are reported; like clean-fid, the subset size is
capped at the smaller set's size, so with 25 reconstructions every subset
holds all of them and the spread comes from the reference side only.
Everything is float64 NumPy.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

# The paper's / torchmetrics' defaults: 100 subsets of (up to) 1000 rows.
DEFAULT_SUBSETS = 100
DEFAULT_SUBSET_SIZE = 1000


class KID(NamedTuple):
  mean: float  # mean of MMD²_u over the subsets
  std: float  # population standard deviation over the subsets
  subset_size: int  # rows drawn from each set per subset (capped at the smaller set)
  subsets: int


def polynomial_kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """k(x, y) = (xᵀy / d + 1)³ for all row pairs, float64."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return (a @ b.T / a.shape[1] + 1.0) ** 3


def mmd2_unbiased(features_a: np.ndarray, features_b: np.ndarray) -> float:
  """The unbiased MMD² (module docstring) of two feature sets ``[m, d]`` and ``[n, d]``, m, n ≥ 2."""
  a, b = _check_features(features_a, 'features_a'), _check_features(features_b, 'features_b')
  if a.shape[1] != b.shape[1]:
    raise ValueError(f'feature sets differ in dimension: {a.shape} and {b.shape}')
  m, n = len(a), len(b)
  k_aa, k_bb = polynomial_kernel(a, a), polynomial_kernel(b, b)
  # Σ_{i≠j}: the full sum minus the diagonal.
  within_a = (k_aa.sum() - np.trace(k_aa)) / (m * (m - 1))
  within_b = (k_bb.sum() - np.trace(k_bb)) / (n * (n - 1))
  return float(within_a + within_b - 2.0 * polynomial_kernel(a, b).mean())


def kid_from_features(
    features_a: np.ndarray,
    features_b: np.ndarray,
    *,
    subsets: int = DEFAULT_SUBSETS,
    subset_size: int = DEFAULT_SUBSET_SIZE,
    seed: int = 0,
) -> KID:
  """KID of two feature sets: MMD²_u on ``subsets`` random subsets, mean and std.

  Each subset draws ``min(subset_size, len(a), len(b))`` rows of each set
  without replacement (independently per set, ``np.random.default_rng(seed)``).
  """
  a, b = _check_features(features_a, 'features_a'), _check_features(features_b, 'features_b')
  if subsets < 1:
    raise ValueError(f'subsets must be >= 1, got {subsets!r}')
  if subset_size < 2:
    raise ValueError(f'subset_size must be >= 2, got {subset_size!r}')
  size = min(subset_size, len(a), len(b))
  rng = np.random.default_rng(seed)
  values = np.array([mmd2_unbiased(a[rng.choice(len(a), size, replace=False)],
                                   b[rng.choice(len(b), size, replace=False)]) for _ in range(subsets)])
  return KID(float(values.mean()), float(values.std()), int(size), int(subsets))


def _check_features(features, name: str) -> np.ndarray:
  features = np.asarray(features, np.float64)
  if features.ndim != 2 or len(features) < 2:
    raise ValueError(f'{name} must be [N >= 2, D], got shape {features.shape}')
  return features
