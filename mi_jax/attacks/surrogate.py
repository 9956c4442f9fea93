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
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from mi_jax import data as mi_data
from mi_jax.models.decoder import InversionDecoder, LegacyRowDecoder
from mi_jax.train import loop
from mi_jax.train.inference import apply_in_batches
from mi_jax.train.state import init_train_state, make_optimizer, merge_model, replicated, split_model
from mi_jax.train.step import jit_step

# Parameters of the target that feed each leaked layer (what sg_legacy's
# misdirected optimiser actually moves: torch skips parameters without grad).
_LEAK_PREFIX = {'first': ('front', 'first'), 'last_hidden': ('front', 'first', 'hidden')}


@dataclasses.dataclass
class AttackResult:
  reconstructions: np.ndarray  # (N, H, W, C) float32 in [0, 1]
  untrained_reconstructions: np.ndarray  # same decoder at initialisation
  normalized_reconstructions: Optional[np.ndarray] = None  # sg_legacy: decoder output as is


def _unit(images: np.ndarray) -> np.ndarray:
  return images.astype(np.float32) / 255.0 if images.dtype == np.uint8 else images


def _fit_attack(phase, attack_step, state, batch_at, *, steps_per_epoch, epochs, mesh, rng, workdir,
                writer):
  """The attack's training loop: checkpoint and log once per epoch."""
  return loop.fit(
      phase=phase, step_fn=jit_step(attack_step, state, mesh), state=state, batch_at=batch_at,
      position_at=lambda s: mi_data.Position(*divmod(s, steps_per_epoch))._asdict(),
      total_steps=epochs * steps_per_epoch, rng=rng,
      checkpoint_dir=os.path.join(workdir, 'checkpoints', phase),
      checkpoint_every=steps_per_epoch, log_every=steps_per_epoch, writer=writer)


def query_target(config, target_graphdef, target_state, images, *, leak: str, mesh, key):
  """One inference pass: the leaked features and the predicted labels.

  A fresh noise key per batch, for stochastic defenses that stay on at query
  time (``attack.noise_at_query``).
  """
  cfg = config.attack

  @jax.jit
  def query_batch(params, model_state, batch, batch_key):
    target = merge_model(target_graphdef, params, model_state)
    out = target.activations(batch, train=False, key=batch_key if cfg.noise_at_query else None)
    return out[leak], jnp.argmax(out['logits'], -1)

  counter = iter(range(1 << 30))
  fn = lambda batch: query_batch(target_state['params'], target_state['model_state'], batch,
                                 jax.random.fold_in(key, next(counter)))
  return apply_in_batches(fn, (images,), batch_size=cfg.batch_size, mesh=mesh)


