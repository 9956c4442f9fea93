"""The Sparse-Guard reference code's PSNR, SSIM and row-Fréchet numbers (``protocol='sg_legacy'``).

Reproduces what the SG code computes, bugs included (docs/fidelity.md #2, #3),
so its tables can be set beside the corrected numbers of
:mod:`mi_jax.metrics.image_quality`. Never use these as quality metrics.

Followed: github lanl/sparse-guard @ 13776ad, ``MNIST/mnist_sparse_guard.py``,
function ``attack_test``, with ``calculate_fid`` from the same file (the same
metric lines are in every MNIST/ and FMNIST/ script); and the torchmetrics
it calls, read at v1.1.2 = v1.2.0 (the releases of September 2023, when the
SG code was published): ``functional/image/psnr.py`` (``_psnr_update``,
``_psnr_compute``), ``image/psnr.py`` (``PeakSignalNoiseRatio.update`` /
``compute``), ``functional/image/ssim.py`` (``_ssim_update``),
``image/ssim.py`` (``StructuralSimilarityIndexMeasure.update`` /
``compute``) and ``functional/image/helper.py`` (``_gaussian``,
``_gaussian_kernel_2d``).

The scripts differ in two settings (:data:`SG_EVAL_SETTINGS`): the LCA ones
(``*sparse_guard.py``, ``*sparse_standard.py``, ``etn_standard_sparse.py``)
cast data and models to float16 and attack in batches of 32; the baselines
(``*no_def.py``, ``*gaussiannoise.py``, ``*laplacenoise.py``, ``*gan*.py``)
stay float32 with batches of 64. Per DataLoader batch of shuffled training
images x, ``Normalize(0.1307, 0.3081)``-normalised, and the attacker's output
y, in that dtype:

* ``PeakSignalNoiseRatio()(data, recreated_data)``: y is torchmetrics'
  *target*, so the range comes from the reconstruction, and the min/max
  states start at 0:

      R   = max(max y, 0) − min(min y, 0)
      SSE = Σ (x − y)²        (in float16: float32 accumulate, result rounded,
                               so > 65504 → inf and squares < 6e-8 → 0)
      PSNR_batch = 10 · log10(R² / (SSE / n)),   n = every value in the batch

  one number per batch from the pooled MSE, not a mean of per-image PSNRs.
* ``StructuralSimilarityIndexMeasure(data_range=1.0)(data, recreated_data)``:
  standard SSIM (11 × 11 Gaussian, σ = 1.5, reflect pad then crop = 'valid',
  population variances) but with C1 = 1e-4, C2 = 9e-4 for range 1 on
  normalised values spanning ≈ 3.2, every step in the batch's dtype (the
  Gaussian kernel included); per-image means averaged over the batch.
* ``calculate_fid(int_data[0][0], int_recon[0][0])``: each batch is min-max
  scaled to [0, 255] over the whole batch (in its dtype, then ``.to(uint8)``
  truncates); of image 0, channel 0 the H rows are taken as H samples of a
  W-dimensional feature, and

      d = ‖μ1 − μ2‖² + tr(Σ1 + Σ2 − 2 · Re sqrtm(Σ1 Σ2))

  with row means μ and ``numpy.cov(rowvar=False)`` (ddof = 1) covariances,
  ``scipy.linalg.sqrtm``. The SCA copy (mariamsaed19/SCA-code-modified)
  divides it by 1000 (``divide_by``). This is not FID; we never call it so.
* The reported number is ``Average(list) = sum / len`` over batches. The
  guards ``if psnr_val == '-inf'`` / ``if fid_val == 'nan'`` compare a float
  with a string and never fire, so one −inf or NaN batch carries into it.

Emulation: numpy on the host, each float16 operation computed in float32 and
rounded to float16 as torch's half kernels do (XLA may keep excess precision
in fused float16 code, which is why this is not JAX). Reductions accumulate
in float32; their order (cuDNN's for the convolution) is not reproduced bit
for bit, nor is TF32, which PyTorch lets float32 convolutions use by default
on Ampere-class GPUs. ``scipy.linalg.sqrtm`` of the (often singular) row
covariance products varies across SciPy versions at the 1e-4 level. Layout
is mi_jax's NHWC: the SG code's ``t[0][0]`` (NCHW) is ``t[0, :, :, 0]`` here.
"""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import numpy as np
import scipy.linalg

