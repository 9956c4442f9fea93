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
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from mi_jax.lca import operators
from mi_jax.lca.dynamics import lca_dynamics
from mi_jax.lca.fista import fista, lipschitz_constant
from mi_jax.lca.implicit import with_implicit_grad
from mi_jax.lca.thresholds import THRESHOLDS

SOLVERS = ('lca', 'fista')
GRADS = ('auto', 'unroll', 'checkpoint', 'implicit')
PADDINGS = ('same', 'valid')
LATERALS = ('auto', 'recon', 'gram', 'gemm', 'fft')
_RECON_ADVANTAGE = 4.0  # 'auto' picks 'recon' only below 1/4 of the Gram FLOPs
# 'auto' on XLA:CPU: estimated time = factor × multiply-adds
# (operators.lateral_flops; 'gemm' counts as 'recon'), relative to the gram
# conv's rate. Measured (jax 0.10.2, XLA:CPU on 2 shared cores, N = 16, time
# per step and sample from the difference of 51- and 11-step solves, 5×5
# atoms), in ns per 1000 MACs, gram / gemm / fft:
#   28²×1→16 (SG layer 1)   0.030 / 0.148 / 0.190   (gemm fastest: 93 µs)
#   28²×16→28 (SG layer 2)  0.027 / 0.135 / 0.157   (fft fastest: 380 µs)
#   28²×1→64                0.020 / 0.056 / 0.210   (gemm)
#   32²×3→64                0.029 / 0.066 / 0.145   (gemm)
#   28²×8→8                 0.088 / 0.308 / 0.304   (fft)
#   14²×32→32, 3×3 atoms    0.016 / 0.060 / 0.182   (gram)
#   28²×16→28, 'valid'      0.040 / 0.109 / 0.177   (fft)
#   28²×16→28, stride 2     0.028 / 0.121 / 0.193   (gram ≈ fft: 106 vs 115 µs)
#   28²×1→64, stride 2      0.016 / 0.105 / 0.126   (gemm)
# Ratios to gram: gemm 2.3–6.6 (median ≈ 4, today's _RECON_ADVANTAGE), fft
# 3.5–11 (median ≈ 6); 8 picks the fastest form in every row above. No
# accelerator was available to measure FFTs on GPU/TPU, so off CPU 'auto'
# keeps the recon-vs-gram rule and never picks 'fft'.
_CPU_COST_FACTORS = {'gram': 1.0, 'gemm': _RECON_ADVANTAGE, 'fft': 8.0}


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
  geom = static.geom
  if static.dense:
    x, dictionary = operators.as_conv(x, dictionary)
  # State and accumulation stay at least float32: the η-sized updates vanish
  # in a bfloat16 state.
  dtype = jnp.promote_types(jnp.promote_types(x.dtype, dictionary.dtype), jnp.float32)
  x, dictionary = x.astype(dtype), dictionary.astype(dtype)
  lam, tau, dt = (jnp.asarray(v, dtype) for v in (lam, tau, dt))
  if static.normalize_input:
    x = normalize_per_sample(x)
  canvas = operators.to_canvas(x, geom)

  def energy(codes):
    residual = canvas - operators.synthesis(codes, dictionary, geom)
    return 0.5 * _sum_per_sample(jnp.square(residual)) + lam * _sum_per_sample(jnp.abs(codes))

  record = (lambda a: (a, energy(a))) if static.want_trajectory else None
  state = None
  if static.solver == 'lca':
    codes, state, records = lca_dynamics(
        operators.analysis(canvas, dictionary, geom),
        _lateral_operator(dictionary, static),
        lam=lam,
        eta=dt / tau,
        n_steps=static.n_steps,
        threshold=static.threshold,
        nonneg=static.nonneg,
        checkpoint=static.grad == 'checkpoint',
        record=record,
    )
    n_run = jnp.asarray(static.n_steps, jnp.int32)
  else:
    codes, (n_run, records) = _fista_codes(canvas, dictionary, lam, static, record)

  info = None
  if static.want_info:
    codes_energy = energy(codes)
    kkt = _kkt_violation(codes, canvas, dictionary, lam, static)
    trajectory, energy_trajectory = records if records is not None else (None, None)
    info = SolveInfo(codes_energy, kkt, n_run, state, trajectory, energy_trajectory)
  if static.dense:
    squeeze = lambda a: None if a is None else a.reshape(*a.shape[:-3], a.shape[-1])
    codes = squeeze(codes)
    if info is not None:
      info = info._replace(state=squeeze(info.state), trajectory=squeeze(info.trajectory))
  return codes, info


