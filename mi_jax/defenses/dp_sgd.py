"""DP-SGD, differentially private training of the target (Abadi et al. 2016;
the MI baseline of Hayes et al. 2023, methods.md §3, fidelity.md #10).

One step on a sampled batch S (expected size B = q·n):

    g_i  = ∇_θ CE(f_θ(x_i), y_i)                      (per example: vmap(grad))
    ḡ_i  = g_i · min(1, C / ‖g_i‖₂)                    (clip to L2 norm C)
    g̃    = ( Σ_{i∈S} ḡ_i + N(0, σ² C² I) ) / B          (noise on the sum)
    θ   ← optimiser(θ, g̃)                              (config.train's optimiser)

The sum has L2 sensitivity C under add/remove-one adjacency, so each step is
a Gaussian mechanism with noise multiplier σ on a subsampled batch; the
privacy loss over all steps is computed by ``dp-accounting`` (never by hand).
The denominator is the *expected* batch size B, not |S|: dividing by the
realised size would make the scale data dependent.

Batch sampling matches what is accounted (fidelity.md #10):

* ``'poisson'`` (default): every example enters each step's batch
  independently with probability q = B / n. The batch has a variable size, so
  it is padded to a fixed ``max_batch_size`` with a mask (one compilation);
  padded rows have zero gradient and are not counted. If more than
  ``max_batch_size`` examples are drawn, a uniformly random subset of that
  size is kept: *truncated* Poisson sampling, accounted exactly by
  ``TruncatedSubsampledGaussianDpEvent`` (PLD accountant; arXiv 2508.15089).
  The RDP accountant knows only untruncated Poisson sampling, so with
  ``accountant='rdp'`` the batch is padded to n and never truncated.
* ``'shuffle'``: fixed-size batches from a fresh permutation per epoch (what
  ``train_classifier`` does). Shuffling has no privacy-amplification result
  dp-accounting can use, so nothing is claimed from it: under replace-one
  adjacency an example sits in exactly one batch per epoch, the sum's
  sensitivity is 2C, and ε is that of ``epochs`` compositions of a Gaussian
  mechanism with noise multiplier σ/2 (a valid, loose upper bound). Note the
  adjacency differs from the Poisson case (add/remove-one).

Per-example gradients rule out BatchNorm (its statistics mix the examples of
a batch, so one example's gradient depends on the others): the DP target is
the Sparse-Guard MLP without a front (``defense.name='no-defense'``
architecture), which has none; models that carry BatchNorm statistics, or any
other non-parameter state (e.g. Hebbian dictionaries, a data use the
accountant would not see), are refused.

The training measurements (loss, accuracy, clipped fraction, gradient norms)
are computed from the private batch without noise: they are for monitoring
and are not covered by the reported ε.
"""

from __future__ import annotations

import math
import os
from typing import Optional

import dp_accounting
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax_privacy.clipping import clip_pytree
from ml_collections import config_dict

from mi_jax import data as mi_data
from mi_jax.data.batching import DATA_AXIS, check_batch_size, process_slice
from mi_jax.defenses.registry import Defense, Knob, register
from mi_jax.defenses.target import build_target, num_classes_of
from mi_jax.train import loop
from mi_jax.train.state import init_train_state, make_optimizer, merge_model, replicated
from mi_jax.train.step import jit_step
from mi_jax.utils import config_rules as rules

NAME = 'dp-sgd'

SAMPLINGS = ('poisson', 'shuffle')
ACCOUNTANTS = ('pld', 'rdp')
# Salt of the Poisson draws, so they never coincide with the epoch
# permutations that mi_jax.data draws from (seed, epoch).
_POISSON_SALT = 0x5D9


