"""Implicit differentiation of the lasso solution (Blondel et al. 2022 style).

At a minimiser a* of ½‖y − Φa‖² + λ‖a‖₁ with support S and signs s, the
optimality condition restricted to S is

    F(a, y, Ω, λ) = 1_S ⊙ (ΦᵀΦ a − Φᵀ y + λ s) = 0.

Away from support changes, the implicit function theorem gives
``∂a*/∂θ = −(∂F/∂a)⁻¹ ∂F/∂θ`` with ``∂F/∂a = 1_S ΦᵀΦ 1_S``, so the VJP of a
cotangent ``ā`` is ``θ̄ = −(∂F/∂θ)ᵀ v`` where ``(1_S ΦᵀΦ 1_S) v = 1_S ā``,
solved by conjugate gradients on the support. Off the support the codes are
locally constant (zero), so they pass no gradient.

:func:`with_implicit_grad` takes F as a function, so any residual of this
kind serves (the LCA fixed point's, :meth:`mi_jax.lca.objects.LCA.optimality_fun`,
too); its Jacobian in the codes must be symmetric on the support for CG.

This is only the derivative of the *solution*: it is wrong for a solver that
stopped early, which is why :func:`mi_jax.lca.solve` refuses it for LCA.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from mi_jax.lca import operators


def lasso_optimality(codes, canvas, dictionary, lam, geom: operators.Geometry):
  """F(a) = 1_S ⊙ (ΦᵀΦ a − Φᵀ y + λ·sign(a)), S and the signs taken from ``a``.

  ``canvas`` is y = P x. F is zero exactly on the support of a lasso
  solution; off it the optimality condition is an inequality.
  """
  support = (codes != 0).astype(codes.dtype)
  gradient = operators.gram(codes, dictionary, geom) - operators.analysis(canvas, dictionary, geom)
  return support * (gradient + lam * jnp.sign(codes))


def with_implicit_grad(
    solution_fn: Callable[..., tuple[jax.Array, object]],
    optimality_fn: Callable[..., jax.Array],
    *,
    cg_tol: float,
    cg_maxiter: int,
) -> Callable[..., tuple[jax.Array, object]]:
  """Gives ``solution_fn(start, *params) -> (a*, aux)`` the implicit VJP.

  ``optimality_fn(a, *params)`` is F above. The cotangent of ``a*`` reaches
  ``params`` through the implicit function theorem; ``start`` (a warm start,
  or None) and ``aux`` (diagnostics) carry no gradient: a solution does not
  depend on where its solver started.
  """

  @jax.custom_vjp
  def solution(start, *params):
    return solution_fn(start, *params)

  def forward(start, *params):
    codes, aux = solution_fn(start, *params)
    return (codes, aux), (codes, params)

  def backward(residuals, cotangents):
    codes, params = residuals
    codes_cotangent, _ = cotangents
    support = (codes != 0).astype(codes.dtype)
    # F is linear in the codes once its support and signs are fixed.
    _, optimality_jvp = jax.linearize(lambda a: optimality_fn(a, *params), codes)

    def restricted_jacobian(v):
      return support * optimality_jvp(support * v)

    v, _ = jax.scipy.sparse.linalg.cg(
        restricted_jacobian, support * codes_cotangent, tol=cg_tol, maxiter=cg_maxiter
    )
    _, optimality_vjp = jax.vjp(lambda *p: optimality_fn(codes, *p), *params)
    return (None, *(-g for g in optimality_vjp(v)))

  solution.defvjp(forward, backward)
  return solution
