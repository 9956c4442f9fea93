"""Solver objects (LCA, FISTA, ConvDictionary, DenseDictionary): equal to
solve, stepped = run, warm starts, jit/vmap/scan, gradients, option checks."""

import dataclasses
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mi_jax import lca
from mi_jax.lca import implicit


def _conv_problem(seed, *, n=2, hw=(7, 6), c=2, f=4, k=(3, 3)):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, *hw, c)).astype(np.float32)
  d = np.asarray(lca.normalize_dictionary(rng.normal(size=(*k, c, f)).astype(np.float32)))
  return x, d


def _dense_problem(seed, *, n=3, dim=10, f=8):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, dim)).astype(np.float32)
  d = np.asarray(lca.normalize_dictionary(rng.normal(size=(dim, f)).astype(np.float32)))
  return x, d


def _problem(kind, seed=0):
  """(x, dictionary, operator, options of solve that give the same geometry)."""
  if kind == 'conv':
    x, d = _conv_problem(seed)
    return x, d, lca.ConvDictionary(d, stride=2, padding='same', lateral='fft'), dict(
        stride=2, padding='same', lateral='fft')
  x, d = _dense_problem(seed)
  return x, d, lca.DenseDictionary(d, lateral='gram'), dict(lateral='gram')


# -------------------------------------------------------------- equal to solve


@pytest.mark.parametrize('kind', ['conv', 'dense'])
@pytest.mark.parametrize('grad', ['unroll', 'checkpoint'])
def test_lca_run_is_solve(kind, grad):
  """LCA(maxiter=T − 1) is solve(n_steps=T), to the bit, codes and state."""
  x, d, operator, geometry = _problem(kind)
  codes, info = lca.solve(x, d, lam=0.1, n_steps=30, tau=8.0, dt=0.5, grad=grad,
                          return_info=True, **geometry)
  solver = lca.LCA(lam=0.1, maxiter=29, tau=8.0, dt=0.5, grad=grad)
  got, state = jax.jit(solver.run)(x, operator)  # solve's compiled program, less its extras
  np.testing.assert_array_equal(np.asarray(got), np.asarray(codes))
  np.testing.assert_array_equal(np.asarray(state.u), np.asarray(info.state))
  assert int(state.iter_num) == 29 and float(state.error) > 0


@pytest.mark.parametrize('kind', ['conv', 'dense'])
@pytest.mark.parametrize('grad,tol', [('unroll', None), ('checkpoint', None),
                                      ('implicit', None), ('implicit', 1e-5)])
def test_fista_run_is_solve(kind, grad, tol):
  x, d, operator, geometry = _problem(kind)
  codes, info = lca.solve(x, d, lam=0.1, n_steps=200, solver='fista', grad=grad, tol=tol,
                          return_info=True, **geometry)
  got, state = jax.jit(lca.FISTA(lam=0.1, maxiter=200, grad=grad, tol=tol).run)(x, operator)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(codes))
  assert int(state.iter_num) == int(info.n_steps)
  if tol is not None:
    assert 2 < int(state.iter_num) < 200 and float(state.error) <= tol


# ------------------------------------------------------------ stepped = run


def _update_loop(solver, x, operator, n):
  update = jax.jit(solver.update)
  state = solver.init_state(x, operator)
  codes = None
  for _ in range(n):
    codes, state = update(codes, state, x, operator)
  return codes, state


@pytest.mark.parametrize('kind', ['conv', 'dense'])
@pytest.mark.parametrize('solver', [lca.LCA(lam=0.1, maxiter=12, tau=5.0),
                                    lca.FISTA(lam=0.1, maxiter=12, grad='unroll')],
                         ids=['lca', 'fista'])
def test_loop_of_updates_equals_run(kind, solver):
  x, _, operator, _ = _problem(kind, seed=1)
  codes, state = solver.run(x, operator)
  stepped_codes, stepped_state = _update_loop(solver, x, operator, 12)
  np.testing.assert_allclose(np.asarray(stepped_codes), np.asarray(codes), atol=1e-6, rtol=0)
  for a, b in zip(jax.tree.leaves(stepped_state), jax.tree.leaves(state)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=1e-6)


