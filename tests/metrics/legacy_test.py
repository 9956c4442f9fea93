"""The SG reference code's metrics (protocol='sg_legacy'): what they compute and how they differ."""

import dm_pix
import jax.numpy as jnp
import numpy as np
import pytest

from mi_jax import metrics
from mi_jax.metrics import legacy
from tests.helpers import synthetic_digits

MEAN, STD = 0.1307, 0.3081  # The SG scripts' Normalize for MNIST and Fashion-MNIST.


def _normalise(x):
  return ((x - MEAN) / STD).astype(np.float32)


def _digits(n=32, noise=0.2, seed=1):
  """Private images in [0, 1] and noisy reconstructions spanning the full [0, 1]."""
  images, _ = synthetic_digits(n, seed=0)
  x = images.astype(np.float32) / 255
  y = np.clip(x + np.random.default_rng(seed).normal(0, noise, x.shape), 0, 1).astype(np.float32)
  y.reshape(-1)[:2] = 0.0, 1.0
  return x, y


def _pooled_psnr(x, y, data_range=1.0):
  return 10 * np.log10(data_range ** 2 / np.mean((x.astype(np.float64) - y) ** 2))


# ------------------------------------------------------------------ the formulas, without float16


def test_ssim_emulation_in_float64_is_standard_ssim():
  # Same kernel, 'valid' positions (reflect pad + crop), population variances as dm-pix.
  x, y = _digits()
  per_image = legacy._torchmetrics_ssim_per_image(x, y, np.float64)
  np.testing.assert_allclose(per_image, np.asarray(metrics.ssim(x, y)), atol=1e-6)


def test_psnr_emulation_in_float64_is_pooled_psnr_with_the_reconstructions_range():
  x, y = _digits()
  y = y * 0.5 + 0.25  # range [0.25, 0.75]: R = 0.75 − 0 (the min state starts at 0)
  assert legacy._torchmetrics_psnr(x, y, np.float64) == pytest.approx(
      _pooled_psnr(x, y, data_range=0.75), abs=1e-5)


# ------------------------------------------------------------------ PSNR


def test_psnr_on_normalised_images_is_the_pooled_psnr_when_reconstructions_span_0_to_1():
  # Normalising scales errors and range alike by 1/std, and 0 lies inside the normalised range.
  x, y = _digits()
  got = metrics.legacy_sg_psnr(_normalise(x), _normalise(y))
  assert got == pytest.approx(_pooled_psnr(x, y), abs=0.02)  # float16 inputs and sum


def test_psnr_is_pooled_so_below_the_corrected_per_image_mean():
  x, y = _digits()
  y[:16] = np.clip(x[:16] + 0.01, 0, 1)  # Half the batch reconstructed almost exactly.
  legacy_value = metrics.legacy_sg_psnr(_normalise(x), _normalise(y))
  corrected = metrics.mean_psnr_ssim(x, y).psnr
  assert corrected - legacy_value > 5  # Jensen: the pooled MSE is dominated by the bad half.


def test_psnr_takes_its_range_from_the_reconstruction_union_zero():
  x, y = _digits()
  dim = 0.5 * y  # A faint reconstruction: range [0, 0.5].
  assert metrics.legacy_sg_psnr(x, dim) == pytest.approx(_pooled_psnr(x, dim, 0.5), abs=0.02)
  negative = 0.1 * y - 0.3  # range [−0.3, −0.2] → R = 0 − (−0.3).
  assert metrics.legacy_sg_psnr(x, negative) == pytest.approx(
      _pooled_psnr(x, negative, 0.3), abs=0.02)
  # The private images' own range plays no part: swapping the arguments changes the number.
  assert metrics.legacy_sg_psnr(dim, x) != pytest.approx(metrics.legacy_sg_psnr(x, dim), abs=1)


def test_psnr_float16_sum_overflows_to_minus_inf_and_the_average_keeps_it():
  x, _ = _digits()
  xn = _normalise(x)
  far = xn + 2.0  # SSE = 32·784·4 = 100352 > 65504, the float16 maximum.
  assert metrics.legacy_sg_psnr(xn, far) == -np.inf
  assert metrics.psnr(x, np.clip(x + 2 * STD, 0, 1)).min() > -np.inf  # The corrected one is finite.
  near = xn + 0.1
  scores = metrics.legacy_sg_scores(np.concatenate([xn, xn]), np.concatenate([near, far]),
                                    **legacy.SG_EVAL_SETTINGS['sparse_guard'])
  assert np.isfinite(scores.psnr_per_batch[0]) and scores.psnr == -np.inf
  # The baselines' float32 scripts do not overflow.
  assert np.isfinite(metrics.legacy_sg_psnr(xn, far, dtype='float32'))