def config_block() -> config_dict.ConfigDict:
  """``config.defense.dp_sgd``."""
  c = config_dict.ConfigDict()
  # σ = 1.1, C = 1.0: the setting of Abadi et al. 2016's MNIST runs that
  # methods.md §3 prescribes for the Hayes et al. baseline.
  c.noise_multiplier = 1.1
  c.l2_clip = 1.0
  # δ = 1e-5: the standard MNIST value (Abadi et al. 2016), well below 1/n
  # for every private set we train on (n ≤ 49k, 1/n ≥ 2e-5). δ = 1/n would
  # allow releasing one whole record and is not a meaningful guarantee.
  c.delta = 1e-5
  # None: train with noise_multiplier and report ε; a number: calibrate σ so
  # that the whole run spends exactly this ε (noise_multiplier is ignored).
  c.target_epsilon = config_dict.placeholder(float)
  # Poisson sampling is what the subsampled-Gaussian accountants assume.
  c.sampling = 'poisson'
  # PLD: tighter than RDP and accounts truncated Poisson batches exactly.
  c.accountant = 'pld'
  # Padded batch size for Poisson sampling. None: B + 4·√(B(1−q)) (4 standard
  # deviations of the Binomial batch size, truncation at ~3e-5 per step) for
  # 'pld'; n (never truncated) for 'rdp'. Rounded up to the device count.
  c.max_batch_size = config_dict.placeholder(int)
  return c


