"""``mi_jax.lca.solve``: the one entry point of the sparse-coding core.

Every solver minimises, per sample,

    E(a) = ½‖P x − Φ a‖²₂ + λ‖a‖₁        (a ≥ 0 when ``nonneg``)

over codes ``a`` of shape ``(H', W', F)`` for an image ``x`` ``(H, W, C)``
and a dictionary Ω ``(kh, kw, C, F)`` (see :mod:`mi_jax.lca.operators` for Φ,
P and the full canvas), or over ``a`` ``(F,)`` for ``x`` ``(D,)`` and a dense
dictionary ``(D, F)``.

* ``solver='lca'`` runs ``n_steps`` iterations of lcapt's LCA exactly
  (:mod:`mi_jax.lca.dynamics`): a fixed budget, the parity mode.
* ``solver='fista'`` runs FISTA to convergence (``tol``) or for ``n_steps``
  iterations (:mod:`mi_jax.lca.fista`): the converged mode.

``solve`` builds the solver objects of :mod:`mi_jax.lca.objects` from its
options and runs them under one ``jit``; use those directly for states,
single steps and warm starts.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from mi_jax.lca import objects, operators, options
# Re-exported: callers name these as mi_jax.lca.solver's.
from mi_jax.lca.options import LATERALS, PADDINGS, auto_lateral  # noqa: F401
from mi_jax.lca.options import pair as _pair  # noqa: F401
from mi_jax.lca.thresholds import THRESHOLDS

SOLVERS = ('lca', 'fista')
GRADS = ('auto', 'unroll', 'checkpoint', 'implicit')


class SolveInfo(NamedTuple):
  """Diagnostics of a solve (all per sample along axis 0 unless stated)."""

  energy: jax.Array  # (N,) E(a) of the returned codes
  kkt_violation: jax.Array  # (N,) max lasso optimality violation of the codes
  n_steps: jax.Array  # () iterations run (< n_steps when FISTA met tol)
  state: Optional[jax.Array]  # LCA membrane potential u_{T−1}; None for FISTA
  trajectory: Optional[jax.Array]  # (T, N, …) codes after each iteration
  energy_trajectory: Optional[jax.Array]  # (T, N) E along the trajectory


@dataclasses.dataclass(frozen=True)
class _Static:
  """Everything that shapes the compiled program (λ, τ, dt are traced)."""

  geom: operators.Geometry
  dense: bool
  n_steps: int
  solver: str
  threshold: str
  nonneg: bool
  normalize_input: bool
  grad: str
  lateral: str
  tol: Optional[float]
  want_info: bool
  want_trajectory: bool
  cg_tol: float
  cg_maxiter: int


def solve(
    x,
    dictionary,
    *,
    lam,
    n_steps: int,
    solver: str = 'lca',
    tau=100.0,
    dt=1.0,
    stride=1,
    padding: str = 'same',
    threshold: str = 'soft',
    nonneg: bool = True,
    normalize_input: bool = False,
    grad: str = 'auto',
    lateral: str = 'auto',
    tol: Optional[float] = None,
    return_info: bool = False,
    return_trajectory: bool = False,
    cg_tol: float = 1e-6,
    cg_maxiter: int = 1000,
):
  """Sparse codes of ``x`` in ``dictionary``.

  Args:
    x: images ``(N, H, W, C)`` (NHWC) or vectors ``(N, D)``; floating point.
    dictionary: ``(kh, kw, C, F)`` (HWIO) or ``(D, F)``. Atoms are used as
      given; LCA solves the lasso only for unit-norm atoms
      (:func:`mi_jax.lca.normalize_dictionary`).
    lam: threshold / sparsity weight λ ≥ 0 (traced: a sweep never recompiles).
    n_steps: LCA iterations (lcapt's ``lca_iters``), or FISTA's iteration cap.
    solver: ``'lca'`` (fixed-budget dynamics, lcapt parity) or ``'fista'``.
    tau: LCA time constant τ > 0 (traced). Default 100, lcapt's default and
      the Sparse-Guard code's value (its paper's table says 1000).
    dt: Euler step dt > 0 (traced); the update is η = dt/τ. lcapt uses 1.
    stride: int or (sh, sw).
    padding: ``'same'`` (k // 2 each side, odd kernels; lcapt's default) or
      ``'valid'``.
    threshold: ``'soft'`` or ``'hard'`` (LCA only).
    nonneg: non-negative codes (the Sparse-Guard default) or signed.
    normalize_input: per-sample zero mean and unit (unbiased) variance first,
      as lcapt's layer does by default: ``(x − mean) / (std + 1e−12)``.
    grad: reverse-mode strategy: ``'unroll'`` (through the loop),
      ``'checkpoint'`` (√T-segment rematerialisation, O(√T) memory) or
      ``'implicit'`` (implicit function theorem at the solution; FISTA only).
      ``'auto'``: unroll for LCA, implicit for FISTA.
    lateral: how LCA applies G = ΦᵀΦ − diag‖ω‖²: ``'recon'`` (transposed conv
      + conv), ``'gemm'`` (the same through im2col GEMMs), ``'gram'`` (one
      conv with the precomputed (2m+1)²·F² kernel), ``'fft'`` (the gram
      correlation by real FFTs on a zero-padded S ≥ H' + m grid) or
      ``'auto'``: on CPU the form with the least measured-cost-weighted
      multiply-adds among 'gram', 'gemm' and 'fft'; elsewhere the
      reconstruction path ('recon') when it needs under a quarter of the
      Gram form's multiply-adds, else 'gram'. Same numbers either way (up
      to float32 rounding). Dense problems have no code grid: 'fft' runs
      as 'gram' (the F × F matrix) there.
    tol: FISTA only: stop once the largest per-sample relative code change is
      below ``tol`` (needs ``grad='implicit'``).
    return_info: also return :class:`SolveInfo`.
    return_trajectory: also return the codes and energy after every iteration
      in :class:`SolveInfo` (memory O(T); implies ``return_info``).
    cg_tol, cg_maxiter: conjugate-gradient settings of implicit gradients.

  Returns:
    codes ``(N, H', W', F)`` (or ``(N, F)`` for dense input), or
    ``(codes, SolveInfo)`` when ``return_info`` or ``return_trajectory``.

  Raises:
    ValueError: one line naming the argument and what is allowed.
  """
  static = _validate(
      x, dictionary, lam=lam, n_steps=n_steps, solver=solver, tau=tau, dt=dt,
      stride=stride, padding=padding, threshold=threshold, nonneg=nonneg,
      normalize_input=normalize_input, grad=grad, lateral=lateral, tol=tol,
      return_info=return_info, return_trajectory=return_trajectory,
      cg_tol=cg_tol, cg_maxiter=cg_maxiter,
  )
  codes, info = _solve(x, dictionary, lam, tau, dt, static=static)
  return (codes, info) if static.want_info else codes


@functools.partial(jax.jit, static_argnames=('static',))
def _solve(x, dictionary, lam, tau, dt, *, static: _Static):
  if static.dense:
    # A dense problem runs as its 1×1 convolution; its codes are squeezed at the end.
    x, dictionary = operators.as_conv(x, dictionary)
  dtype = objects.working_dtype(x, dictionary)
  x, dictionary = x.astype(dtype), dictionary.astype(dtype)
  lam, tau, dt = (jnp.asarray(v, dtype) for v in (lam, tau, dt))
  if static.normalize_input:
    x = normalize_per_sample(x)
  operator = objects.ConvDictionary(
      dictionary, static.geom.stride, static.geom.padding, lateral=static.lateral)
  canvas = operator.bind(x).canvas

  def energy(codes):
    residual = canvas - operators.synthesis(codes, dictionary, static.geom)
    return 0.5 * _sum_per_sample(jnp.square(residual)) + lam * _sum_per_sample(jnp.abs(codes))

  record = (lambda a: (a, energy(a))) if static.want_trajectory else None
  codes, state, records = _solver_object(static, lam, tau, dt)._run(x, operator, None, record)

  info = None
  if static.want_info:
    codes_energy = energy(codes)
    kkt = _kkt_violation(codes, canvas, dictionary, lam, static)
    trajectory, energy_trajectory = records if records is not None else (None, None)
    if static.solver == 'lca':
      n_run, potentials = jnp.asarray(static.n_steps, jnp.int32), state.u
    else:
      n_run, potentials = state.iter_num, None
    info = SolveInfo(codes_energy, kkt, n_run, potentials, trajectory, energy_trajectory)
  if static.dense:
    squeeze = lambda a: None if a is None else a.reshape(*a.shape[:-3], a.shape[-1])
    codes = squeeze(codes)
    if info is not None:
      info = info._replace(state=squeeze(info.state), trajectory=squeeze(info.trajectory))
  return codes, info


def _solver_object(static: _Static, lam, tau, dt):
  """The solver object of these options (λ, τ, dt traced)."""
  if static.solver == 'lca':
    # lcapt's n_steps iterations make n_steps − 1 updates that matter.
    return objects.LCA(lam=lam, tau=tau, dt=dt, maxiter=static.n_steps - 1,
                       threshold=static.threshold, nonneg=static.nonneg, grad=static.grad)
  return objects.FISTA(lam=lam, maxiter=static.n_steps, tol=static.tol, nonneg=static.nonneg,
                       grad=static.grad, cg_tol=static.cg_tol, cg_maxiter=static.cg_maxiter)


def _kkt_violation(codes, canvas, dictionary, lam, static: _Static):
  """max_i of the lasso optimality violation at ``codes``, per sample.

  With g = Φᵀ(Px − Φa): on the support g_i must equal λ·sign(a_i); off it
  g_i ≤ λ (non-negative) or |g_i| ≤ λ (signed).
  """
  geom = static.geom
  g = operators.analysis(canvas - operators.synthesis(codes, dictionary, geom), dictionary, geom)
  on_support = jnp.abs(g - lam * jnp.sign(codes))
  off_support = jax.nn.relu((g if static.nonneg else jnp.abs(g)) - lam)
  violation = jnp.where(codes != 0, on_support, off_support)
  return jnp.max(violation.reshape(violation.shape[0], -1), axis=1)


def normalize_per_sample(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  """lcapt's input normalisation: (x − mean) / (unbiased std + eps) per sample."""
  axes = tuple(range(1, x.ndim))
  centered = x - jnp.mean(x, axis=axes, keepdims=True)
  std = jnp.std(centered, axis=axes, keepdims=True, ddof=1)
  return centered / (std + eps)


def _sum_per_sample(values):
  return jnp.sum(values.reshape(values.shape[0], -1), axis=1)


# ---------------------------------------------------------------- validation


def _validate(x, dictionary, *, lam, n_steps, solver, tau, dt, stride, padding,
              threshold, nonneg, normalize_input, grad, lateral, tol,
              return_info, return_trajectory, cg_tol, cg_maxiter) -> _Static:
  options.choice('solver', solver, SOLVERS)
  options.choice('threshold', threshold, THRESHOLDS)
  options.choice('padding', padding, PADDINGS)
  options.choice('grad', grad, GRADS)
  options.choice('lateral', lateral, LATERALS)
  geom, dense = options.problem_geometry(x, dictionary, stride, padding)
  options.integer('n_steps', n_steps, minimum=1)
  options.scalar('lam', lam, minimum=0.0, strict=False)
  options.scalar('tau', tau, minimum=0.0, strict=True)
  options.scalar('dt', dt, minimum=0.0, strict=True)
  if grad == 'auto':
    grad = 'implicit' if solver == 'fista' else 'unroll'
  if solver == 'lca':
    if grad == 'implicit':
      raise ValueError(
          "grad='implicit' differentiates a converged solution; solver='lca' runs a "
          "fixed budget of steps. Use solver='fista' or grad in ('unroll', 'checkpoint')"
      )
    if tol is not None:
      raise ValueError("tol applies to solver='fista' only; solver='lca' runs exactly n_steps")
  else:
    if threshold != 'soft':
      raise ValueError("solver='fista' solves the l1 lasso: threshold must be 'soft'")
    if tol is not None and grad != 'implicit':
      raise ValueError(
          f"tol stops FISTA in a while_loop, which grad={grad!r} cannot differentiate; "
          "use grad='implicit' (or tol=None)"
      )
  options.tolerance('tol', tol)
  if return_trajectory and tol is not None:
    raise ValueError("return_trajectory needs a fixed number of steps: set tol=None")
  options.cg_settings(cg_tol, cg_maxiter)
  d_shape = np.shape(dictionary)
  return _Static(
      geom=geom, dense=dense, n_steps=int(n_steps), solver=solver, threshold=threshold,
      nonneg=bool(nonneg), normalize_input=bool(normalize_input), grad=grad,
      lateral=options.resolve_lateral(lateral, geom, d_shape[-2], d_shape[-1], dense),
      tol=None if tol is None else float(tol),
      want_info=bool(return_info or return_trajectory),
      want_trajectory=bool(return_trajectory), cg_tol=float(cg_tol),
      cg_maxiter=int(cg_maxiter),
  )
