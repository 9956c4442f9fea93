"""Dictionary learning rules against lcapt's equations (float64 oracle)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mi_jax import lca
from tests.lca import reference


def _problem(seed, *, hw=(10, 9), c=2, f=5, k=(5, 5), stride=1):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(3, *hw, c)).astype(np.float32)
  d = np.asarray(lca.normalize_dictionary(rng.normal(size=(*k, c, f)).astype(np.float32)))
  codes = np.asarray(lca.solve(x, d, lam=0.3, n_steps=50, tau=10.0, stride=stride))
  return x, d, codes


def _lcapt_recon(codes, d, stride, image_hw):
  """lcapt compute_recon: conv_transpose with padding k//2, output_padding s−1."""
  kh, kw = d.shape[:2]
  recon = reference.conv_transpose2d(
      np.transpose(codes, (0, 3, 1, 2)).astype(np.float64),
      np.transpose(d, (3, 2, 0, 1)).astype(np.float64),
      stride, (kh // 2, kw // 2), (stride[0] - 1, stride[1] - 1))
  return np.transpose(recon, (0, 2, 3, 1))[:, :image_hw[0], :image_hw[1]]


def _lcapt_weight_update(x, codes, d, stride, eta, clip):
  """lcapt update_weights: pad error, unfold, tensordot, scale by η/(n_f + 1)."""
  kh, kw = d.shape[:2]
  error = x.astype(np.float64) - _lcapt_recon(codes, d, stride, x.shape[1:3])
  error = np.pad(error, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
  windows = np.lib.stride_tricks.sliding_window_view(error, (kh, kw), axis=(1, 2))
  windows = windows[:, ::stride[0], ::stride[1]][:, :codes.shape[1], :codes.shape[2]]
  update = np.einsum('nyxf,nyxcij->ijcf', codes.astype(np.float64), windows)
  times_active = (codes != 0).sum(axis=(0, 1, 2)) + 1
  update = np.clip(update * eta / times_active, -clip, clip)
  new = d + update
  return new / (np.sqrt((new**2).sum(axis=(0, 1, 2))) + 1e-12), update


@pytest.mark.parametrize('stride', [1, 2])
def test_reconstruct_matches_lcapt_compute_recon(stride):
  x, d, codes = _problem(0, stride=stride)
  recon = lca.reconstruct(codes, d, image_hw=x.shape[1:3], stride=stride)
  expected = _lcapt_recon(codes, d, (stride, stride), x.shape[1:3])
  assert recon.shape == x.shape
  np.testing.assert_allclose(np.asarray(recon), expected, atol=1e-5)


@pytest.mark.parametrize('stride,clip', [(1, np.inf), (2, np.inf), (1, 1e-3)])
def test_hebbian_update_matches_lcapt(stride, clip):
  x, d, codes = _problem(1, stride=stride)
  new, update = lca.hebbian_update(x, codes, d, eta=0.05, stride=stride, clip=clip)
  expected_new, expected_update = _lcapt_weight_update(x, codes, d, (stride, stride), 0.05, clip)
  np.testing.assert_allclose(np.asarray(update), expected_update, atol=1e-5)
  np.testing.assert_allclose(np.asarray(new), expected_new, atol=1e-5)
  if np.isfinite(clip):
    assert np.abs(np.asarray(update)).max() <= clip + 1e-9
    assert np.isclose(np.abs(np.asarray(update)).max(), clip)


def test_normalize_dictionary_gives_unit_atoms():
  d = np.random.default_rng(2).normal(size=(3, 3, 2, 7)) * 5
  norms = np.sqrt((np.asarray(lca.normalize_dictionary(d)) ** 2).sum(axis=(0, 1, 2)))
  np.testing.assert_allclose(norms, 1.0, atol=1e-6)
  dense = np.asarray(lca.normalize_dictionary(np.random.default_rng(3).normal(size=(10, 4))))
  np.testing.assert_allclose(np.linalg.norm(dense, axis=0), 1.0, atol=1e-6)


def test_hebbian_learning_reduces_reconstruction_error():
  """A few rounds of code → Hebbian update lower the reconstruction loss."""
  rng = np.random.default_rng(4)
  true_d = np.asarray(lca.normalize_dictionary(rng.normal(size=(5, 5, 1, 4)).astype(np.float32)))
  sparse = (rng.uniform(size=(8, 12, 12, 4)) < 0.05) * rng.uniform(1, 2, (8, 12, 12, 4))
  x = np.asarray(lca.reconstruct(sparse.astype(np.float32), true_d, image_hw=(12, 12)))
  d = np.asarray(lca.normalize_dictionary(rng.normal(size=(5, 5, 1, 4)).astype(np.float32)))
  losses = []
  for _ in range(15):
    codes = lca.solve(x, d, lam=0.1, n_steps=100, tau=5.0)
    losses.append(float(lca.reconstruction_loss(x, codes, d)))
    d, _ = lca.hebbian_update(x, codes, d, eta=0.5)
  assert losses[-1] < 0.7 * losses[0], losses


def test_dictionary_gradient_step_descends_and_renormalises():
  x, d, codes = _problem(5)
  before = float(lca.reconstruction_loss(x, codes, d))
  stepped = lca.dictionary_gradient_step(x, codes, d, learning_rate=1e-3)
  after = float(lca.reconstruction_loss(x, codes, stepped))
  assert after < before
  np.testing.assert_allclose(np.sqrt((np.asarray(stepped) ** 2).sum(axis=(0, 1, 2))), 1.0, atol=1e-6)
  # the gradient is the negative Hebbian direction up to per-atom scaling
  grad = jax.grad(lca.reconstruction_loss, argnums=2)(x, codes, d)
  _, hebbian = lca.hebbian_update(x, codes, d, eta=1.0, normalize=False)
  times_active = (codes != 0).sum(axis=(0, 1, 2)) + 1
  np.testing.assert_allclose(-np.asarray(grad) * x.shape[0],
                             np.asarray(hebbian) * times_active, atol=1e-4)


def test_dense_hebbian_update():
  rng = np.random.default_rng(6)
  x = rng.normal(size=(6, 12)).astype(np.float32)
  d = np.asarray(lca.normalize_dictionary(rng.normal(size=(12, 8)).astype(np.float32)))
  codes = np.asarray(lca.solve(x, d, lam=0.2, n_steps=100, tau=10.0))
  _, update = lca.hebbian_update(x, codes, d, eta=0.1)
  error = x - codes @ d.T
  expected = (error.T @ codes) * 0.1 / ((codes != 0).sum(axis=0) + 1)
  np.testing.assert_allclose(np.asarray(update), expected, atol=1e-5)
