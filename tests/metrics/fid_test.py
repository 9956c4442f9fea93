"""Tests for FID: the Fréchet distance, the Inception preprocessing, and the port.

The tests marked by the ``params`` fixture need the pinned Inception weights
in the local cache (``python -m mi_jax.weights.fetch inception_v3_fid``);
they are skipped with that instruction otherwise.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

import jax
import jax.numpy as jnp

from mi_jax.metrics import fid as fid_lib
from mi_jax.metrics import kid as kid_lib
from mi_jax.models import inception_v3
from mi_jax.weights import WeightsUnavailableError, asset_path
from tests.helpers import mesh_of, synthetic_digits


def _random_cov(rng, d, rank=None):
  a = rng.normal(size=(d, rank or d))
  return a @ a.T / d


def _reference_fid(mu1, s1, mu2, s2):
  """The usual float64 formula: scipy's sqrtm of the product, real part."""
  covmean = scipy.linalg.sqrtm(s1 @ s2)
  assert np.abs(np.imag(covmean)).max() < 1e-6
  diff = mu1 - mu2
  return diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(np.real(covmean))


# ---------------------------------------------------------------------------
# Fréchet distance.


def test_frechet_matches_scipy_reference_and_is_symmetric():
  rng = np.random.default_rng(0)
  for d in (3, 16):
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = _random_cov(rng, d), _random_cov(rng, d)
    ours = fid_lib.frechet_distance(mu1, s1, mu2, s2)
    np.testing.assert_allclose(ours, _reference_fid(mu1, s1, mu2, s2), rtol=1e-9)
    np.testing.assert_allclose(ours, fid_lib.frechet_distance(mu2, s2, mu1, s1), rtol=1e-10)
    assert ours > 0.1


def test_frechet_closed_form_for_singular_commuting_covariances():
  # Diagonal covariances with zeros (N < D in practice): tr√(Σ₁Σ₂) = Σ √(aᵢbᵢ),
  # so d² = ‖Δμ‖² + Σ (√aᵢ − √bᵢ)².
  a = np.array([4.0, 0.0, 1.0, 0.0, 9.0])
  b = np.array([1.0, 2.0, 0.0, 0.0, 9.0])
  mu1, mu2 = np.zeros(5), np.array([1.0, 0, 0, 2.0, 0])
  want = 5.0 + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
  np.testing.assert_allclose(fid_lib.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)), want, rtol=1e-12)


def test_fid_of_a_set_with_itself_is_zero_even_when_rank_deficient():
  features = np.random.default_rng(1).normal(size=(5, 40)) * 3  # rank 4 covariance
  assert fid_lib.fid_from_features(features, features) < 1e-9
  assert fid_lib.fid_from_features(features, features + 0.5) == pytest.approx(40 * 0.25, rel=1e-9)
  # Through the covariances the null space costs precision (√ of round-off), not correctness.
  stats = fid_lib.feature_statistics(features)
  assert fid_lib.frechet_distance(*stats, *stats) < 1e-3


def test_small_set_formula_equals_covariance_formula():
  rng = np.random.default_rng(6)
  for n_a, n_b, d in ((7, 9, 12), (30, 25, 6)):  # singular, and full-rank (covariance path)
    a, b = rng.normal(size=(n_a, d)), rng.normal(size=(n_b, d)) * 1.5 + 0.3
    want = _reference_fid(*fid_lib.feature_statistics(a), *fid_lib.feature_statistics(b)) if n_a > d else \
        fid_lib.frechet_distance(*fid_lib.feature_statistics(a), *fid_lib.feature_statistics(b))
    np.testing.assert_allclose(fid_lib.fid_from_features(a, b), want, rtol=1e-6)


def test_frechet_rejects_bad_shapes():
  with pytest.raises(ValueError, match='mu1 and mu2'):
    fid_lib.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
  with pytest.raises(ValueError, match='sigma1/sigma2'):
    fid_lib.frechet_distance(np.zeros(3), np.eye(2), np.zeros(3), np.eye(3))
  with pytest.raises(ValueError, match='N >= 2'):
    fid_lib.feature_statistics(np.zeros((1, 4)))


# ---------------------------------------------------------------------------
# Preprocessing and layers (no weights needed).


def test_pytorch_fid_resize_matches_half_pixel_bilinear_upsampling():
  # jax.image.resize 'linear' uses half-pixel centres; upsampling has no antialiasing.
  x = np.random.default_rng(2).uniform(size=28).astype(np.float32)
  want = jax.image.resize(jnp.asarray(x), (299,), 'linear')
  got = inception_v3.resize_matrix(28, 299, 'pytorch_fid') @ x
  np.testing.assert_allclose(got, want, atol=1e-5)


def test_tf_resize_samples_at_j_times_in_over_out():
  m = inception_v3.resize_matrix(8, 4, 'tf')  # TF1 legacy: pixels 0, 2, 4, 6 exactly
  np.testing.assert_array_equal(m, np.eye(8, dtype=np.float32)[::2])
  up = inception_v3.resize_matrix(2, 4, 'tf')  # sources 0, .5, 1, 1.5 → clamped at the border
  np.testing.assert_allclose(up, [[1, 0], [0.5, 0.5], [0, 1], [0, 1]])
  for convention in inception_v3.CONVENTIONS:
    np.testing.assert_allclose(inception_v3.resize_matrix(37, 299, convention).sum(1), 1.0, atol=1e-6)


