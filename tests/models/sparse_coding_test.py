"""The sparse coding layer splits the LCA per device under a mesh: same codes
and gradients as without one, and the split really happens."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from mi_jax.models import sparse_coding
from mi_jax.models.sparse_coding import SparseCodingLayer
from tests.helpers import mesh_of


def _layer(grad):
  return SparseCodingLayer(3, 6, kernel_size=5, lam=0.2, tau=20.0, n_steps=12, grad=grad,
                           dictionary_update='gradient', lateral='fft', rngs=nnx.Rngs(0))


def _loss(layer, x):
  return jnp.sum(jnp.square(layer(x)))


def test_codes_and_gradients_are_the_same_with_and_without_the_per_device_split(monkeypatch):
  x = jnp.asarray(np.abs(np.random.default_rng(0).standard_normal((16, 12, 12, 3))).astype(np.float32))
  mesh = mesh_of(8)
  layer = _layer('checkpoint')
  plain_codes = layer(x)
  plain_grads = nnx.grad(_loss, argnums=(0, 1))(layer, x)
  calls = []
  real = jax.shard_map
  monkeypatch.setattr(sparse_coding.jax, 'shard_map', lambda *a, **k: calls.append(k) or real(*a, **k))
  xs = jax.device_put(x, NamedSharding(mesh, P('data')))
  with jax.set_mesh(mesh):
    codes = jax.jit(lambda l, v: l(v))(layer, xs)
    grads = jax.jit(nnx.grad(_loss, argnums=(0, 1)))(layer, xs)
  assert calls and calls[0]['in_specs'] == (P('data'), P())
  np.testing.assert_allclose(codes, plain_codes, rtol=1e-5, atol=1e-6)
  layer_grad, input_grad = grads
  np.testing.assert_allclose(input_grad, plain_grads[1], rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(layer_grad.dictionary[...], plain_grads[0].dictionary[...], rtol=1e-4, atol=1e-5)


def test_no_split_without_a_mesh_or_when_the_batch_does_not_divide(monkeypatch):
  monkeypatch.setattr(sparse_coding.jax, 'shard_map', lambda *a, **k: (_ for _ in ()).throw(AssertionError))
  layer = _layer('unroll')
  x = jnp.ones((6, 12, 12, 3), jnp.float32)
  layer(x)  # no mesh set
  with jax.set_mesh(mesh_of(8)):
    layer(x)  # 6 rows over 8 devices: left to the partitioner


def test_a_fista_layer_returns_the_converged_lasso_codes_and_stops_on_tol():
  """solver='fista' with a tol: the codes minimise the same lasso as the
  LCA's fixed point (checked against a long LCA run), in fewer iterations
  than its cap, and gradients reach the input (implicitly)."""
  import pytest
  from mi_jax import lca
  x = jnp.asarray(np.abs(np.random.default_rng(1).standard_normal((4, 12, 12, 3))).astype(np.float32))
  layer = SparseCodingLayer(3, 6, kernel_size=5, lam=0.2, tau=20.0, n_steps=3000, grad='unroll',
                            solver='fista', tol=1e-5, rngs=nnx.Rngs(0))
  dictionary = layer.dictionary[...]
  codes = layer(x)
  _, info = lca.solve(x, dictionary, lam=0.2, n_steps=3000, solver='fista', tol=1e-5, grad='implicit',
                      return_info=True)
  assert int(info.n_steps) < 3000
  converged = lca.solve(x, dictionary, lam=0.2, n_steps=4000, tau=20.0)  # 200 time constants
  np.testing.assert_allclose(codes, converged, atol=2e-3)
  input_grad = jax.grad(lambda v: jnp.sum(jnp.square(layer(v))))(x)
  assert np.all(np.isfinite(input_grad)) and np.any(input_grad != 0)
  with pytest.raises(ValueError, match="tol applies to solver='fista' only"):
    SparseCodingLayer(3, 6, lam=0.2, tau=20.0, n_steps=10, tol=1e-4, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match='solver must be one of'):
    SparseCodingLayer(3, 6, lam=0.2, tau=20.0, n_steps=10, solver='ista', rngs=nnx.Rngs(0))
