"""solver='lca' reproduces lcapt's LCAConv2D forward (float64 oracle)."""

import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mi_jax import lca
from tests.lca import reference

TOLERANCE = 1e-5
LATERALS = ['recon', 'gram', 'gemm', 'fft']


def _problem(seed, *, n=2, hw=(11, 9), c=2, f=5, k=(5, 5)):
  rng = np.random.default_rng(seed)
  x = rng.uniform(0.0, 1.0, (n, *hw, c)).astype(np.float32)  # image-like, not normalised
  d = rng.normal(size=(*k, c, f)).astype(np.float32)
  return x, np.asarray(lca.normalize_dictionary(d))


def _nchw(a):
  return np.transpose(np.asarray(a), (0, 3, 1, 2))


def _oihw(d):
  return np.transpose(np.asarray(d, np.float64), (3, 2, 0, 1))


@pytest.mark.parametrize('stride', [1, 2])
@pytest.mark.parametrize('nonneg', [True, False])
@pytest.mark.parametrize('threshold', ['soft', 'hard'])
@pytest.mark.parametrize('lateral', LATERALS)
def test_matches_lcapt(stride, nonneg, threshold, lateral):
  seed = zlib.crc32(repr((stride, nonneg, threshold, lateral)).encode()) % 1000
  x, d = _problem(seed)
  rng = np.random.default_rng(seed + 1)
  tau = float(rng.uniform(5.0, 50.0))
  lam = float(rng.uniform(0.05, 0.5))
  codes = lca.solve(
      x, d, lam=lam, n_steps=120, tau=tau, stride=stride, threshold=threshold,
      nonneg=nonneg, normalize_input=True, lateral=lateral,
  )
  expected = reference.lcapt_conv2d_forward(
      _nchw(x), _oihw(d), lam=lam, tau=tau, n_steps=120, stride=(stride, stride),
      threshold=threshold, nonneg=nonneg,
  )
  assert codes.shape == (2, *expected.shape[2:], 5)
  assert np.abs(expected).max() > 0.05  # a non-trivial code
  np.testing.assert_allclose(_nchw(codes), expected, atol=TOLERANCE, rtol=0)


@pytest.fixture(scope='module')
def sparse_guard_layer1():
  """(x, d, float64 lcapt codes) of SG's first layer: 500 iterations, τ = 100, λ = 0.5."""
  x, d = _problem(7, n=2, hw=(28, 28), c=1, f=6)
  expected = reference.lcapt_conv2d_forward(
      _nchw(x), _oihw(d), lam=0.5, tau=100.0, n_steps=500, stride=(1, 1))
  return x, d, expected


@pytest.mark.parametrize('lateral', ['auto', *LATERALS])
def test_matches_lcapt_sparse_guard_setting(sparse_guard_layer1, lateral):
  """SG's layer: 500 iterations, τ = 100, λ = 0.5, 5×5, on 28×28 inputs."""
  x, d, expected = sparse_guard_layer1
  codes = lca.solve(x, d, lam=0.5, n_steps=500, tau=100.0, normalize_input=True,
                    lateral=lateral)
  np.testing.assert_allclose(_nchw(codes), expected, atol=TOLERANCE, rtol=0)


SG_LAYER2 = dict(lam=0.5, n_steps=500, tau=100.0, normalize_input=True)


@pytest.fixture(scope='module')
def sparse_guard_layer2():
  """(x, d, float64 codes) of SG's second layer (28×28×16 → 28), 500 steps.

  The NumPy lcapt oracle needs ~40 s per image at this size, so the float64
  reference is mi_jax's 'gemm' form under x64 (checked against that oracle
  by the tests above; it shares no code with the FFT or Gram kernels).
  """
  x, d = _problem(17, n=2, hw=(28, 28), c=16, f=28)
  with jax.enable_x64(True):
    expected = np.asarray(lca.solve(jnp.asarray(x, jnp.float64), jnp.asarray(d, jnp.float64),
                                    lateral='gemm', **SG_LAYER2))
  return x, d, expected