def test_states_pass_through_scan():
  """A scan of update (the state a pytree carry) is run."""
  x, _, operator, _ = _problem('conv', seed=2)
  solver = lca.LCA(lam=0.1, maxiter=9, tau=5.0)

  def step(state, _):
    return solver.update(None, state, x, operator).state, None

  state = jax.lax.scan(step, solver.init_state(x, operator), length=9)[0]
  np.testing.assert_allclose(np.asarray(state.u), np.asarray(solver.run(x, operator).state.u),
                             atol=1e-6)


# --------------------------------------------------------------- warm starts


@pytest.mark.parametrize('kind', ['conv', 'dense'])
def test_lca_split_run_equals_one_long_run(kind):
  """run(n1), then run(n2) from its state, is run(n1 + n2)."""
  x, _, operator, _ = _problem(kind, seed=3)
  solver = lca.LCA(lam=0.1, maxiter=40, tau=6.0)
  long_codes, long_state = solver.run(x, operator)
  _, first = dataclasses.replace(solver, maxiter=15).run(x, operator)
  codes, state = dataclasses.replace(solver, maxiter=25).run(x, operator, init=first)
  np.testing.assert_allclose(np.asarray(codes), np.asarray(long_codes), atol=1e-6, rtol=0)
  np.testing.assert_allclose(np.asarray(state.u), np.asarray(long_state.u), atol=1e-6, rtol=0)
  assert int(state.iter_num) == 25  # the run that made it


def test_fista_split_run_equals_one_long_run():
  x, _, operator, _ = _problem('conv', seed=4)
  solver = lca.FISTA(lam=0.1, maxiter=50, grad='unroll')
  long_codes, _ = solver.run(x, operator)
  _, first = dataclasses.replace(solver, maxiter=20).run(x, operator)
  codes, _ = dataclasses.replace(solver, maxiter=30).run(x, operator, init=first)
  np.testing.assert_allclose(np.asarray(codes), np.asarray(long_codes), atol=1e-6, rtol=0)


def test_lca_warm_start_from_a_converged_state_stays():
  x, _, operator, _ = _problem('conv', seed=5)
  converged, state = lca.LCA(lam=0.1, maxiter=3000, tau=3.0).run(x, operator)
  assert float(state.error) < 1e-6
  codes, _ = lca.LCA(lam=0.1, maxiter=50, tau=3.0).run(x, operator, init=state)
  np.testing.assert_allclose(np.asarray(codes), np.asarray(converged), atol=1e-6, rtol=0)


@pytest.mark.parametrize('kind', ['conv', 'dense'])
def test_fista_warm_start_from_a_converged_state_stops_at_once(kind):
  x, _, operator, _ = _problem(kind, seed=6)
  solver = lca.FISTA(lam=0.1, maxiter=2000, tol=1e-6)
  converged, state = solver.run(x, operator)
  assert 2 < int(state.iter_num) < 2000
  codes, warm = solver.run(x, operator, init=state)
  assert int(warm.iter_num) == 0
  np.testing.assert_array_equal(np.asarray(codes), np.asarray(converged))


def test_fista_split_run_with_tol_equals_one_run():
  """Continuing keeps the stopping measure: the split run stops where one run does."""
  x, _, operator, _ = _problem('conv', seed=6)
  solver = lca.FISTA(lam=0.1, maxiter=2000, tol=1e-6)
  codes, state = solver.run(x, operator)
  _, first = dataclasses.replace(solver, maxiter=30).run(x, operator)
  split, rest = solver.run(x, operator, init=first)
  assert int(first.iter_num) + int(rest.iter_num) == int(state.iter_num)
  np.testing.assert_allclose(np.asarray(split), np.asarray(codes), atol=1e-6, rtol=0)


def test_fista_amortised_warm_start_from_a_restarted_state():
  """Codes of a nearby input, restarted: fewer steps to that input's solution."""
  x, _, operator, _ = _problem('conv', seed=18)
  nearby = x + 0.01 * np.random.default_rng(19).normal(size=x.shape).astype(np.float32)
  solver = lca.FISTA(lam=0.1, maxiter=2000, tol=1e-6)
  _, state = solver.run(nearby, operator)
  cold, cold_state = solver.run(x, operator)
  stale, stale_state = solver.run(x, operator, init=state)
  assert int(stale_state.iter_num) == 0  # the measure belongs to the nearby input
  warm, warm_state = solver.run(x, operator, init=state.restarted())
  assert 2 <= int(warm_state.iter_num) < int(cold_state.iter_num)
  np.testing.assert_allclose(np.asarray(warm), np.asarray(cold), atol=2e-4, rtol=0)