def _is_number(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def validate(block) -> None:
  """One-line ``ValueError`` for a bad field of ``config.defense.dp_sgd``.

  (δ < 1/n needs the private set's size n: the experiment checks it once
  the data is loaded, before anything is written.)
  """
  rules.check_fields(block, {
      'noise_multiplier': rules.number(low=0),
      'l2_clip': rules.number(above=0),
      'delta': rules.number(above=0, below=1),
      'target_epsilon': rules.optional(rules.number(above=0)),
      'sampling': rules.one_of(SAMPLINGS),
      'accountant': rules.one_of(ACCOUNTANTS),
      'max_batch_size': rules.optional(rules.integer(low=1)),
  }, 'defense.dp_sgd')


def validate_config(config) -> None:
  """``validate`` of the block mounted at ``config.defense.dp_sgd``."""
  if 'dp_sgd' not in config.defense:
    raise ValueError("defense.dp_sgd is missing: defense.name='dp-sgd' needs its config block")
  validate(config.defense.dp_sgd)
  # The VGG16 trunk's BatchNorm mixes the examples of a batch, which
  # per-example clipping cannot bound (refuse_batch_stats, at build time).
  if config.defense.name == NAME and 'model' in config and config.model.get('trunk', 'none') == 'vgg16':
    raise ValueError("defense.name='dp-sgd' cannot train model.trunk='vgg16' (BatchNorm statistics mix the "
                     "examples that DP-SGD clips one by one); use model.trunk in ('none', 'sg_cnn')")


# ----------------------------------------------------------------------------
# Accounting (dp-accounting).


def _check_accounting_args(*, noise_multiplier, sampling_probability, steps, sampling, accountant):
  if sampling not in SAMPLINGS:
    raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
  if accountant not in ACCOUNTANTS:
    raise ValueError(f"accountant must be one of {ACCOUNTANTS}, got {accountant!r}")
  if not 0 < sampling_probability <= 1:
    raise ValueError(f"sampling_probability must be in (0, 1], got {sampling_probability!r}")
  if not isinstance(steps, (int, np.integer)) or steps < 0:
    raise ValueError(f"steps must be an integer >= 0, got {steps!r}")
  if noise_multiplier is not None and not noise_multiplier >= 0:
    raise ValueError(f"noise_multiplier must be >= 0, got {noise_multiplier!r}")


def shuffle_passes(*, steps: int, sampling_probability: float, dataset_size: int) -> int:
  """Epochs (started) that ``steps`` fixed-size shuffled batches touch."""
  batch_size = max(1, round(sampling_probability * dataset_size))
  return math.ceil(steps / (dataset_size // batch_size))


def dp_event(
    *,
    noise_multiplier: float,
    sampling_probability: float,
    steps: int,
    sampling: str = 'poisson',
    dataset_size: Optional[int] = None,
    truncated_batch_size: Optional[int] = None,
) -> dp_accounting.DpEvent:
  """The whole run as one ``dp_accounting`` event (see the module docstring).

  * Poisson: ``steps`` × PoissonSampled(q, Gaussian(σ)), or × TruncatedSubsampled-
    Gaussian(n, q, max, σ) when ``truncated_batch_size`` < ``dataset_size``;
  * shuffle: passes × Gaussian(σ / 2) (replace-one: sensitivity 2C, one
    participation per epoch, no amplification claimed).
  """
  if sampling == 'shuffle':
    if dataset_size is None:
      raise ValueError("dataset_size must be given for sampling='shuffle'")
    passes = shuffle_passes(steps=steps, sampling_probability=sampling_probability, dataset_size=dataset_size)
    return dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(noise_multiplier / 2), passes)
  truncated = truncated_batch_size is not None and dataset_size is not None and truncated_batch_size < dataset_size
  if truncated:
    step_event = dp_accounting.TruncatedSubsampledGaussianDpEvent(
        dataset_size=int(dataset_size), sampling_probability=float(sampling_probability),
        truncated_batch_size=int(truncated_batch_size), noise_multiplier=float(noise_multiplier))
  else:
    step_event = dp_accounting.PoissonSampledDpEvent(
        float(sampling_probability), dp_accounting.GaussianDpEvent(float(noise_multiplier)))
  return dp_accounting.SelfComposedDpEvent(step_event, int(steps))


def _fresh_accountant(accountant: str) -> dp_accounting.PrivacyAccountant:
  # Default add/remove-one adjacency: the shuffle case's replace-one analysis
  # is already in its event (σ/2 on plain Gaussians).
  if accountant == 'pld':
    return dp_accounting.pld.PLDAccountant()
  return dp_accounting.rdp.RdpAccountant()


def _check_truncation_supported(accountant, sampling, dataset_size, truncated_batch_size):
  if (accountant == 'rdp' and sampling == 'poisson' and truncated_batch_size is not None
      and dataset_size is not None and truncated_batch_size < dataset_size):
    raise ValueError(
        f"accountant 'rdp' cannot account truncated Poisson batches (max_batch_size "
        f"{truncated_batch_size} < n = {dataset_size}); use accountant 'pld' or max_batch_size >= n")


def epsilon_spent(
    *,
    noise_multiplier: float,
    sampling_probability: float,
    steps: int,
    delta: float,
    accountant: str,
    sampling: str = 'poisson',
    dataset_size: Optional[int] = None,
    truncated_batch_size: Optional[int] = None,
) -> float:
  """ε at ``delta`` after ``steps`` DP-SGD steps, by dp-accounting (∞ if σ = 0)."""
  _check_accounting_args(noise_multiplier=noise_multiplier, sampling_probability=sampling_probability,
                         steps=steps, sampling=sampling, accountant=accountant)
  _check_truncation_supported(accountant, sampling, dataset_size, truncated_batch_size)
  if steps == 0:
    return 0.0
  if noise_multiplier == 0:
    return math.inf
  event = dp_event(noise_multiplier=noise_multiplier, sampling_probability=sampling_probability,
                   steps=steps, sampling=sampling, dataset_size=dataset_size,
                   truncated_batch_size=truncated_batch_size)
  acc = _fresh_accountant(accountant)
  acc.compose(event)
  return float(acc.get_epsilon(delta))


def calibrate_noise_multiplier(
    *,
    target_epsilon: float,
    sampling_probability: float,
    steps: int,
    delta: float,
    accountant: str,
    sampling: str = 'poisson',
    dataset_size: Optional[int] = None,
    truncated_batch_size: Optional[int] = None,
    tol: float = 1e-3,
) -> float:
  """The smallest σ (to ``tol``) whose run spends at most ``target_epsilon``.

  ``dp_accounting.calibrate_dp_mechanism`` bisects on σ with the same events
  as :func:`epsilon_spent`, so ``epsilon_spent(σ) ≤ target_epsilon``.
  """
  _check_accounting_args(noise_multiplier=None, sampling_probability=sampling_probability,
                         steps=steps, sampling=sampling, accountant=accountant)
  _check_truncation_supported(accountant, sampling, dataset_size, truncated_batch_size)
  if not target_epsilon > 0:
    raise ValueError(f"target_epsilon must be > 0, got {target_epsilon!r}")
  if steps == 0:
    return 0.0

  def make_event(sigma):
    return dp_event(noise_multiplier=sigma, sampling_probability=sampling_probability, steps=steps,
                    sampling=sampling, dataset_size=dataset_size, truncated_batch_size=truncated_batch_size)

  return float(dp_accounting.calibrate_dp_mechanism(
      lambda: _fresh_accountant(accountant), make_event, target_epsilon, delta,
      bracket_interval=dp_accounting.LowerEndpointAndGuess(1e-2, 1.0), tol=tol))


# ----------------------------------------------------------------------------
# The per-example-clipped, noised train step.


def refuse_batch_stats(model: nnx.Module) -> None:
  """One-line ``ValueError`` if ``model`` carries BatchNorm statistics or other
  non-parameter state (per-example gradients need neither, fidelity.md #10)."""
  stats = jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(nnx.state(model, nnx.BatchStat)))
  if stats:
    where = ', '.join(jax.tree_util.keystr(path) for path, _ in stats[:4])
    raise ValueError(
        f"DP-SGD cannot train a model with BatchNorm statistics (found {where}); use the "
        f"'no-defense' architecture or GroupNorm/LayerNorm (fidelity.md #10)")
  other = jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(nnx.state(model, nnx.Not(nnx.Param))))
  if other:
    where = ', '.join(jax.tree_util.keystr(path) for path, _ in other[:4])
    raise ValueError(f"DP-SGD trains parameters only; the model carries other state ({where}) the accountant would not see")