@pytest.mark.parametrize('lateral', ['gram', 'fft'])
def test_sparse_guard_layer2_matches_float64(sparse_guard_layer2, lateral):
  x, d, expected = sparse_guard_layer2
  codes = lca.solve(x, d, lateral=lateral, **SG_LAYER2)
  assert codes.dtype == jnp.float32
  assert np.abs(expected).max() > 1.0 and 0.05 < np.mean(expected != 0) < 0.9
  np.testing.assert_allclose(np.asarray(codes), expected, atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize('lateral', LATERALS)
@pytest.mark.parametrize('kernel,stride', [((3, 5), (2, 1)), ((4, 4), (2, 2)), ((4, 3), (3, 2))])
def test_matches_lcapt_valid_padding(kernel, stride, lateral):
  """'valid' padding, odd and even kernels (lcapt's other lateral-pad rules)."""
  x, d = _problem(3, hw=(12, 10), k=kernel)
  codes = lca.solve(x, d, lam=0.2, n_steps=80, tau=10.0, stride=stride, padding='valid',
                    normalize_input=True, lateral=lateral)
  expected = reference.lcapt_conv2d_forward(
      _nchw(x), _oihw(d), lam=0.2, tau=10.0, n_steps=80, stride=stride, padding='valid')
  np.testing.assert_allclose(_nchw(codes), expected, atol=TOLERANCE, rtol=0)


def test_returns_lcapt_iteration_and_trajectory():
  """lcapt returns T(u_{T−1}); its return_all_ts stacks T(u_0) … T(u_{T−1})."""
  x, d = _problem(11)
  codes, info = lca.solve(x, d, lam=0.1, n_steps=30, tau=8.0, normalize_input=True,
                          return_trajectory=True)
  expected = reference.lcapt_conv2d_forward(
      _nchw(x), _oihw(d), lam=0.1, tau=8.0, n_steps=30, stride=(1, 1), return_all=True)
  trajectory = np.transpose(np.asarray(info.trajectory), (0, 1, 4, 2, 3))
  assert trajectory.shape == expected.shape
  np.testing.assert_allclose(trajectory, expected, atol=TOLERANCE, rtol=0)
  np.testing.assert_array_equal(np.asarray(info.trajectory[-1]), np.asarray(codes))
  assert np.all(np.asarray(info.trajectory[0]) == 0)  # u_0 = 0
  # one step fewer gives a different answer: the budget is exact
  shorter = lca.solve(x, d, lam=0.1, n_steps=29, tau=8.0, normalize_input=True)
  assert np.abs(np.asarray(shorter) - np.asarray(codes)).max() > 1e-4


def test_euler_step_is_dt_over_tau():
  x, d = _problem(5)
  a = lca.solve(x, d, lam=0.1, n_steps=60, tau=20.0, dt=2.0)
  b = lca.solve(x, d, lam=0.1, n_steps=60, tau=10.0, dt=1.0)
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def test_normalize_input_matches_lcapt_preprocessing():
  x, _ = _problem(2)
  np.testing.assert_allclose(
      np.asarray(lca.normalize_per_sample(jnp.asarray(x))),
      reference.lcapt_normalize(x.astype(np.float64)), atol=1e-5)


@pytest.mark.parametrize('lateral', ['auto', *LATERALS])
@pytest.mark.parametrize('nonneg', [True, False])
def test_dense_matches_reference(nonneg, lateral):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(4, 12)).astype(np.float32)
  d = np.asarray(lca.normalize_dictionary(rng.normal(size=(12, 20)).astype(np.float32)))
  codes = lca.solve(x, d, lam=0.3, n_steps=200, tau=10.0, nonneg=nonneg, lateral=lateral)
  expected = reference.dense_lca(x, d, lam=0.3, tau=10.0, n_steps=200, nonneg=nonneg)
  assert codes.shape == (4, 20)
  np.testing.assert_allclose(np.asarray(codes), expected, atol=TOLERANCE, rtol=0)


def test_non_unit_atoms_subtract_their_own_norm_like_lcapt():
  """lcapt zeroes G's centre tap, i.e. subtracts ‖ω_f‖²·a_f, not a_f."""
  x, d = _problem(9)
  d = d * np.linspace(0.5, 2.0, d.shape[-1]).astype(np.float32)
  codes = lca.solve(x, d, lam=0.2, n_steps=60, tau=30.0, normalize_input=True)
  expected = reference.lcapt_conv2d_forward(
      _nchw(x), _oihw(d), lam=0.2, tau=30.0, n_steps=60, stride=(1, 1))
  np.testing.assert_allclose(_nchw(codes), expected, atol=TOLERANCE, rtol=0)


def test_bfloat16_input_keeps_float32_state():
  x, d = _problem(4)
  low = lca.solve(jnp.asarray(x, jnp.bfloat16), d, lam=0.1, n_steps=100, tau=100.0)
  assert low.dtype == jnp.float32
  full = lca.solve(jnp.asarray(x, jnp.bfloat16).astype(jnp.float32), d, lam=0.1,
                   n_steps=100, tau=100.0)
  np.testing.assert_allclose(np.asarray(low), np.asarray(full), atol=1e-6)


def test_gemm_operators_are_the_conv_operators():
  from mi_jax.lca import operators
  rng = np.random.default_rng(12)
  for stride, padding, hw in [((1, 1), 'same', (9, 8)), ((2, 3), 'same', (11, 10)), ((2, 2), 'valid', (12, 9))]:
    geom = operators.Geometry(hw, (5, 3), stride, padding)
    d = rng.normal(size=(5, 3, 3, 4)).astype(np.float32)
    codes = rng.normal(size=(2, *geom.code_hw, 4)).astype(np.float32)
    canvas = rng.normal(size=(2, *geom.canvas_hw, 3)).astype(np.float32)
    np.testing.assert_allclose(operators.synthesis_gemm(codes, d, geom),
                               operators.synthesis(codes, d, geom), atol=1e-5)
    np.testing.assert_allclose(operators.analysis_gemm(canvas, d, geom),
                               operators.analysis(canvas, d, geom), atol=1e-5)