def surrogate_attack(*, config, aux_features, aux_images, private_features, mesh, rng, workdir: str,
                     writer) -> AttackResult:
  """Trains the inversion decoder on (aux features → aux images); returns the
  reconstructions of the private images from ``private_features``."""
  cfg = config.attack
  image_shape = tuple(aux_images.shape[1:])
  decoder = InversionDecoder(aux_features.shape[-1], image_shape, hidden=cfg.decoder_hidden,
                             rngs=nnx.Rngs(config.seed + 1))
  tx = make_optimizer(cfg)
  graphdef, state = init_train_state(decoder, tx)
  state = jax.device_put(state, replicated(mesh, state))

  @jax.jit
  def decode(state, features):
    return merge_model(graphdef, state['params'], state['model_state'])(features, train=False)

  decode_state = lambda s: (lambda f: decode(s, f))
  untrained = apply_in_batches(decode_state(state), (private_features,), batch_size=cfg.batch_size, mesh=mesh)

  def attack_step(state, batch, rng):
    del rng

    def loss_fn(params):
      model = merge_model(graphdef, params, state['model_state'])
      recon = model(batch['features'], train=True)
      _, _, model_state = split_model(model)
      return jnp.mean(jnp.square(recon - batch['image'])), model_state

    (loss, model_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(state['params'])
    updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
    return ({'step': state['step'] + 1, 'params': optax.apply_updates(state['params'], updates),
             'model_state': model_state, 'opt_state': opt_state}, {'mse': loss})

  steps_per_epoch = mi_data.steps_per_epoch(len(aux_images), cfg.batch_size)
  arrays = (aux_features, aux_images)

  def batch_at(step):
    features, images = mi_data.local_batch(arrays, cfg.batch_size, seed=config.seed,
                                           position=mi_data.Position(*divmod(step, steps_per_epoch)))
    return mi_data.to_global_array({'features': features, 'image': _unit(images)}, mesh)

  state = _fit_attack('attack', attack_step, state, batch_at, steps_per_epoch=steps_per_epoch,
                      epochs=cfg.epochs, mesh=mesh, rng=rng, workdir=workdir, writer=writer)
  reconstructions = apply_in_batches(decode_state(state), (private_features,), batch_size=cfg.batch_size, mesh=mesh)
  return AttackResult(reconstructions=reconstructions, untrained_reconstructions=untrained)


def legacy_surrogate_attack(*, config, target_graphdef, target_state, leak, aux_images, private_images,
                            mesh, rng, workdir, writer) -> AttackResult:
  """The SG code's attack loop (fidelity.md #1), for side-by-side numbers."""
  cfg = config.attack
  mean, std = config.data.normalization
  normalize = lambda images: (images.astype(jnp.float32) / 255.0 - mean) / std
  target = merge_model(target_graphdef, target_state['params'], target_state['model_state'])
  leak_shape = target.leak(jnp.asarray(private_images[:1]), leak).shape[1:]
  image_shape = tuple(private_images.shape[1:])
  if leak == 'first' and target.width_axis_linear:
    front_shape = target.front.out_shape if target.front is not None else image_shape
    decoder = LegacyRowDecoder((front_shape[2], front_shape[0], config.model.hidden_width),
                               image_shape, hidden=cfg.decoder_hidden, rngs=nnx.Rngs(config.seed + 1))
  else:
    decoder = InversionDecoder(int(np.prod(leak_shape)), image_shape, hidden=cfg.decoder_hidden,
                               rngs=nnx.Rngs(config.seed + 1))
  decoder_graphdef, decoder_params, decoder_state = split_model(decoder)
  tx = make_optimizer(config.train)  # the target's optimiser, as in the SG code
  on_leak_path = _LEAK_PREFIX[leak]

  def attack_step(state, batch, rng):
    del rng

    def loss_fn(params):
      model = merge_model(target_graphdef, params, state['model_state'])
      features = model.leak(batch['image'], leak)
      dec = merge_model(decoder_graphdef, decoder_params, decoder_state)
      recon = dec(features, train=True)
      return jnp.mean(jnp.square(normalize(batch['image']) - recon))

    loss, grads = jax.value_and_grad(loss_fn)(state['params'])
    updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
    # torch's SGD skips parameters that got no gradient: only the layers up to
    # the leak move (weight decay and momentum included).
    updates = {k: (v if k in on_leak_path else jax.tree.map(jnp.zeros_like, v)) for k, v in updates.items()}
    params = optax.apply_updates(state['params'], updates)
    return {**state, 'step': state['step'] + 1, 'params': params, 'opt_state': opt_state}, {'mse': loss}

  steps_per_epoch = mi_data.steps_per_epoch(len(aux_images), cfg.batch_size)

  def batch_at(step):
    (images,) = mi_data.local_batch((aux_images,), cfg.batch_size, seed=config.seed,
                                    position=mi_data.Position(*divmod(step, steps_per_epoch)))
    return mi_data.to_global_array({'image': images}, mesh)

  @jax.jit
  def reconstruct(params, model_state, images):
    model = merge_model(target_graphdef, params, model_state)
    dec = merge_model(decoder_graphdef, decoder_params, decoder_state)
    return dec(model.leak(images, leak), train=True)  # the SG attacker never leaves train mode

  def reconstruct_all(state):
    fn = lambda im: reconstruct(state['params'], state['model_state'], im)
    return apply_in_batches(fn, (private_images,), batch_size=cfg.batch_size, mesh=mesh)

  # Before the target drifts: the same random decoder on the trained target.
  untrained = reconstruct_all(target_state)
  state = jax.tree.map(jnp.copy, target_state)  # the step donates its input
  state = _fit_attack('attack_sg_legacy', attack_step, state, batch_at, steps_per_epoch=steps_per_epoch,
                      epochs=cfg.epochs, mesh=mesh, rng=rng, workdir=workdir, writer=writer)

  normalized = reconstruct_all(state)
  to_unit = lambda z: np.clip(z * std + mean, 0.0, 1.0).astype(np.float32)
  return AttackResult(reconstructions=to_unit(normalized), untrained_reconstructions=to_unit(untrained),
                      normalized_reconstructions=normalized.astype(np.float32))
