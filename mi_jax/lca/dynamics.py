"""The Locally Competitive Algorithm (Rozell et al. 2008), Euler-discretised.

    τ du/dt = b − u − G a,      a = T_λ(u),      G = ΦᵀΦ − diag‖ω‖²

    u_{t+1} = u_t + η (b − u_t − G T_λ(u_t)),    η = dt / τ,   u_0 = 0

This is lcapt's ``LCAConv2D.encode`` loop: its iteration t computes
``a = T_λ(u)`` *before* updating ``u``, so after T iterations it returns
``T_λ(u_{T−1})``. We run the T − 1 updates that matter and threshold once.

For unit-norm atoms the fixed points are exactly the lasso solutions
(KKT: Φᵀ(Px − Φa) = λ·sign(a) on the support, |·| ≤ λ off it).

Gradient modes (reverse mode through the loop):

* ``'unroll'``: plain ``lax.scan``; memory O(T) states.
* ``'checkpoint'``: a scan of ``jax.checkpoint``-ed scans of ⌈√T⌉ steps;
  memory O(√T) states for one extra forward pass.
"""

from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp

from mi_jax.lca.loops import iterate
from mi_jax.lca.thresholds import apply_threshold

Lateral = Callable[[jax.Array], jax.Array]


def lca_dynamics(
    drive: jax.Array,
    lateral: Lateral,
    *,
    lam: jax.Array,
    eta: jax.Array,
    n_steps: int,
    threshold: str,
    nonneg: bool,
    checkpoint: bool = False,
    record: Optional[Callable[[jax.Array], object]] = None,
):
  """Runs LCA from u_0 = 0 and returns ``(codes, state, records)``.

  ``codes = T_λ(u_{n_steps−1})``, ``state = u_{n_steps−1}``. ``records`` is
  None unless ``record`` is given, in which case it stacks ``record(a_t)`` for
  t = 0 … n_steps − 1 along a new leading axis (``a_0 = 0``).
  """
  transfer = lambda u: apply_threshold(u, lam, threshold=threshold, nonneg=nonneg)

  def euler_step(u):
    return u + eta * (drive - u - lateral(transfer(u)))

  n_updates = n_steps - 1
  u0 = jnp.zeros_like(drive)
  if record is not None:
    # Trajectories hold every step anyway, so checkpointing would save nothing.
    def recorded_step(u, _):
      u = euler_step(u)
      return u, record(transfer(u))

    u, later = jax.lax.scan(recorded_step, u0, length=n_updates)
    first = jax.tree.map(lambda r: r[None], record(transfer(u0)))
    records = jax.tree.map(lambda f, l: jnp.concatenate([f, l]), first, later)
  else:
    u = iterate(euler_step, u0, n_updates, checkpoint=checkpoint)
    records = None
  return transfer(u), u, records

