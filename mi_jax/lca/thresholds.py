"""LCA transfer functions a = T_λ(u), as in lcapt.

soft, non-negative:  relu(u − λ)                       (the Sparse-Guard default)
soft, signed:        relu(u − λ) − relu(−u − λ) = sign(u)·relu(|u| − λ)
hard, non-negative:  u·[u > λ]
hard, signed:        u·[|u| > λ]

The soft threshold is the proximal operator of λ‖·‖₁ (+ the indicator of
a ≥ 0 when non-negative), which is what makes the LCA fixed point a lasso
solution; the hard threshold has no such variational meaning.
"""

from typing import Literal

import jax
import jax.numpy as jnp

Threshold = Literal['soft', 'hard']
THRESHOLDS = ('soft', 'hard')


def apply_threshold(
    u: jax.Array, lam: jax.Array, *, threshold: Threshold, nonneg: bool
) -> jax.Array:
  """T_λ(u) for the given kind; λ may be traced (no recompile per value)."""
  if threshold == 'soft':
    positive = jax.nn.relu(u - lam)
    return positive if nonneg else positive - jax.nn.relu(-u - lam)
  if threshold == 'hard':
    # Strict inequality, as torch.nn.functional.threshold keeps u > λ only.
    keep = u > lam if nonneg else jnp.abs(u) > lam
    return jnp.where(keep, u, jnp.zeros_like(u))
  raise ValueError(f"threshold must be one of {THRESHOLDS}, got {threshold!r}")
