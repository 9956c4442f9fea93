"""FISTA (Beck & Teboulle 2009) for the convolutional (non-negative) lasso.

    min_a  ½‖y − Φ a‖²₂ + λ‖a‖₁   (+ a ≥ 0 when non-negative)

    z_k     = a_k + ((t_{k−1} − 1) / t_k)(a_k − a_{k−1})
    a_{k+1} = prox_{λ/L}(z_k − (ΦᵀΦ z_k − Φᵀy) / L)
    t_{k+1} = (1 + √(1 + 4 t_k²)) / 2

with ``L ≥ ‖ΦᵀΦ‖₂`` from power iteration. The prox is the soft threshold at
λ/L (one-sided when non-negative). Converges to the same minimiser as the LCA
fixed point (unit-norm atoms), at rate O(1/k²) in objective. The loop
around :func:`fista_step` is :class:`mi_jax.lca.objects.FISTA`.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from mi_jax.lca.thresholds import apply_threshold

# Power iteration approaches ‖ΦᵀΦ‖ from below; a step 1/L with L slightly too
# small can diverge, so we inflate the estimate a little.
_LIPSCHITZ_SAFETY = 1.01


def lipschitz_constant(
    gram: Callable[[jax.Array], jax.Array],
    code_shape: tuple[int, ...],
    dtype,
    *,
    n_iters: int = 100,
) -> jax.Array:
  """Largest eigenvalue of the PSD operator ``gram`` by power iteration.

  ``code_shape`` is one sample's code shape with a leading batch of 1: Φ is
  the same for every sample, so one estimate serves the whole batch.
  """
  v0 = jax.random.normal(jax.random.key(0), code_shape, dtype)
  v0 = v0 / jnp.linalg.norm(v0)

  def step(v, _):
    w = gram(v)
    return w / (jnp.linalg.norm(w) + 1e-30), None

  v = jax.lax.scan(step, v0, length=n_iters)[0]
  return _LIPSCHITZ_SAFETY * jnp.vdot(v, gram(v)).real


def fista_step(
    codes: jax.Array,
    previous_codes: jax.Array,
    t_prev: jax.Array,
    drive: jax.Array,
    gram: Callable[[jax.Array], jax.Array],
    *,
    lam: jax.Array,
    step_size: jax.Array,
    nonneg: bool,
):
  """One step from (a_k, a_{k−1}, t_{k−1}); returns (a_{k+1}, a_k, t_k).

  ``drive`` is Φᵀy, ``gram`` applies ΦᵀΦ and ``step_size`` is 1/L. A cold
  start is (0, 0, 1).
  """
  t = 0.5 * (1.0 + jnp.sqrt(1.0 + 4.0 * t_prev**2))
  z = codes + ((t_prev - 1.0) / t) * (codes - previous_codes)
  gradient_step = z - step_size * (gram(z) - drive)
  return apply_threshold(gradient_step, lam * step_size, threshold='soft', nonneg=nonneg), codes, t


def relative_change(new: jax.Array, old: jax.Array) -> jax.Array:
  """max over samples of ‖new − old‖ / ‖new‖ (axis 0 is the batch)."""
  axes = tuple(range(1, new.ndim))
  diff = jnp.sqrt(jnp.sum(jnp.square(new - old), axis=axes))
  size = jnp.sqrt(jnp.sum(jnp.square(new), axis=axes))
  return jnp.max(diff / jnp.maximum(size, 1e-12))
