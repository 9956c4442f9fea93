"""Solver objects in the shape of jaxopt's API: init_state, update, run.

:func:`mi_jax.lca.solve` is one call with every option; these objects split
it for research on the solver: a dictionary operator, one object per
algorithm holding only that algorithm's options, an explicit state that can
be stepped, inspected and fed back (warm starts), and the optimality residual
that implicit differentiation needs. ``solve`` itself runs through them.

    operator = ConvDictionary(dictionary, stride=1, padding='same')  # or DenseDictionary(d)
    solver = LCA(lam=0.5, tau=100.0, maxiter=499)
    codes, state = solver.run(x, operator)                  # from u_0 = 0
    codes, state = solver.run(x, operator, init=state)      # 499 more updates

    state = solver.init_state(x, operator)                  # step by step
    codes, state = solver.update(codes, state, x, operator)

One LCA update (η = dt/τ, G = ΦᵀΦ − diag‖ω‖², b = Φᵀ P x):

    u_{k+1} = u_k + η (b − u_k − G T_λ(u_k)),        codes a_k = T_λ(u_k)

One FISTA step (step size 1/L, L ≥ ‖ΦᵀΦ‖₂; a cold start is a = 0, t = 1):

    t_k     = (1 + √(1 + 4 t_{k−1}²)) / 2
    z_k     = a_k + ((t_{k−1} − 1) / t_k)(a_k − a_{k−1})
    a_{k+1} = prox_{λ/L}(z_k − (ΦᵀΦ z_k − b) / L)

``LCA.maxiter`` counts updates: lcapt's (and ``solve``'s) ``n_steps = T``
iterations make T − 1 updates that matter, so ``LCA(maxiter=T − 1)`` gives
``solve(n_steps=T)``'s codes, and ``run`` of m updates then of n more from
its state is ``run`` of m + n.

Solvers and operators are pytrees: λ, τ, dt and the dictionary are leaves
(traced under ``jit``: a λ sweep never recompiles, and they can be
differentiated), the other fields are static. With concrete numbers a solver
is also hashable, so it can be a static argument of ``jax.jit``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from mi_jax.lca import dynamics, implicit, loops, operators, options
from mi_jax.lca.fista import fista_step, lipschitz_constant, relative_change
from mi_jax.lca.thresholds import THRESHOLDS

LCA_GRADS = ('unroll', 'checkpoint')
FISTA_GRADS = ('unroll', 'checkpoint', 'implicit')


def _pytree(*, leaves: tuple[str, ...]):
  """Registers a frozen dataclass as a pytree with ``leaves`` as its children.

  The other fields are static (they shape the compiled program). Unflattening
  skips ``__init__``: JAX rebuilds pytrees with placeholders for leaves,
  which the option checks would refuse.
  """

  def register(cls):
    static = tuple(f.name for f in dataclasses.fields(cls) if f.name not in leaves)

    def flatten(obj):
      return tuple(getattr(obj, n) for n in leaves), tuple(getattr(obj, n) for n in static)

    def unflatten(static_values, leaf_values):
      obj = object.__new__(cls)
      for name, value in zip((*static, *leaves), (*static_values, *leaf_values)):
        object.__setattr__(obj, name, value)
      return obj

    jax.tree_util.register_pytree_node(cls, flatten, unflatten)
    return cls

  return register


def working_dtype(x, dictionary):
  """The dtype codes and states are computed in: at least float32, since the
  η-sized updates vanish in a bfloat16 state."""
  promoted = jnp.promote_types(jnp.result_type(x), jnp.result_type(dictionary))
  return jnp.promote_types(promoted, jnp.float32)


def _scalar_like(value, drive: jax.Array) -> jax.Array:
  """``value`` as a scalar of ``drive``'s dtype that, inside ``shard_map``,
  varies over the same mesh axes as ``drive``: a loop carry started from a
  constant must type like what the loop body computes from per-device data."""
  return jnp.full_like(drive, value, shape=())


# ----------------------------------------------------------------- operators


@dataclasses.dataclass(frozen=True)
class BoundDictionary:
  """A dictionary bound to one batch of inputs: y = P x and Φ's operators.

  Arrays are in convolutional layout (codes ``(N, H', W', F)``); a dense
  problem is its 1×1 convolution, and :meth:`to_user` / :meth:`from_user`
  convert its codes from / to ``(N, F)``.
  """

  canvas: jax.Array  # y = P x, (N, Hc, Wc, C)
  dictionary: jax.Array  # Ω, HWIO
  geom: operators.Geometry
  lateral_form: str  # 'recon', 'gram', 'gemm' or 'fft' ('auto' resolved)
  dense: bool

  @property
  def dtype(self):
    return self.canvas.dtype

  @property
  def code_shape(self) -> tuple[int, ...]:
    return (self.canvas.shape[0], *self.geom.code_hw, self.dictionary.shape[-1])

  @property
  def user_code_shape(self) -> tuple[int, ...]:
    n, f = self.canvas.shape[0], self.dictionary.shape[-1]
    return (n, f) if self.dense else self.code_shape

  def drive(self) -> jax.Array:
    """b = Φᵀ y."""
    return operators.analysis(self.canvas, self.dictionary, self.geom)

  def gram(self, codes: jax.Array) -> jax.Array:
    """ΦᵀΦ a."""
    return operators.gram(codes, self.dictionary, self.geom)

  def lateral(self) -> Callable[[jax.Array], jax.Array]:
    """a ↦ G a = (ΦᵀΦ − diag‖ω‖²) a in ``lateral_form``; kernels built once here."""
    d, geom = self.dictionary, self.geom
    if self.lateral_form == 'gram':
      kernel = operators.gram_kernel(d, geom)
      return lambda codes: operators.lateral_with_kernel(codes, kernel)
    if self.lateral_form == 'fft':
      spectrum = operators.gram_spectrum(operators.gram_kernel(d, geom), geom)
      return lambda codes: operators.lateral_fft(codes, spectrum, geom)
    if self.lateral_form == 'gemm':
      return lambda codes: operators.lateral_gemm(codes, d, geom)
    return lambda codes: operators.lateral_recon(codes, d, geom)

  def to_user(self, codes: jax.Array) -> jax.Array:
    return codes.reshape(*codes.shape[:-3], codes.shape[-1]) if self.dense else codes

  def from_user(self, codes: jax.Array) -> jax.Array:
    return codes.reshape(*codes.shape[:-1], 1, 1, codes.shape[-1]) if self.dense else codes


def _bind(x, dictionary, geom, lateral, dense) -> BoundDictionary:
  dtype = working_dtype(x, dictionary)
  x, dictionary = jnp.asarray(x).astype(dtype), jnp.asarray(dictionary).astype(dtype)
  form = options.resolve_lateral(lateral, geom, dictionary.shape[-2], dictionary.shape[-1], dense)
  return BoundDictionary(operators.to_canvas(x, geom), dictionary, geom, form, dense)


@_pytree(leaves=('dictionary',))
@dataclasses.dataclass(frozen=True, eq=False)
class ConvDictionary:
  """Φ of a convolutional dictionary Ω ``(kh, kw, C, F)`` (HWIO).

  Codes ``(N, H', W', F)`` of images ``(N, H, W, C)`` (NHWC). ``stride`` is an
  int or a pair; ``padding`` is 'same' (k // 2 each side, odd kernels) or
  'valid'; ``lateral`` is how LCA applies G (see :func:`mi_jax.lca.solve`).
  The operators are :mod:`mi_jax.lca.operators`' on the full canvas.
  """

  dictionary: ArrayLike
  stride: int | tuple[int, int] = 1
  padding: str = 'same'
  lateral: str = 'auto'

  def __post_init__(self):
    if np.ndim(self.dictionary) != 4:
      raise ValueError(
          f"ConvDictionary.dictionary must have shape (kh, kw, C, F) (HWIO), got shape "
          f"{np.shape(self.dictionary)}; a (D, F) dictionary is a DenseDictionary")
    options.choice('ConvDictionary.padding', self.padding, options.PADDINGS)
    options.choice('ConvDictionary.lateral', self.lateral, options.LATERALS)
    object.__setattr__(self, 'stride', options.pair('ConvDictionary.stride', self.stride))

  def bind(self, x) -> BoundDictionary:
    """Checks ``x`` against the dictionary and binds them (:class:`BoundDictionary`)."""
    if np.ndim(x) != 4:
      raise ValueError(
          f"x must have rank 4 (N, H, W, C: NHWC) for a ConvDictionary, got shape {np.shape(x)}")
    geom, _ = options.problem_geometry(x, self.dictionary, self.stride, self.padding)
    return _bind(x, self.dictionary, geom, self.lateral, dense=False)


@_pytree(leaves=('dictionary',))
@dataclasses.dataclass(frozen=True, eq=False)
class DenseDictionary:
  """Φ of a dense dictionary ``(D, F)``: codes ``(N, F)`` of vectors ``(N, D)``.

  Runs as the 1×1 convolution of :func:`mi_jax.lca.operators.as_conv`; its
  'fft' lateral form runs as 'gram' (a 1×1 code grid).
  """

  dictionary: ArrayLike
  lateral: str = 'auto'

  def __post_init__(self):
    if np.ndim(self.dictionary) != 2:
      raise ValueError(
          f"DenseDictionary.dictionary must have shape (D, F), got shape {np.shape(self.dictionary)}")
    options.choice('DenseDictionary.lateral', self.lateral, options.LATERALS)

  def bind(self, x) -> BoundDictionary:
    """Checks ``x`` against the dictionary and binds them (:class:`BoundDictionary`)."""
    if np.ndim(x) != 2:
      raise ValueError(f"x must have rank 2 (N, D) for a DenseDictionary, got shape {np.shape(x)}")
    geom, _ = options.problem_geometry(x, self.dictionary, 1, 'valid')
    x, dictionary = operators.as_conv(jnp.asarray(x), jnp.asarray(self.dictionary))
    return _bind(x, dictionary, geom, self.lateral, dense=True)


# -------------------------------------------------------------------- states


class Step(NamedTuple):
  """What ``run`` and ``update`` return, like jaxopt's ``OptStep(params, state)``."""

  codes: jax.Array
  state: Any


class LCAState(NamedTuple):
  """Where LCA stands: enough to continue (``run(..., init=state)``)."""

  u: jax.Array  # membrane potentials u_k, the codes' shape; codes = T_λ(u)
  iter_num: jax.Array  # () int32: updates since init_state (in the run that made it)
  error: jax.Array  # () max over samples of ‖u_k − u_{k−1}‖ / ‖u_k‖; inf before an update

  def _map_codes(self, fn):
    return self._replace(u=fn(self.u))


class FISTAState(NamedTuple):
  """Where FISTA stands: iterate, momentum and step size."""

  codes: jax.Array  # a_k
  previous_codes: jax.Array  # a_{k−1}: with t, the momentum of the next step
  t: jax.Array  # () t_{k−1} of the next step's extrapolation; 1 at a cold start
  step_size: jax.Array  # () 1/L, L from power iteration on ΦᵀΦ
  iter_num: jax.Array  # () int32: steps since init_state (in the run that made it)
  error: jax.Array  # () max over samples of ‖a_k − a_{k−1}‖ / ‖a_k‖; inf at a cold start

  def restarted(self) -> 'FISTAState':
    """These codes with no momentum (t = 1) and no convergence measure (inf):
    the start for another input, dictionary or λ, where the momentum and the
    measure of this run mean nothing (an amortised warm start)."""
    return self._replace(previous_codes=self.codes, t=jnp.ones_like(self.t),
                         error=jnp.full_like(self.error, jnp.inf))

  def _map_codes(self, fn):
    return self._replace(codes=fn(self.codes), previous_codes=fn(self.previous_codes))


def _conv_codes(state, state_type, fields, problem: BoundDictionary, *, argument: str):
  """``state``'s code-shaped ``fields`` in convolutional layout, after checks."""
  if not isinstance(state, state_type):
    allowed = f"None or an {state_type.__name__}" if argument == 'init' else f"an {state_type.__name__}"
    raise ValueError(f"{argument} must be {allowed}, got {type(state).__name__}")
  arrays = []
  for name in fields:
    value = getattr(state, name)
    if np.shape(value) != problem.user_code_shape:
      raise ValueError(
          f"{argument}.{name} has shape {np.shape(value)}, but the codes of this x have shape "
          f"{problem.user_code_shape}")
    arrays.append(problem.from_user(jnp.asarray(value).astype(problem.dtype)))
  return arrays


def _bool(name, value):
  if not isinstance(value, (bool, np.bool_)):
    raise ValueError(f"{name} must be True or False, got {value!r}")


# ----------------------------------------------------------------------- LCA


@_pytree(leaves=('lam', 'tau', 'dt'))
@dataclasses.dataclass(frozen=True, kw_only=True)
class LCA:
  """The Locally Competitive Algorithm, lcapt's Euler discretisation.

  Attributes:
    lam: threshold λ ≥ 0.
    maxiter: Euler updates per run (exactly that many: LCA has no stopping
      test, it is the fixed-budget parity mode). ``solve(n_steps=T)`` is
      ``maxiter=T − 1``.
    tau: time constant τ > 0; dt: Euler step dt > 0; the update is η = dt/τ.
    threshold: 'soft' or 'hard'; nonneg: one-sided threshold (a ≥ 0).
    grad: reverse mode through ``run``: 'unroll' (``lax.scan``) or
      'checkpoint' (√T segments, O(√T) memory). There is no 'implicit': a
      fixed budget is not a fixed point; :meth:`optimality_fun` is the
      residual for a run known to have converged.
  """

  lam: ArrayLike
  maxiter: int
  tau: ArrayLike = 100.0
  dt: ArrayLike = 1.0
  threshold: str = 'soft'
  nonneg: bool = True
  grad: str = 'unroll'

  def __post_init__(self):
    options.scalar('LCA.lam', self.lam, minimum=0.0, strict=False)
    options.scalar('LCA.tau', self.tau, minimum=0.0, strict=True)
    options.scalar('LCA.dt', self.dt, minimum=0.0, strict=True)
    options.integer('LCA.maxiter', self.maxiter, minimum=0)
    options.choice('LCA.threshold', self.threshold, THRESHOLDS)
    _bool('LCA.nonneg', self.nonneg)
    if self.grad == 'implicit':
      raise ValueError(
          f"LCA.grad must be one of {LCA_GRADS}, got 'implicit': a fixed budget of updates "
          "is not a fixed point (use FISTA, or LCA.optimality_fun after a converged run)")
    options.choice('LCA.grad', self.grad, LCA_GRADS)

  def init_state(self, x, operator, init: Optional[LCAState] = None) -> LCAState:
    """The state a run starts from: u_0 = 0, or ``init`` to continue from
    (its potentials and error); ``iter_num`` starts at 0."""
    problem = operator.bind(x)
    return self._start(problem, problem.drive(), init)._map_codes(problem.to_user)

  def update(self, codes, state: LCAState, x, operator) -> Step:
    """One Euler update of ``state.u``; returns ``Step(T_λ(u_{k+1}), state)``.

    ``codes`` is there for jaxopt's ``update(params, state, ...)`` shape and
    is not read: the iterate is ``state.u``, whose values under the threshold
    the codes do not hold. Each call binds ``x`` and builds the lateral
    operator anew; a loop of many steps is faster as :meth:`run`.
    """
    del codes
    problem = operator.bind(x)
    lam, eta = self._rates(problem.dtype)
    (u,) = _conv_codes(state, LCAState, ('u',), problem, argument='state')
    state = self._advance(state._replace(u=u), problem.drive(), problem.lateral(), lam, eta)
    return Step(problem.to_user(self._codes(state.u, lam)), state._map_codes(problem.to_user))

  def run(self, x, operator, init: Optional[LCAState] = None) -> Step:
    """``maxiter`` updates from :meth:`init_state`; returns ``Step(codes, state)``."""
    codes, state, _ = self._run(x, operator, init)
    return Step(codes, state)

  def optimality_fun(self, codes, x, operator) -> jax.Array:
    """F(a) = 1_S ⊙ (u(a) + G a − b), zero at LCA fixed points (see
    :func:`mi_jax.lca.dynamics.fixed_point_residual`); for the soft threshold
    and unit-norm atoms it is the lasso residual of :meth:`FISTA.optimality_fun`."""
    problem = operator.bind(x)
    lam, _ = self._rates(problem.dtype)
    residual = dynamics.fixed_point_residual(
        problem.from_user(codes), problem.drive(), problem.lateral(), lam=lam,
        threshold=self.threshold)
    return problem.to_user(residual)

  def _rates(self, dtype):
    lam, tau, dt = (jnp.asarray(v, dtype) for v in (self.lam, self.tau, self.dt))
    return lam, dt / tau

  def _codes(self, u, lam):
    return dynamics.transfer(u, lam=lam, threshold=self.threshold, nonneg=self.nonneg)

  def _start(self, problem: BoundDictionary, drive, init) -> LCAState:
    if init is None:
      # zeros_like: the state keeps the drive's (batch) sharding.
      u, error = jnp.zeros_like(drive), jnp.inf
    else:
      (u,) = _conv_codes(init, LCAState, ('u',), problem, argument='init')
      error = init.error
    return LCAState(u, jnp.zeros((), jnp.int32), _scalar_like(error, drive))

  def _advance(self, state: LCAState, drive, lateral, lam, eta) -> LCAState:
    u = dynamics.euler_step(state.u, drive, lateral, lam=lam, eta=eta,
                            threshold=self.threshold, nonneg=self.nonneg)
    # A diagnostic, not a function to differentiate (its norm has no
    # derivative where u stands still).
    error = jax.lax.stop_gradient(relative_change(u, state.u))
    return LCAState(u, state.iter_num + 1, error)

  def _run(self, x, operator, init, record=None):
    """``(codes, state, records)``; ``records`` stacks ``record(a)`` for the
    codes before the first update and after each (lcapt's ``return_all_ts``)."""
    problem = operator.bind(x)
    lam, eta = self._rates(problem.dtype)
    drive, lateral = problem.drive(), problem.lateral()
    state = self._start(problem, drive, init)
    step = lambda s: self._advance(s, drive, lateral, lam, eta)
    records = None
    if record is None:
      state = loops.iterate(step, state, self.maxiter, checkpoint=self.grad == 'checkpoint')
    else:
      record_codes = lambda s: record(self._codes(s.u, lam))
      first = jax.tree.map(lambda r: r[None], record_codes(state))
      state, later = loops.iterate_recorded(step, state, self.maxiter, record_codes)
      records = jax.tree.map(lambda f, l: jnp.concatenate([f, l]), first, later)
    codes = problem.to_user(self._codes(state.u, lam))
    return codes, state._map_codes(problem.to_user), records


# --------------------------------------------------------------------- FISTA


@_pytree(leaves=('lam',))
@dataclasses.dataclass(frozen=True, kw_only=True)
class FISTA:
  """FISTA on the (non-negative) lasso ½‖P x − Φ a‖² + λ‖a‖₁.

  Attributes:
    lam: sparsity weight λ ≥ 0.
    maxiter: iteration cap (the exact count when ``tol`` is None).
    tol: None, or stop once ``state.error`` (the largest per-sample relative
      change of the codes) is at most ``tol``; a ``while_loop``, so it needs
      ``grad='implicit'``.
    nonneg: codes a ≥ 0.
    grad: 'implicit' (implicit function theorem at the solution, through
      :meth:`optimality_fun`; conjugate gradients with ``cg_tol``,
      ``cg_maxiter``), 'unroll' or 'checkpoint' (through the loop).
  """

  lam: ArrayLike
  maxiter: int
  tol: Optional[float] = None
  nonneg: bool = True
  grad: str = 'implicit'
  cg_tol: float = 1e-6
  cg_maxiter: int = 1000

  def __post_init__(self):
    options.scalar('FISTA.lam', self.lam, minimum=0.0, strict=False)
    options.integer('FISTA.maxiter', self.maxiter, minimum=1)
    options.tolerance('FISTA.tol', self.tol)
    _bool('FISTA.nonneg', self.nonneg)
    options.choice('FISTA.grad', self.grad, FISTA_GRADS)
    if self.tol is not None and self.grad != 'implicit':
      raise ValueError(
          f"FISTA.tol stops in a while_loop, which grad={self.grad!r} cannot differentiate; "
          "use grad='implicit' (or tol=None)")
    options.cg_settings(self.cg_tol, self.cg_maxiter)

  def init_state(self, x, operator, init: Optional[FISTAState] = None) -> FISTAState:
    """The state a run starts from: a = 0 and t = 1 (error inf), or ``init``
    to continue from (its codes, momentum and error). The step size is
    recomputed for this operator; ``iter_num`` starts at 0.

    A continued state keeps its convergence measure, so with ``tol`` a state
    that had converged stops at once. Codes of another input, dictionary or
    λ (an amortised warm start) have not converged for this one, and the
    momentum is the old problem's: start from ``init=state.restarted()``.
    """
    problem = operator.bind(x)
    step_size = self._step_size(problem)
    return self._start(problem, problem.drive(), step_size, init)._map_codes(problem.to_user)

  def update(self, codes, state: FISTAState, x, operator) -> Step:
    """One step from ``state``; returns ``Step(a_{k+1}, state)``.

    ``codes`` is there for jaxopt's ``update(params, state, ...)`` shape and
    is not read: the iterate is ``state.codes``, with its momentum. The step
    size comes from ``state`` (:meth:`init_state` estimates it once).
    """
    del codes
    problem = operator.bind(x)
    lam = jnp.asarray(self.lam, problem.dtype)
    codes, previous = _conv_codes(state, FISTAState, ('codes', 'previous_codes'), problem,
                                   argument='state')
    state = state._replace(codes=codes, previous_codes=previous)
    state = self._advance(state, problem.drive(), problem.gram, lam, state.step_size)
    return Step(problem.to_user(state.codes), state._map_codes(problem.to_user))

  def run(self, x, operator, init: Optional[FISTAState] = None) -> Step:
    """Up to ``maxiter`` steps from :meth:`init_state`; ``Step(codes, state)``.

    With ``grad='implicit'`` the codes' gradient is the implicit one and the
    state carries none.
    """
    codes, state, _ = self._run(x, operator, init)
    return Step(codes, state)

  def optimality_fun(self, codes, x, operator) -> jax.Array:
    """F(a) = 1_S ⊙ (ΦᵀΦ a − Φᵀ P x + λ·sign(a)), zero on the support of a
    lasso solution (:func:`mi_jax.lca.implicit.lasso_optimality`)."""
    problem = operator.bind(x)
    lam = jnp.asarray(self.lam, problem.dtype)
    residual = implicit.lasso_optimality(
        problem.from_user(codes), problem.canvas, problem.dictionary, lam, problem.geom)
    return problem.to_user(residual)

  def _step_size(self, problem: BoundDictionary):
    """1/L; Φ is the same for every sample, so one estimate on a batch of one
    serves all."""
    return 1.0 / lipschitz_constant(problem.gram, (1, *problem.code_shape[1:]), problem.dtype)

  def _start(self, problem: BoundDictionary, drive, step_size, init) -> FISTAState:
    if init is None:
      codes = previous = jnp.zeros_like(drive)  # with the drive's sharding
      t, error = jnp.ones((), problem.dtype), jnp.inf
    else:
      codes, previous = _conv_codes(init, FISTAState, ('codes', 'previous_codes'), problem,
                                     argument='init')
      t, error = jnp.asarray(init.t).astype(problem.dtype), init.error
    return FISTAState(codes, previous, t, step_size, jnp.zeros((), jnp.int32),
                      _scalar_like(error, drive))

  def _advance(self, state: FISTAState, drive, gram, lam, step_size) -> FISTAState:
    codes, previous, t = fista_step(state.codes, state.previous_codes, state.t, drive, gram,
                                    lam=lam, step_size=step_size, nonneg=self.nonneg)
    # A first step without momentum (t = 1: a cold start or a restart) does
    # not count: from a = 0 its change is 1, or 0 when the codes stay at
    # zero, which would stop FISTA unmoved.
    error = jnp.where(state.t == 1.0, jnp.inf, relative_change(codes, previous))
    return state._replace(codes=codes, previous_codes=previous, t=t,
                          iter_num=state.iter_num + 1, error=jax.lax.stop_gradient(error))

  def _run(self, x, operator, init, record=None):
    """``(codes, state, records)``; ``records`` stacks ``record(a)`` after each step."""
    if self.grad != 'implicit':
      return self._loop(x, operator, init, record)
    dtype = working_dtype(x, operator.dictionary)
    x, dictionary = jnp.asarray(x).astype(dtype), jnp.asarray(operator.dictionary).astype(dtype)
    with_params = lambda dictionary, lam: (
        dataclasses.replace(self, lam=lam), dataclasses.replace(operator, dictionary=dictionary))

    def solution(start, x, dictionary, lam):
      solver, op = with_params(dictionary, lam)
      codes, state, records = solver._loop(x, op, start, record)
      return codes, (state, records)

    def optimality(codes, x, dictionary, lam):
      solver, op = with_params(dictionary, lam)
      return solver.optimality_fun(codes, x, op)

    codes, (state, records) = implicit.with_implicit_grad(
        solution, optimality, cg_tol=self.cg_tol, cg_maxiter=self.cg_maxiter,
    )(init, x, dictionary, jnp.asarray(self.lam, dtype))
    return codes, state, records

  def _loop(self, x, operator, init, record):
    problem = operator.bind(x)
    lam = jnp.asarray(self.lam, problem.dtype)
    # Step size, then drive: this order fixes the order in which reverse mode
    # sums the dictionary's cotangents, so the gradients' last bits.
    step_size = self._step_size(problem)
    drive = problem.drive()
    state = self._start(problem, drive, step_size, init)
    step = lambda s: self._advance(s, drive, problem.gram, lam, step_size)
    # The step size is a constant of the run: closed over, not carried.
    carry, records = state._replace(step_size=None), None
    if self.tol is not None:
      keep_going = lambda s: (s.iter_num < self.maxiter) & (s.error > self.tol)
      carry = jax.lax.while_loop(keep_going, step, carry)
    elif record is not None:
      carry, records = loops.iterate_recorded(step, carry, self.maxiter, lambda s: record(s.codes))
    else:
      carry = loops.iterate(step, carry, self.maxiter, checkpoint=self.grad == 'checkpoint')
    state = carry._replace(step_size=step_size)
    return problem.to_user(state.codes), state._map_codes(problem.to_user), records
