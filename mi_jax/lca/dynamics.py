"""The Locally Competitive Algorithm (Rozell et al. 2008), Euler-discretised.

    τ du/dt = b − u − G a,      a = T_λ(u),      G = ΦᵀΦ − diag‖ω‖²

    u_{t+1} = u_t + η (b − u_t − G T_λ(u_t)),    η = dt / τ,   u_0 = 0

This is lcapt's ``LCAConv2D.encode`` loop: its iteration t computes
``a = T_λ(u)`` *before* updating ``u``, so after T iterations it returns
``T_λ(u_{T−1})``: T − 1 updates matter, then one threshold. The solver
objects (:class:`mi_jax.lca.objects.LCA`) count those updates.

For unit-norm atoms the fixed points are exactly the lasso solutions
(KKT: Φᵀ(Px − Φa) = λ·sign(a) on the support, |·| ≤ λ off it).

Gradient modes (reverse mode through the loop, :func:`mi_jax.lca.loops.iterate`):

* ``'unroll'``: plain ``lax.scan``; memory O(T) states.
* ``'checkpoint'``: a scan of ``jax.checkpoint``-ed scans of ⌈√T⌉ steps;
  memory O(√T) states for one extra forward pass.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from mi_jax.lca.thresholds import apply_threshold

Lateral = Callable[[jax.Array], jax.Array]


def transfer(u: jax.Array, *, lam: jax.Array, threshold: str, nonneg: bool) -> jax.Array:
  """a = T_λ(u): the codes of membrane potentials u."""
  return apply_threshold(u, lam, threshold=threshold, nonneg=nonneg)


def euler_step(
    u: jax.Array,
    drive: jax.Array,
    lateral: Lateral,
    *,
    lam: jax.Array,
    eta: jax.Array,
    threshold: str,
    nonneg: bool,
) -> jax.Array:
  """One LCA update: u + η (b − u − G T_λ(u)), with ``lateral`` applying G."""
  # One expression, in this order: it fixes the order in which reverse mode
  # sums the cotangents of u, and so the gradients' last bits.
  return u + eta * (drive - u - lateral(transfer(u, lam=lam, threshold=threshold, nonneg=nonneg)))


def fixed_point_residual(
    codes: jax.Array,
    drive: jax.Array,
    lateral: Lateral,
    *,
    lam: jax.Array,
    threshold: str,
) -> jax.Array:
  """F(a) = 1_S ⊙ (u(a) + G a − b): −τ du/dt at potentials u(a) that give ``a``.

  On the support S the transfer function is invertible: u = a + λ·sign(a)
  (soft) or u = a (hard); off it u is only known to lie under the threshold,
  an inequality, so F keeps the support. F = 0 exactly at the LCA fixed
  points on S. For the soft threshold and unit-norm atoms (G + I = ΦᵀΦ) it is
  the lasso optimality residual 1_S ⊙ (ΦᵀΦ a − b + λ·sign(a)).
  """
  support = (codes != 0).astype(codes.dtype)
  potentials = codes + lam * jnp.sign(codes) if threshold == 'soft' else codes
  return support * (potentials + lateral(codes) - drive)
