"""Implicit differentiation of the lasso solution (Blondel et al. 2022 style).

At a minimiser a* of ½‖y − Φa‖² + λ‖a‖₁ with support S and signs s, the
optimality condition restricted to S is

    F(a, y, Ω, λ) = 1_S ⊙ (ΦᵀΦ a − Φᵀ y + λ s) = 0.

Away from support changes, the implicit function theorem gives
``∂a*/∂θ = −(∂F/∂a)⁻¹ ∂F/∂θ`` with ``∂F/∂a = 1_S ΦᵀΦ 1_S``, so the VJP of a
cotangent ``ā`` is ``θ̄ = −(∂F/∂θ)ᵀ v`` where ``(1_S ΦᵀΦ 1_S) v = 1_S ā``,
solved by conjugate gradients on the support. Off the support the codes are
locally constant (zero), so they pass no gradient.

This is only the derivative of the *solution*: it is wrong for a solver that
stopped early, which is why :func:`mi_jax.lca.solve` refuses it for LCA.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from mi_jax.lca import operators


def with_implicit_grad(
    codes_fn: Callable[[jax.Array, jax.Array, jax.Array], jax.Array],
    geom: operators.Geometry,
    *,
    cg_tol: float,
    cg_maxiter: int,
) -> Callable[[jax.Array, jax.Array, jax.Array], jax.Array]:
  """Wraps ``codes_fn(canvas, dictionary, lam) -> a*`` with the implicit VJP."""

  @jax.custom_vjp
  def solution(canvas, dictionary, lam):
    return codes_fn(canvas, dictionary, lam)

  def forward(canvas, dictionary, lam):
    codes = codes_fn(canvas, dictionary, lam)
    return codes, (codes, canvas, dictionary, lam)

  def backward(residuals, cotangent):
    codes, canvas, dictionary, lam = residuals
    support = (codes != 0).astype(codes.dtype)
    signs = jnp.sign(codes)

    def optimality(canvas, dictionary, lam):
      gradient = operators.gram(codes, dictionary, geom) - operators.analysis(
          canvas, dictionary, geom
      )
      return support * (gradient + lam * signs)

    def restricted_gram(v):
      return support * operators.gram(support * v, dictionary, geom)

    v, _ = jax.scipy.sparse.linalg.cg(
        restricted_gram, support * cotangent, tol=cg_tol, maxiter=cg_maxiter
    )
    _, optimality_vjp = jax.vjp(optimality, canvas, dictionary, lam)
    return tuple(-g for g in optimality_vjp(v))

  solution.defvjp(forward, backward)
  return solution