def test_psnr_float16_squares_underflow_to_zero():
  # One float16 step at values in [0.125, 0.25) is 2^-13; its square 2^-26 is below the
  # smallest float16 subnormal 2^-24, so every squared error vanishes: PSNR = +inf.
  x = np.full((2, 16, 16, 1), 0.2, np.float16)
  y = (x + np.float16(2.0 ** -13)).astype(np.float32)
  x = x.astype(np.float32)
  assert np.all(y != x)
  assert metrics.legacy_sg_psnr(x, y) == np.inf
  assert np.isfinite(metrics.legacy_sg_psnr(x, y, dtype='float32'))
  assert float(metrics.psnr(x, y)[0]) == pytest.approx(10 * np.log10(2.0 ** 26), abs=0.01)


# ------------------------------------------------------------------ SSIM


def test_ssim_on_normalised_images_is_ssim_of_shifted_images_with_shrunk_constants():
  # With x_n = (x − m)/s and range 1: SSIM(x_n, y_n) = SSIM of (x − m, y − m) with K = 0.01·s, 0.03·s.
  x, y = _digits()
  xn, yn = _normalise(x), _normalise(y)
  expected = float(np.mean(dm_pix.ssim(jnp.asarray(x - MEAN), jnp.asarray(y - MEAN),
                                       k1=0.01 * STD, k2=0.03 * STD)))
  assert legacy._torchmetrics_ssim(xn, yn, np.float64) == pytest.approx(expected, abs=1e-6)
  assert metrics.legacy_sg_ssim(xn, yn) == pytest.approx(expected, abs=2e-3)  # float16


def test_ssim_on_normalised_digits_is_well_below_the_corrected_ssim():
  x, y = _digits()
  legacy_value = metrics.legacy_sg_ssim(_normalise(x), _normalise(y))
  corrected = metrics.mean_psnr_ssim(x, y).ssim
  assert corrected - legacy_value > 0.03


def test_ssim_float16_differs_from_exact_arithmetic_but_only_slightly():
  x, y = _digits()
  xn, yn = _normalise(x), _normalise(y)
  half, exact = metrics.legacy_sg_ssim(xn, yn), legacy._torchmetrics_ssim(xn, yn, np.float64)
  assert half != exact and abs(half - exact) < 2e-3
  assert metrics.legacy_sg_ssim(xn, yn, dtype='float32') == pytest.approx(exact, abs=1e-5)


# ------------------------------------------------------------------ row-Fréchet ("FID")


def test_uint8_scaling_is_batch_min_max_in_float16_then_truncation():
  batch = np.array([0, 1 / 3, 0.5, 1, 2 / 3, 0.1], np.float32).reshape(1, 1, 6, 1)
  np.testing.assert_array_equal(legacy._sg_uint8(batch).ravel(), [0, 85, 127, 255, 170, 25])
  np.testing.assert_array_equal(legacy._sg_uint8(batch * 4 - 3), legacy._sg_uint8(batch))
  np.testing.assert_array_equal(legacy._sg_uint8(batch, 'float32').ravel(), [0, 85, 127, 255, 170, 25])


def test_row_frechet_closed_form_for_diagonal_row_covariances():
  # Columns with zero sample covariance: d = Σ_k (μ1k − μ2k)² + (σ1k − σ2k)² (ddof = 1).
  orig = np.zeros((2, 4, 2, 1), np.float32)
  orig[0, :, 0, 0], orig[0, :, 1, 0] = (0, 1, 0, 1), (0, 0, 1, 1)
  recon = np.zeros_like(orig)
  recon[0, :, 0, 0], recon[0, :, 1, 0] = (0, 0.5, 0, 0.5), 1.0
  a = np.array([[0, 0], [255, 0], [0, 255], [255, 255]], np.float64)
  b = np.array([[0, 255], [127, 255], [0, 255], [127, 255]], np.float64)  # 127.5 truncates to 127
  expected = (np.sum((a.mean(0) - b.mean(0)) ** 2)
              + np.sum((a.std(0, ddof=1) - b.std(0, ddof=1)) ** 2))
  assert metrics.legacy_sg_row_frechet(orig, recon) == pytest.approx(expected, rel=1e-9)
  assert metrics.legacy_sg_row_frechet(orig, recon, divide_by=1000) == pytest.approx(
      expected / 1000, rel=1e-9)


