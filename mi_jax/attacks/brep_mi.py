"""BREP-MI: label-only model inversion by boundary repulsion (Kahla, Chen, Just
& Jia, CVPR 2022, "Label-Only Model Inversion Attacks via Boundary Repulsion").

The attacker sees only the target's top-1 label ``f(x)``. It reuses GMI's
public-data generator G (:func:`mi_jax.train.gan.train_gan`) and, for each
attacked class y, walks a latent z inside the class region
{z : f(G(z)) = y} away from its boundary: a point deep inside the region
(a large in-class sphere around it) is taken as the class's most
representative image.

1. *Initial point* (the authors' ``gen_initial_points_targeted``): draw
   batches of ``init_batch_size`` = 256 latents z ~ N(0, I) clamped to
   [−1.5, 1.5]^d, label G(z), and keep for each attacked class the first
   draw(s) labelled y, in drawing order. The authors loop until every class
   is found; we stop after ``max_init_batches`` batches and either raise
   :class:`NoInitialPointError` or, with ``missing='drop'``, attack only the
   classes found (:attr:`BrepStats.missing` lists the others).
2. *Boundary repulsion*. With Φ_y(z) = +1 if f(G(z)) = y and −1 otherwise,
   the paper estimates the direction away from the boundary on a sphere of
   radius R around z from N directions u_n uniform on the unit sphere:

       M̂(z, R) = (1/N) Σ_n Φ_y(z + R u_n) · u_n.

   The authors' runs use ``repulsion_only``: only the points labelled ≠ y
   contribute, Φ' = (Φ − 1)/2 ∈ {0, −1}, so M̂ = −(1/N) Σ_{n: out} u_n
   (the mean is still over all N points). The step is

       z' = clip(z + α M̂,  −1.5, 1.5),   α = min(R / 3, 3),

   and z' is accepted only if f(G(z')) = y; otherwise z stays (the authors
   break out to re-sample the sphere at the same radius).
3. *Radius schedule*. When more than ``expand_fraction`` = 0.75 of the N
   sphere points are labelled y (the authors' code, where a comment and a
   commented-out test name the all-points case), R ← γR with γ = 1.3. The walk at a radius ends after
   ``max_iters_at_radius`` = 1000 accepted steps without an expansion (the
   authors' ``max_iters_at_radius_before_terminate``): rejected steps and
   the expanding step itself do not count, as in their loop. It also ends
   once R exceeds ``max_radius`` = 16.3 (the authors' release has no cap:
   a class that fills 75 % of every sphere would grow R forever; the PPDG
   code's re-run of BREP-MI, tmlr-group/PPDG-MI, stops at R > 16.3 ≈ 2·1.3⁸,
   eight expansions), and always after ``max_passes`` sphere evaluations (ours:
   their loop is unbounded, e.g. when every step is rejected).

Two details of the authors' step are kept because they change the path:
α is computed from the radius *before* an expansion, and on an expanding
pass their estimate divides the length-R perturbations by the *new* radius
γR, so that pass's step is 1/γ of the usual one (:func:`brep_pass`).

Each pass costs N + 1 label queries (the sphere, then the candidate); the
count per attack is returned (:class:`BrepStats`). The authors also compute
a cross-entropy and an evaluator's label every step, for their logs only;
those are not attack queries and we do neither.

All attacks of all classes walk together: one jitted ``lax.while_loop``
evaluates the (rows·N) sphere images in one ``labels_fn`` call, rows
sharded over the 'data' mesh axis. Finished rows are frozen (their queries
no longer count). Row i's randomness at pass t is
``fold_in(fold_in(key, i), t)``, so results do not depend on the mesh.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from mi_jax.attacks import latent
from mi_jax.data.batching import DATA_AXIS

# The authors' config2.yaml (their README's example run) and brep_mi.py: N = 32 sphere points,
# R₀ = 2, γ = 1.3, latent clamp ±1.5, 1000 steps per radius, 256 draws per initial-point batch,
# repulsion only, α = min(R/3, 3) and expansion above 75 % in-class points.
DEFAULTS = dict(sphere_points=32, initial_radius=2.0, expansion=1.3, expand_fraction=0.75, clip=1.5,
                max_iters_at_radius=1000, max_step=3.0, init_batch_size=256, repulsion_only=True,
                attacks_per_class=1,
                # The authors' release never stops growing R; PPDG's re-run (tmlr-group/PPDG-MI) with these defaults
                # stops once R > 16.3 (2·1.3⁸ ≈ 16.31: eight expansions).
                max_radius=16.3,
                # Ours (the authors' loops are unbounded): caps on passes per attack and on initial batches.
                max_passes=10_000, max_init_batches=1000)


class BrepStats(NamedTuple):
  """Per-attack bookkeeping of :func:`brep_attack` (rows as in the AttackResult)."""

  radius: np.ndarray  # (rows,) final sphere radius R
  queries: np.ndarray  # (rows,) label queries of the walk: (N + 1) per pass
  passes: np.ndarray  # (rows,) sphere evaluations (accepted or not)
  expansions: np.ndarray  # (rows,) times R grew
  # The point accepted on the last expanding pass: the one the authors score
  # (their ``last_success_on_eval``); the initial point where R never grew.
  expansion_latents: np.ndarray
  expanded: np.ndarray  # (rows,) bool: some expanding pass was accepted
  converged: np.ndarray  # (rows,) bool: stopped by the authors' rule (or max_radius), not max_passes
  initial_queries: int  # labels queried while searching the initial points (shared by all classes)
  missing: tuple  # classes with no initial point in the budget (only with missing='drop')
  radius_trace: np.ndarray  # logged mean R over rows, every log_every passes


class NoInitialPointError(ValueError):
  """No draw of the generator was labelled as some attacked class within the budget."""

  def __init__(self, missing, draws: int):
    self.missing = tuple(int(c) for c in missing)
    super().__init__(f"no initial point labelled {list(self.missing)} in {draws} generator draws; "
                     f"raise max_init_batches or pass missing='drop'")


def label_only(target_logits_fn: Callable) -> Callable:
  """``images -> int32 labels (N,)``: the argmax of a logits function, the only view BREP-MI gets."""

  def labels(images):
    return jnp.argmax(target_logits_fn(images), axis=-1).astype(jnp.int32)

  return labels


def _query(labels_fn: Callable, images):
  """``labels_fn(images)``, refusing anything but one integer label per image."""
  out = labels_fn(images)
  if not jnp.issubdtype(out.dtype, jnp.integer) or out.shape != (images.shape[0],):
    raise TypeError(f"labels_fn must return integer labels of shape ({images.shape[0]},), "
                    f"got {out.dtype} {out.shape}; wrap a logits function with label_only")
  return out.astype(jnp.int32)


def sphere_directions(key, n: int, dim: int):
  """``n`` directions uniform on the unit sphere S^{dim−1}: normalised N(0, I) draws."""
  g = jax.random.normal(key, (n, dim), jnp.float32)
  return g / jnp.linalg.norm(g, axis=-1, keepdims=True)


def repulsion_estimate(inside, directions, *, repulsion_only: bool = True):
  """M̂ = (1/N) Σ_n w_n u_n, w_n = Φ' (0 in / −1 out) or Φ (+1 in / −1 out) (module docstring).

  ``inside`` (..., N) bool, ``directions`` (..., N, d) unit vectors.
  """
  weight = jnp.where(inside, 0.0 if repulsion_only else 1.0, -1.0)
  return jnp.mean(weight[..., None] * directions, axis=-2)


class WalkState(NamedTuple):
  z: jax.Array  # (rows, d) current in-class point
  radius: jax.Array  # (rows,)
  stale: jax.Array  # (rows,) accepted non-expanding steps since the last expansion
  passes: jax.Array  # (rows,)
  expansions: jax.Array  # (rows,)
  expansion_z: jax.Array  # (rows, d)
  expanded: jax.Array  # (rows,) bool
  done: jax.Array  # (rows,) bool


def brep_pass(state: WalkState, labels, row_ids, key, t, *, labels_fn: Callable, generator: Callable,
              sphere_points: int, expansion: float, expand_fraction: float, clip: Optional[float],
              max_step: float, repulsion_only: bool) -> tuple[WalkState, jax.Array]:
  """One sphere evaluation and candidate step for every row not ``done``; returns the new
  state (``done`` not updated) and the (rows,) bool of rows whose R grew."""
  rows, dim = state.z.shape
  keys = jax.vmap(lambda r: jax.random.fold_in(jax.random.fold_in(key, r), t))(row_ids)
  u = jax.vmap(lambda k: sphere_directions(k, sphere_points, dim))(keys)  # (rows, N, d)
  radius = state.radius
  points = state.z[:, None, :] + radius[:, None, None] * u
  sphere_labels = _query(labels_fn, generator(points.reshape(rows * sphere_points, dim)))
  inside = sphere_labels.reshape(rows, sphere_points) == labels[:, None]
  grow = jnp.sum(inside, axis=-1) > expand_fraction * sphere_points
  new_radius = jnp.where(grow, radius * expansion, radius)
  # The authors' M̂ divides the length-R perturbations R·u by the radius after this pass's
  # expansion (module docstring); the step size uses the radius before it.
  m_hat = repulsion_estimate(inside, u, repulsion_only=repulsion_only) * (radius / new_radius)[:, None]
  alpha = jnp.minimum(radius / 3.0, max_step)
  candidate = state.z + alpha[:, None] * m_hat
  if clip is not None:
    candidate = jnp.clip(candidate, -clip, clip)
  accept = _query(labels_fn, generator(candidate)) == labels
  active = ~state.done
  move = active & accept
  grow = active & grow
  return WalkState(
      z=jnp.where(move[:, None], candidate, state.z),
      radius=jnp.where(active, new_radius, radius),
      stale=jnp.where(grow, 0, jnp.where(move, state.stale + 1, state.stale)),
      passes=state.passes + active.astype(jnp.int32),
      expansions=state.expansions + grow.astype(jnp.int32),
      expansion_z=jnp.where((grow & move)[:, None], candidate, state.expansion_z),
      expanded=state.expanded | (grow & move),
      done=state.done,
  ), grow


def _single_device_mesh():
  return jax.sharding.Mesh(np.array(jax.devices()[:1]), (DATA_AXIS,),
                           axis_types=(jax.sharding.AxisType.Auto,))


def find_initial_points(*, labels_fn: Callable, generator: Callable, classes, attacks_per_class: int,
                        latent_dim: int, key, mesh, batch_size: int, max_batches: int,
                        clip: Optional[float]):
  """The first ``attacks_per_class`` draws labelled y for every y in ``classes``, in drawing order.

  Returns ``(points {class: (k, d)}, missing classes, draws queried)``; a class
  with fewer than k draws in ``max_batches`` batches is missing.
  """
  devices = mesh.shape[DATA_AXIS]
  batch_size = -(-batch_size // devices) * devices
  sharding = NamedSharding(mesh, P(DATA_AXIS))

  @jax.jit
  def draw(b):
    z = jax.random.normal(jax.random.fold_in(key, b), (batch_size, latent_dim), jnp.float32)
    if clip is not None:
      z = jnp.clip(z, -clip, clip)
    z = jax.lax.with_sharding_constraint(z, sharding)
    return z, _query(labels_fn, generator(z))

  wanted = {int(c): [] for c in classes}
  draws = 0
  for b in range(max_batches):
    if all(len(v) >= attacks_per_class for v in wanted.values()):
      break
    z, y = (np.asarray(a) for a in draw(jnp.int32(b)))
    draws += batch_size
    for c, found in wanted.items():
      need = attacks_per_class - len(found)
      if need > 0:
        found.extend(z[np.flatnonzero(y == c)[:need]])
  missing = tuple(c for c, v in wanted.items() if len(v) < attacks_per_class)
  points = {c: np.stack(v) for c, v in wanted.items() if len(v) >= attacks_per_class}
  return points, missing, draws


def _pad(x, rows: int):
  x = np.asarray(x)
  extra = rows - x.shape[0]
  return x if extra == 0 else np.concatenate([x, np.repeat(x[:1], extra, axis=0)])


def brep_attack(
    *,
    labels_fn: Callable,
    generator: Callable,
    classes,
    latent_dim: int,
    key,
    mesh=None,
    attacks_per_class: int = DEFAULTS['attacks_per_class'],
    sphere_points: int = DEFAULTS['sphere_points'],
    initial_radius: float = DEFAULTS['initial_radius'],
    expansion: float = DEFAULTS['expansion'],
    expand_fraction: float = DEFAULTS['expand_fraction'],
    max_iters_at_radius: int = DEFAULTS['max_iters_at_radius'],
    max_radius: Optional[float] = DEFAULTS['max_radius'],
    max_passes: int = DEFAULTS['max_passes'],
    max_step: float = DEFAULTS['max_step'],
    clip: Optional[float] = DEFAULTS['clip'],
    repulsion_only: bool = DEFAULTS['repulsion_only'],
    init_batch_size: int = DEFAULTS['init_batch_size'],
    max_init_batches: int = DEFAULTS['max_init_batches'],
    missing: str = 'raise',
    log_every: int = 100,
    writer=None,
) -> tuple[latent.AttackResult, BrepStats]:
  """Runs BREP-MI on each of ``classes`` ``attacks_per_class`` times (module docstring).

  ``labels_fn(images [0, 1] NHWC) -> integer labels (n,)`` is the only access
  to the target (:func:`label_only` builds it from a logits function); it and
  ``generator(z) -> images`` must be traceable. Returns the AttackResult (the
  final in-class points; ``initial_images``/``initial_latents`` the starting
  in-class draws; ``losses`` is empty: BREP-MI minimises no loss) and the
  :class:`BrepStats`. ``missing='raise'`` raises :class:`NoInitialPointError`
  when some class has no initial point; ``'drop'`` attacks the others.
  """
  if missing not in ('raise', 'drop'):
    raise ValueError(f"missing must be 'raise' or 'drop', got {missing!r}")
  for name, value in (('sphere_points', sphere_points), ('max_iters_at_radius', max_iters_at_radius),
                      ('max_passes', max_passes), ('log_every', log_every), ('init_batch_size', init_batch_size),
                      ('max_init_batches', max_init_batches)):
    if value < 1:
      raise ValueError(f"{name} must be >= 1, got {value!r}")
  if initial_radius <= 0 or expansion <= 1 or not 0 <= expand_fraction < 1:
    raise ValueError(f"need initial_radius > 0, expansion > 1 and 0 <= expand_fraction < 1, got "
                     f"{initial_radius!r}, {expansion!r}, {expand_fraction!r}")
  mesh = mesh if mesh is not None else _single_device_mesh()
  init_key, walk_key = jax.random.split(key)
  points, absent, init_draws = find_initial_points(
      labels_fn=labels_fn, generator=generator, classes=classes, attacks_per_class=attacks_per_class,
      latent_dim=latent_dim, key=init_key, mesh=mesh, batch_size=init_batch_size, max_batches=max_init_batches,
      clip=clip)
  if absent and missing == 'raise':
    raise NoInitialPointError(absent, init_draws)
  attacked = [int(c) for c in classes if int(c) in points]
  if not attacked:
    raise NoInitialPointError(absent, init_draws)
  labels = latent.class_attack_labels(attacked, attacks_per_class)
  z0 = np.concatenate([points[c] for c in attacked]).astype(np.float32)

  rows = len(labels)
  devices = mesh.shape[DATA_AXIS]
  padded = -(-rows // devices) * devices
  sharding = NamedSharding(mesh, P(DATA_AXIS))
  put = lambda x: jax.device_put(np.asarray(x), sharding)
  done0 = np.arange(padded) >= rows  # padding rows never walk
  state = WalkState(
      z=put(_pad(z0, padded)), radius=put(np.full(padded, initial_radius, np.float32)),
      stale=put(np.zeros(padded, np.int32)), passes=put(np.zeros(padded, np.int32)),
      expansions=put(np.zeros(padded, np.int32)), expansion_z=put(_pad(z0, padded)),
      expanded=put(np.zeros(padded, bool)), done=put(done0))
  labels_d = put(_pad(labels.astype(np.int32), padded))
  row_ids = put(np.arange(padded, dtype=np.int32))
  step = dict(labels_fn=labels_fn, generator=generator, sphere_points=sphere_points, expansion=expansion,
              expand_fraction=expand_fraction, clip=clip, max_step=max_step, repulsion_only=repulsion_only)

  # Without max_radius, still stop before γR overflows float32 (R = inf would make the step NaN).
  radius_cap = max_radius if max_radius is not None else float(np.finfo(np.float32).max) / (4 * expansion)

  def finished(s: WalkState):
    return s.done | (s.stale >= max_iters_at_radius) | (s.passes >= max_passes) | (s.radius > radius_cap)

  def run_chunk(s: WalkState, start, count):
    def cond(carry):
      i, s = carry
      return (i < count) & ~jnp.all(s.done)

    def body(carry):
      i, s = carry
      s, _ = brep_pass(s, labels_d, row_ids, walk_key, start + i, **step)
      return i + 1, s._replace(done=finished(s))

    return jax.lax.while_loop(cond, body, (jnp.int32(0), s))

  chunk = jax.jit(run_chunk, donate_argnums=0)
  trace, t = [], 0
  while not bool(np.all(np.asarray(state.done))):
    ran, state = chunk(state, jnp.int32(t), jnp.int32(log_every))
    t += int(ran)
    radius = np.asarray(state.radius)[:rows]
    trace.append(float(radius.mean()))
    if writer is not None:
      writer.write('brep', t, {'radius': trace[-1], 'active': int(np.sum(~np.asarray(state.done)[:rows])),
                               'queries': int(np.asarray(state.passes)[:rows].sum()) * (sphere_points + 1)})

  host = jax.tree.map(lambda x: np.asarray(x)[:rows], state)
  generate = lambda z: latent.apply_rows(generator, z, mesh=mesh).astype(np.float32)
  result = latent.AttackResult(generate(host.z), labels, host.z, np.zeros(0, np.float32),
                               initial_images=generate(z0), initial_latents=z0)
  stats = BrepStats(
      radius=host.radius, queries=host.passes.astype(np.int64) * (sphere_points + 1), passes=host.passes,
      expansions=host.expansions, expansion_latents=host.expansion_z, expanded=host.expanded,
      converged=(host.stale >= max_iters_at_radius) | (host.radius > radius_cap),
      initial_queries=int(init_draws), missing=tuple(absent), radius_trace=np.asarray(trace))
  return result, stats
