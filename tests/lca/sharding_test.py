"""The solver runs unchanged on a batch sharded over 8 (fake) devices."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from mi_jax import lca


def test_sharded_batch_gives_the_same_codes():
  assert jax.device_count() == 8
  rng = np.random.default_rng(0)
  x = rng.normal(size=(16, 12, 12, 1)).astype(np.float32)
  d = np.asarray(lca.normalize_dictionary(rng.normal(size=(5, 5, 1, 6)).astype(np.float32)))
  mesh = jax.make_mesh((8,), ('data',), axis_types=(jax.sharding.AxisType.Explicit,))
  x_sharded = jax.device_put(x, NamedSharding(mesh, P('data')))
  d_replicated = jax.device_put(d, NamedSharding(mesh, P()))
  for solver in ('lca', 'fista'):
    local = lca.solve(x, d, lam=0.2, n_steps=60, tau=10.0, solver=solver)
    with jax.set_mesh(mesh):
      sharded = lca.solve(x_sharded, d_replicated, lam=0.2, n_steps=60, tau=10.0, solver=solver)
    assert sharded.sharding.spec[0] == 'data'
    np.testing.assert_allclose(np.asarray(sharded), np.asarray(local), atol=1e-6)