def test_row_frechet_is_blind_to_row_order_so_not_a_reconstruction_metric():
  x, y = _digits()
  xn = _normalise(x)
  flipped = xn.copy()
  flipped[0] = flipped[0, ::-1]  # Rows are the samples: a vertical flip keeps mean and covariance.
  # ≈ 0 up to sqrtm's error on singular covariances (28 rows, many all-zero columns).
  assert metrics.legacy_sg_row_frechet(xn, xn) == pytest.approx(0.0, abs=1e-2)
  assert metrics.legacy_sg_row_frechet(xn, flipped) == pytest.approx(0.0, abs=1e-2)
  assert float(metrics.psnr(x[:1], np.clip(flipped[:1] * STD + MEAN, 0, 1))[0]) < 20
  assert metrics.legacy_sg_row_frechet(xn, _normalise(y)) > 100


def test_row_frechet_reads_image_0_channel_0_other_images_only_through_min_max():
  rng = np.random.default_rng(0)
  x = rng.uniform(size=(4, 12, 12, 2)).astype(np.float32)
  y = rng.uniform(size=x.shape).astype(np.float32)
  for t in (x, y):  # Put the batch min and max in image 0, channel 0.
    t[0, 0, 0, 0], t[0, 0, 1, 0] = 0.0, 1.0
  base = metrics.legacy_sg_row_frechet(x, y)
  changed = y.copy()
  changed[1:] = rng.uniform(size=changed[1:].shape)  # Other images, within [0, 1].
  changed[0, :, :, 1] = 0.5  # Another channel of image 0.
  assert metrics.legacy_sg_row_frechet(x, changed) == base
  changed[2, 0, 0, 0] = 3.0  # A new batch maximum rescales image 0 too.
  assert metrics.legacy_sg_row_frechet(x, changed) != pytest.approx(base, rel=1e-3)


# ------------------------------------------------------------------ the whole-set average


def test_scores_average_per_batch_values_like_the_sg_code():
  x, y = _digits(n=70)
  xn, yn = _normalise(x), _normalise(y)
  scores = metrics.legacy_sg_scores(xn, yn, batch_size=32, dtype='float16')
  assert scores.n_batches == 3 and len(scores.ssim_per_batch) == 3
  assert scores.psnr_per_batch[2] == metrics.legacy_sg_psnr(xn[64:], yn[64:])  # The short batch.
  assert scores.psnr == sum(scores.psnr_per_batch) / 3
  assert scores.ssim == sum(scores.ssim_per_batch) / 3
  assert scores.row_frechet == sum(scores.row_frechet_per_batch) / 3
  # Image 0 of each batch feeds the row-Fréchet number, so batching changes it.
  assert metrics.legacy_sg_scores(xn, yn, batch_size=35, dtype='float16').row_frechet != (
      scores.row_frechet)
  baseline = metrics.legacy_sg_scores(xn, yn, **legacy.SG_EVAL_SETTINGS['no_def'])
  assert baseline.n_batches == 2 and baseline.psnr != scores.psnr


X = np.zeros((2, 16, 16, 1), np.float32)


@pytest.mark.parametrize('fn,args,kwargs,pattern', [
    (metrics.legacy_sg_psnr, (X, X[:1]), {}, r"reconstruction has shape \(1, 16, 16, 1\) but original"),
    (metrics.legacy_sg_ssim, (X[0], X[0]), {}, r"original must have rank 4 \(N, H, W, C: NHWC\)"),
    (metrics.legacy_sg_ssim, (X[:, :8], X[:, :8]), {}, r"legacy_sg_ssim needs images of at least 11x11"),
    (metrics.legacy_sg_row_frechet, (X.astype(np.int32), X), {}, r"original must be a floating-point"),
    (metrics.legacy_sg_row_frechet, (X, X), {'divide_by': 0}, r"divide_by must be a finite number > 0"),
    (metrics.legacy_sg_scores, (X, X), {'batch_size': 0, 'dtype': 'float16'},
     r"batch_size must be an integer >= 1, got 0"),
    (metrics.legacy_sg_psnr, (X, X), {'dtype': 'bfloat16'},
     r"dtype must be one of \('float16', 'float32'\) \(see SG_EVAL_SETTINGS\), got 'bfloat16'"),
])
def test_bad_input_raises_one_line_value_error(fn, args, kwargs, pattern):
  with pytest.raises(ValueError, match=pattern) as error:
    fn(*args, **kwargs)
  assert '\n' not in str(error.value)
