"""Per-image reconstruction quality: PSNR and SSIM of images in [0, 1].

For an original x and a reconstruction y, both (H, W, C) with values in [0, 1]
(MAX = 1):

    MSE(x, y)  = (1 / HWC) · Σ_{h,w,c} (x − y)²
    PSNR(x, y) = 10 · log10(MAX² / MSE(x, y))                       [dB]

    SSIM(x, y) = mean over window positions p and channels c of
                 (2 μx μy + C1)(2 σxy + C2) / ((μx² + μy² + C1)(σx² + σy² + C2))

where μ, σ² and σxy are the local means, population variances and covariance
under an 11 × 11 Gaussian window (σ = 1.5, weights summing to 1), C1 =
(0.01 · MAX)² and C2 = (0.03 · MAX)² (Wang et al. 2004). Both metrics come
from dm-pix (``dm_pix.psnr``, ``dm_pix.ssim`` with ``max_val=1``). Lower is a
better defense for both (the attacker reconstructs worse).

SSIM border convention. dm-pix filters 'valid': only the (H − 10) × (W − 10)
window positions whose 11 × 11 window lies wholly inside the image enter the
mean, so images must be at least 11 × 11. scikit-image filters a
reflect-padded image ('same') but then averages its map cropped by the window
radius 5, which keeps exactly those positions; hence

    ssim(x, y) == skimage.metrics.structural_similarity(
        x, y, data_range=1, gaussian_weights=True, sigma=1.5,
        use_sample_covariance=False, channel_axis=-1)

up to float32 rounding, and dm-pix's map equals skimage's ``full=True`` map
cropped ``[5:-5, 5:-5]``. torchmetrics' SSIM (reflect pad, then crop) keeps
the same positions too. Not the same number: the mean of skimage's uncropped
full map, and skimage's defaults (7 × 7 uniform window, sample covariance).

PSNR of identical images is +inf (MSE = 0). :func:`psnr` returns it as is;
:func:`summarize` caps each value at ``psnr_cap_db`` (default 100 dB) before
averaging, so one exact copy cannot make the mean +inf, and reports how many
it capped. 100 dB lies above every finite PSNR between 8-bit images of up to
150k values (the smallest non-zero MSE is (1/255)² / (HWC): 77 dB at 28 × 28),
so there it only replaces exact copies; a float reconstruction within
RMSE 1e-5 of its original is capped too (and counted).
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional, Sequence, Union

import dm_pix
import jax
import jax.numpy as jnp
import numpy as np

# Values may stray this far outside [0, 1] and are then clipped: it absorbs
# float rounding of a de-normalisation (~1e-7) and float16 storage (spacing
# ~5e-4 just below 1.0). Anything beyond is a caller error (e.g. images still
# mean/std-normalised).
RANGE_TOLERANCE = 1e-3
PSNR_CAP_DB = 100.0
SSIM_WINDOW = 11  # dm-pix's filter_size: the smallest image SSIM accepts.
DEFAULT_CHUNK_SIZE = 512

ArrayLike = Union[np.ndarray, jax.Array]


class QualitySummary(NamedTuple):
  """Means of per-image PSNR and SSIM over a set of image pairs."""

  psnr: float  # mean dB, each value capped at psnr_cap_db (unless None)
  ssim: float  # mean SSIM
  n_images: int
  n_psnr_capped: int  # images whose PSNR was above the cap (exact copies)


def _is_concrete(x) -> bool:
  return not isinstance(x, jax.core.Tracer)


def _check_images(x: ArrayLike, name: str) -> None:
  """Rank, dtype and value-range checks for one NHWC image batch in [0, 1]."""
  if x.ndim != 4:
    raise ValueError(f"{name} must have rank 4 (N, H, W, C: NHWC), got shape {tuple(x.shape)}")
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(
        f"{name} must be a floating-point array in [0, 1], got {x.dtype}; "
        "divide uint8 images by 255 first")
  if not _is_concrete(x) or x.size == 0:
    return  # Traced values cannot be inspected; they are only clipped.
  lo, hi = float(jnp.min(x)), float(jnp.max(x))
  if not (math.isfinite(lo) and math.isfinite(hi)):
    raise ValueError(f"{name} contains NaN or inf values")
  if lo < -RANGE_TOLERANCE or hi > 1.0 + RANGE_TOLERANCE:
    raise ValueError(
        f"{name} has values in [{lo:.4g}, {hi:.4g}], outside [0, 1]; "
        "de-normalise first (mi_jax.metrics.to_unit_range)")


def _check_pair(original: ArrayLike, reconstruction: ArrayLike) -> None:
  _check_images(original, 'original')
  _check_images(reconstruction, 'reconstruction')
  if original.shape != reconstruction.shape:
    raise ValueError(
        f"reconstruction has shape {tuple(reconstruction.shape)} but original has shape "
        f"{tuple(original.shape)}; they must match")


def _check_ssim_size(shape: Sequence[int]) -> None:
  h, w = shape[1], shape[2]
  if h < SSIM_WINDOW or w < SSIM_WINDOW:
    raise ValueError(
        f"ssim needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} (its Gaussian window, "
        f"filtered 'valid'), got {h}x{w}")


def _prepare(x: ArrayLike) -> jax.Array:
  # Clip the tolerated rounding excursions so MAX = 1 holds exactly.
  return jnp.clip(jnp.asarray(x, jnp.float32), 0.0, 1.0)


@jax.jit
def _psnr_kernel(a: jax.Array, b: jax.Array) -> jax.Array:
  return dm_pix.psnr(a, b)


@jax.jit
def _ssim_kernel(a: jax.Array, b: jax.Array) -> jax.Array:
  return dm_pix.ssim(a, b, max_val=1.0, filter_size=SSIM_WINDOW, filter_sigma=1.5)


@jax.jit
def _psnr_ssim_kernel(a: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array]:
  return _psnr_kernel(a, b), _ssim_kernel(a, b)


def psnr(original: ArrayLike, reconstruction: ArrayLike) -> jax.Array:
  """Per-image PSNR = 10·log10(1 / MSE) in dB, shape (N,); +inf for exact copies.

  Args:
    original, reconstruction: (N, H, W, C) float images in [0, 1].
  """
  _check_pair(original, reconstruction)
  return _psnr_kernel(_prepare(original), _prepare(reconstruction))


def ssim(original: ArrayLike, reconstruction: ArrayLike) -> jax.Array:
  """Per-image SSIM (11×11 Gaussian window, σ = 1.5, 'valid'), shape (N,).

  See the module docstring for the border convention and the matching
  scikit-image call. Images must be at least 11 × 11.
  """
  _check_pair(original, reconstruction)
  _check_ssim_size(original.shape)
  return _ssim_kernel(_prepare(original), _prepare(reconstruction))


def _check_chunk_size(chunk_size: int) -> None:
  if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
    raise ValueError(f"chunk_size must be an integer >= 1, got {chunk_size!r}")


def per_image_psnr_ssim(
    original: ArrayLike,
    reconstruction: ArrayLike,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> tuple[np.ndarray, np.ndarray]:
  """Per-image PSNR and SSIM as host float64 arrays of shape (N,), in chunks.

  Only ``chunk_size`` image pairs are on the device at a time: SSIM keeps
  about ten filtered copies of each chunk, which for 50k CIFAR-size images
  at once would be several GB. The last chunk is zero-padded to the same
  size so everything runs one compiled program.
  """
  _check_chunk_size(chunk_size)
  if original.ndim != 4 or reconstruction.ndim != 4 or original.shape != reconstruction.shape:
    _check_pair(original, reconstruction)  # Raises the precise message.
  _check_ssim_size(original.shape)
  n = original.shape[0]
  psnrs, ssims = [], []
  for start in range(0, n, chunk_size):
    a, b = original[start:start + chunk_size], reconstruction[start:start + chunk_size]
    _check_pair(a, b)
    a, b = _prepare(a), _prepare(b)
    pad = chunk_size - a.shape[0] if n > chunk_size else 0
    if pad:
      widths = ((0, pad), (0, 0), (0, 0), (0, 0))
      a, b = jnp.pad(a, widths), jnp.pad(b, widths)
    p, s = _psnr_ssim_kernel(a, b)
    keep = a.shape[0] - pad
    psnrs.append(np.asarray(p[:keep], np.float64))
    ssims.append(np.asarray(s[:keep], np.float64))
  empty = np.zeros((0,), np.float64)
  return (np.concatenate(psnrs) if psnrs else empty, np.concatenate(ssims) if ssims else empty)


def summarize(
    psnr_values: ArrayLike,
    ssim_values: ArrayLike,
    *,
    psnr_cap_db: Optional[float] = PSNR_CAP_DB,
) -> QualitySummary:
  """Means of per-image values: mean(min(PSNR_i, cap)) and mean(SSIM_i).

  ``psnr_cap_db=None`` keeps +inf, so one exact copy makes the mean +inf.
  Means accumulate in float64.
  """
  p = np.asarray(psnr_values, np.float64).reshape(-1)
  s = np.asarray(ssim_values, np.float64).reshape(-1)
  if p.shape != s.shape:
    raise ValueError(f"psnr_values has {p.size} values but ssim_values has {s.size}; they must match")
  if p.size == 0:
    raise ValueError("summarize needs at least one image, got 0")
  if psnr_cap_db is not None and not (isinstance(psnr_cap_db, (int, float)) and math.isfinite(psnr_cap_db)):
    raise ValueError(f"psnr_cap_db must be a finite number or None, got {psnr_cap_db!r}")
  n_capped = 0
  if psnr_cap_db is not None:
    n_capped = int(np.sum(p > psnr_cap_db))
    p = np.minimum(p, float(psnr_cap_db))
  return QualitySummary(
      psnr=float(np.mean(p)), ssim=float(np.mean(s)), n_images=int(p.size), n_psnr_capped=n_capped)


def mean_psnr_ssim(
    original: ArrayLike,
    reconstruction: ArrayLike,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    psnr_cap_db: Optional[float] = PSNR_CAP_DB,
) -> QualitySummary:
  """Mean per-image PSNR (capped, see :func:`summarize`) and SSIM over N pairs, in chunks."""
  p, s = per_image_psnr_ssim(original, reconstruction, chunk_size=chunk_size)
  return summarize(p, s, psnr_cap_db=psnr_cap_db)


def _per_channel(value, name: str, n_channels: int) -> np.ndarray:
  v = np.asarray(value, np.float64).reshape(-1)
  if v.size not in (1, n_channels):
    raise ValueError(
        f"{name} has {v.size} values but images have {n_channels} channels (last axis, NHWC)")
  if not np.all(np.isfinite(v)):
    raise ValueError(f"{name} must be finite, got {value!r}")
  return v


def to_unit_range(images: ArrayLike, *, mean, std) -> jax.Array:
  """De-normalise x_n = (x − mean) / std back to x = x_n · std + mean, clipped to [0, 1].

  ``mean`` and ``std`` are scalars or per-channel sequences (channels last),
  e.g. MNIST's ``mean=0.1307, std=0.3081`` or CIFAR-10's three-value pairs.
  The clip makes unbounded attacker outputs valid inputs of :func:`psnr` /
  :func:`ssim` (a reconstruction cannot score better by leaving the range).
  Returns float32.
  """
  x = jnp.asarray(images)
  if x.ndim < 1:
    raise ValueError(f"images must have a channel axis (last), got shape {tuple(x.shape)}")
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(f"images must be a floating-point (normalised) array, got {x.dtype}")
  c = x.shape[-1]
  m = _per_channel(mean, 'mean', c)
  s = _per_channel(std, 'std', c)
  if np.any(s <= 0):
    raise ValueError(f"std must be > 0 for every channel, got {std!r}")
  out = x.astype(jnp.float32) * jnp.asarray(s, jnp.float32) + jnp.asarray(m, jnp.float32)
  return jnp.clip(out, 0.0, 1.0)
