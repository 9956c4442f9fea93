"""lateral='fft': the Gram correlation by real FFTs, and what 'auto' picks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mi_jax import lca
from mi_jax.lca import operators
from mi_jax.lca import solver as solve_module

# (image_hw, kernel_hw, stride, padding): odd and even kernels, strides 1–3,
# non-square grids, and code grids narrower than the Gram radius (clipped).
GEOMETRIES = [
    ((28, 28), (5, 5), (1, 1), 'same'),
    ((11, 9), (5, 3), (2, 1), 'same'),
    ((12, 10), (4, 4), (2, 2), 'valid'),
    ((12, 10), (4, 3), (3, 2), 'valid'),
    ((6, 7), (5, 5), (1, 1), 'valid'),
    ((3, 7), (5, 5), (1, 1), 'same'),
    ((5, 5), (5, 5), (1, 1), 'valid'),  # a 1×1 code grid
]


def _operands(geom, seed, c=3, f=5):
  rng = np.random.default_rng(seed)
  d = rng.normal(size=(*geom.kernel_hw, c, f)).astype(np.float32)
  codes = rng.normal(size=(2, *geom.code_hw, f)).astype(np.float32)
  return d, codes


@pytest.mark.parametrize('image_hw,kernel_hw,stride,padding', GEOMETRIES)
def test_fft_lateral_is_the_gram_lateral(image_hw, kernel_hw, stride, padding):
  geom = operators.Geometry(image_hw, kernel_hw, stride, padding)
  d, codes = _operands(geom, sum(image_hw) + sum(kernel_hw))
  kernel = operators.gram_kernel(d, geom)
  expected = np.asarray(operators.lateral_with_kernel(codes, kernel))
  got = operators.lateral_fft(codes, operators.gram_spectrum(kernel, geom), geom)
  assert got.shape == expected.shape and got.dtype == jnp.float32
  scale = np.abs(expected).max()
  np.testing.assert_allclose(np.asarray(got), expected, atol=2e-6 * scale, rtol=0)


def test_fft_lateral_matches_float64_recon():
  """Against the reconstruction form in float64: float32 rounding only."""
  geom = operators.Geometry((28, 28), (5, 5), (1, 1), 'same')
  d, codes = _operands(geom, 3, c=16, f=28)
  with jax.enable_x64(True):
    expected = np.asarray(operators.lateral_recon(
        jnp.asarray(codes, jnp.float64), jnp.asarray(d, jnp.float64), geom))
  got = operators.lateral_fft(codes, operators.gram_spectrum(operators.gram_kernel(d, geom), geom),
                              geom)
  np.testing.assert_allclose(np.asarray(got), expected, atol=1e-6 * np.abs(expected).max(), rtol=0)


def test_fft_grid_is_smooth_and_large_enough():
  for image_hw, kernel_hw, stride, padding in GEOMETRIES:
    geom = operators.Geometry(image_hw, kernel_hw, stride, padding)
    for size, h, m in zip(operators.fft_shape(geom), geom.code_hw, operators.fft_radius(geom)):
      assert size >= h + m and m <= h - 1
      for p in (2, 3, 5):
        while size % p == 0:
          size //= p
      assert size == 1
  sg_layer = operators.Geometry((28, 28), (5, 5), (1, 1), 'same')
  assert operators.fft_shape(sg_layer) == (32, 32)  # H' + m = 28 + 4


def test_one_row_less_padding_wraps_around(monkeypatch):
  """S = H' + m − 1 lets the widest taps wrap onto the codes: S ≥ H' + m is needed."""
  geom = operators.Geometry((12, 12), (5, 5), (1, 1), 'same')
  d, codes = _operands(geom, 5)
  kernel = operators.gram_kernel(d, geom)
  expected = np.asarray(operators.lateral_with_kernel(codes, kernel))
  monkeypatch.setattr(operators, 'fft_shape', lambda g: (g.code_hw[0] + 3, g.code_hw[1] + 4))
  got = operators.lateral_fft(codes, operators.gram_spectrum(kernel, geom), geom)
  assert np.abs(np.asarray(got) - expected).max() > 1e-2 * np.abs(expected).max()


def _jaxpr(x, d, lateral):
  return str(jax.make_jaxpr(lambda x, d: lca.solve(x, d, lam=0.5, n_steps=5, lateral=lateral))(x, d))


def _sparse_guard_layer(c, f, n=2):
  rng = np.random.default_rng(0)
  x = rng.uniform(size=(n, 28, 28, c)).astype(np.float32)
  return x, np.asarray(lca.normalize_dictionary(rng.normal(size=(5, 5, c, f)).astype(np.float32)))


@pytest.mark.parametrize('c,f,on_cpu,elsewhere', [(16, 28, 'fft', 'gram'), (1, 16, 'gemm', 'recon')])
def test_auto_picks_fft_for_sparse_guard_layer2_and_gemm_for_layer1(c, f, on_cpu, elsewhere):
  geom = operators.Geometry((28, 28), (5, 5), (1, 1), 'same')
  assert solve_module.auto_lateral(geom, c, f, 'cpu') == on_cpu
  assert solve_module.auto_lateral(geom, c, f, 'gpu') == elsewhere  # off CPU: unchanged rule
  assert jax.default_backend() == 'cpu'
  x, d = _sparse_guard_layer(c, f)
  assert _jaxpr(x, d, 'auto') == _jaxpr(x, d, on_cpu)


def test_dense_fft_runs_as_the_matrix_form():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(3, 10)).astype(np.float32)
  d = rng.normal(size=(10, 7)).astype(np.float32)
  assert _jaxpr(x, d, 'fft') == _jaxpr(x, d, 'gram')
  assert 'fft' not in _jaxpr(x, d, 'fft')
