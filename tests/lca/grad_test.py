"""Gradients: unrolled vs finite differences, checkpointed = unrolled,
implicit vs unrolled-to-convergence, vmap, no recompiles per λ."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mi_jax import lca
from mi_jax.lca import solver as solve_module


def _problem(seed, *, n=2, hw=(7, 6), c=2, f=4, k=(3, 3)):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, *hw, c))
  d = np.asarray(lca.normalize_dictionary(rng.normal(size=(*k, c, f))))
  weights = rng.normal(size=(n, *hw, f))  # a fixed linear readout of the codes
  return x, d, weights


def _loss_fn(weights, **options):
  def loss(x, d, lam):
    codes = lca.solve(x, d, lam=lam, **options)
    out_hw = codes.shape[1:3]
    return jnp.sum(codes * weights[:, :out_hw[0], :out_hw[1]]) + 0.5 * jnp.sum(codes**2)
  return loss


def _directional_fd(loss, args, direction_index, direction, eps):
  plus = list(args); minus = list(args)
  plus[direction_index] = args[direction_index] + eps * direction
  minus[direction_index] = args[direction_index] - eps * direction
  return (loss(*plus) - loss(*minus)) / (2 * eps)


@pytest.mark.parametrize('lateral', ['auto', 'fft'])
@pytest.mark.parametrize('grad', ['unroll', 'checkpoint'])
@pytest.mark.parametrize('nonneg', [True, False])
def test_unrolled_gradients_match_finite_differences(grad, nonneg, lateral):
  with jax.enable_x64(True):
    x, d, weights = _problem(0)
    loss = _loss_fn(weights, n_steps=40, tau=5.0, grad=grad, nonneg=nonneg,
                    normalize_input=True, lateral=lateral)
    args = (jnp.asarray(x), jnp.asarray(d), jnp.asarray(0.15))
    grads = jax.grad(loss, argnums=(0, 1, 2))(*args)
    rng = np.random.default_rng(1)
    for index in range(3):
      direction = jnp.asarray(rng.normal(size=np.shape(args[index])))
      expected = _directional_fd(loss, args, index, direction, 1e-6)
      got = jnp.vdot(grads[index], direction)
      np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
    assert float(jnp.abs(grads[2])) > 0  # λ has a real gradient


@pytest.mark.parametrize('grad', ['unroll', 'checkpoint'])
@pytest.mark.parametrize('stride,padding,kernel', [(1, 'same', (5, 5)), (2, 'same', (3, 5)),
                                                   ((2, 1), 'valid', (4, 3))])
def test_fft_gradients_equal_gram_gradients(grad, stride, padding, kernel):
  """d/d(x, Ω, λ) through 40 steps: the FFT form's = the Gram form's (float32)."""
  x, d, weights = _problem(9, hw=(9, 8), c=3, f=5, k=kernel)
  args = (jnp.asarray(x, jnp.float32), jnp.asarray(d, jnp.float32), 0.15)
  options = dict(n_steps=40, tau=5.0, grad=grad, stride=stride, padding=padding,
                 normalize_input=True)
  gram = jax.grad(_loss_fn(weights, lateral='gram', **options), argnums=(0, 1, 2))(*args)
  fft = jax.grad(_loss_fn(weights, lateral='fft', **options), argnums=(0, 1, 2))(*args)
  for a, b in zip(gram, fft):
    scale = float(np.abs(np.asarray(a)).max())
    assert scale > 1e-2
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=2e-6 * scale, rtol=0)


def test_checkpointed_gradients_equal_unrolled():
  x, d, weights = _problem(2)
  args = (jnp.asarray(x, jnp.float32), jnp.asarray(d, jnp.float32), 0.1)
  unrolled = jax.grad(_loss_fn(weights, n_steps=101, tau=10.0), argnums=(0, 1, 2))(*args)
  checkpointed = jax.grad(_loss_fn(weights, n_steps=101, tau=10.0, grad='checkpoint'),
                          argnums=(0, 1, 2))(*args)
  for a, b in zip(unrolled, checkpointed):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


def test_checkpointing_memory_grows_as_sqrt_t():
  """Compiled temp memory of the backward pass: O(T) unrolled, O(√T) checkpointed."""
  x, d, weights = _problem(3, n=4, hw=(16, 16), f=8)
  args = (jnp.asarray(x, jnp.float32), jnp.asarray(d, jnp.float32), 0.1)

  def temp_bytes(grad, n_steps):
    fn = jax.jit(jax.grad(_loss_fn(weights, n_steps=n_steps, tau=10.0, grad=grad)))
    return fn.lower(*args).compile().memory_analysis().temp_size_in_bytes

  unrolled = temp_bytes('unroll', 1600) / temp_bytes('unroll', 400)
  checkpointed = temp_bytes('checkpoint', 1600) / temp_bytes('checkpoint', 400)
  assert unrolled > 3.5  # 4× the steps, ~4× the memory
  assert checkpointed < 2.2  # 4× the steps, ~2× the memory
  assert temp_bytes('checkpoint', 1600) < temp_bytes('unroll', 1600) / 5


@pytest.mark.parametrize('nonneg', [True, False])
def test_implicit_gradients_match_unrolling_to_convergence(nonneg):
  x, d, weights = _problem(4)
  args = (jnp.asarray(x, jnp.float32), jnp.asarray(d, jnp.float32), 0.2)
  unrolled = jax.grad(
      _loss_fn(weights, n_steps=3000, solver='fista', grad='unroll', nonneg=nonneg,
               normalize_input=True), argnums=(0, 1, 2))(*args)
  implicit = jax.grad(
      _loss_fn(weights, n_steps=3000, solver='fista', grad='implicit', nonneg=nonneg,
               normalize_input=True), argnums=(0, 1, 2))(*args)
  for a, b in zip(unrolled, implicit):
    scale = np.abs(np.asarray(a)).max()
    assert scale > 1e-3
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=2e-3 * scale)


def test_implicit_gradient_with_tolerance_stop():
  x, d, weights = _problem(5)
  args = (jnp.asarray(x, jnp.float32), jnp.asarray(d, jnp.float32), 0.2)
  full = jax.grad(_loss_fn(weights, n_steps=3000, solver='fista'), argnums=1)(*args)
  early = jax.grad(_loss_fn(weights, n_steps=3000, solver='fista', tol=1e-7), argnums=1)(*args)
  np.testing.assert_allclose(np.asarray(early), np.asarray(full), atol=1e-3)


@pytest.mark.parametrize('solver,lateral', [('lca', 'auto'), ('lca', 'fft'), ('fista', 'auto')])
def test_vmap_over_examples_equals_batched_call(solver, lateral):
  x, d, _ = _problem(6, n=3)
  x, d = jnp.asarray(x, jnp.float32), jnp.asarray(d, jnp.float32)
  options = dict(lam=0.1, n_steps=50, tau=10.0, solver=solver, lateral=lateral)
  batched = lca.solve(x, d, **options)
  mapped = jax.vmap(lambda xi: lca.solve(xi[None], d, **options)[0])(x)
  np.testing.assert_allclose(np.asarray(mapped), np.asarray(batched), atol=1e-6)


@pytest.mark.parametrize('lateral', ['auto', 'fft'])
def test_lambda_tau_dt_sweeps_do_not_recompile(lateral):
  x, d, _ = _problem(7)
  x, d = jnp.asarray(x, jnp.float32), jnp.asarray(d, jnp.float32)
  lca.solve(x, d, lam=0.1, n_steps=20, lateral=lateral)  # compile once
  before = solve_module._solve._cache_size()
  for lam, tau, dt in [(0.2, 50.0, 1.0), (0.3, 10.0, 0.5), (0.05, 1000.0, 2.0)]:
    lca.solve(x, d, lam=lam, n_steps=20, tau=tau, dt=dt, lateral=lateral)
  assert solve_module._solve._cache_size() == before
  lca.solve(x, d, lam=0.1, n_steps=21, lateral=lateral)  # n_steps is static: one new program
  assert solve_module._solve._cache_size() == before + 1

  @jax.jit
  @chex.assert_max_traces(n=1)
  def sweep_point(lam, tau):
    return lca.solve(x, d, lam=lam, n_steps=20, tau=tau, lateral=lateral)

  for lam in (0.1, 0.25, 0.5, 0.75):
    sweep_point(lam, 100.0)
  chex.clear_trace_counter()


def test_lambda_sweep_under_vmap():
  x, d, _ = _problem(8)
  x, d = jnp.asarray(x, jnp.float32), jnp.asarray(d, jnp.float32)
  lams = jnp.asarray([0.1, 0.25, 0.5])
  swept = jax.vmap(lambda lam: lca.solve(x, d, lam=lam, n_steps=30))(lams)
  for i, lam in enumerate([0.1, 0.25, 0.5]):
    np.testing.assert_allclose(np.asarray(swept[i]),
                               np.asarray(lca.solve(x, d, lam=lam, n_steps=30)), atol=1e-6)