DTYPES = ('float16', 'float32')
# batch_size_train (the attacked training set's loader) and the cast of each
# family of SG scripts; see the module docstring.
SG_EVAL_SETTINGS = {
    'sparse_guard': {'batch_size': 32, 'dtype': 'float16'},
    'sparse_standard': {'batch_size': 32, 'dtype': 'float16'},
    'no_def': {'batch_size': 64, 'dtype': 'float32'},
    'gaussiannoise': {'batch_size': 64, 'dtype': 'float32'},
    'laplacenoise': {'batch_size': 64, 'dtype': 'float32'},
    'gan': {'batch_size': 64, 'dtype': 'float32'},
}
_KERNEL_SIZE = 11  # torchmetrics: int(3.5 · σ + 0.5) · 2 + 1 for σ = 1.5.
_SIGMA = 1.5


class LegacySGScores(NamedTuple):
  """The SG code's averages over batches, and the per-batch values behind them."""

  psnr: float
  ssim: float
  row_frechet: float
  n_batches: int
  psnr_per_batch: np.ndarray
  ssim_per_batch: np.ndarray
  row_frechet_per_batch: np.ndarray


def _rounder(dtype):
  """r(v): v computed in the op dtype (float32 for half) rounded to ``dtype``, kept in the op dtype.

  float16 mirrors torch's half kernels (float32 math, result rounded to half
  per op); float32 is torch's float32; float64 is the exact-arithmetic
  version the tests compare with standard implementations.
  """
  dtype = np.dtype(dtype).type
  work = np.float64 if dtype == np.float64 else np.float32

  def r(v):
    with np.errstate(over='ignore'):  # fp16 overflow to inf is part of the behaviour.
      return np.asarray(v, work).astype(dtype).astype(work)

  return r, work


def _as_batch(x, name: str) -> np.ndarray:
  x = np.asarray(x)
  if x.ndim != 4:
    raise ValueError(f"{name} must have rank 4 (N, H, W, C: NHWC), got shape {x.shape}")
  if not np.issubdtype(x.dtype, np.floating):
    raise ValueError(f"{name} must be a floating-point (normalised) array, got {x.dtype}")
  if x.shape[0] == 0:
    raise ValueError(f"{name} must hold at least one image, got shape {x.shape}")
  return x


def _check_dtype(dtype) -> None:
  if dtype not in DTYPES:
    raise ValueError(f"dtype must be one of {DTYPES} (see SG_EVAL_SETTINGS), got {dtype!r}")


def _as_pair(original, reconstruction) -> tuple[np.ndarray, np.ndarray]:
  x, y = _as_batch(original, 'original'), _as_batch(reconstruction, 'reconstruction')
  if x.shape != y.shape:
    raise ValueError(
        f"reconstruction has shape {y.shape} but original has shape {x.shape}; they must match")
  return x, y


def _torchmetrics_psnr(x, y, dtype=np.float16) -> float:
  """PeakSignalNoiseRatio()(x, y).item() on one batch: data_range=None, dim=None."""
  r, work = _rounder(dtype)
  x, y = r(x), r(y)
  sse = r(np.sum(r(r(x - y) ** 2), dtype=work))  # torch.sum(torch.pow(preds − target, 2))
  # min_target / max_target states default to tensor(0.0); states and the
  # compute step are float32 (work) whatever the inputs' dtype.
  lo = np.minimum(np.min(y), 0.0).astype(work)
  hi = np.maximum(np.max(y), 0.0).astype(work)
  n = work(y.size)
  with np.errstate(divide='ignore', invalid='ignore'):
    psnr_base_e = 2 * np.log(hi - lo) - np.log(work(sse) / n)
    return float(work(psnr_base_e * work(10 / np.log(work(10.0)))))