def per_example_grads(graphdef, params, model_state, images, labels, keys):
  """(losses, logits, grads), each with a leading batch axis: jax.vmap(jax.grad)."""

  def example_loss(p, image, label, key):
    model = merge_model(graphdef, p, model_state)
    logits = model.activations(image[None], train=True, key=key)['logits'][0]
    return optax.softmax_cross_entropy_with_integer_labels(logits, label), logits

  grad_fn = jax.value_and_grad(example_loss, has_aux=True)
  (losses, logits), grads = jax.vmap(grad_fn, in_axes=(None, 0, 0, 0))(params, images, labels, keys)
  return losses, logits, grads


def clip_per_example(grads, mask, *, l2_clip: float):
  """(clipped grads, norms before clipping): each row scaled to norm ≤ C by
  jax-privacy's ``clip_pytree``; masked (padding) rows become exactly zero."""
  return jax.vmap(lambda g, pad: clip_pytree(g, l2_clip, return_zero=pad))(grads, ~mask)


def gaussian_noise_like(tree, key, *, stddev):
  """N(0, stddev²) of the shape of every leaf of ``tree``, independent per leaf."""
  leaves, treedef = jax.tree.flatten(tree)
  keys = jax.random.split(key, len(leaves))
  return treedef.unflatten([stddev * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)])


def make_dp_classifier_step(graphdef, tx: optax.GradientTransformation, *, l2_clip: float,
                            noise_multiplier: float, expected_batch_size: int):
  """DP-SGD step ``(state, batch, rng) -> (state, measurements)``.

  ``batch`` = {'image', 'label', 'mask'}; rows with mask False are padding.
  g̃ = (Σ_i clip_C(g_i) + N(0, σ²C²I)) / B with B = ``expected_batch_size``.
  Per-step randomness is ``fold_in(rng, step)``, so the noise is a pure
  function of (rng, step) and a resumed run equals an uninterrupted one.
  """
  if not l2_clip > 0:
    raise ValueError(f"l2_clip must be > 0, got {l2_clip!r}")
  if not noise_multiplier >= 0:
    raise ValueError(f"noise_multiplier must be >= 0, got {noise_multiplier!r}")
  if not expected_batch_size >= 1:
    raise ValueError(f"expected_batch_size must be >= 1, got {expected_batch_size!r}")
  noise_std = float(noise_multiplier) * float(l2_clip)

  def train_step(state, batch, rng):
    if jax.tree.leaves(state['model_state']):
      raise ValueError("DP-SGD trains parameters only; state['model_state'] must be empty (no BatchNorm statistics)")
    key = jax.random.fold_in(rng, state['step'])
    forward_key, noise_key = jax.random.split(key)
    mask = batch['mask'].astype(bool)
    example_keys = jax.random.split(forward_key, mask.shape[0])
    losses, logits, grads = per_example_grads(
        graphdef, state['params'], state['model_state'], batch['image'], batch['label'], example_keys)
    clipped, norms = clip_per_example(grads, mask, l2_clip=l2_clip)
    summed = jax.tree.map(lambda g: jnp.sum(g, axis=0), clipped)
    noise = gaussian_noise_like(summed, noise_key, stddev=noise_std)
    private_grad = jax.tree.map(lambda s, z: (s + z) / expected_batch_size, summed, noise)
    updates, opt_state = tx.update(private_grad, state['opt_state'], state['params'])
    params = optax.apply_updates(state['params'], updates)

    real = mask.astype(jnp.float32)
    count = jnp.sum(real)
    per_real = lambda v: jnp.sum(v * real) / jnp.maximum(count, 1.0)
    measurements = {
        'loss': per_real(losses),
        'accuracy': per_real((jnp.argmax(logits, -1) == batch['label']).astype(jnp.float32)),
        # Fraction of real examples whose gradient was clipped, and the mean
        # ratio ‖clipped g‖ / ‖g‖ (1 = untouched): how hard C bites.
        'clipped_fraction': per_real((norms > l2_clip).astype(jnp.float32)),
        'clipped_norm_fraction': per_real(jnp.minimum(1.0, l2_clip / jnp.maximum(norms, 1e-12))),
        'grad_norm': per_real(norms),
        'batch_size': count,
        'private_grad_norm': optax.tree.norm(private_grad),
    }
    new_state = {'step': state['step'] + 1, 'params': params,
                 'model_state': state['model_state'], 'opt_state': opt_state}
    return new_state, measurements

  return train_step