def _lateral_operator(dictionary, static: _Static):
  if static.lateral == 'gram':
    kernel = operators.gram_kernel(dictionary, static.geom)
    return lambda codes: operators.lateral_with_kernel(codes, kernel)
  if static.lateral == 'fft':
    kernel = operators.gram_kernel(dictionary, static.geom)
    spectrum = operators.gram_spectrum(kernel, static.geom)
    return lambda codes: operators.lateral_fft(codes, spectrum, static.geom)
  if static.lateral == 'gemm':
    return lambda codes: operators.lateral_gemm(codes, dictionary, static.geom)
  return lambda codes: operators.lateral_recon(codes, dictionary, static.geom)


def _fista_codes(canvas, dictionary, lam, static: _Static, record):
  """FISTA codes and ``(n_run, records)``; implicit VJP when asked."""
  geom = static.geom
  code_shape = (1, *geom.code_hw, dictionary.shape[-1])

  def run(canvas, dictionary, lam):
    gram = lambda a: operators.gram(a, dictionary, geom)
    lipschitz = lipschitz_constant(gram, code_shape, canvas.dtype)
    codes, n_run, records = fista(
        operators.analysis(canvas, dictionary, geom),
        gram,
        lam=lam,
        lipschitz=lipschitz,
        n_steps=static.n_steps,
        nonneg=static.nonneg,
        tol=static.tol,
        checkpoint=static.grad == 'checkpoint',
        record=record,
    )
    return codes, (n_run, records)

  if static.grad != 'implicit':
    return run(canvas, dictionary, lam)
  # Only the codes carry the implicit gradient; the diagnostics do not.
  codes_only = lambda *args: run(*args)[0]
  codes = with_implicit_grad(
      codes_only, geom, cg_tol=static.cg_tol, cg_maxiter=static.cg_maxiter
  )(canvas, dictionary, lam)
  aux = None
  if static.want_info:
    aux = jax.lax.stop_gradient(run(canvas, dictionary, lam)[1])
  return codes, aux if aux is not None else (jnp.asarray(static.n_steps, jnp.int32), None)


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
  _choice('solver', solver, SOLVERS)
  _choice('threshold', threshold, THRESHOLDS)
  _choice('padding', padding, PADDINGS)
  _choice('grad', grad, GRADS)
  _choice('lateral', lateral, LATERALS)
  x_shape, d_shape = np.shape(x), np.shape(dictionary)
  for name, value in (('x', x), ('dictionary', dictionary)):
    if not jnp.issubdtype(jnp.result_type(value), jnp.floating):
      raise ValueError(
          f"{name} must be a floating-point array, got dtype {jnp.result_type(value)}"
          " (scale integer images to float first)"
      )
  dense = len(x_shape) == 2
  if len(x_shape) not in (2, 4):
    raise ValueError(
        f"x must have rank 4 (N, H, W, C: NHWC) or 2 (N, D), got shape {x_shape}"
    )
  if len(d_shape) != len(x_shape):
    want = '(kh, kw, C, F) (HWIO)' if not dense else '(D, F)'
    raise ValueError(f"dictionary must have shape {want} for x of rank {len(x_shape)}, got shape {d_shape}")
  if x_shape[-1] != d_shape[-2]:
    hint = '; is x NCHW? mi_jax.lca wants NHWC' if not dense else ''
    raise ValueError(
        f"x has {x_shape[-1]} channels in its last axis but dictionary expects "
        f"{d_shape[-2]} (dictionary axis -2){hint}"
    )
  if x_shape[0] < 1 or d_shape[-1] < 1 or 0 in x_shape:
    raise ValueError(f"x and dictionary must be non-empty, got shapes {x_shape} and {d_shape}")
  if dense:
    if _pair('stride', stride) != (1, 1):
      raise ValueError(f"stride must be 1 for a dense (N, D) problem, got {stride!r}")
    geom = operators.Geometry((1, 1), (1, 1), (1, 1), 'valid')
  else:
    geom = operators.Geometry(
        image_hw=tuple(x_shape[1:3]),
        kernel_hw=tuple(d_shape[:2]),
        stride=_pair('stride', stride),
        padding=padding,
    )
    if padding == 'same' and any(k % 2 == 0 for k in geom.kernel_hw):
      raise ValueError(f"padding='same' needs an odd kernel, got kernel {geom.kernel_hw}; use padding='valid'")
    if any(c < 1 for c in geom.code_hw):
      raise ValueError(
          f"x spatial size {geom.image_hw} is smaller than the kernel {geom.kernel_hw} "
          f"with padding={padding!r}"
      )
  if isinstance(n_steps, bool) or not isinstance(n_steps, (int, np.integer)) or n_steps < 1:
    raise ValueError(f"n_steps must be an integer >= 1, got {n_steps!r}")
  _scalar('lam', lam, minimum=0.0, strict=False)
  _scalar('tau', tau, minimum=0.0, strict=True)
  _scalar('dt', dt, minimum=0.0, strict=True)
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
  if tol is not None and not (isinstance(tol, (int, float)) and tol > 0):
    raise ValueError(f"tol must be None or a float > 0, got {tol!r}")
  if return_trajectory and tol is not None:
    raise ValueError("return_trajectory needs a fixed number of steps: set tol=None")
  if not cg_tol > 0 or int(cg_maxiter) < 1:
    raise ValueError(f"cg_tol must be > 0 and cg_maxiter >= 1, got {cg_tol!r}, {cg_maxiter!r}")
  if lateral == 'auto':
    lateral = auto_lateral(geom, d_shape[-2], d_shape[-1], jax.default_backend())
  if dense and lateral == 'fft':
    lateral = 'gram'  # a 1×1 code grid: the FFT of size 1 is the identity
  return _Static(
      geom=geom, dense=dense, n_steps=int(n_steps), solver=solver, threshold=threshold,
      nonneg=bool(nonneg), normalize_input=bool(normalize_input), grad=grad,
      lateral=lateral, tol=None if tol is None else float(tol),
      want_info=bool(return_info or return_trajectory),
      want_trajectory=bool(return_trajectory), cg_tol=float(cg_tol),
      cg_maxiter=int(cg_maxiter),
  )


