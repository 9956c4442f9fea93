"""BREP-MI: label-only access, the sphere estimate and step against NumPy, the
radius schedule, repulsion away from known class boundaries, the initial-point
search and its failure, and sharded == unsharded.

The toy problems use a reshaping 'generator' (images = latents) so class
regions are known in latent space and margins can be computed exactly,
outside the attack."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import io_callback

from mi_jax.attacks import brep_mi
from tests.helpers import mesh_of

DIM = 4
generator = lambda z: z.reshape(z.shape[0], 2, 2, 1)


def _ball_and_quadrants(x):
  """Class 0: the ball ‖x‖ < 1; outside it classes 1–4 by the signs of (x₀, x₁). float64 or jnp."""
  xp = jnp if isinstance(x, jax.Array) else np
  x = x.reshape(x.shape[0], -1)
  quadrant = 1 + (x[:, 0] < 0).astype(xp.int32) + 2 * (x[:, 1] < 0).astype(xp.int32)
  return xp.where(xp.linalg.norm(x, axis=-1) < 1.0, 0, quadrant).astype(xp.int32)


def _margin(z, labels):
  """Distance from z to the boundary of its class region in the toy above."""
  norm = np.linalg.norm(z, axis=-1)
  quadrant = np.minimum(np.minimum(np.abs(z[:, 0]), np.abs(z[:, 1])), norm - 1.0)
  return np.where(labels == 0, 1.0 - norm, quadrant)


TOY = dict(generator=generator, latent_dim=DIM, initial_radius=0.3, max_iters_at_radius=25, max_passes=300,
           init_batch_size=16, log_every=100)


def _random_logits(seed=0):
  w1 = jax.random.normal(jax.random.key(seed), (DIM, 16))
  w2 = jax.random.normal(jax.random.key(seed + 1), (16, 3))
  return lambda x: jnp.tanh(x.reshape(x.shape[0], -1) @ w1) @ w2


def _assert_same(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


def test_only_the_argmax_matters():
  """Two logit functions with the same argmax everywhere give bit-identical attacks."""
  logits = _random_logits()
  rescaled = lambda x: 3.0 * jax.nn.log_softmax(logits(x)) - 1.0  # same argmax, other values
  run = lambda fn: brep_mi.brep_attack(labels_fn=brep_mi.label_only(fn), classes=[0, 1, 2], key=jax.random.key(3),
                                       attacks_per_class=2, **{**TOY, 'max_passes': 60})
  first, second = run(logits), run(rescaled)
  _assert_same(first, second)
  assert first[1].passes.max() > 1


def test_the_target_is_a_host_oracle_of_integer_labels():
  """A non-traceable oracle (host callback) suffices: the attack sends images and gets labels only;
  every image it sends is counted in the reported queries."""
  seen = []

  def oracle(images):
    images = np.asarray(images)
    seen.append(images.shape)
    return np.asarray(_ball_and_quadrants(images.astype(np.float64)), np.int32)

  def labels_fn(images):
    return io_callback(oracle, jax.ShapeDtypeStruct((images.shape[0],), jnp.int32), images)

  passes = 7
  result, stats = brep_mi.brep_attack(labels_fn=labels_fn, classes=[0, 2], key=jax.random.key(0),
                                      **{**TOY, 'max_iters_at_radius': 10_000, 'max_passes': passes})
  assert all(len(shape) == 4 and shape[1:] == (2, 2, 1) for shape in seen)
  walk = sum(np.prod(shape[:1]) for shape in seen) - stats.initial_queries
  np.testing.assert_array_equal(stats.passes, [passes, passes])
  np.testing.assert_array_equal(stats.queries, [passes * 33, passes * 33])  # N = 32 sphere points + 1 candidate
  assert walk == stats.queries.sum()
  assert stats.initial_queries == 16 * (len(seen) - 2 * passes)
  with pytest.raises(TypeError, match='integer labels'):  # a logits function is refused
    brep_mi.brep_attack(labels_fn=_random_logits(), classes=[0], key=jax.random.key(0), **TOY)


def test_sphere_directions_are_uniform_on_the_sphere():
  z = jnp.asarray([0.3, -1.0, 0.5, 2.0])
  u = np.asarray(brep_mi.sphere_directions(jax.random.key(0), 20000, DIM), np.float64)
  points = np.asarray(z) + 2.5 * u
  np.testing.assert_allclose(np.linalg.norm(points - np.asarray(z), axis=-1), 2.5, rtol=1e-5)
  assert np.abs(u.mean(0)).max() < 0.02  # uniform: mean 0, covariance I/d
  np.testing.assert_allclose(np.cov(u.T), np.eye(DIM) / DIM, atol=0.01)


@pytest.mark.parametrize('repulsion_only', [True, False])
def test_repulsion_estimate_is_the_papers_mean(repulsion_only):
  rng = np.random.default_rng(0)
  u = rng.normal(size=(3, 9, 5))
  u /= np.linalg.norm(u, axis=-1, keepdims=True)
  inside = rng.random((3, 9)) < 0.5
  phi = np.where(inside, 1.0, -1.0)
  weight = (phi - 1) / 2 if repulsion_only else phi  # Φ' = (Φ − 1)/2 ∈ {0, −1}
  expected = np.einsum('rn,rnd->rd', weight, u) / 9
  got = brep_mi.repulsion_estimate(jnp.asarray(inside), jnp.asarray(u, jnp.float32), repulsion_only=repulsion_only)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def _state(z, radius, *, done=None, stale=5):
  rows = len(z)
  return brep_mi.WalkState(
      z=jnp.asarray(z, jnp.float32), radius=jnp.full(rows, radius, jnp.float32), stale=jnp.full(rows, stale),
      passes=jnp.zeros(rows, jnp.int32), expansions=jnp.zeros(rows, jnp.int32), expansion_z=jnp.asarray(z, jnp.float32),
      expanded=jnp.zeros(rows, bool), done=jnp.zeros(rows, bool) if done is None else jnp.asarray(done))


def _pass(state, labels, labels_fn, *, t=0, key=jax.random.key(5)):
  step = functools.partial(brep_mi.brep_pass, labels_fn=labels_fn, generator=generator, sphere_points=32,
                           expansion=1.3, expand_fraction=0.75, clip=1.5, max_step=3.0, repulsion_only=True)
  return jax.jit(step)(state, jnp.asarray(labels), jnp.arange(len(labels)), key, t)


def test_one_pass_steps_by_the_authors_rule():
  """z' = clip(z + min(R/3, 3)·M̂·R/R'), M̂ over the sphere's out-of-class points, in float64."""
  z = np.array([[0.2, 0.1, -0.3, 0.0], [0.5, 0.5, 0.5, 0.5], [-1.3, 0.5, 0.0, 0.1]])
  labels = _ball_and_quadrants(z)
  key, t, radius = jax.random.key(5), 3, 0.8
  new, grew = _pass(_state(z, radius), labels, _ball_and_quadrants, t=t, key=key)
  u = np.stack([np.asarray(brep_mi.sphere_directions(jax.random.fold_in(jax.random.fold_in(key, r), t), 32, DIM),
                           np.float64) for r in range(3)])
  sphere = z[:, None] + radius * u
  inside = _ball_and_quadrants(sphere.reshape(-1, DIM)).reshape(3, 32) == labels[:, None]
  grow = inside.sum(1) > 24
  new_radius = np.where(grow, 1.3 * radius, radius)
  m_hat = -np.einsum('rn,rnd->rd', ~inside, u) / 32
  candidate = np.clip(z + min(radius / 3, 3.0) * m_hat * (radius / new_radius)[:, None], -1.5, 1.5)
  accept = _ball_and_quadrants(candidate) == labels
  # Rows 0–1 repel at a fixed radius, row 2 repels on an expanding pass (28 of 32 in class).
  np.testing.assert_array_equal(inside.sum(1), [22, 24, 28])
  np.testing.assert_array_equal(grew, grow)
  np.testing.assert_allclose(new.radius, new_radius, rtol=1e-6)
  np.testing.assert_allclose(new.z, np.where(accept[:, None], candidate, z), rtol=1e-5, atol=1e-6)
  assert accept.any()


