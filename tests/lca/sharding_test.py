"""The solver runs unchanged on a batch sharded over 8 (fake) devices."""

import jax
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from mi_jax import lca


@pytest.mark.parametrize('axis_type', [AxisType.Explicit, AxisType.Auto])
@pytest.mark.parametrize('solver,lateral', [('lca', 'recon'), ('lca', 'gram'), ('lca', 'gemm'),
                                            ('lca', 'fft'), ('fista', 'auto')])
def test_sharded_batch_gives_the_same_codes(axis_type, solver, lateral):
  assert jax.device_count() == 8
  rng = np.random.default_rng(0)
  x = rng.normal(size=(16, 12, 12, 1)).astype(np.float32)
  d = np.asarray(lca.normalize_dictionary(rng.normal(size=(5, 5, 1, 6)).astype(np.float32)))
  mesh = jax.make_mesh((8,), ('data',), axis_types=(axis_type,))
  x_sharded = jax.device_put(x, NamedSharding(mesh, P('data')))
  d_replicated = jax.device_put(d, NamedSharding(mesh, P()))
  options = dict(lam=0.2, n_steps=60, tau=10.0, solver=solver, lateral=lateral)
  local = lca.solve(x, d, **options)
  with jax.set_mesh(mesh):
    sharded = lca.solve(x_sharded, d_replicated, **options)
  assert sharded.sharding.spec[0] == 'data'
  np.testing.assert_allclose(np.asarray(sharded), np.asarray(local), atol=1e-6)


@pytest.mark.parametrize('lateral', ['recon', 'gram', 'gemm', 'fft'])
def test_every_lateral_form_runs_inside_shard_map(lateral):
  """The sparse layers solve per device under shard_map; there the codes vary
  over 'data', and every operator must keep that type (the 'recon' form's
  transposed convolution once did not)."""
  mesh = jax.make_mesh((8,), ('data',), axis_types=(AxisType.Auto,))
  rng = np.random.default_rng(0)
  x = rng.normal(size=(8, 12, 12, 1)).astype(np.float32)
  d = np.asarray(lca.normalize_dictionary(rng.normal(size=(5, 5, 1, 6)).astype(np.float32)))
  solve = lambda images: lca.solve(images, d, lam=0.3, n_steps=8, lateral=lateral)
  per_device = jax.jit(jax.shard_map(solve, mesh=mesh, in_specs=P('data'), out_specs=P('data')))
  np.testing.assert_allclose(per_device(x), jax.jit(solve)(x), rtol=1e-5, atol=1e-6)
