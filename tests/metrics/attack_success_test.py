"""Attack accuracy, KNN distance and PRDC against hand-made cases and float64 brute force."""

import numpy as np
import pytest

from mi_jax.metrics import attack_success as success


def test_attack_accuracy_on_hand_made_logits():
  logits = np.array([[0.0, 5.0, 1.0, 2.0, 3.0, 4.0, -1.0],   # label 1 is top-1
                     [6.0, 5.0, 4.0, 3.0, 2.0, 1.0, 0.0],    # label 4 is 5th: top-5 only
                     [6.0, 5.0, 4.0, 3.0, 2.0, 1.0, 0.0]])   # label 5 is 6th: neither
  top1, top5 = success.attack_accuracy(logits, np.array([1, 4, 5]))
  assert top1 == pytest.approx(1 / 3) and top5 == pytest.approx(2 / 3)
  assert success.attack_accuracy(logits[:, :3], np.array([1, 0, 2])) == (pytest.approx(2 / 3), 1.0)
  with pytest.raises(ValueError, match='target_labels must have shape'):
    success.attack_accuracy(logits, np.array([1, 2]))


def test_knn_distance_is_zero_for_private_images_and_ignores_other_classes():
  rng = np.random.default_rng(0)
  private = rng.normal(size=(30, 8))
  labels = np.repeat(np.arange(3), 10)
  assert success.knn_distance(private[::3], labels[::3], private, labels) == pytest.approx(0.0, abs=1e-9)
  # A reconstruction equal to a private image of ANOTHER class is not at distance 0.
  assert success.knn_distance(private[:1], np.array([1]), private, labels) > 0.1
  recon = rng.normal(size=(5, 8))
  recon_labels = np.array([0, 1, 2, 0, 1])
  brute = np.mean([min(np.sum((r - p) ** 2) for p, l in zip(private, labels) if l == y)
                   for r, y in zip(recon, recon_labels)])
  assert success.knn_distance(recon, recon_labels, private, labels) == pytest.approx(brute, rel=1e-10)
  brute_l2 = np.mean([min(np.sqrt(np.sum((r - p) ** 2)) for p, l in zip(private, labels) if l == y)
                      for r, y in zip(recon, recon_labels)])
  assert success.knn_distance(recon, recon_labels, private, labels, squared=False) == pytest.approx(brute_l2)
  with pytest.raises(ValueError, match='no private image of class 7'):
    success.knn_distance(recon[:1], np.array([7]), private, labels)


def _prdc_brute(real, fake, k):
  def dist(a, b):
    return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
  r_real = np.sort(dist(real, real), 1)[:, k]
  r_fake = np.sort(dist(fake, fake), 1)[:, k]
  d = dist(real, fake)
  precision = np.mean([any(d[i, j] <= r_real[i] for i in range(len(real))) for j in range(len(fake))])
  recall = np.mean([any(d[i, j] <= r_fake[j] for j in range(len(fake))) for i in range(len(real))])
  density = sum(d[i, j] <= r_real[i] for i in range(len(real)) for j in range(len(fake))) / (k * len(fake))
  coverage = np.mean([d[i].min() <= r_real[i] for i in range(len(real))])
  return precision, recall, density, coverage


def test_prdc_matches_brute_force_and_is_perfect_for_a_set_with_itself():
  rng = np.random.default_rng(1)
  real, fake = rng.normal(size=(40, 4)), rng.normal(0.5, 1.5, size=(30, 4))
  got = success.prdc(real, fake, k=5)
  np.testing.assert_allclose([got['precision'], got['recall'], got['density'], got['coverage']],
                             _prdc_brute(real, fake, 5))
  same = success.prdc(real, real, k=5)
  assert same['precision'] == same['recall'] == same['coverage'] == 1.0 and same['density'] >= 1.0
  with pytest.raises(ValueError, match='k must be an integer'):
    success.prdc(real, fake, k=30)