@pytest.mark.parametrize('inside, grows', [(32, True), (25, True), (24, False), (0, False)])
def test_radius_grows_only_when_over_three_quarters_of_the_sphere_is_in_class(inside, grows):
  """The authors' rule: R ← 1.3 R iff more than 0.75·N sphere points are labelled y (25 of 32, not 24);
  an expansion resets the steps-at-radius count, an accepted step otherwise adds one."""

  def labels_fn(images):  # sphere queries: the first `inside` points of each row in class; candidates in class
    n = images.shape[0]
    if n == 2:
      return jnp.zeros(n, jnp.int32)
    return jnp.where(jnp.arange(n) % 32 < inside, 0, 1).astype(jnp.int32)

  new, grew = _pass(_state(np.zeros((2, DIM)), 0.5, done=[False, True]), np.zeros(2, np.int32), labels_fn)
  assert bool(grew[0]) == grows and not bool(grew[1])  # a finished row is frozen
  np.testing.assert_allclose(new.radius, [0.65 if grows else 0.5, 0.5], rtol=1e-6)
  np.testing.assert_array_equal(new.stale, [0 if grows else 6, 5])
  np.testing.assert_array_equal(new.passes, [1, 0])
  np.testing.assert_array_equal(new.expanded, [grows, False])


def test_a_class_that_fills_every_sphere_stops_past_the_maximum_radius():
  """R = 2·1.3^k grows every pass until it exceeds 16.3: eight expansions (the authors' R₀, γ; PPDG's cap)."""
  everywhere = lambda images: jnp.zeros(images.shape[0], jnp.int32)
  result, stats = brep_mi.brep_attack(labels_fn=everywhere, classes=[0], key=jax.random.key(0),
                                      **{**TOY, 'initial_radius': 2.0})
  np.testing.assert_array_equal(stats.passes, [8])
  np.testing.assert_array_equal(stats.expansions, [8])
  np.testing.assert_allclose(stats.radius, [2.0 * 1.3 ** 8], rtol=1e-5)
  assert stats.converged.all() and stats.expanded.all()
  np.testing.assert_array_equal(result.latents, result.initial_latents)  # no point outside: M̂ = 0