# ---------------------------------------------------------- jit, vmap, pytrees


@pytest.mark.parametrize('solver', [lca.LCA(lam=0.1, maxiter=20, tau=5.0),
                                    lca.FISTA(lam=0.1, maxiter=20, grad='unroll')],
                         ids=['lca', 'fista'])
def test_vmap_over_examples_equals_the_batch(solver):
  x, _, operator, _ = _problem('conv', seed=7)
  batched = solver.run(x, operator).codes
  mapped = jax.vmap(lambda xi: solver.run(xi[None], operator).codes[0])(x)
  np.testing.assert_allclose(np.asarray(mapped), np.asarray(batched), atol=1e-6)


@pytest.mark.parametrize('solver,atol', [
    (lca.LCA(lam=0.1, maxiter=20, tau=5.0, grad='checkpoint'), 1e-5),
    (lca.FISTA(lam=0.1, maxiter=100), 1e-5),
    # Each device stops on its own slice's measure, the batch on its worst sample's.
    (lca.FISTA(lam=0.1, maxiter=500, tol=1e-5), 5e-3)], ids=['lca', 'fista', 'fista-tol'])
def test_run_per_device_under_shard_map(solver, atol):
  """Each device codes its slice (the states' scalars vary per device)."""
  x, d = _conv_problem(20, n=8)
  operator = lca.ConvDictionary(d)
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]), ('data',))
  spec = jax.sharding.PartitionSpec('data')
  per_device = jax.shard_map(lambda x: solver.run(x, operator).codes, mesh=mesh,
                             in_specs=spec, out_specs=spec)
  with jax.set_mesh(mesh):
    codes = jax.jit(per_device)(jax.device_put(x, jax.sharding.NamedSharding(mesh, spec)))
  np.testing.assert_allclose(np.asarray(codes), np.asarray(solver.run(x, operator).codes),
                             atol=atol)


def test_solver_is_a_hashable_frozen_static_argument():
  solver = lca.LCA(lam=0.1, maxiter=10, tau=5.0)
  assert hash(solver) == hash(lca.LCA(lam=0.1, maxiter=10, tau=5.0))
  assert solver == lca.LCA(lam=0.1, maxiter=10, tau=5.0) != dataclasses.replace(solver, lam=0.2)
  with pytest.raises(dataclasses.FrozenInstanceError):
    solver.lam = 0.2
  assert hash(lca.FISTA(lam=0.1, maxiter=5)) == hash(lca.FISTA(lam=0.1, maxiter=5))
  x, _, operator, _ = _problem('conv', seed=8)
  run = jax.jit(lambda solver, x, operator: solver.run(x, operator), static_argnums=0)
  np.testing.assert_allclose(np.asarray(run(solver, x, operator).codes),
                             np.asarray(solver.run(x, operator).codes), atol=1e-6)


def test_lambda_is_a_traced_leaf_a_sweep_compiles_once():
  x, _, operator, _ = _problem('conv', seed=9)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def run(solver, x, operator):
    return solver.run(x, operator).codes

  for lam in (0.05, 0.1, 0.3):
    solver = lca.LCA(lam=lam, maxiter=10, tau=5.0)
    np.testing.assert_allclose(np.asarray(run(solver, x, operator)),
                               np.asarray(solver.run(x, operator).codes), atol=1e-6)
  chex.clear_trace_counter()
  leaves, treedef = jax.tree.flatten(lca.LCA(lam=0.1, maxiter=10, tau=5.0, dt=2.0))
  assert leaves == [0.1, 5.0, 2.0]
  assert jax.tree.unflatten(treedef, leaves) == lca.LCA(lam=0.1, maxiter=10, tau=5.0, dt=2.0)


# ----------------------------------------------------------------- gradients


def _readout(seed, shape):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape))


