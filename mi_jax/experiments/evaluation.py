"""How the experiments score reconstructions: one module for the judge
(the independent evaluation classifier), attack accuracy, KNN distance,
PSNR/SSIM (and the SG code's own numbers under ``sg_legacy``), FID and KID.

Every score is computed on the whole private set the attack targeted,
against images in [0, 1]; see docs/metrics.md for the definitions.
"""

from __future__ import annotations

import os
from typing import Optional

import numpy as np

from mi_jax import data as mi_data
from mi_jax import judge as judge_lib
from mi_jax.metrics import attack_success, fid as fid_lib, kid as kid_lib
from mi_jax.metrics.image_quality import mean_psnr_ssim
from mi_jax.metrics.legacy import SG_EVAL_SETTINGS, legacy_sg_scores


def load_judge(dataset: str, *, workdir: str, scale: str, seed: int, data_dir, mesh, root: Optional[str] = None):
  """The evaluation classifier of :mod:`mi_jax.judge` (trained on first use under ``root``,
  default ``<workdir>/judge``)."""
  return judge_lib.load_or_train_judge(dataset, root=root or os.path.join(workdir, 'judge'), mesh=mesh,
                                       scale=scale, seed=seed, data_dir=data_dir)


def judge_scores(judge, reconstructions, labels, reference_features, reference_labels) -> dict:
  """Attack accuracy (the judge's top-1/top-5 on the reconstructions, against the
  attacked labels) and the KNN distance to the private images of the same label
  in the judge's feature space (``reference_features``)."""
  top1, top5 = attack_success.attack_accuracy(np.asarray(judge.logits(reconstructions)), labels)
  knn = attack_success.knn_distance(np.asarray(judge.features(reconstructions)), labels, reference_features,
                                    reference_labels)
  return {'attack_top1': float(top1), 'attack_top5': float(top5), 'knn_distance': float(knn)}


def surrogate_scores(originals, attack, *, labels, protocol: str, normalization, seed: int, legacy_script: str,
                     judge=None, judged_private=None, judged_labels=None) -> dict:
  """The metrics of one surrogate attack's reconstructions of the private set.

  ``originals``: the attacked private images in [0, 1], labelled ``labels``;
  ``attack``: an :class:`mi_jax.attacks.surrogate.AttackResult`.
  ``judged_private``: the judge's features of the private images the KNN
  distance searches, labelled ``judged_labels`` (default: ``labels``, when
  they are the attacked images themselves); the whole private set when only
  a subset is attacked, as KNN distance is defined (GMI: the nearest
  private image of the class). Under ``sg_legacy`` the
  row's 'psnr'/'ssim' are the SG code's own numbers (on Normalize()d
  tensors, float16 or float32 and batch 32 or 64 as the defense's script
  does: ``legacy_script``), with the [0, 1] ones beside them.
  """
  quality = mean_psnr_ssim(originals, attack.reconstructions)
  baseline = mean_psnr_ssim(originals, attack.untrained_reconstructions)
  scores = {'psnr': quality.psnr, 'ssim': quality.ssim,
            'psnr_untrained_decoder': baseline.psnr, 'ssim_untrained_decoder': baseline.ssim}
  if protocol == 'sg_legacy':
    mean, std = normalization
    # The SG scripts score shuffled DataLoader batches.
    order = np.random.default_rng([seed, 2]).permutation(len(originals))
    legacy = legacy_sg_scores((originals[order] - mean) / std, attack.normalized_reconstructions[order],
                              **SG_EVAL_SETTINGS[legacy_script])
    scores.update({'psnr': legacy.psnr, 'ssim': legacy.ssim, 'sg_row_frechet': legacy.row_frechet,
                   'psnr_unit_range': quality.psnr, 'ssim_unit_range': quality.ssim})
  if judge is not None:
    # Every attacked image is an attacked instance of its own label.
    reference_labels = labels if judged_labels is None else judged_labels
    scores.update(judge_scores(judge, attack.reconstructions, labels, judged_private, reference_labels))
  return scores


def fid_of(originals, reconstructions, *, batch_size: int, weights_path, mesh) -> float:
  """FID between the private images and their reconstructions (InceptionV3 pool features)."""
  return fid_lib.fid(originals, reconstructions, batch_size=batch_size, weights_path=weights_path, mesh=mesh)


def gan_attack_scores(reconstructions, labels, private_images, private_labels, *, judge, judge_note, fid: bool,
                      fid_private_limit, fid_batch_size: int, kid_subsets: int, kid_subset_size: int, seed: int,
                      mesh, cache: dict, unoptimized=None) -> dict:
  """Attack accuracy top-1/top-5, KNN distance, FID and KID of a GAN-prior
  attack (None with a note when unavailable).

  ``unoptimized``: the generator's images before any target-guided step,
  one per reconstruction (same ``labels``); the judge's top-1/top-5 on them
  is the baseline. ``cache`` keeps the private set's judge and Inception
  features across the rows of one run (they do not depend on the defense
  or the attack). FID and KID share one Inception pass per image set.
  """
  private = private_images.astype(np.float32) / 255.0
  out = {'attack_top1': None, 'attack_top5': None, 'attack_top1_unoptimized': None,
         'attack_top5_unoptimized': None, 'knn_distance': None, 'fid': None, 'kid': None, 'kid_std': None,
         'judge': None, 'judge_test_accuracy': None}
  if judge is None:
    out['evaluation_note'] = judge_note
  else:
    if 'judge_features' not in cache:
      cache['judge_features'] = np.asarray(judge.features(private))
    out.update(judge_scores(judge, reconstructions, labels, cache['judge_features'], private_labels),
               judge=judge.name, judge_test_accuracy=float(judge.test_accuracy))
    if unoptimized is not None:
      base1, base5 = attack_success.attack_accuracy(np.asarray(judge.logits(unoptimized)), labels)
      out.update(attack_top1_unoptimized=float(base1), attack_top5_unoptimized=float(base5))
  if not fid:
    out['fid_note'] = 'FID and KID disabled (evaluation.fid=False)'
    return out
  from mi_jax.weights import WeightsUnavailableError
  try:
    if 'inception_private' not in cache:
      limit = fid_private_limit
      reference = private if limit is None or limit >= len(private) else private[
          mi_data.stratified_subsample(private_labels, limit, seed=seed, salt=14,
                                       field='evaluation.fid_private_limit')]
      cache['inception_private'] = fid_lib.inception_features(reference, batch_size=fid_batch_size, mesh=mesh)
    reference = cache['inception_private']
    recon_features = fid_lib.inception_features(reconstructions, batch_size=fid_batch_size, mesh=mesh)
    out['fid'] = float(fid_lib.fid_from_features(reference, recon_features))
    out['fid_n'] = [int(len(reference)), int(len(recon_features))]
    kid = kid_lib.kid_from_features(reference, recon_features, subsets=kid_subsets, subset_size=kid_subset_size,
                                    seed=seed)
    out.update(kid=kid.mean, kid_std=kid.std, kid_subset_size=kid.subset_size, kid_subsets=kid.subsets)
  except WeightsUnavailableError as error:
    out['fid_note'] = f"InceptionV3 weights unavailable (no FID or KID): {error}"
  return out
