"""Bad input: one-line ValueErrors that name the argument and what is allowed."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mi_jax import lca

X = np.zeros((2, 8, 8, 1), np.float32)
D = np.zeros((3, 3, 1, 4), np.float32)


@pytest.mark.parametrize('args,kwargs,pattern', [
    ((np.zeros((2, 1, 8, 8), np.float32), D), {}, r"x has 8 channels .* is x NCHW"),
    ((np.zeros((8, 8, 1), np.float32), D), {}, r"x must have rank 4 \(N, H, W, C: NHWC\) or 2"),
    ((X, np.zeros((4, 9), np.float32)), {}, r"dictionary must have shape \(kh, kw, C, F\)"),
    ((X, np.zeros((3, 3, 2, 4), np.float32)), {}, r"x has 1 channels .* expects 2"),
    ((X.astype(np.uint8), D), {}, r"x must be a floating-point array"),
    ((X, D), {'lam': -0.1}, r"lam must be a finite number >= 0, got -0.1"),
    ((X, D), {'tau': 0.0}, r"tau must be a finite number > 0"),
    ((X, D), {'dt': -1.0}, r"dt must be a finite number > 0"),
    ((X, D), {'n_steps': 0}, r"n_steps must be an integer >= 1, got 0"),
    ((X, D), {'n_steps': 2.5}, r"n_steps must be an integer >= 1"),
    ((X, D), {'solver': 'ista'}, r"solver must be one of \('lca', 'fista'\), got 'ista'"),
    ((X, D), {'threshold': 'medium'}, r"threshold must be one of \('soft', 'hard'\)"),
    ((X, D), {'padding': 'full'}, r"padding must be one of \('same', 'valid'\)"),
    ((X, D), {'grad': 'magic'}, r"grad must be one of"),
    ((X, D), {'lateral': 'fourier'},
     r"lateral must be one of \('auto', 'recon', 'gram', 'gemm', 'fft'\), got 'fourier'"),
    ((X, D), {'stride': 0}, r"stride must be a positive int or a pair"),
    ((X, D), {'grad': 'implicit'}, r"grad='implicit' differentiates a converged solution"),
    ((X, D), {'tol': 1e-3}, r"tol applies to solver='fista' only"),
    ((X, D), {'solver': 'fista', 'threshold': 'hard'}, r"threshold must be 'soft'"),
    ((X, D), {'solver': 'fista', 'tol': 1e-3, 'grad': 'unroll'}, r"use grad='implicit'"),
    ((X, np.zeros((4, 4, 1, 4), np.float32)), {}, r"padding='same' needs an odd kernel"),
    ((np.zeros((2, 2, 2, 1), np.float32), D), {'padding': 'valid'}, r"smaller than the kernel"),
    ((np.zeros((2, 5), np.float32), np.zeros((5, 3), np.float32)), {'stride': 2},
     r"stride must be 1 for a dense"),
])
def test_bad_input_raises_one_line_value_error(args, kwargs, pattern):
  options = {'lam': 0.1, 'n_steps': 10, **kwargs}
  with pytest.raises(ValueError, match=pattern) as error:
    lca.solve(*args, **options)
  assert '\n' not in str(error.value)


def test_traced_hyperparameters_are_accepted_under_jit():
  f = jax.jit(lambda lam, tau: lca.solve(X + 1.0, D + 0.1, lam=lam, n_steps=5, tau=tau))
  assert f(0.1, 10.0).shape == (2, 8, 8, 4)
