"""Batch estimators of statistical dependence between two samples x, y of n
paired rows (x: (n, d_x), y: (n, d_y); flatten images first).

Distance correlation (Székely, Rizzo & Bakirov 2007), the NoPeek
regulariser (Vepakomma et al. 2020; Titcombe et al. 2021):

    a_ij = ‖x_i − x_j‖,  A = a − ā_i· − ā_·j + ā_··   (double centring)
    dCov²(x, y) = (1/n²) Σ_ij A_ij B_ij
    dCor(x, y)  = sqrt( dCov²(x, y) / sqrt(dCov²(x, x) · dCov²(y, y)) ) ∈ [0, 1]

with Euclidean, not squared, distances (fidelity.md #11: Titcombe's code
squares them, which makes "dCor" a function of the linear correlation only).

HSIC (Gretton et al. 2005), with centred kernel matrices K̃ = H K H,
H = I − 11ᵀ/n:

    biased:      HSIC(x, y) = tr(K̃ L̃) / (n − 1)²
    normalized:  tr(K̃ L̃) / sqrt(tr(K̃ K̃) · tr(L̃ L̃)) ∈ [0, 1]  (centred kernel
                 alignment, Cortes et al. 2012)
    nocco:       tr(R_x R_y),  R_x = K̃(K̃ + nεI)⁻¹, R_y = L̃(L̃ + nεI)⁻¹
                 (normalised cross-covariance, Fukumizu et al. 2008)

NOCCO is the estimator of the BiDO code (Peng et al. 2022,
``AlanPeng0897/Defend_MI``, ``BiDO/hsic.py`` ``hsic_normalized_cca``, ε =
1e-5; it centres one side only, K H, which gives the same value because H is
idempotent and R = K H (K H + nεI)⁻¹ satisfies R H = R). With
R = K̃(K̃ + nεI)⁻¹ the estimate is tr(R_x R_y): each R is a soft projector
whose eigenvalues λ/(λ + nε) count the kernel's eigenvalues above nε. Its
size therefore depends on the bandwidth. With median-heuristic kernels
almost every centred eigenvalue exceeds nε, both R are ≈ H and the estimate
saturates near n − 1 whatever the dependence (measured, n = 64, x ∈ R²⁰,
y ∈ R¹⁰: 61.2 independent, 58.8 linearly dependent). With the BiDO code's
wide fixed kernel (σ = 5·√d, see :mod:`mi_jax.defenses.bido`) only the
leading eigenvalues do, and the same samples give 20.1 and 33.4. Even then
it is an effective-rank measure more than a dependence test when n is
small next to d (32 MNIST images against a random MLP's first layer: 24.15
paired, 24.03 with the pairs shuffled).

COCO, the constrained covariance (Gretton et al. 2005):

    COCO(x, y) = (1/n) · sqrt(‖K̃ L̃‖₂)   (spectral norm)

(the BiDO code's ``coco_normalized_cca`` takes the Frobenius norm instead,
which is ≥ the spectral one; we keep Gretton's definition).

Gaussian kernels k(a, b) = exp(−‖a − b‖² / 2σ²) with σ from the median
heuristic (median pairwise distance, held constant under differentiation),
or a fixed σ. They are centred as H·expm1(−‖a − b‖²/2σ²)·H, equal to H K H
since H annihilates the constant, and accurate when a wide σ puts every
entry near 1. The linear kernel k(a, b) = a·b is the natural one for one-hot
labels ([y_i = y_j]), and what the BiDO code uses for y by default.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

KERNELS = ('gaussian', 'linear')
HSIC_ESTIMATORS = ('biased', 'normalized', 'nocco')
_HIGHEST = jax.lax.Precision.HIGHEST  # TPUs multiply in bfloat16 by default


def _as_matrix(x: jax.Array, name: str) -> jax.Array:
  if x.ndim < 1:
    raise ValueError(f"{name} must have a leading sample axis, got shape {x.shape}")
  return x.reshape(x.shape[0], -1).astype(jnp.float32)


def squared_distances(x: jax.Array) -> jax.Array:
  """‖x_i − x_j‖² for the rows of x (n, d), clipped at 0, zero diagonal."""
  sq = jnp.sum(x * x, axis=1)
  gram = jnp.matmul(x, x.T, precision=_HIGHEST)
  d2 = jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * gram, 0.0)
  return d2 * (1.0 - jnp.eye(x.shape[0], dtype=d2.dtype))


def _safe_sqrt(v: jax.Array) -> jax.Array:
  """sqrt with a zero (not NaN) gradient at 0, e.g. on the distance diagonal."""
  positive = v > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, v, 1.0)), 0.0)


def _double_centre(a: jax.Array) -> jax.Array:
  return a - a.mean(axis=0, keepdims=True) - a.mean(axis=1, keepdims=True) + a.mean()


def distance_correlation(x: jax.Array, y: jax.Array) -> jax.Array:
  """Sample distance correlation dCor(x, y) ∈ [0, 1] (0 if either is constant)."""
  x, y = _as_matrix(x, 'x'), _as_matrix(y, 'y')
  if x.shape[0] != y.shape[0]:
    raise ValueError(f"x and y must have the same number of rows, got {x.shape[0]} and {y.shape[0]}")
  a = _double_centre(_safe_sqrt(squared_distances(x)))
  b = _double_centre(_safe_sqrt(squared_distances(y)))
  dcov2_xy = jnp.maximum(jnp.mean(a * b), 0.0)
  dvar2 = jnp.mean(a * a) * jnp.mean(b * b)
  dcor2 = jnp.where(dvar2 > 0, dcov2_xy / _safe_sqrt(dvar2 + (dvar2 <= 0)), 0.0)
  return _safe_sqrt(jnp.minimum(dcor2, 1.0))


def median_bandwidth(x: jax.Array) -> jax.Array:
  """σ = median of the pairwise distances ‖x_i − x_j‖, i < j (no gradient).

  Floored at 1e-2 like the BiDO code's ``sigma_estimation`` (its fallback
  for collapsed features)."""
  x = _as_matrix(x, 'x')
  n = x.shape[0]
  rows, cols = jnp.triu_indices(n, k=1)
  d = jnp.sqrt(squared_distances(jax.lax.stop_gradient(x))[rows, cols])
  return jnp.maximum(jnp.median(d), 1e-2)


def _gaussian_exponent(x: jax.Array, sigma: Optional[float]) -> jax.Array:
  """−‖x_i − x_j‖² / 2σ², σ fixed or the median heuristic if None."""
  s = median_bandwidth(x) if sigma is None else sigma
  return -squared_distances(x) / (2.0 * s * s)


def kernel_matrix(x: jax.Array, *, kernel: str = 'gaussian', sigma: Optional[float] = None) -> jax.Array:
  """K_ij = k(x_i, x_j): Gaussian (σ fixed, or the median heuristic if None) or linear."""
  x = _as_matrix(x, 'x')
  if kernel == 'gaussian':
    return jnp.exp(_gaussian_exponent(x, sigma))
  if kernel == 'linear':
    return jnp.matmul(x, x.T, precision=_HIGHEST)
  raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")


def _centre(k: jax.Array) -> jax.Array:
  """H K H with H = I − 11ᵀ/n."""
  return _double_centre(k)


def _centred_kernel(x, kernel, sigma):
  """H K H. For the Gaussian kernel, H (K − 11ᵀ) H with K − 11ᵀ = expm1(·):
  a wide kernel (the BiDO code's σ = 5·√d) has entries within ~1e-3 of 1,
  and centring exp(·) in float32 would cancel most of their digits."""
  if kernel == 'gaussian':
    return _centre(jnp.expm1(_gaussian_exponent(x, sigma)))
  return _centre(kernel_matrix(x, kernel=kernel, sigma=sigma))


def _pair(x, y, kernel_x, kernel_y, sigma_x, sigma_y):
  x, y = _as_matrix(x, 'x'), _as_matrix(y, 'y')
  if x.shape[0] != y.shape[0]:
    raise ValueError(f"x and y must have the same number of rows, got {x.shape[0]} and {y.shape[0]}")
  if x.shape[0] < 2:
    raise ValueError(f"dependence estimators need at least 2 samples, got {x.shape[0]}")
  return _centred_kernel(x, kernel_x, sigma_x), _centred_kernel(y, kernel_y, sigma_y)


def hsic(x: jax.Array, y: jax.Array, *, kernel_x: str = 'gaussian', kernel_y: str = 'gaussian',
         sigma_x: Optional[float] = None, sigma_y: Optional[float] = None,
         estimator: str = 'biased', epsilon: float = 1e-5) -> jax.Array:
  """HSIC(x, y) ≥ 0: 'biased' (Gretton et al. 2005), 'normalized' (CKA, in
  [0, 1]) or 'nocco' (the BiDO code's ``hsic_normalized_cca``, ≤ n − 1)."""
  kx, ky = _pair(x, y, kernel_x, kernel_y, sigma_x, sigma_y)
  n = kx.shape[0]
  if estimator == 'biased':
    return jnp.sum(kx * ky) / (n - 1) ** 2
  if estimator == 'normalized':
    norms = jnp.sum(kx * kx) * jnp.sum(ky * ky)
    return jnp.where(norms > 0, jnp.sum(kx * ky) / _safe_sqrt(jnp.where(norms > 0, norms, 1.0)), 0.0)
  if estimator == 'nocco':
    ridge = n * epsilon * jnp.eye(n, dtype=kx.dtype)
    # R = K̃ (K̃ + nεI)⁻¹ = (K̃ + nεI)⁻¹ K̃ (they commute), solved, not inverted.
    rx = jnp.linalg.solve(kx + ridge, kx)
    ry = jnp.linalg.solve(ky + ridge, ky)
    return jnp.sum(rx * ry.T)
  raise ValueError(f"estimator must be one of {HSIC_ESTIMATORS}, got {estimator!r}")


def coco(x: jax.Array, y: jax.Array, *, kernel_x: str = 'gaussian', kernel_y: str = 'gaussian',
         sigma_x: Optional[float] = None, sigma_y: Optional[float] = None) -> jax.Array:
  """COCO(x, y) = sqrt(‖K̃ L̃‖₂) / n ≥ 0 (Gretton et al. 2005)."""
  kx, ky = _pair(x, y, kernel_x, kernel_y, sigma_x, sigma_y)
  n = kx.shape[0]
  top = jnp.linalg.svd(jnp.matmul(kx, ky, precision=_HIGHEST), compute_uv=False)[0]
  return _safe_sqrt(top) / n
