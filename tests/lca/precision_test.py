"""The solver's convolutions run at HIGHEST precision unless the caller asks otherwise."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mi_jax import lca


def _hlo(lateral):
  x = jnp.asarray(np.random.default_rng(0).random((2, 12, 12, 3), dtype=np.float32))
  d = lca.normalize_dictionary(jnp.asarray(np.random.default_rng(1).standard_normal((5, 5, 3, 4), dtype=np.float32)))
  return jax.jit(lambda x, d: lca.solve(x, d, lam=0.1, n_steps=3, lateral=lateral)).lower(x, d).as_text()


@pytest.mark.parametrize('lateral', ['recon', 'gram', 'gemm', 'fft'])
def test_highest_by_default_and_the_callers_choice_inside_a_context(lateral):
  assert 'HIGHEST' in _hlo(lateral)
  with jax.default_matmul_precision('bfloat16'):
    text = _hlo(lateral)
  assert 'HIGHEST' not in text