def _gaussian_kernel_2d(r) -> np.ndarray:
  """helper._gaussian_kernel_2d in the metric's dtype: 1-D steps rounded, then the outer product."""
  dist = r(np.arange(-(_KERNEL_SIZE // 2), _KERNEL_SIZE // 2 + 1))
  gauss = r(np.exp(r(-r(r(dist / _SIGMA) ** 2) / 2)))
  gauss = r(gauss / r(np.sum(gauss)))
  return r(np.outer(gauss, gauss))


def _filter_valid(z: np.ndarray, kernel: np.ndarray, r) -> np.ndarray:
  """Per-channel 2-D correlation over the 'valid' positions of NHWC z (= pad reflect + crop)."""
  windows = np.lib.stride_tricks.sliding_window_view(z, kernel.shape, axis=(1, 2))
  return r(np.einsum('nhwcij,ij->nhwc', windows, kernel))


def _torchmetrics_ssim_per_image(x, y, dtype=np.float16) -> np.ndarray:
  """_ssim_update(x, y, data_range=1.0) for one batch: per-image means, shape (N,)."""
  r, work = _rounder(dtype)
  x, y = r(x), r(y)
  c1, c2 = (0.01 * 1.0) ** 2, (0.03 * 1.0) ** 2
  kernel = _gaussian_kernel_2d(r)
  mu_x, mu_y, e_xx, e_yy, e_xy = (
      _filter_valid(z, kernel, r) for z in (x, y, r(x * x), r(y * y), r(x * y)))
  mu_x_sq, mu_y_sq, mu_xy = r(mu_x ** 2), r(mu_y ** 2), r(mu_x * mu_y)
  sigma_x_sq, sigma_y_sq, sigma_xy = r(e_xx - mu_x_sq), r(e_yy - mu_y_sq), r(e_xy - mu_xy)
  upper = r(r(2 * sigma_xy) + c2)
  lower = r(r(sigma_x_sq + sigma_y_sq) + c2)
  numerator = r(r(r(2 * mu_xy) + c1) * upper)
  denominator = r(r(r(mu_x_sq + mu_y_sq) + c1) * lower)
  with np.errstate(divide='ignore', invalid='ignore'):
    ssim_map = r(numerator / denominator)
  return r(np.mean(ssim_map.reshape(ssim_map.shape[0], -1), axis=-1, dtype=work))


def _torchmetrics_ssim(x, y, dtype=np.float16) -> float:
  """StructuralSimilarityIndexMeasure(data_range=1.0)(x, y).item(): float32 state / count."""
  r, work = _rounder(dtype)
  per_image = _torchmetrics_ssim_per_image(x, y, dtype)
  similarity = work(r(np.sum(per_image, dtype=work)))  # float32 state += half sum
  return float(similarity / work(per_image.shape[0]))


def _check_ssim_size(shape) -> None:
  if shape[1] < _KERNEL_SIZE or shape[2] < _KERNEL_SIZE:
    raise ValueError(
        f"legacy_sg_ssim needs images of at least {_KERNEL_SIZE}x{_KERNEL_SIZE}, "
        f"got {shape[1]}x{shape[2]}")


def legacy_sg_psnr(original, reconstruction, *, dtype: str = 'float16') -> float:
  """The SG code's PSNR of one batch (see module docstring), on normalised NHWC tensors.

  R = max(max y, 0) − min(min y, 0) from the reconstruction y;
  PSNR = 10·log10(R² / (SSE/n)) with SSE summed over the whole batch in
  ``dtype`` (float16 for the SG defenses, float32 for its baselines).
  """
  _check_dtype(dtype)
  x, y = _as_pair(original, reconstruction)
  return _torchmetrics_psnr(x, y, dtype)


def legacy_sg_ssim(original, reconstruction, *, dtype: str = 'float16') -> float:
  """The SG code's SSIM of one batch: data_range = 1.0 on normalised tensors.

  Standard SSIM formula (C1 = 1e-4, C2 = 9e-4, 11×11 Gaussian σ = 1.5,
  'valid'), every operation rounded to ``dtype``, mean over the batch.
  """
  _check_dtype(dtype)
  x, y = _as_pair(original, reconstruction)
  _check_ssim_size(x.shape)
  return _torchmetrics_ssim(x, y, dtype)


def _sg_uint8(batch: np.ndarray, dtype: str = 'float16') -> np.ndarray:
  """(t − min t) / (max t − min t) · 255 over the whole batch in ``dtype``, then .to(uint8)."""
  r, _ = _rounder(dtype)
  t = r(batch)
  lo, hi = np.min(t), np.max(t)
  with np.errstate(divide='ignore', invalid='ignore'):
    scaled = r(r(r(t - lo) / r(hi - lo)) * 255)
  # float → uint8 truncates toward zero. A constant batch gives 0/0 = NaN,
  # whose cast torch leaves undefined; we take 0.
  return np.trunc(np.nan_to_num(scaled, nan=0.0)).astype(np.uint8)


def _row_frechet(act1: np.ndarray, act2: np.ndarray) -> float:
  """calculate_fid(act1, act2): rows of each (H, W) matrix are the samples."""
  mu1, sigma1 = act1.mean(axis=0), np.cov(act1, rowvar=False)
  mu2, sigma2 = act2.mean(axis=0), np.cov(act2, rowvar=False)
  ssdiff = np.sum((mu1 - mu2) ** 2.0)
  with warnings.catch_warnings():
    # H rows rarely give full-rank W×W covariances; the SG code ran on through
    # scipy's "matrix is singular" warning, and so do we, quietly.
    warnings.simplefilter('ignore', scipy.linalg.LinAlgWarning)
    covmean = scipy.linalg.sqrtm(sigma1.dot(sigma2))
  if np.iscomplexobj(covmean):
    covmean = covmean.real
  return float(ssdiff + np.trace(sigma1 + sigma2 - 2.0 * covmean))


def legacy_sg_row_frechet(
    original, reconstruction, *, dtype: str = 'float16', divide_by: float = 1.0,
) -> float:
  """The SG code's "FID" of one batch — a Fréchet distance between image rows, not FID.

  Both batches are min-max scaled to uint8 (each over its whole batch); the H
  rows of channel 0 of image 0 are H samples of a W-d feature:
  d = ‖μ1 − μ2‖² + tr(Σ1 + Σ2 − 2·Re sqrtm(Σ1Σ2)), divided by ``divide_by``
  (1000 in the SCA copy's scripts). Every other image matters only through
  the batch min and max.
  """
  _check_dtype(dtype)
  x, y = _as_pair(original, reconstruction)
  if not (isinstance(divide_by, (int, float)) and math.isfinite(divide_by) and divide_by > 0):
    raise ValueError(f"divide_by must be a finite number > 0, got {divide_by!r}")
  a, b = _sg_uint8(x, dtype)[0, :, :, 0], _sg_uint8(y, dtype)[0, :, :, 0]
  value = _row_frechet(a, b)
  return value / divide_by if divide_by != 1 else value


def _sg_average(values: list[float]) -> float:
  # Average(lst) = sum(lst) / len(lst): left-to-right float sums, no NaN/inf guard.
  return sum(values) / len(values)


def legacy_sg_scores(
    original,
    reconstruction,
    *,
    batch_size: int,
    dtype: str,
    divide_by: float = 1.0,
) -> LegacySGScores:
  """The three SG numbers for a whole attacked set, batch by batch as ``attack_test`` does.

  ``batch_size`` and ``dtype`` have no defaults because the SG scripts
  differ: take them from :data:`SG_EVAL_SETTINGS` for the script being
  reproduced (32/'float16' for Sparse-Guard itself, 64/'float32' for the
  baselines). Batches are consecutive slices (the last may be short). The SG
  loader shuffles, and PSNR and row-Fréchet depend on which images share a
  batch: shuffle both arrays the same way first to mimic it.
  """
  _check_dtype(dtype)
  x, y = _as_pair(original, reconstruction)
  if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
    raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
  _check_ssim_size(x.shape)
  psnrs, ssims, frechets = [], [], []
  for start in range(0, x.shape[0], batch_size):
    a, b = x[start:start + batch_size], y[start:start + batch_size]
    psnrs.append(legacy_sg_psnr(a, b, dtype=dtype))
    ssims.append(legacy_sg_ssim(a, b, dtype=dtype))
    frechets.append(legacy_sg_row_frechet(a, b, dtype=dtype, divide_by=divide_by))
  return LegacySGScores(
      psnr=_sg_average(psnrs),
      ssim=_sg_average(ssims),
      row_frechet=_sg_average(frechets),
      n_batches=len(psnrs),
      psnr_per_batch=np.asarray(psnrs),
      ssim_per_batch=np.asarray(ssims),
      row_frechet_per_batch=np.asarray(frechets),
  )
