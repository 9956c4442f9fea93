"""PSNR/SSIM against scikit-image, the SSIM border convention, inf handling, chunking, validation."""

import dm_pix
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from mi_jax import metrics
from mi_jax.metrics import image_quality

SK_SSIM = dict(data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
               channel_axis=-1)


def _pair(shape, seed=0, noise=0.2):
  rng = np.random.default_rng(seed)
  x = rng.uniform(size=shape).astype(np.float32)
  y = np.clip(x + rng.normal(0, noise, size=shape), 0, 1).astype(np.float32)
  return x, y


SHAPES = [(4, 28, 28, 1), (3, 32, 32, 3), (2, 11, 13, 1), (2, 64, 40, 3)]


@pytest.mark.parametrize('shape', SHAPES)
def test_psnr_matches_skimage(shape):
  x, y = _pair(shape)
  ref = [peak_signal_noise_ratio(a.astype(np.float64), b.astype(np.float64), data_range=1.0)
         for a, b in zip(x, y)]
  got = metrics.psnr(x, y)
  assert got.shape == (shape[0],)
  np.testing.assert_allclose(np.asarray(got), ref, atol=1e-4)


@pytest.mark.parametrize('shape', SHAPES)
def test_ssim_matches_skimage_cropped_mean(shape):
  # skimage averages its 'reflect' map cropped by the window radius: exactly the 'valid' positions.
  x, y = _pair(shape)
  ref = [structural_similarity(a.astype(np.float64), b.astype(np.float64), **SK_SSIM)
         for a, b in zip(x, y)]
  got = metrics.ssim(x, y)
  assert got.shape == (shape[0],)
  np.testing.assert_allclose(np.asarray(got), ref, atol=2e-6)


@pytest.mark.parametrize('shape', SHAPES)
def test_ssim_map_is_skimage_full_map_cropped_by_the_window_radius(shape):
  x, y = _pair(shape, seed=1)
  r = (image_quality.SSIM_WINDOW - 1) // 2
  for a, b in zip(x, y):
    _, full = structural_similarity(a.astype(np.float64), b.astype(np.float64), full=True, **SK_SSIM)
    ssim_map = dm_pix.ssim(jnp.asarray(a), jnp.asarray(b), max_val=1.0, return_map=True)
    assert ssim_map.shape == (a.shape[0] - 2 * r, a.shape[1] - 2 * r, a.shape[2])
    np.testing.assert_allclose(np.asarray(ssim_map), full[r:-r, r:-r], atol=1e-5)


def test_ssim_is_not_the_mean_of_the_uncropped_map():
  # Pins the convention: the border positions (reflect-padded windows) are left out.
  x, y = _pair((2, 28, 28, 1), seed=2)
  ours = np.asarray(metrics.ssim(x, y))
  uncropped = [structural_similarity(a.astype(np.float64), b.astype(np.float64), full=True,
                                     **SK_SSIM)[1].mean() for a, b in zip(x, y)]
  assert np.all(np.abs(ours - uncropped) > 1e-3)


def test_identical_images_psnr_inf_ssim_one():
  x, _ = _pair((3, 16, 16, 1))
  assert np.all(np.isinf(np.asarray(metrics.psnr(x, x))))
  np.testing.assert_allclose(np.asarray(metrics.ssim(x, x)), 1.0, atol=1e-6)


def test_summary_caps_psnr_of_exact_copies_and_counts_them():
  x, y = _pair((4, 16, 16, 1))
  recon = y.copy()
  recon[1] = x[1]  # One perfect reconstruction.
  finite = np.asarray(metrics.psnr(x, recon))[[0, 2, 3]]
  summary = metrics.mean_psnr_ssim(x, recon)
  assert summary.n_psnr_capped == 1 and summary.n_images == 4
  assert summary.psnr == pytest.approx((finite.sum() + metrics.PSNR_CAP_DB) / 4, abs=1e-4)
  assert np.isinf(metrics.mean_psnr_ssim(x, recon, psnr_cap_db=None).psnr)
  assert metrics.mean_psnr_ssim(x, recon, psnr_cap_db=None).n_psnr_capped == 0


def test_cap_lies_above_every_finite_8bit_psnr_at_mnist_size():
  x = np.zeros((1, 28, 28, 1), np.float32)
  y = x.copy()
  y[0, 0, 0, 0] = 1 / 255  # The smallest non-zero 8-bit error.
  assert 77.0 < float(metrics.psnr(x, y)[0]) < metrics.PSNR_CAP_DB


@pytest.mark.parametrize('chunk_size', [1, 3, 10, 512])
def test_chunked_means_equal_direct_computation(chunk_size):
  x, y = _pair((10, 28, 28, 1), seed=3)
  p, s = metrics.per_image_psnr_ssim(x, y, chunk_size=chunk_size)
  np.testing.assert_allclose(p, np.asarray(metrics.psnr(x, y)), rtol=1e-6)
  np.testing.assert_allclose(s, np.asarray(metrics.ssim(x, y)), atol=1e-6)
  summary = metrics.mean_psnr_ssim(x, y, chunk_size=chunk_size)
  assert summary.psnr == pytest.approx(float(np.mean(p)), rel=1e-6)
  assert summary.ssim == pytest.approx(float(np.mean(s)), abs=1e-7)
  assert summary.n_images == 10 and summary.n_psnr_capped == 0


