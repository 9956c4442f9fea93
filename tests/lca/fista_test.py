"""solver='fista' solves the convolutional lasso (oracles: scikit-learn, KKT)."""

import numpy as np
import pytest
from sklearn.linear_model import Lasso

from mi_jax import lca
from mi_jax.lca import fista, operators
from tests.lca import reference


def _problem(seed, *, n=2, hw=(8, 12), c=2, f=6, k=(4, 4)):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, *hw, c)).astype(np.float32)
  d = np.asarray(lca.normalize_dictionary(rng.normal(size=(*k, c, f)).astype(np.float32)))
  return x, d


@pytest.mark.parametrize('nonneg', [True, False])
def test_non_overlapping_patches_equal_sklearn_lasso(nonneg):
  """stride = kernel: every patch is an independent lasso."""
  x, d = _problem(0)
  lam = 0.3
  codes = np.asarray(lca.solve(x, d, lam=lam, n_steps=3000, solver='fista', stride=4,
                               padding='valid', nonneg=nonneg))
  kh, kw, c, f = d.shape
  matrix = d.reshape(kh * kw * c, f).astype(np.float64)  # patch pixels (i, j, c) × atoms
  n_pixels = matrix.shape[0]
  # sklearn minimises (1/2n)‖y − Xw‖² + α‖w‖₁ with n = patch size, so α = λ/n.
  oracle = Lasso(alpha=lam / n_pixels, fit_intercept=False, positive=nonneg,
                 tol=1e-12, max_iter=100_000)
  for n in range(x.shape[0]):
    for py in range(x.shape[1] // kh):
      for px in range(x.shape[2] // kw):
        patch = x[n, py * kh:(py + 1) * kh, px * kw:(px + 1) * kw].astype(np.float64)
        expected = oracle.fit(matrix, patch.ravel()).coef_
        np.testing.assert_allclose(codes[n, py, px], expected, atol=2e-4)
  assert np.count_nonzero(codes) > 0 and np.count_nonzero(codes == 0) > 0


@pytest.mark.parametrize('stride,padding', [(1, 'same'), (2, 'same'), (1, 'valid')])
def test_kkt_conditions_hold_at_convergence(stride, padding):
  x, d = _problem(1, hw=(10, 9), k=(5, 5))
  codes, info = lca.solve(x, d, lam=0.2, n_steps=4000, solver='fista', stride=stride,
                          padding=padding, return_info=True)
  assert np.all(np.asarray(info.kkt_violation) < 2e-4), info.kkt_violation
  # the same measure flags a non-solution
  _, early = lca.solve(x, d, lam=0.2, n_steps=3, solver='fista', stride=stride,
                       padding=padding, return_info=True)
  assert np.all(np.asarray(early.kkt_violation) > 1e-2)


def test_kkt_violation_matches_explicit_matrix():
  x, d = _problem(2, n=1, hw=(6, 6), k=(3, 3), f=3)
  phi, code_hw = reference.synthesis_matrix(d, (6, 6), (1, 1), 'same')
  codes, info = lca.solve(x, d, lam=0.1, n_steps=2000, solver='fista', return_info=True)
  a = np.asarray(codes, np.float64).ravel()
  canvas = np.pad(x[0].astype(np.float64), ((1, 1), (1, 1), (0, 0))).ravel()
  g = phi.T @ (canvas - phi @ a)
  violation = np.where(a != 0, np.abs(g - 0.1 * np.sign(a)), np.maximum(g - 0.1, 0))
  np.testing.assert_allclose(float(info.kkt_violation[0]), violation.max(), atol=1e-5)
  energy = 0.5 * np.sum((canvas - phi @ a) ** 2) + 0.1 * np.abs(a).sum()
  np.testing.assert_allclose(float(info.energy[0]), energy, rtol=1e-5)


def test_lca_converges_to_the_fista_solution():
  x, d = _problem(3, hw=(9, 9), k=(5, 5))
  converged = lca.solve(x, d, lam=0.2, n_steps=3000, solver='fista')
  long_lca, info = lca.solve(x, d, lam=0.2, n_steps=3000, tau=3.0, return_info=True)
  np.testing.assert_allclose(np.asarray(long_lca), np.asarray(converged), atol=1e-4)
  assert np.all(np.asarray(info.kkt_violation) < 1e-4)


def test_lipschitz_constant_is_the_top_eigenvalue():
  x, d = _problem(4, n=1, hw=(7, 6), k=(3, 3), f=4)
  phi, code_hw = reference.synthesis_matrix(d, (7, 6), (2, 1), 'same')
  top = np.linalg.eigvalsh(phi.T @ phi).max()
  geom = operators.Geometry((7, 6), (3, 3), (2, 1), 'same')
  estimate = float(fista.lipschitz_constant(
      lambda a: operators.gram(a, d, geom), (1, *geom.code_hw, 4), np.float32, n_iters=300))
  assert top <= estimate <= 1.02 * top


def test_lca_energy_decreases_when_eta_below_2_over_L():
  x, d = _problem(5, hw=(9, 9), k=(5, 5))
  geom = operators.Geometry((9, 9), (5, 5), (1, 1), 'same')
  lipschitz = float(fista.lipschitz_constant(
      lambda a: operators.gram(a, d, geom), (1, 9, 9, 6), np.float32, n_iters=300))
  for eta in (0.5 / lipschitz, 1.9 / lipschitz):
    _, info = lca.solve(x, d, lam=0.2, n_steps=300, tau=1.0 / eta, return_trajectory=True)
    energy = np.asarray(info.energy_trajectory)  # (T, N)
    steps = np.diff(energy, axis=0)
    assert np.all(steps <= 1e-4 * np.abs(energy[:-1])), steps.max()
    assert energy[-1].sum() < 0.9 * energy[1].sum()


def test_tolerance_stops_early_near_the_solution():
  x, d = _problem(6, hw=(9, 9), k=(5, 5))
  reference_codes = lca.solve(x, d, lam=0.2, n_steps=4000, solver='fista')
  codes, info = lca.solve(x, d, lam=0.2, n_steps=4000, solver='fista', tol=1e-6,
                          return_info=True)
  assert 10 < int(info.n_steps) < 4000
  np.testing.assert_allclose(np.asarray(codes), np.asarray(reference_codes), atol=1e-3)