def test_preprocess_ranges_dtypes_and_gray():
  gray = synthetic_digits(2, hw=20)[0]
  as_uint8 = inception_v3.preprocess(gray)
  as_float = inception_v3.preprocess(gray.astype(np.float32) / 255.0)
  assert as_uint8.shape == (2, 299, 299, 3)
  np.testing.assert_allclose(as_uint8, as_float, atol=1e-5)
  np.testing.assert_array_equal(as_uint8[..., 0], as_uint8[..., 2])
  full = np.full((1, 299, 299, 3), 255, np.uint8)
  assert float(inception_v3.preprocess(full).max()) == pytest.approx(127 / 128)  # the TF graph's range
  assert float(inception_v3.preprocess(full, convention='pytorch_fid').max()) == pytest.approx(1.0)
  with pytest.raises(ValueError, match='1 or 3 channels'):
    inception_v3.preprocess(np.zeros((1, 8, 8, 2), np.uint8))
  with pytest.raises(ValueError, match="convention='torchvision'"):
    inception_v3.preprocess(gray, convention='torchvision')


def test_folded_batch_norm_equals_conv_then_batch_norm():
  rng = np.random.default_rng(3)
  w = rng.normal(size=(5, 3, 3, 1)).astype(np.float32)  # OIHW, a 3×1 kernel
  beta, mean = rng.normal(size=5), rng.normal(size=5)
  var = rng.uniform(0.1, 2.0, size=5)
  x = rng.normal(size=(2, 6, 7, 3)).astype(np.float32)
  conv = jax.lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (0, 0)),
                                      dimension_numbers=('NHWC', 'OIHW', 'NHWC'))
  want = jax.nn.relu((conv - mean) / np.sqrt(var + 1e-3) + beta)
  folded = inception_v3.fold_batch_norm(weight=w, beta=beta, mean=mean, var=var)
  np.testing.assert_allclose(inception_v3.conv_bn_relu(folded, x, same=True), want, atol=1e-5)


def test_average_pool_excludes_padding():
  out = inception_v3.avg_pool_exclude_pad(jnp.ones((1, 4, 5, 2)))
  np.testing.assert_allclose(out, 1.0)  # zero padding counted would give 4/9 in the corners


def test_missing_weights_is_an_error_not_a_substitute(tmp_path):
  images = synthetic_digits(2)[0]
  with pytest.raises(WeightsUnavailableError, match='inception_v3_fid'):
    fid_lib.inception_features(images, weights_path=tmp_path / 'missing.pt', mesh=mesh_of(1))


def test_float_images_outside_unit_range_are_rejected():
  normalised = (synthetic_digits(2)[0] / 255.0 - 0.1307) / 0.3081
  with pytest.raises(ValueError, match=r'images: float images must be in \[0, 1\]'):
    fid_lib.inception_features(normalised, params={}, mesh=mesh_of(1))


# ---------------------------------------------------------------------------
# The real network (needs the cached weights).


@pytest.fixture(scope='module')
def params():
  try:
    path = asset_path('inception_v3_fid', download=False)
  except WeightsUnavailableError:
    pytest.skip('FID Inception weights not cached: run `python -m mi_jax.weights.fetch inception_v3_fid`')
  return inception_v3.load_params(str(path))


# pool3 features of one fixed 37×41 RGB image, computed by torch.jit.load of
# the same archive with each convention's torch preprocessing
# (scripts/verify_inception_port.py's torch side).
_FIXED_INDICES = [0, 1, 3, 345, 518, 1000, 2047]
_TORCH_POOL3 = {
    'tf': [0.779707, 0.124911, 0.677556, 3.116464, 3.091295, 0.086169, 0.003432],
    'pytorch_fid': [0.894242, 0.071466, 0.525055, 3.590954, 3.415075, 0.250698, 0.001266],
}
_TORCH_MEAN = {'tf': 0.274526, 'pytorch_fid': 0.27099}


@pytest.mark.parametrize('convention', inception_v3.CONVENTIONS)
def test_pool3_regression_against_torch(params, convention):
  image = (np.arange(37 * 41 * 3).reshape(1, 37, 41, 3) * 7 % 256).astype(np.uint8)
  features = fid_lib.inception_features(image, params=params, convention=convention, mesh=mesh_of(1))
  assert features.shape == (1, 2048)
  np.testing.assert_allclose(features[0, _FIXED_INDICES], _TORCH_POOL3[convention], atol=2e-4)
  assert features.mean() == pytest.approx(_TORCH_MEAN[convention], abs=1e-5)


def test_fid_is_zero_for_a_set_and_grows_with_noise_on_8_devices(params):
  clean = synthetic_digits(4, seed=4)[0].astype(np.float32) / 255.0
  rng = np.random.default_rng(5)
  sets = [clean] + [np.clip(clean + rng.normal(0, s, clean.shape), 0, 1).astype(np.float32)
                    for s in (0.05, 0.2, 0.5)]
  features = fid_lib.inception_features(np.concatenate(sets), params=params, batch_size=8,
                                        mesh=mesh_of(8))
  parts = np.split(features, len(sets))
  scores = [fid_lib.fid_from_features(parts[0], p) for p in parts]
  assert scores[0] < 1e-6
  assert scores[1] < scores[2] < scores[3], scores
  # KID on the same features (no second Inception pass) orders the noise levels too.
  kids = [kid_lib.kid_from_features(parts[0], p, subsets=10).mean for p in parts[1:]]
  assert kids[0] < kids[1] < kids[2], kids
  # Same numbers on one device: the sharded path computes the same function.
  one = fid_lib.inception_features(sets[0], params=params, batch_size=4, mesh=mesh_of(1))
  np.testing.assert_allclose(one, parts[0], atol=1e-4)
