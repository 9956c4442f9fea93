"""Distance correlation, HSIC and COCO against NumPy float64 oracles."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mi_jax.defenses import dependence


# ---- NumPy float64 oracles, written from the definitions -------------------

def _np_dist(x):
  return np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))


def _np_double_centre(a):
  return a - a.mean(0, keepdims=True) - a.mean(1, keepdims=True) + a.mean()


def np_dcor(x, y):
  a, b = _np_double_centre(_np_dist(x)), _np_double_centre(_np_dist(y))
  dcov2 = (a * b).mean()
  return np.sqrt(dcov2 / np.sqrt((a * a).mean() * (b * b).mean()))


def np_kernel(x, kernel, sigma):
  if kernel == 'linear':
    return x @ x.T
  d = _np_dist(x)
  if sigma is None:
    sigma = max(np.median(d[np.triu_indices(len(x), 1)]), 1e-2)
  return np.exp(-d ** 2 / (2 * sigma ** 2))


def np_hsic(x, y, estimator, kernel_y='gaussian', sigma=None):
  n = len(x)
  h = np.eye(n) - np.ones((n, n)) / n
  k, l = h @ np_kernel(x, 'gaussian', sigma) @ h, h @ np_kernel(y, kernel_y, sigma) @ h
  if estimator == 'biased':
    return np.trace(k @ l) / (n - 1) ** 2
  if estimator == 'normalized':
    return np.trace(k @ l) / np.sqrt(np.trace(k @ k) * np.trace(l @ l))
  r = lambda m: m @ np.linalg.inv(m + n * 1e-5 * np.eye(n))
  return np.sum(r(k) * r(l).T)


def np_coco(x, y):
  n = len(x)
  h = np.eye(n) - np.ones((n, n)) / n
  k, l = h @ np_kernel(x, 'gaussian', None) @ h, h @ np_kernel(y, 'gaussian', None) @ h
  return np.sqrt(np.linalg.norm(k @ l, 2)) / n


def _samples(n, dx=6, dy=4, seed=0):
  rng = np.random.default_rng(seed)
  return rng.normal(size=(n, dx)), rng.normal(size=(n, dy))


# ---- distance correlation ---------------------------------------------------

def test_dcor_matches_numpy_float64():
  x, _ = _samples(32)
  y = np.tanh(x[:, :3]) + 0.3 * np.random.default_rng(1).normal(size=(32, 3))
  got = float(dependence.distance_correlation(jnp.asarray(x), jnp.asarray(y)))
  assert got == pytest.approx(np_dcor(x, y), abs=1e-5)
  assert 0.0 <= got <= 1.0


def test_dcor_is_one_for_linear_maps_and_scaling():
  x, _ = _samples(24, dx=5)
  a = np.random.default_rng(2).normal(size=(5, 5)) + 3 * np.eye(5)  # non-degenerate
  # dCor = 1 iff y = a + b·xC with C orthonormal; a general A is not an
  # isometry, so for the linear-map case use an orthogonal A (and scaling).
  q, _ = np.linalg.qr(a)
  for y in (2.5 * x @ q + 1.0, 3.0 * x, x @ q):
    assert float(dependence.distance_correlation(jnp.asarray(x), jnp.asarray(y))) == pytest.approx(1.0, abs=1e-4)
  # A non-isometric linear map keeps strong, not total, dependence.
  got = float(dependence.distance_correlation(jnp.asarray(x), jnp.asarray(x @ a)))
  assert 0.8 < got <= 1.0 and got == pytest.approx(np_dcor(x, x @ a), abs=1e-5)


def test_dcor_small_and_decreasing_for_independent_samples():
  values = []
  for n in (16, 64, 256):
    x, y = _samples(n, seed=n)
    values.append(float(dependence.distance_correlation(jnp.asarray(x), jnp.asarray(y))))
  assert values[0] > values[1] > values[2]
  assert values[2] < 0.25


def test_dcor_of_a_constant_is_zero_and_gradients_are_finite():
  x, y = _samples(8)
  assert float(dependence.distance_correlation(jnp.ones((8, 3)), jnp.asarray(y))) == 0.0
  x = np.concatenate([x, x[:2]])  # duplicate rows: zero off-diagonal distances
  y = np.concatenate([y, y[:2]])
  grad = jax.grad(lambda z: dependence.distance_correlation(jnp.asarray(x), z))(jnp.asarray(y, jnp.float32))
  assert np.all(np.isfinite(np.asarray(grad))) and np.any(np.asarray(grad) != 0)


def test_dcor_rejects_mismatched_rows():
  with pytest.raises(ValueError, match='same number of rows'):
    dependence.distance_correlation(jnp.ones((4, 2)), jnp.ones((5, 2)))


# ---- HSIC and COCO ----------------------------------------------------------

@pytest.mark.parametrize('estimator', dependence.HSIC_ESTIMATORS)
def test_hsic_matches_numpy_float64(estimator):
  x, y = _samples(20)
  y = y + x[:, :4]
  got = float(dependence.hsic(jnp.asarray(x), jnp.asarray(y), estimator=estimator))
  assert got == pytest.approx(np_hsic(x, y, estimator), rel=2e-3, abs=1e-6)
  fixed = float(dependence.hsic(jnp.asarray(x), jnp.asarray(y), estimator=estimator, sigma_x=2.0, sigma_y=2.0))
  assert fixed == pytest.approx(np_hsic(x, y, estimator, sigma=2.0), rel=2e-3, abs=1e-6)


def test_hsic_linear_label_kernel_matches_numpy():
  x, _ = _samples(20)
  labels = np.random.default_rng(3).integers(0, 4, 20)
  onehot = np.eye(4)[labels]
  got = float(dependence.hsic(jnp.asarray(x), jnp.asarray(onehot), kernel_y='linear', estimator='normalized'))
  assert got == pytest.approx(np_hsic(x, onehot, 'normalized', kernel_y='linear'), rel=1e-4)


@pytest.mark.parametrize('estimator', dependence.HSIC_ESTIMATORS)
def test_hsic_nonnegative_and_permutation_invariant(estimator):
  x, y = _samples(16, seed=4)
  perm = np.random.default_rng(5).permutation(16)
  base = float(dependence.hsic(jnp.asarray(x), jnp.asarray(y), estimator=estimator))
  permuted = float(dependence.hsic(jnp.asarray(x[perm]), jnp.asarray(y[perm]), estimator=estimator))
  assert base >= 0.0
  assert permuted == pytest.approx(base, rel=1e-4)


@pytest.mark.parametrize('estimator', ('biased', 'normalized'))
def test_hsic_near_zero_for_independent_and_larger_when_dependent(estimator):
  values = []
  for n in (16, 64, 256):
    x, y = _samples(n, dx=2, dy=2, seed=10 + n)
    values.append(float(dependence.hsic(jnp.asarray(x), jnp.asarray(y), estimator=estimator)))
  assert values[0] > values[2]
  x, _ = _samples(256, dx=2, seed=7)
  dependent = float(dependence.hsic(jnp.asarray(x), jnp.asarray(np.sin(2 * x)), estimator=estimator))
  assert dependent > 5 * values[2]


def test_coco_matches_numpy_nonnegative_and_detects_dependence():
  x, y = _samples(20, seed=8)
  got = float(dependence.coco(jnp.asarray(x), jnp.asarray(y)))
  assert got >= 0.0
  assert got == pytest.approx(np_coco(x, y), rel=1e-3)
  x, y = _samples(128, dx=2, dy=2, seed=9)
  independent = float(dependence.coco(jnp.asarray(x), jnp.asarray(y)))
  dependent = float(dependence.coco(jnp.asarray(x), jnp.asarray(np.sin(2 * x))))
  assert dependent > 2 * independent


def test_median_bandwidth_matches_numpy():
  x, _ = _samples(15)
  expected = np.median(_np_dist(x)[np.triu_indices(15, 1)])
  assert float(dependence.median_bandwidth(jnp.asarray(x))) == pytest.approx(expected, rel=1e-4)


def test_bad_kernel_and_estimator_names():
  x, y = _samples(4)
  with pytest.raises(ValueError, match='kernel must be one of'):
    dependence.hsic(jnp.asarray(x), jnp.asarray(y), kernel_x='rbf')
  with pytest.raises(ValueError, match='estimator must be one of'):
    dependence.hsic(jnp.asarray(x), jnp.asarray(y), estimator='unbiased')


# ---- NOCCO with the BiDO code's wide kernel ---------------------------------

def _bido_sigma(a):
  return 5.0 * a.shape[1] ** 0.5  # the BiDO code's σ = 5, variance 2σ²·d


def test_nocco_saturates_with_the_median_heuristic_not_with_a_wide_fixed_kernel():
  """The median heuristic makes both soft projectors ≈ H, so NOCCO ≈ n − 1
  whatever the dependence; the BiDO code's fixed width keeps it informative."""
  x, noise = _samples(64, dx=20, dy=10, seed=0)
  dependent = x[:, :10] @ np.random.default_rng(1).normal(size=(10, 10))
  values = {}
  for name, y in (('independent', noise), ('dependent', dependent)):
    median = float(dependence.hsic(jnp.asarray(x), jnp.asarray(y), estimator='nocco'))
    fixed = float(dependence.hsic(jnp.asarray(x), jnp.asarray(y), estimator='nocco',
                                  sigma_x=_bido_sigma(x), sigma_y=_bido_sigma(y)))
    assert median == pytest.approx(np_hsic(x, y, 'nocco'), rel=1e-3)
    values[name] = median, fixed
  (med_ind, fix_ind), (med_dep, fix_dep) = values['independent'], values['dependent']
  # n − 1 = 63 either way (measured 61.2 and 58.8: no sign of the dependence).
  assert med_ind > 0.9 * 63 and med_dep > 0.9 * 63 and med_dep < med_ind + 1
  assert fix_dep > 1.5 * fix_ind  # measured 33.4 and 20.1


def test_nocco_with_a_wide_kernel_keeps_float32_accuracy():
  """Entries of exp(−‖a − b‖²/2σ²d) sit within ~1e-3 of 1 on standardised
  data; centring them must not throw away the digits that carry K̃."""
  x, y = _samples(32, dx=200, dy=100, seed=11)
  y = y + 0.5 * x[:, :100]
  sx, sy = _bido_sigma(x), _bido_sigma(y)
  n = len(x)
  h = np.eye(n) - np.ones((n, n)) / n
  k, l = h @ np_kernel(x, 'gaussian', sx) @ h, h @ np_kernel(y, 'gaussian', sy) @ h
  r = lambda m: m @ np.linalg.inv(m + n * 1e-5 * np.eye(n))
  expected = np.sum(r(k) * r(l).T)
  got = float(dependence.hsic(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32),
                              estimator='nocco', sigma_x=sx, sigma_y=sy))
  assert got == pytest.approx(expected, rel=3e-6)
