"""How often and how closely an inversion attack recovers private classes,
judged by an evaluation classifier that is not the target (fidelity.md #7).

* Attack accuracy (GMI, Zhang et al. 2020): the fraction of reconstructions
  that the evaluation classifier assigns to the attacked label, top-1 and
  top-5. Higher = the attack succeeded = a worse defense.
* KNN distance (GMI; KEDMI, Chen et al. 2021): for each reconstruction x̂
  of class y, the distance in the evaluation classifier's penultimate feature
  space φ to the nearest private image of the same class,

      KNN(x̂) = min_{x ∈ D_private, label(x) = y} ‖φ(x̂) − φ(x)‖₂²,

  averaged over reconstructions. The GMI/KEDMI/TL-DMI code sums squared
  differences (no square root); we follow it by default (``squared=True``).
  Lower = the reconstructions sit close to real private images = a worse
  defense.
* Precision / recall / density / coverage (Naeem et al. 2020, k nearest
  neighbours in a feature space): fidelity and diversity of the
  reconstructions as a set, against the private set.
"""

from __future__ import annotations

import numpy as np


def _check_2d(name, array) -> np.ndarray:
  array = np.asarray(array)
  if array.ndim != 2:
    raise ValueError(f"{name} must be 2-D (examples, features), got shape {array.shape}")
  return array


def attack_accuracy(logits, target_labels) -> tuple[float, float]:
  """(top-1, top-5) fraction of rows whose attacked label is among the top k logits.

  With fewer than 5 classes, top-5 is 1.
  """
  logits = _check_2d('logits', logits)
  labels = np.asarray(target_labels)
  if labels.shape != (len(logits),):
    raise ValueError(f"target_labels must have shape ({len(logits)},), got {labels.shape}")
  if len(logits) == 0:
    raise ValueError("attack_accuracy needs at least one reconstruction, got 0")
  # Rank of the true label = number of classes scoring strictly higher.
  true_scores = logits[np.arange(len(labels)), labels]
  rank = np.sum(logits > true_scores[:, None], axis=1)
  return float(np.mean(rank < 1)), float(np.mean(rank < 5))


def knn_distance(recon_features, recon_labels, private_features, private_labels, *,
                 squared: bool = True) -> float:
  """Mean over reconstructions of the distance to the nearest same-class private feature."""
  recon = _check_2d('recon_features', recon_features).astype(np.float64)
  private = _check_2d('private_features', private_features).astype(np.float64)
  if recon.shape[1] != private.shape[1]:
    raise ValueError(f"feature sizes differ: reconstructions {recon.shape[1]}, private {private.shape[1]}")
  recon_labels, private_labels = np.asarray(recon_labels), np.asarray(private_labels)
  distances = np.empty(len(recon))
  for label in np.unique(recon_labels):
    pool = private[private_labels == label]
    if len(pool) == 0:
      raise ValueError(f"no private image of class {label} to compare reconstructions with")
    rows = recon_labels == label
    # ‖a − b‖² = ‖a‖² + ‖b‖² − 2 a·b, clipped at 0 against rounding.
    d2 = (np.sum(recon[rows] ** 2, 1)[:, None] + np.sum(pool ** 2, 1)[None, :]
          - 2.0 * recon[rows] @ pool.T)
    nearest = np.maximum(d2.min(axis=1), 0.0)
    distances[rows] = nearest if squared else np.sqrt(nearest)
  return float(np.mean(distances))


def _pairwise_distances(a, b) -> np.ndarray:
  d2 = np.sum(a ** 2, 1)[:, None] + np.sum(b ** 2, 1)[None, :] - 2.0 * a @ b.T
  return np.sqrt(np.maximum(d2, 0.0))


def prdc(real_features, fake_features, *, k: int = 5) -> dict[str, float]:
  """Precision, recall, density and coverage (Naeem et al. 2020).

  With r_k(x) the distance from x to its k-th nearest neighbour within its
  own set (itself excluded), B(x, r) a ball:

      precision = 1/M Σ_j 1[∃ i: Y_j ∈ B(X_i, r_k(X_i))]
      recall    = 1/N Σ_i 1[∃ j: X_i ∈ B(Y_j, r_k(Y_j))]
      density   = 1/(kM) Σ_j Σ_i 1[Y_j ∈ B(X_i, r_k(X_i))]
      coverage  = 1/N Σ_i 1[∃ j: Y_j ∈ B(X_i, r_k(X_i))]

  for N real features X and M fake features Y.
  """
  real = _check_2d('real_features', real_features).astype(np.float64)
  fake = _check_2d('fake_features', fake_features).astype(np.float64)
  if not (isinstance(k, int) and 1 <= k < min(len(real), len(fake))):
    raise ValueError(f"k must be an integer in [1, {min(len(real), len(fake)) - 1}], got {k!r}")
  real_radius = np.sort(_pairwise_distances(real, real), axis=1)[:, k]  # column 0 is itself
  fake_radius = np.sort(_pairwise_distances(fake, fake), axis=1)[:, k]
  real_to_fake = _pairwise_distances(real, fake)  # (N, M)
  inside_real = real_to_fake <= real_radius[:, None]
  return {
      'precision': float(np.mean(inside_real.any(axis=0))),
      'recall': float(np.mean((real_to_fake <= fake_radius[None, :]).any(axis=1))),
      'density': float(inside_real.sum() / (k * len(fake))),
      'coverage': float(np.mean(inside_real.any(axis=1))),
  }
