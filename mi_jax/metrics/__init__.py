"""mi_jax.metrics: how well an attacker reconstructs the private images.

* :mod:`~mi_jax.metrics.image_quality`: per-image PSNR and SSIM on images in
  [0, 1] (dm-pix), chunked means, :func:`to_unit_range` de-normalisation —
  the ``protocol='corrected'`` numbers.
* :mod:`~mi_jax.metrics.fid`: real FID — InceptionV3 pool3 features (the
  TF 2015-12-05 graph, ported) and the Fréchet distance in float64.
* :mod:`~mi_jax.metrics.legacy`: the Sparse-Guard reference code's PSNR,
  SSIM and row-Fréchet numbers, bugs included — ``protocol='sg_legacy'`` only.
"""

from mi_jax.metrics import fid  # the module: fid.fid(images_a, images_b)
from mi_jax.metrics.fid import fid_from_features, frechet_distance, inception_features
from mi_jax.metrics.image_quality import (
    PSNR_CAP_DB,
    QualitySummary,
    mean_psnr_ssim,
    per_image_psnr_ssim,
    psnr,
    ssim,
    summarize,
    to_unit_range,
)
from mi_jax.metrics.legacy import (
    SG_EVAL_SETTINGS,
    LegacySGScores,
    legacy_sg_psnr,
    legacy_sg_row_frechet,
    legacy_sg_scores,
    legacy_sg_ssim,
)

__all__ = [
    'fid',
    'fid_from_features',
    'frechet_distance',
    'inception_features',
    'PSNR_CAP_DB',
    'LegacySGScores',
    'QualitySummary',
    'SG_EVAL_SETTINGS',
    'legacy_sg_psnr',
    'legacy_sg_row_frechet',
    'legacy_sg_scores',
    'legacy_sg_ssim',
    'mean_psnr_ssim',
    'per_image_psnr_ssim',
    'psnr',
    'ssim',
    'summarize',
    'to_unit_range',
]