def test_a_rejected_step_keeps_the_point_and_the_count():
  def labels_fn(images):  # 8 of 32 sphere points in class; every candidate leaves it
    n = images.shape[0]
    if n == 2:
      return jnp.ones(n, jnp.int32)
    return jnp.where(jnp.arange(n) % 32 < 8, 0, 1).astype(jnp.int32)

  z = np.full((2, DIM), 0.1)
  new, _ = _pass(_state(z, 0.5), np.zeros(2, np.int32), labels_fn)
  np.testing.assert_array_equal(new.z, z.astype(np.float32))
  np.testing.assert_array_equal(new.stale, [5, 5])
  np.testing.assert_array_equal(new.passes, [1, 1])


def test_the_walk_moves_away_from_the_class_boundaries():
  """On the ball-and-quadrants toy every attack ends farther from its class boundary than it
  started (margins computed outside the attack), still in its class and in the latent box."""
  result, stats = brep_mi.brep_attack(labels_fn=_ball_and_quadrants, classes=range(5), key=jax.random.key(1),
                                      attacks_per_class=2, **TOY)
  z0, z = np.asarray(result.initial_latents, np.float64), np.asarray(result.latents, np.float64)
  before, after = _margin(z0, result.labels), _margin(z, result.labels)
  np.testing.assert_array_equal(_ball_and_quadrants(z0), result.labels)
  np.testing.assert_array_equal(_ball_and_quadrants(z), result.labels)
  assert (after > before + 0.05).all(), (before, after)
  assert np.abs(z).max() <= 1.5
  ball = result.labels == 0
  assert (np.linalg.norm(z[ball], axis=-1) < 0.35).all()  # near the ball's centre
  assert (stats.radius > 0.3).all() and (stats.expansions > 0).all() and stats.expanded.all()
  assert stats.converged.all() and (stats.passes < 300).all()
  np.testing.assert_array_equal(stats.queries, stats.passes * 33)
  np.testing.assert_array_equal(result.initial_images.reshape(-1, DIM), z0.astype(np.float32))
  np.testing.assert_array_equal(result.images.reshape(-1, DIM), z.astype(np.float32))
  assert result.images.shape == (10, 2, 2, 1) and result.losses.shape == (0,)


def test_initial_points_are_the_first_draws_of_each_class_and_absence_is_reported():
  def labels_fn(images):  # class 3 is never predicted (its quadrant is labelled 4)
    y = _ball_and_quadrants(images)
    return jnp.where(y == 3, 4, y)

  with pytest.raises(brep_mi.NoInitialPointError, match=r'\[3\]') as error:
    brep_mi.brep_attack(labels_fn=labels_fn, classes=[0, 3, 1], key=jax.random.key(2),
                        **{**TOY, 'max_init_batches': 4})
  assert error.value.missing == (3,)
  result, stats = brep_mi.brep_attack(labels_fn=labels_fn, classes=[0, 3, 1], key=jax.random.key(2), missing='drop',
                                      attacks_per_class=2, **{**TOY, 'max_init_batches': 4, 'max_passes': 5})
  assert stats.missing == (3,) and stats.initial_queries == 64
  np.testing.assert_array_equal(result.labels, [0, 0, 1, 1])
  # The reference: the authors' batches of clamped N(0, I) draws, first hits in drawing order.
  init_key = jax.random.split(jax.random.key(2))[0]
  draws = np.concatenate([np.clip(np.asarray(jax.random.normal(jax.random.fold_in(init_key, b), (16, DIM))), -1.5, 1.5)
                          for b in range(4)])
  y = np.asarray(labels_fn(jnp.asarray(draws)))
  expected = np.concatenate([draws[np.flatnonzero(y == c)[:2]] for c in (0, 1)])
  np.testing.assert_array_equal(result.initial_latents, expected)


def test_sharded_equals_unsharded():
  """Per-row randomness: 6 rows padded to 8 on 8 devices walk exactly as on one device."""
  run = lambda mesh: brep_mi.brep_attack(labels_fn=_ball_and_quadrants, classes=[0, 1, 4], key=jax.random.key(4),
                                         attacks_per_class=2, mesh=mesh, **{**TOY, 'max_passes': 40})
  one, eight = run(None), run(mesh_of(8))
  np.testing.assert_allclose(one[0].latents, eight[0].latents, rtol=1e-6, atol=1e-7)
  for a, b in zip(one[1][:8], eight[1][:8]):
    np.testing.assert_allclose(a, b, rtol=1e-6)

