"""The black-box surrogate inversion attack (SG §4, App. A.4).

The attacker queries the frozen target with its own auxiliary images (the
held-out split in the SG protocol), records the leaked layer, and trains an
inversion decoder f_sur: features → image by minimising the pixel MSE

    min_φ  E_{x ∈ aux} ‖f_sur(φ; T_leak(x)) − x‖²

over the decoder's parameters φ only (fidelity.md #1). It then reconstructs
every private training image from its leaked features. Noise defenses stay
on at query time unless configured otherwise (fidelity.md #4).

``protocol='sg_legacy'`` reproduces the SG code instead: its attack
optimiser is the *target's* SGD optimiser (momentum carried over from target
training), so the decoder keeps its random initialisation while the target's
layers up to the leak drift to fit it; images are compared in the
Normalize()d space.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

from mi_jax import data as mi_data
from mi_jax.models.decoder import InversionDecoder, LegacyRowDecoder, MLPDecoder
from mi_jax.train import batch_stats, loop
from mi_jax.train.inference import apply_in_batches
from mi_jax.train.state import init_train_state, merge_model, replicated, split_model
from mi_jax.train.step import jit_step

# The corrected attacker's decoder (attack.decoder).
DECODERS = {'mlp': MLPDecoder, 'conv': InversionDecoder}

# Parameters of the target that feed each leaked layer (what sg_legacy's
# misdirected optimiser actually moves: torch skips parameters without grad).
_LEAK_PREFIX = {'first': ('front', 'first'), 'last_hidden': ('front', 'first', 'hidden')}


def _moving_parameters(target, params, leak: str):
  """Bool pytree like ``params``: what the SG code's attack step updates.

  torch's SGD skips parameters whose gradient is None: those after the leak,
  and, when no gradient passes through the LCA loops (``grad='stop'``), those
  of the front before its last sparse layer. A convolutional trunk (no
  sparse layers) moves as a whole.
  """
  front_after = getattr(target.front, 'TRAINED_AFTER_CODES', ())
  sparse = () if target.front is None else target.front.sparse_layers()
  cut = bool(sparse) and all(layer.grad == 'stop' for layer in sparse)

  def moves(path, _):
    top = path[0].key
    if top not in _LEAK_PREFIX[leak]:
      return False
    return not (top == 'front' and cut and path[1].key not in front_after)

  return jax.tree_util.tree_map_with_path(moves, params)


@dataclasses.dataclass
class AttackResult:
  reconstructions: np.ndarray  # (N, H, W, C) float32 in [0, 1]
  untrained_reconstructions: np.ndarray  # same decoder at initialisation
  normalized_reconstructions: Optional[np.ndarray] = None  # sg_legacy: decoder output as is
  # Corrected protocol, early stopping: the epoch (1-based) whose decoder was
  # kept, how many epochs ran, and its validation MSE.
  best_epoch: Optional[int] = None
  epochs_run: Optional[int] = None
  validation_mse: Optional[float] = None


def _unit(images: np.ndarray) -> np.ndarray:
  return images.astype(np.float32) / 255.0 if images.dtype == np.uint8 else images


def _fit_attack(phase, attack_step, state, batch_at, *, steps_per_epoch, epochs, mesh, rng, workdir,
                writer, checkpoint_every_seconds, stop_when=None, log_state=None):
  """The attack's training loop: log once per epoch, checkpoint by wall time
  and at the end (a save costs about as much as an epoch of a small attack)."""
  return loop.fit(
      phase=phase, step_fn=jit_step(attack_step, state, mesh), state=state, batch_at=batch_at,
      position_at=lambda s: mi_data.Position(*divmod(s, steps_per_epoch))._asdict(),
      total_steps=epochs * steps_per_epoch, rng=rng,
      checkpoint_dir=os.path.join(workdir, 'checkpoints', phase),
      checkpoint_every=None, checkpoint_every_seconds=checkpoint_every_seconds,
      log_every=steps_per_epoch, writer=writer, stop_when=stop_when, log_state=log_state)


def query_target(target_graphdef, target_state, images, *, leak: Optional[str], mesh, key, batch_size: int,
                 noise_at_query: bool):
  """One inference pass as the attacker queries: (leaked features, predicted labels).

  ``noise_at_query``: stochastic defenses stay on at query time, with a
  fresh noise key per batch. ``leak=None`` returns the predictions only.
  The experiment measures the target's accuracy with these predictions, so
  utility and privacy are measured on the same deployed model.
  """

  @jax.jit
  def query_batch(params, model_state, batch, batch_key):
    target = merge_model(target_graphdef, params, model_state)
    out = target.activations(batch, train=False, key=batch_key if noise_at_query else None)
    predictions = jnp.argmax(out['logits'], -1)
    return predictions if leak is None else (out[leak], predictions)

  counter = iter(range(1 << 30))
  fn = lambda batch: query_batch(target_state['params'], target_state['model_state'], batch,
                                 jax.random.fold_in(key, next(counter)))
  return apply_in_batches(fn, (images,), batch_size=batch_size, mesh=mesh)


def validation_split(num_examples: int, fraction: float, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """(train rows, validation rows) of the auxiliary set: a fixed random slice
  of ⌈fraction·n⌉ rows (at least one) held out for early stopping."""
  n_val = max(1, int(np.ceil(fraction * num_examples)))
  if n_val >= num_examples:
    raise ValueError(f"attack.validation_fraction leaves no training images: {n_val} of {num_examples} "
                     f"auxiliary images would be held out")
  order = np.random.default_rng([seed, 0xA7]).permutation(num_examples)
  return np.sort(order[n_val:]), np.sort(order[:n_val])


def surrogate_attack(*, seeds: Sequence[int], aux_features, aux_images, private_features, mesh, rng,
                     workdir: str, writer, tx, decoder: str, decoder_hidden: int, batch_size: int, epochs: int,
                     validation_fraction: float, patience: int, split_seed: int,
                     checkpoint_every_seconds: Optional[float] = None, phase: str = 'attack') -> list[AttackResult]:
  """Trains one inversion decoder per attacker seed on (aux features → aux
  images); returns, per seed, the reconstructions of the private images from
  ``private_features``.

  Each decoder (``decoder``: 'mlp' or 'conv', ``decoder_hidden`` wide)
  minimises the pixel MSE with the optimiser ``tx`` in batches of
  ``batch_size``. ``seed`` draws a decoder's initialisation and its batch
  order: decoders with different seeds on the same features measure the
  attacker's own variance.

  Early stopping: a fixed slice of the auxiliary set (``validation_fraction``,
  drawn with ``split_seed``) is held out; after every epoch each decoder's
  MSE on it is measured (batch statistics, as in training), its best
  parameters are kept, and it stops once ``patience`` epochs pass without a
  new best (or after ``epochs``). The best decoder, with its BatchNorm
  statistics recomputed over the training features, makes the
  reconstructions. All of it lives in the train state, so a resumed attack
  stops where an uninterrupted one would.

  How it runs: the decoders train together, stacked along a leading seed
  axis that is split over the mesh's devices, each device training its
  seeds in turn (the seed list is padded with extra seeds to a multiple of
  the device count; their decoders train and are dropped). One loop step is one epoch of every decoder (a ``lax.scan``
  over its batches, then its validation MSE); a decoder that has stopped
  keeps its state while the others go on, so each seed's result is the
  one it would get alone. A decoder this small trains faster whole on one
  device than data-parallel (on two XLA:CPU host devices its gradient
  all-reduce cost more than the halved matmuls: 0.30 s per epoch against
  0.13 s on one), and one jitted epoch saves a dispatch per batch: the
  main job's attacks went from ~0.5 s to ~0.3 s per seed and epoch (MLP
  decoder, 1800 images, 2 host devices on 2 cores; the two devices'
  seeds do not run faster side by side than in turn there, as one
  device's matmuls already use both cores).
  """
  seeds = [int(s) for s in seeds]
  if not seeds:
    raise ValueError("seeds must name at least one attacker seed, got []")
  image_shape = tuple(aux_images.shape[1:])
  train_rows, val_rows = validation_split(len(aux_images), validation_fraction, seed=split_seed)
  train_features = aux_features[train_rows]
  steps_per_epoch = mi_data.steps_per_epoch(len(train_rows), batch_size)
  val_chunks = max(1, len(val_rows) // batch_size)
  n_val = val_chunks * (len(val_rows) // val_chunks)
  devices = mesh.devices.size
  padded = seeds + [max(seeds) + 1 + k for k in range(-len(seeds) % devices)]

  graphdef, initial = None, []
  for seed in padded:
    model = DECODERS[decoder](aux_features.shape[-1], image_shape, hidden=decoder_hidden, rngs=nnx.Rngs(seed + 1))
    graphdef, state = init_train_state(model, tx)
    initial.append(state)

  @jax.jit
  def decode(state, features):
    return merge_model(graphdef, state['params'], state['model_state'])(features, train=False)

  decode_with = lambda s: (lambda f: decode(s, f))
  untrained = [apply_in_batches(decode_with(initial[k]), (private_features,), batch_size=batch_size, mesh=mesh)
               for k in range(len(seeds))]

  # "No validation yet" is the largest float32, not inf: the loop refuses to
  # save states holding non-finite values.
  unset = jnp.finfo(jnp.float32).max
  stacked = jax.tree.map(lambda *leaves: np.stack([np.asarray(leaf) for leaf in leaves]), *initial)
  stacked = {**stacked, 'best': {'params': stacked['params'], 'model_state': stacked['model_state']},
             'best_mse': np.full(len(padded), unset, np.float32), 'val_mse': np.full(len(padded), unset, np.float32),
             'best_epoch': np.zeros(len(padded), np.int32), 'stale_epochs': np.zeros(len(padded), np.int32)}
  by_seed = NamedSharding(mesh, P(mesh.axis_names[0]))
  everywhere = NamedSharding(mesh, P())
  # Separate buffers for 'best' (a copy): the epoch donates its state.
  state = jax.tree.map(lambda leaf: _global(np.array(leaf), by_seed), stacked)
  data = {'features': _global(np.asarray(train_features, np.float32), everywhere),
          'images': _global(_unit(aux_images[train_rows]), everywhere),
          'val_features': _global(np.asarray(aux_features[val_rows][:n_val], np.float32), everywhere),
          'val_images': _global(_unit(aux_images[val_rows][:n_val]), everywhere)}

  def seed_epoch(state, order, data):
    """One epoch of one decoder: ``order`` (steps, batch) rows of the training set."""

    def train_step(state, rows):
      features, images = data['features'][rows], data['images'][rows]

      def loss_fn(params):
        model = merge_model(graphdef, params, state['model_state'])
        recon = model(features, train=True)
        _, _, model_state = split_model(model)
        return jnp.mean(jnp.square(recon - images)), model_state

      (loss, model_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(state['params'])
      updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
      return {'step': state['step'] + 1, 'params': optax.apply_updates(state['params'], updates),
              'model_state': model_state, 'opt_state': opt_state}, loss

    # The scan carries only what a step changes (carrying the best-so-far
    # copies too made XLA:CPU copy them at every step).
    moving = {key: state[key] for key in ('step', 'params', 'model_state', 'opt_state')}
    moved, losses = jax.lax.scan(train_step, moving, order)
    trained = {**state, **moved}
    # Validation in chunks of a training batch, BatchNorm on each chunk's
    # statistics (as in training; the running averages are not yet the
    # population's).
    chunk = lambda a: a.reshape(val_chunks, -1, *a.shape[1:])
    recon_mse = lambda pair: jnp.mean(jnp.square(
        merge_model(graphdef, trained['params'], trained['model_state'])(pair[0], train=True) - pair[1]))
    mse = jnp.mean(jax.lax.map(recon_mse, (chunk(data['val_features']), chunk(data['val_images']))))
    better = mse < trained['best_mse']
    pick = lambda new, old: jax.tree.map(lambda a, b: jnp.where(better, a, b), new, old)
    trained = {**trained, 'val_mse': mse, 'best_mse': jnp.where(better, mse, trained['best_mse']),
               'best': pick({'params': trained['params'], 'model_state': trained['model_state']}, trained['best']),
               'best_epoch': jnp.where(better, trained['step'] // steps_per_epoch, trained['best_epoch']),
               'stale_epochs': jnp.where(better, 0, trained['stale_epochs'] + 1)}
    # A decoder that has stopped keeps its state.
    stopped = state['stale_epochs'] >= patience
    kept = jax.tree.map(lambda old, new: jnp.where(stopped, old, new), state, trained)
    return kept, jnp.mean(losses), stopped

  def epoch(state, batch, rng):
    del rng
    order, data = batch['order'], {k: v for k, v in batch.items() if k != 'order'}
    # Each device runs its own seeds one after the other (lax.map): vmapping
    # the seeds would turn the conv decoder's convolutions into grouped ones,
    # 5x slower on XLA:CPU.
    per_device = lambda state, order, data: jax.lax.map(lambda pair: seed_epoch(*pair, data), (state, order))
    seed_axis = P(mesh.axis_names[0])
    state, losses, stopped = jax.shard_map(per_device, mesh=mesh, in_specs=(seed_axis, seed_axis, P()),
                                           out_specs=seed_axis)(state, order, data)
    # The logged training MSE: the mean over the real seeds still training.
    live = jnp.logical_not(stopped[:len(seeds)])
    mse = jnp.sum(jnp.where(live, losses[:len(seeds)], 0.0)) / jnp.maximum(jnp.sum(live), 1)
    return state, {'mse': mse}

  state_shardings = jax.tree.map(lambda _: by_seed, state)
  batch_shardings = {'order': by_seed, **{name: everywhere for name in data}}
  jitted = jax.jit(epoch, in_shardings=(state_shardings, batch_shardings, None),
                   out_shardings=(state_shardings, None), donate_argnums=0)

  def order_at(epoch_index):
    rows = [mi_data.global_batch_indices(len(train_rows), batch_size, seed=seed,
                                         position=mi_data.Position(epoch_index, step))
            for seed in padded for step in range(steps_per_epoch)]
    order = np.stack(rows).reshape(len(padded), steps_per_epoch, batch_size).astype(np.int32)
    return {'order': _global(order, by_seed), **data}

  def real(state, name):
    return _host(state[name])[:len(seeds)]

  state = loop.fit(
      phase=phase, step_fn=jitted, state=state, batch_at=order_at,
      position_at=lambda e: mi_data.Position(e, 0)._asdict(), total_steps=epochs, rng=rng,
      checkpoint_dir=os.path.join(workdir, 'checkpoints', phase), checkpoint_every=None,
      checkpoint_every_seconds=checkpoint_every_seconds, log_every=1, writer=writer,
      stop_when=lambda s: bool(np.all(real(s, 'stale_epochs') >= patience)),
      log_state=lambda s: {'val_mse': float(np.mean(real(s, 'val_mse'))),
                           'best_val_mse': float(np.mean(real(s, 'best_mse')))})
  host = jax.tree.map(_host, {'best': state['best'], 'step': state['step'], 'best_epoch': state['best_epoch'],
                              'best_mse': state['best_mse']})
  results = []
  for k, seed in enumerate(seeds):
    best = jax.tree.map(lambda leaf: leaf[k], host['best'])
    best = jax.device_put({**best, 'opt_state': None}, replicated(mesh, {**best, 'opt_state': None}))
    # The decoder's BatchNorm statistics with its final weights (mi_jax.train.batch_stats).
    best = batch_stats.recompute_batch_stats(graphdef, best, (train_features,),
                                             forward=lambda m, f: m(f, train=True), batch_size=batch_size,
                                             mesh=mesh, seed=seed, max_examples=batch_stats.DEFAULT_EXAMPLES)
    reconstructions = apply_in_batches(decode_with(best), (private_features,), batch_size=batch_size, mesh=mesh)
    results.append(AttackResult(reconstructions=reconstructions, untrained_reconstructions=untrained[k],
                                best_epoch=int(host['best_epoch'][k]),
                                epochs_run=int(host['step'][k]) // steps_per_epoch,
                                validation_mse=float(host['best_mse'][k])))
  return results


def _global(array: np.ndarray, sharding) -> jax.Array:
  """A global array from the same host array on every process (each takes its shards)."""
  return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


def _host(array) -> np.ndarray:
  """The whole of a (possibly sharded across processes) array on the host."""
  if jax.process_count() > 1:
    return np.asarray(multihost_utils.process_allgather(array, tiled=True))
  return np.asarray(array)


def _attack_phase(name: str, k: int) -> str:
  return name if k == 0 else f'{name}_seed{k}'


def legacy_surrogate_attack(*, target_graphdef, target_state, leak, aux_images, private_images, mesh, rng, workdir,
                            writer, tx, normalization, decoder_hidden: int, batch_size: int, epochs: int,
                            seeds: Sequence[int], checkpoint_every_seconds: Optional[float] = None
                            ) -> list[AttackResult]:
  """The SG code's attack loop (docs/fidelity.md #1), for side-by-side numbers:
  one attack per seed (the decoder's random initialisation and the batch
  order), each starting from the trained target. ``tx`` is the target's own
  optimiser (as in the SG code), ``normalization`` its input (mean, std)."""
  mean, std = normalization
  normalize = lambda images: (images.astype(jnp.float32) / 255.0 - mean) / std
  target = merge_model(target_graphdef, target_state['params'], target_state['model_state'])
  image_shape = tuple(private_images.shape[1:])
  row_shape = target.leak_row_shape(leak)
  leak_size = None if row_shape is not None else int(np.prod(target.leak(jnp.asarray(private_images[:1]), leak).shape[1:]))
  moves = _moving_parameters(target, target_state['params'], leak)
  # With frozen dictionaries and no gradient through the LCA loops (CPU
  # scales), nothing up to the last sparse layer can move, so its codes are
  # computed once per image instead of in every attack step (the SG paper's
  # footnote 1 notes the same for a fixed first layer).
  cached = target.front_codes_are_fixed()
  codes_of = jax.jit(lambda params, model_state, images: merge_model(
      target_graphdef, params, model_state).front_codes(images))

  def with_codes(images):
    if not cached:
      return (images,)
    codes = apply_in_batches(lambda im: codes_of(target_state['params'], target_state['model_state'], im),
                             (images,), batch_size=batch_size, mesh=mesh)
    return (images, codes)

  aux_arrays, private_arrays = with_codes(aux_images), with_codes(private_images)
  keys = ('image', 'codes')[:len(aux_arrays)]
  steps_per_epoch = mi_data.steps_per_epoch(len(aux_images), batch_size)

  def features_of(model, batch):
    return model.leak(batch['image'], leak, front_codes=batch.get('codes'))

  def attack(seed, phase):
    if row_shape is not None:
      # The SG attackers read the width-axis leak row by row, in both settings.
      decoder = LegacyRowDecoder(row_shape, image_shape, hidden=decoder_hidden, rngs=nnx.Rngs(seed + 1))
    else:
      decoder = InversionDecoder(leak_size, image_shape, hidden=decoder_hidden, rngs=nnx.Rngs(seed + 1))
    decoder_graphdef, decoder_params, decoder_state = split_model(decoder)

    def attack_step(state, batch, rng):
      del rng

      def loss_fn(params):
        model = merge_model(target_graphdef, params, state['model_state'])
        dec = merge_model(decoder_graphdef, decoder_params, decoder_state)
        recon = dec(features_of(model, batch), train=True)
        return jnp.mean(jnp.square(normalize(batch['image']) - recon))

      loss, grads = jax.value_and_grad(loss_fn)(state['params'])
      updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
      # torch's SGD skips parameters that got no gradient: only the layers up to
      # the leak move (weight decay and momentum included).
      updates = jax.tree.map(lambda m, u: u if m else jnp.zeros_like(u), moves, updates)
      params = optax.apply_updates(state['params'], updates)
      return {**state, 'step': state['step'] + 1, 'params': params, 'opt_state': opt_state}, {'mse': loss}

    def batch_at(step):
      parts = mi_data.local_batch(aux_arrays, batch_size, seed=seed,
                                  position=mi_data.Position(*divmod(step, steps_per_epoch)))
      return mi_data.to_global_array(dict(zip(keys, parts)), mesh)

    @jax.jit
    def reconstruct(params, model_state, *arrays):
      model = merge_model(target_graphdef, params, model_state)
      dec = merge_model(decoder_graphdef, decoder_params, decoder_state)
      return dec(features_of(model, dict(zip(keys, arrays))), train=True)  # the SG attacker never leaves train mode

    def reconstruct_all(state):
      fn = lambda *arrays: reconstruct(state['params'], state['model_state'], *arrays)
      return apply_in_batches(fn, private_arrays, batch_size=batch_size, mesh=mesh)

    # Before the target drifts: the same random decoder on the trained target.
    untrained = reconstruct_all(target_state)
    state = jax.tree.map(jnp.copy, target_state)  # the step donates its input
    state = _fit_attack(phase, attack_step, state, batch_at, steps_per_epoch=steps_per_epoch,
                        epochs=epochs, mesh=mesh, rng=rng, workdir=workdir, writer=writer,
                        checkpoint_every_seconds=checkpoint_every_seconds)
    normalized = reconstruct_all(state)
    to_unit = lambda z: np.clip(z * std + mean, 0.0, 1.0).astype(np.float32)
    return AttackResult(reconstructions=to_unit(normalized), untrained_reconstructions=to_unit(untrained),
                        normalized_reconstructions=normalized.astype(np.float32), epochs_run=epochs)

  return [attack(seed, _attack_phase('attack_sg_legacy', k)) for k, seed in enumerate(seeds)]