def test_unrolled_gradients_through_run_match_finite_differences():
  with jax.enable_x64(True):
    x, d = (np.asarray(a, np.float64) for a in _conv_problem(10, n=1, hw=(5, 5), f=3))
    weights = _readout(11, (1, 5, 5, 3))

    def loss(x, d, lam):
      codes, state = lca.LCA(lam=lam, maxiter=30, tau=4.0, grad='checkpoint').run(
          x, lca.ConvDictionary(d))
      return jnp.sum(codes * weights) + 0.1 * jnp.sum(state.u**2)

    args = (jnp.asarray(x), jnp.asarray(d), jnp.asarray(0.15))
    grads = jax.grad(loss, argnums=(0, 1, 2))(*args)
    rng = np.random.default_rng(12)
    for index in range(3):
      direction = jnp.asarray(rng.normal(size=np.shape(args[index])))
      plus, minus = list(args), list(args)
      plus[index] = args[index] + 1e-6 * direction
      minus[index] = args[index] - 1e-6 * direction
      expected = (loss(*plus) - loss(*minus)) / 2e-6
      np.testing.assert_allclose(jnp.vdot(grads[index], direction), expected, rtol=1e-5, atol=1e-8)


def _converged_grads(code_fn, x, d, lam, weights):
  # Atoms normalised inside: LCA's fixed point is the lasso solution only for
  # unit-norm atoms, so the two maps (and gradients) agree only through this.
  loss = lambda x, d, lam: jnp.sum(code_fn(x, lca.normalize_dictionary(d), lam) * weights)
  return jax.grad(loss, argnums=(0, 1, 2))(jnp.asarray(x), jnp.asarray(d), lam)


def test_fista_implicit_gradients_equal_solve_implicit():
  x, d = _conv_problem(13)
  weights = _readout(14, (2, 7, 6, 4))
  from_solve = _converged_grads(
      lambda x, d, lam: lca.solve(x, d, lam=lam, n_steps=500, solver='fista', grad='implicit'),
      x, d, 0.2, weights)
  from_object = _converged_grads(
      lambda x, d, lam: lca.FISTA(lam=lam, maxiter=500).run(x, lca.ConvDictionary(d)).codes,
      x, d, 0.2, weights)
  for a, b in zip(from_solve, from_object):
    scale = np.abs(np.asarray(a)).max()
    assert scale > 1e-3
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-5 * scale, rtol=0)


def test_lca_optimality_fun_gives_the_implicit_gradient_of_the_solution():
  """LCA run to its fixed point, differentiated through LCA.optimality_fun,
  has the gradient of FISTA's implicit one (unit-norm atoms: the same lasso)."""
  x, d = _conv_problem(15)
  weights = _readout(16, (2, 7, 6, 4))

  def lca_codes(x, d, lam):
    def solution(start, x, d, lam):
      return lca.LCA(lam=lam, maxiter=3000, tau=3.0).run(x, lca.ConvDictionary(d), init=start)

    def optimality(codes, x, d, lam):
      return lca.LCA(lam=lam, maxiter=1).optimality_fun(codes, x, lca.ConvDictionary(d))

    return implicit.with_implicit_grad(solution, optimality, cg_tol=1e-6, cg_maxiter=1000)(
        None, x, d, lam)[0]

  fista_codes = lambda x, d, lam: lca.FISTA(lam=lam, maxiter=3000).run(
      x, lca.ConvDictionary(d)).codes
  for a, b in zip(_converged_grads(fista_codes, x, d, 0.2, weights),
                  _converged_grads(lca_codes, x, d, 0.2, weights)):
    scale = np.abs(np.asarray(a)).max()
    assert scale > 1e-3
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=2e-3 * scale)


@pytest.mark.parametrize('kind', ['conv', 'dense'])
def test_optimality_funs_vanish_at_the_solution_and_agree(kind):
  x, _, operator, _ = _problem(kind, seed=17)
  codes = lca.FISTA(lam=0.2, maxiter=3000).run(x, operator).codes
  assert np.count_nonzero(np.asarray(codes)) > 0
  fista_residual = lca.FISTA(lam=0.2, maxiter=1).optimality_fun(codes, x, operator)
  lca_residual = lca.LCA(lam=0.2, maxiter=1).optimality_fun(codes, x, operator)
  assert fista_residual.shape == codes.shape
  assert float(jnp.abs(fista_residual).max()) < 1e-4
  random_codes = jnp.asarray(np.random.default_rng(18).normal(size=codes.shape), jnp.float32)
  np.testing.assert_allclose(
      np.asarray(lca.LCA(lam=0.2, maxiter=1).optimality_fun(random_codes, x, operator)),
      np.asarray(lca.FISTA(lam=0.2, maxiter=1).optimality_fun(random_codes, x, operator)),
      atol=1e-4)
  assert float(jnp.abs(lca_residual).max()) < 1e-4