def auto_lateral(geom: operators.Geometry, channels: int, features: int, backend: str) -> str:
  """The lateral form ``lateral='auto'`` runs for this shape on ``backend``."""
  flops = operators.lateral_flops(geom, channels, features)
  flops['gemm'] = flops['recon']
  if backend == 'cpu':
    # 'recon' is left out: its GEMM form does the same arithmetic faster on
    # XLA:CPU, whose two convolutions inside a loop body are slow.
    return min(_CPU_COST_FACTORS, key=lambda form: _CPU_COST_FACTORS[form] * flops[form])
  # The reconstruction path does fewer FLOPs, but runs at a lower rate: it
  # must save a lot before it wins.
  return 'recon' if flops['gram'] > _RECON_ADVANTAGE * flops['recon'] else 'gram'


def _choice(name, value, allowed):
  if value not in allowed:
    raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def _pair(name, value) -> tuple[int, int]:
  pair = (value, value) if isinstance(value, (int, np.integer)) else tuple(value)
  if len(pair) != 2 or not all(isinstance(v, (int, np.integer)) and v >= 1 for v in pair):
    raise ValueError(f"{name} must be a positive int or a pair of them, got {value!r}")
  return tuple(int(v) for v in pair)


def _scalar(name, value, *, minimum, strict):
  """Checks a hyperparameter's value when it is concrete (traced ones pass)."""
  if isinstance(value, jax.core.Tracer):
    if np.ndim(value) != 0:
      raise ValueError(f"{name} must be a scalar, got shape {np.shape(value)}")
    return
  if np.ndim(value) != 0:
    raise ValueError(f"{name} must be a scalar, got shape {np.shape(value)}")
  v = float(np.asarray(value))
  ok = v > minimum if strict else v >= minimum
  if not ok or not np.isfinite(v):
    bound = '> 0' if strict else '>= 0'
    raise ValueError(f"{name} must be a finite number {bound}, got {v!r}")
