"""mi_jax.lca: a pure-JAX, jitted, differentiable LCA sparse-coding solver.

No Flax here: modules elsewhere wrap these functions. Public API:

* :func:`solve`: codes of images (NHWC, HWIO dictionary) or vectors (dense),
  every option in one call.
* :class:`SolveInfo`: diagnostics (energy, KKT violation, trajectories).
* Solver objects in jaxopt's shape (:mod:`mi_jax.lca.objects`), which
  ``solve`` runs through: the operators :class:`ConvDictionary` and
  :class:`DenseDictionary`; the solvers :class:`LCA` and :class:`FISTA`,
  each with ``init_state``, ``update`` (one step), ``run`` (returning
  :class:`Step` ``(codes, state)``, warm-started by ``init=state``) and
  ``optimality_fun`` (the residual for implicit differentiation); their
  states :class:`LCAState` and :class:`FISTAState`.
* Helpers: :func:`normalize_per_sample`,
  :func:`normalize_dictionary`, :func:`reconstruct`.
* Dictionary learning: :func:`hebbian_update`, :func:`dictionary_gradient_step`,
  :func:`reconstruction_loss`.
"""

from mi_jax.lca.dictionary import (
    dictionary_gradient_step,
    hebbian_update,
    normalize_dictionary,
    reconstruct,
    reconstruction_error,
    reconstruction_loss,
)
from mi_jax.lca.objects import (
    FISTA,
    LCA,
    ConvDictionary,
    DenseDictionary,
    FISTAState,
    LCAState,
    Step,
)
from mi_jax.lca.solver import SolveInfo, normalize_per_sample, solve

__all__ = [
    'ConvDictionary',
    'DenseDictionary',
    'FISTA',
    'FISTAState',
    'LCA',
    'LCAState',
    'SolveInfo',
    'Step',
    'dictionary_gradient_step',
    'hebbian_update',
    'normalize_dictionary',
    'normalize_per_sample',
    'reconstruct',
    'reconstruction_error',
    'reconstruction_loss',
    'solve',
]