# ---------------------------------------------------------- imports, checks


def test_importing_the_objects_imports_no_flax():
  code = ("import sys; from mi_jax.lca import LCA, FISTA, ConvDictionary, DenseDictionary; "
          "bad = [m for m in ('flax', 'jaxopt') if m in sys.modules]; assert not bad, bad")
  subprocess.run([sys.executable, '-c', code], check=True)


X = np.zeros((2, 8, 8, 1), np.float32)
D = np.zeros((3, 3, 1, 4), np.float32)


@pytest.mark.parametrize('make,pattern', [
    (lambda: lca.LCA(lam=-0.1, maxiter=5), r"LCA.lam must be a finite number >= 0, got -0.1"),
    (lambda: lca.LCA(lam=0.1, maxiter=-1), r"LCA.maxiter must be an integer >= 0, got -1"),
    (lambda: lca.LCA(lam=0.1, maxiter=2.5), r"LCA.maxiter must be an integer >= 0"),
    (lambda: lca.LCA(lam=0.1, maxiter=5, tau=0.0), r"LCA.tau must be a finite number > 0"),
    (lambda: lca.LCA(lam=0.1, maxiter=5, dt=-1.0), r"LCA.dt must be a finite number > 0"),
    (lambda: lca.LCA(lam=0.1, maxiter=5, threshold='medium'),
     r"LCA.threshold must be one of \('soft', 'hard'\), got 'medium'"),
    (lambda: lca.LCA(lam=0.1, maxiter=5, grad='implicit'),
     r"LCA.grad must be one of \('unroll', 'checkpoint'\), got 'implicit'"),
    (lambda: lca.LCA(lam=0.1, maxiter=5, nonneg='yes'), r"LCA.nonneg must be True or False"),
    (lambda: lca.FISTA(lam=0.1, maxiter=0), r"FISTA.maxiter must be an integer >= 1, got 0"),
    (lambda: lca.FISTA(lam=0.1, maxiter=5, grad='magic'),
     r"FISTA.grad must be one of \('unroll', 'checkpoint', 'implicit'\), got 'magic'"),
    (lambda: lca.FISTA(lam=0.1, maxiter=5, tol=1e-3, grad='unroll'), r"use grad='implicit'"),
    (lambda: lca.FISTA(lam=0.1, maxiter=5, tol=-1.0), r"FISTA.tol must be None or a float > 0"),
    (lambda: lca.ConvDictionary(D, padding='full'),
     r"ConvDictionary.padding must be one of \('same', 'valid'\), got 'full'"),
    (lambda: lca.ConvDictionary(D, lateral='fourier'),
     r"ConvDictionary.lateral must be one of \('auto', 'recon', 'gram', 'gemm', 'fft'\)"),
    (lambda: lca.ConvDictionary(D, stride=0), r"ConvDictionary.stride must be a positive int"),
    (lambda: lca.ConvDictionary(np.zeros((9, 4))), r"a \(D, F\) dictionary is a DenseDictionary"),
    (lambda: lca.DenseDictionary(D), r"DenseDictionary.dictionary must have shape \(D, F\)"),
    (lambda: lca.ConvDictionary(D).bind(X[:, :, :, 0]), r"x must have rank 4"),
    (lambda: lca.ConvDictionary(np.zeros((3, 3, 2, 4))).bind(X), r"x has 1 channels"),
    (lambda: lca.LCA(lam=0.1, maxiter=5).run(X, lca.ConvDictionary(D), init=np.zeros(3)),
     r"init must be None or an LCAState, got ndarray"),
    (lambda: lca.LCA(lam=0.1, maxiter=5).run(
        X, lca.ConvDictionary(D), init=lca.LCA(lam=0.1, maxiter=5).init_state(X[:1], lca.ConvDictionary(D))),
     r"init.u has shape \(1, 8, 8, 4\), but the codes of this x have shape \(2, 8, 8, 4\)"),
    (lambda: lca.FISTA(lam=0.1, maxiter=5).update(None, None, X, lca.ConvDictionary(D)),
     r"state must be an FISTAState, got NoneType"),
])
def test_bad_options_raise_one_line_value_errors(make, pattern):
  with pytest.raises(ValueError, match=pattern) as error:
    make()
  assert '\n' not in str(error.value)