def test_per_image_mean_is_not_the_pooled_psnr():
  # The corrected protocol averages per-image PSNRs (≥ the PSNR of the pooled MSE, by Jensen).
  x, y = _pair((2, 16, 16, 1))
  y[1] = np.clip(x[1] + 0.01, 0, 1)
  pooled = 10 * np.log10(1 / np.mean((x.astype(np.float64) - y) ** 2))
  assert metrics.mean_psnr_ssim(x, y).psnr > pooled + 5


def test_values_within_tolerance_are_clipped_not_rejected():
  x, y = _pair((2, 16, 16, 1))
  nudged = x.copy()
  nudged[0, 0, 0, 0], nudged[0, 0, 1, 0] = -5e-4, 1 + 5e-4
  clipped = np.clip(nudged, 0, 1)
  np.testing.assert_allclose(np.asarray(metrics.psnr(nudged, y)), np.asarray(metrics.psnr(clipped, y)))


def test_works_under_jit():
  x, y = _pair((2, 16, 16, 1))
  np.testing.assert_allclose(np.asarray(jax.jit(metrics.ssim)(x, y)), np.asarray(metrics.ssim(x, y)),
                             atol=1e-6)


GOOD = np.full((2, 16, 16, 1), 0.5, np.float32)
MNIST_NORMALISED = (GOOD - 0.1307) / 0.3081 * 3


@pytest.mark.parametrize('fn', [metrics.psnr, metrics.ssim, metrics.mean_psnr_ssim])
@pytest.mark.parametrize('a,b,pattern', [
    (GOOD, GOOD[:1], r"reconstruction has shape \(1, 16, 16, 1\) but original has shape \(2, 16, 16, 1\)"),
    (GOOD[0], GOOD[0], r"original must have rank 4 \(N, H, W, C: NHWC\), got shape \(16, 16, 1\)"),
    ((GOOD * 255).astype(np.uint8), GOOD, r"original must be a floating-point array in \[0, 1\], got uint8; divide uint8"),
    (GOOD, MNIST_NORMALISED, r"reconstruction has values in \[.*\], outside \[0, 1\]; de-normalise first"),
    (GOOD - 0.51, GOOD, r"original has values in \[-0.01, -0.01\], outside \[0, 1\]"),
    (GOOD * np.nan, GOOD, r"original contains NaN or inf values"),
])
def test_bad_input_raises_one_line_value_error(fn, a, b, pattern):
  with pytest.raises(ValueError, match=pattern) as error:
    fn(a, b)
  assert '\n' not in str(error.value)


@pytest.mark.parametrize('fn', [metrics.ssim, metrics.mean_psnr_ssim])
def test_ssim_rejects_images_smaller_than_its_window(fn):
  small = np.zeros((2, 10, 12, 1), np.float32)
  with pytest.raises(ValueError, match=r"ssim needs images of at least 11x11 .* got 10x12"):
    fn(small, small)


@pytest.mark.parametrize('kwargs,pattern', [
    ({'chunk_size': 0}, r"chunk_size must be an integer >= 1, got 0"),
    ({'psnr_cap_db': float('inf')}, r"psnr_cap_db must be a finite number or None"),
])
def test_bad_options(kwargs, pattern):
  with pytest.raises(ValueError, match=pattern):
    metrics.mean_psnr_ssim(GOOD, GOOD, **kwargs)


def test_to_unit_range_inverts_normalisation_and_clips():
  x, _ = _pair((2, 8, 8, 1))
  normalised = (x - 0.1307) / 0.3081
  np.testing.assert_allclose(np.asarray(metrics.to_unit_range(normalised, mean=0.1307, std=0.3081)),
                             x, atol=1e-6)
  wild = np.array([[-9.0, 0.0, 9.0]], np.float32)[..., None]
  np.testing.assert_array_equal(
      np.asarray(metrics.to_unit_range(wild, mean=0.5, std=0.5)).ravel(), [0.0, 0.5, 1.0])


def test_to_unit_range_per_channel():
  mean, std = (0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261)
  x, _ = _pair((2, 8, 8, 3))
  normalised = (x - np.array(mean, np.float32)) / np.array(std, np.float32)
  out = metrics.to_unit_range(normalised, mean=mean, std=std)
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(out), x, atol=1e-6)


@pytest.mark.parametrize('images,kwargs,pattern', [
    (GOOD, {'mean': (0.1, 0.2), 'std': 0.3}, r"mean has 2 values but images have 1 channels"),
    (GOOD, {'mean': 0.1, 'std': 0.0}, r"std must be > 0 for every channel"),
    (GOOD, {'mean': float('nan'), 'std': 1.0}, r"mean must be finite"),
    (GOOD.astype(np.int32), {'mean': 0.1, 'std': 0.3}, r"images must be a floating-point"),
])
def test_to_unit_range_bad_input(images, kwargs, pattern):
  with pytest.raises(ValueError, match=pattern):
    metrics.to_unit_range(images, **kwargs)
