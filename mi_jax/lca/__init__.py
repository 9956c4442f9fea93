"""mi_jax.lca: a pure-JAX, jitted, differentiable LCA sparse-coding solver.

No Flax here: modules elsewhere wrap these functions. Public API:

* :func:`solve`: codes of images (NHWC, HWIO dictionary) or vectors (dense).
* :class:`SolveInfo`: diagnostics (energy, KKT violation, trajectories).
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
from mi_jax.lca.solver import SolveInfo, normalize_per_sample, solve

__all__ = [
    'SolveInfo',
    'dictionary_gradient_step',
    'hebbian_update',
    'normalize_dictionary',
    'normalize_per_sample',
    'reconstruct',
    'reconstruction_error',
    'reconstruction_loss',
    'solve',
]