# ----------------------------------------------------------------------------
# Batches that match the accountant.


def default_max_batch_size(*, dataset_size: int, expected_batch_size: int, accountant: str) -> int:
  """Padded Poisson batch size before rounding to the device count (see config_block)."""
  if accountant == 'rdp':
    return dataset_size
  q = expected_batch_size / dataset_size
  return min(dataset_size, math.ceil(expected_batch_size + 4 * math.sqrt(expected_batch_size * (1 - q))))


def round_up(value: int, multiple: int) -> int:
  return -(-value // multiple) * multiple


def poisson_batch_indices(num_examples: int, *, sampling_probability: float, max_batch_size: int,
                          seed: int, step: int) -> tuple[np.ndarray, np.ndarray]:
  """(indices, mask) of length ``max_batch_size`` for step ``step``.

  Each example is drawn independently with probability q from
  ``default_rng([seed, step, salt])`` (a pure function of the step, so resume is
  exact); a draw larger than ``max_batch_size`` keeps a uniformly random
  subset of that size (truncated Poisson sampling); the rest is padding
  (index 0, mask False).
  """
  rng = np.random.default_rng([seed, step, _POISSON_SALT])
  chosen = np.flatnonzero(rng.random(num_examples) < sampling_probability)
  if len(chosen) > max_batch_size:
    chosen = rng.choice(chosen, max_batch_size, replace=False)
  indices = np.zeros(max_batch_size, np.int64)
  mask = np.zeros(max_batch_size, bool)
  indices[:len(chosen)] = chosen
  mask[:len(chosen)] = True
  return indices, mask


def _dp_architecture(config):
  """``config`` with the front removed: the DP target is the no-defense MLP."""
  arch = config.copy_and_resolve_references()
  arch.unlock()
  arch.defense.name = 'no-defense'
  return arch


def train_dp_target(config, split, *, mesh, workdir: str, writer):
  """Trains the no-defense MLP with DP-SGD on the private split.

  Returns ``(graphdef, state, row_extras)`` with row_extras = {'dp_epsilon',
  'dp_delta', 'dp_noise_multiplier', 'dp_l2_clip'}. Steps = round(epochs·n/B)
  (B = ``config.train.batch_size``, the expected batch size); resumable from
  ``workdir/checkpoints/target``.
  """
  validate_config(config)
  block = config.defense.dp_sgd
  images, labels = split.private_images, split.private_labels
  n = len(images)
  batch_size = int(config.train.batch_size)
  if not 1 <= batch_size <= n:
    raise ValueError(f"train.batch_size must be an integer in [1, {n}] (the private set size), got {batch_size!r}")
  if not block.delta < 1.0 / n:
    raise ValueError(f"defense.dp_sgd.delta must be < 1/n = {1.0 / n:.3g} for n = {n} private examples, got {block.delta!r}")
  q = batch_size / n
  # The padded batch splits over the mesh's devices and over the processes.
  devices = math.lcm(mesh.shape[DATA_AXIS], jax.process_count())
  if block.sampling == 'poisson':
    steps_per_epoch = max(1, round(n / batch_size))
    total_steps = int(round(config.train.epochs * n / batch_size))
    wanted = block.max_batch_size or default_max_batch_size(
        dataset_size=n, expected_batch_size=batch_size, accountant=block.accountant)
    max_batch_size = round_up(wanted, devices)
    truncated = max_batch_size if max_batch_size < n else None
  else:
    steps_per_epoch = mi_data.steps_per_epoch(n, batch_size)
    total_steps = int(config.train.epochs) * steps_per_epoch
    max_batch_size, truncated = batch_size, None
    check_batch_size(batch_size, mesh)
  accounting = dict(sampling_probability=q, steps=total_steps, delta=float(block.delta),
                    accountant=block.accountant, sampling=block.sampling, dataset_size=n,
                    truncated_batch_size=truncated)
  if block.target_epsilon is not None:
    sigma = calibrate_noise_multiplier(target_epsilon=float(block.target_epsilon), **accounting)
  else:
    sigma = float(block.noise_multiplier)
  epsilon = epsilon_spent(noise_multiplier=sigma, **accounting)

  image_shape = tuple(images.shape[1:])
  model = build_target(_dp_architecture(config), image_shape, num_classes_of(config), rngs=nnx.Rngs(config.seed))
  refuse_batch_stats(model)
  tx = make_optimizer(config.train)
  graphdef, state = init_train_state(model, tx)
  state = jax.device_put(state, replicated(mesh, state))
  seed = int(config.seed)

  def position_at(step):
    epoch, within = divmod(step, steps_per_epoch)
    # The sampling settings ride along so a resume with other settings is refused.
    return {'epoch': epoch, 'step': within, 'sampling': block.sampling, 'max_batch_size': max_batch_size}

  rows = process_slice(max_batch_size, jax.process_index(), jax.process_count())

  def batch_at(step):
    if block.sampling == 'poisson':
      indices, mask = poisson_batch_indices(n, sampling_probability=q, max_batch_size=max_batch_size,
                                            seed=seed, step=step)
      indices, mask = indices[rows], mask[rows]
      local = {'image': images[indices], 'label': labels[indices], 'mask': mask}
    else:
      position = mi_data.Position(*divmod(step, steps_per_epoch))
      batch_images, batch_labels = mi_data.local_batch((images, labels), batch_size, seed=seed, position=position)
      local = {'image': batch_images, 'label': batch_labels, 'mask': np.ones(len(batch_labels), bool)}
    return mi_data.to_global_array(local, mesh)

  step_fn = make_dp_classifier_step(graphdef, tx, l2_clip=float(block.l2_clip), noise_multiplier=sigma,
                                    expected_batch_size=batch_size)
  state = loop.fit(
      phase='target', step_fn=jit_step(step_fn, state, mesh), state=state, batch_at=batch_at,
      position_at=position_at, total_steps=total_steps, rng=jax.random.key(seed),
      checkpoint_dir=os.path.join(workdir, 'checkpoints', 'target'),
      checkpoint_every=config.train.checkpoint_every_steps, log_every=config.train.log_every_steps,
      writer=writer)
  row_extras = {'dp_epsilon': epsilon, 'dp_delta': float(block.delta),
                'dp_noise_multiplier': sigma, 'dp_l2_clip': float(block.l2_clip)}
  writer.write('dp', total_steps, {**row_extras, 'dp_steps': total_steps, 'dp_sampling_probability': q,
                                   'dp_max_batch_size': max_batch_size})
  return graphdef, state, row_extras


def check_sizes(config, sizes) -> None:
  """δ < 1/n for the n private images (the guarantee means nothing otherwise)."""
  private = sizes.get('private')
  delta = config.defense.dp_sgd.delta
  if private is not None and not delta < 1.0 / private:
    raise ValueError(f"defense.dp_sgd.delta must be < 1/n = {1.0 / private:.3g} for the n = {private} "
                     f"private images, got {delta!r}")


register(Defense(
    name=NAME,
    summary='DP-SGD: per-example clipping and Gaussian noise, with a privacy accountant (Abadi et al.)',
    block='dp_sgd', config_block=config_block, validate=validate_config,
    knob=Knob('dp_sgd.noise_multiplier', 'z'), recipe=train_dp_target, check_sizes=check_sizes,
))
