"""GAN training: pure jitted steps over one dict state, sharded batches, resume.

The state is one pytree::

    {'step': int32,
     'g': {'params', 'model_state', 'opt_state'},   # generator
     'd': {'params', 'model_state', 'opt_state'}}   # discriminator / critic

and one step is ``step(state, batch, rng) -> (state, measurements)``: a
discriminator update on the batch, then (every ``n_critic``-th step, as in
GMI's and KEDMI's training scripts) a generator update; on the other steps
the generator loss is only evaluated, so every logged window reports it.
Randomness is ``fold_in(rng, step)``. Batches are sharded over the 'data'
mesh axis and the loop is :func:`mi_jax.train.loop.fit` (checkpoints, resume,
NaN guard), so the code path is the same on 1 or many devices.

Losses (``loss=``), with D the real/fake logit and G(z) fakes:

* ``'wgan-gp'`` (Gulrajani et al. 2017; GMI's GAN):
  L_D = E[D(G(z))] − E[D(x)] + λ_gp·E[(‖∇_x̂ D(x̂)‖₂ − 1)²],
  x̂ = α·x + (1 − α)·G(z), α ~ U(0, 1) per example;  L_G = −E[D(G(z))].
* ``'dcgan'`` (non-saturating, Goodfellow et al. 2014):
  L_D = E[softplus(−D(x))] + E[softplus(D(G(z)))];  L_G = E[softplus(−D(G(z)))].
* ``'kedmi'`` (Chen et al. 2021; the semi-supervised GAN of Salimans et al.
  2016 whose discriminator has ``K`` class logits l(x), D(x) = lse(l(x))):
  L_D = CE_soft(l(x), p_T(·|x)) + ½(E[softplus(lse l(x))] − E[lse l(x)]
        + E[softplus(lse l(G(z)))]),
  with p_T the target's soft labels on the public image x;
  L_G = mean_j |E[f_j(G(z))] − E[f_j(x)]| + 10⁻⁴·E[H(softmax l(G(z)))]
  (feature matching on D's penultimate features f plus an entropy term).
* ``'sngan'`` (Miyato et al. 2018; Miyato & Koyama 2018; PLG-MI's GAN): the
  hinge loss with a spectrally normalised projection discriminator
  (:class:`mi_jax.models.gan.ProjectionDiscriminator`),
  L_D = E[max(0, 1 − D(x, y))] + E[max(0, 1 + D(G(z, ỹ), ỹ))];  L_G = −E[D(G(z, ỹ), ỹ)].

Any loss may add a weighted term on the generator's fakes (``inversion``,
PLG-MI's α·L_inv; :mod:`mi_jax.attacks.plg_mi`):
L_G ← L_G + α·inversion(G(z, ỹ), ỹ, key), reported as ``g_inversion``.
"""

from __future__ import annotations

import os
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from mi_jax import data as mi_data
from mi_jax.models.gan import Discriminator, Generator, ProjectionDiscriminator
from mi_jax.train import batch_stats, loop
from mi_jax.train.state import merge_model, replicated, split_model
from mi_jax.train.step import jit_step

LOSSES = ('wgan-gp', 'dcgan', 'kedmi', 'sngan')
# KEDMI's generator loss weights its entropy term by 1e-4 (k+1_gan.py).
KEDMI_ENTROPY_WEIGHT = 1e-4


class GanResult(NamedTuple):
  """A trained GAN: graphdefs and ``{'params', 'model_state'}`` states."""

  generator_graphdef: object
  generator_state: dict
  discriminator_graphdef: object
  discriminator_state: dict


def to_unit(images):
  """uint8 [0, 255] or float [0, 1] → float32 [0, 1]."""
  x = images.astype(jnp.float32)
  return x / 255.0 if jnp.issubdtype(images.dtype, jnp.integer) else x


# --------------------------------------------------------------------------- losses


def gradient_penalty(critic, real, fake, alpha):
  """E[(‖∇_x̂ critic(x̂)‖₂ − 1)²] at x̂ = α·real + (1 − α)·fake.

  ``critic`` maps a batch to per-example scores (N,) with no coupling between
  examples (no BatchNorm), so the gradient of their sum w.r.t. the batch is
  each example's own gradient. ``alpha`` has shape (N,).
  """
  a = alpha.reshape((-1,) + (1,) * (real.ndim - 1))
  mixed = a * real + (1.0 - a) * fake
  grads = jax.grad(lambda x: jnp.sum(critic(x)))(mixed)
  norms = jnp.sqrt(jnp.sum(grads.reshape(grads.shape[0], -1) ** 2, axis=-1) + 1e-12)
  return jnp.mean((norms - 1.0) ** 2)


def soft_cross_entropy(logits, probabilities):
  """E[−Σ_k p_k log softmax(logits)_k] (KEDMI's softXEnt)."""
  return jnp.mean(-jnp.sum(probabilities * jax.nn.log_softmax(logits), axis=-1))


def mean_entropy(logits):
  """E[H(softmax(logits))]."""
  log_p = jax.nn.log_softmax(logits)
  return jnp.mean(-jnp.sum(jnp.exp(log_p) * log_p, axis=-1))


def semi_supervised_unlabeled_loss(lse_real, lse_fake):
  """½(E[softplus(lse_r)] − E[lse_r] + E[softplus(lse_f)]) = ½(E[−log σ(lse_r)] + E[−log(1 − σ(lse_f))])."""
  return 0.5 * (jnp.mean(jax.nn.softplus(lse_real)) - jnp.mean(lse_real) + jnp.mean(jax.nn.softplus(lse_fake)))


def hinge_discriminator_loss(real_score, fake_score):
  """E[max(0, 1 − D(x))] + E[max(0, 1 + D(G(z)))] (SNGAN's, PLG-MI's ``dis_hinge``)."""
  return jnp.mean(jax.nn.relu(1.0 - real_score)) + jnp.mean(jax.nn.relu(1.0 + fake_score))


def hinge_generator_loss(fake_score):
  """−E[D(G(z))] (PLG-MI's ``gen_hinge``)."""
  return -jnp.mean(fake_score)


# --------------------------------------------------------------------------- step


def make_gan_step(g_graphdef, d_graphdef, g_tx, d_tx, *, loss: str = 'wgan-gp', n_critic: int = 1,
                  gp_weight: float = 10.0, conditional: bool = False, num_classes: int = 0,
                  latent_dim: int = 100, inversion=None, inversion_weight: float = 0.0):
  """``step(state, batch, rng) -> (state, measurements)`` for the dict state above.

  ``batch``: {'image'} plus 'label' (conditional) or 'soft' (``'kedmi'``:
  the target's class probabilities on each public image).
  ``inversion(fakes, fake_labels, key) -> scalar`` (optional) is added to
  the generator loss with weight ``inversion_weight`` (module docstring);
  ``fake_labels`` is None for an unconditional GAN.
  """
  if loss not in LOSSES:
    raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
  if n_critic < 1:
    raise ValueError(f"n_critic must be >= 1, got {n_critic!r}")

  def generate(g_params, g_model_state, z, labels):
    model = merge_model(g_graphdef, g_params, g_model_state)
    images = model(z, labels, train=True)
    _, _, new_model_state = split_model(model)
    return images, new_model_state

  def disc(d_params, d_model_state):
    return merge_model(d_graphdef, d_params, d_model_state)

  def fake_inputs(key, n):
    z_key, y_key = jax.random.split(key)
    z = jax.random.normal(z_key, (n, latent_dim))
    labels = jax.random.randint(y_key, (n,), 0, num_classes) if conditional else None
    return z, labels

  def d_loss_fn(d_params, state, batch, key):
    real = to_unit(batch['image'])
    real_labels = batch.get('label') if conditional else None
    n = real.shape[0]
    fake_key, alpha_key = jax.random.split(key)
    z, fake_labels = fake_inputs(fake_key, n)
    fake, _ = generate(state['g']['params'], state['g']['model_state'], z, fake_labels)
    fake = jax.lax.stop_gradient(fake)
    d = disc(d_params, state['d']['model_state'])
    if loss == 'kedmi':
      lse_real, class_real = d(real)
      lse_fake, _ = d(fake)
      labeled = soft_cross_entropy(class_real, batch['soft'])
      unlabeled = semi_supervised_unlabeled_loss(lse_real, lse_fake)
      accuracy = jnp.mean(jnp.argmax(class_real, -1) == jnp.argmax(batch['soft'], -1))
      return labeled + unlabeled, {'d_loss_label': labeled, 'd_loss_unlabel': unlabeled,
                                   'd_class_accuracy': accuracy}
    real_score = d(real, real_labels)
    fake_score = d(fake, fake_labels)
    if loss == 'sngan':
      return hinge_discriminator_loss(real_score, fake_score), {'d_real': jnp.mean(real_score),
                                                                 'd_fake': jnp.mean(fake_score)}
    if loss == 'dcgan':
      total = jnp.mean(jax.nn.softplus(-real_score)) + jnp.mean(jax.nn.softplus(fake_score))
      return total, {'d_real': jnp.mean(real_score), 'd_fake': jnp.mean(fake_score)}
    # The penalty pairs each real with a fake of the real's label, as the
    # conditional critic is a function of (x, y).
    if conditional:
      fake_for_gp, _ = generate(state['g']['params'], state['g']['model_state'], z, real_labels)
      fake_for_gp = jax.lax.stop_gradient(fake_for_gp)
    else:
      fake_for_gp = fake
    alpha = jax.random.uniform(alpha_key, (n,))
    penalty = gradient_penalty(lambda x: d(x, real_labels), real, fake_for_gp, alpha)
    wasserstein = jnp.mean(real_score) - jnp.mean(fake_score)
    return -wasserstein + gp_weight * penalty, {'wasserstein': wasserstein, 'gradient_penalty': penalty}

  def adversarial_g_loss(fake, fake_labels, state, batch):
    d = disc(state['d']['params'], state['d']['model_state'])
    if loss == 'kedmi':
      real_features = jax.lax.stop_gradient(d.features(to_unit(batch['image'])))
      fake_features = d.features(fake)
      _, class_fake = d.from_features(fake_features)
      matching = jnp.mean(jnp.abs(jnp.mean(fake_features, 0) - jnp.mean(real_features, 0)))
      return matching + KEDMI_ENTROPY_WEIGHT * mean_entropy(class_fake)
    score = d(fake, fake_labels)
    if loss == 'dcgan':
      return jnp.mean(jax.nn.softplus(-score))
    if loss == 'sngan':
      return hinge_generator_loss(score)
    return -jnp.mean(score)

  def g_loss_fn(g_params, state, batch, key):
    n = batch['image'].shape[0]
    z, fake_labels = fake_inputs(key, n)
    fake, g_model_state = generate(g_params, state['g']['model_state'], z, fake_labels)
    total = adversarial_g_loss(fake, fake_labels, state, batch)
    extra = {}
    if inversion is not None:
      # Its own key (the fakes' z and labels keep the key they had without it).
      term = inversion(fake, fake_labels, jax.random.fold_in(key, 1))
      total = total + inversion_weight * term
      extra = {'g_inversion': term}
    return total, (g_model_state, extra)

  def step(state, batch, rng):
    key = jax.random.fold_in(rng, state['step'])
    d_key, g_key = jax.random.split(key)
    (d_loss, d_extra), d_grads = jax.value_and_grad(d_loss_fn, has_aux=True)(
        state['d']['params'], state, batch, d_key)
    d_updates, d_opt = d_tx.update(d_grads, state['d']['opt_state'], state['d']['params'])
    new_d = {'params': optax.apply_updates(state['d']['params'], d_updates),
             'model_state': state['d']['model_state'], 'opt_state': d_opt}
    after_d = {**state, 'd': new_d}

    def update_g(_):
      (g_loss, (g_model_state, g_extra)), g_grads = jax.value_and_grad(g_loss_fn, has_aux=True)(
          state['g']['params'], after_d, batch, g_key)
      g_updates, g_opt = g_tx.update(g_grads, state['g']['opt_state'], state['g']['params'])
      return {'params': optax.apply_updates(state['g']['params'], g_updates),
              'model_state': g_model_state, 'opt_state': g_opt}, g_loss, g_extra

    def evaluate_g(_):
      g_loss, (_, g_extra) = g_loss_fn(state['g']['params'], after_d, batch, g_key)
      return state['g'], g_loss, g_extra

    new_g, g_loss, g_extra = jax.lax.cond(state['step'] % n_critic == n_critic - 1, update_g, evaluate_g, None)
    measurements = {'d_loss': d_loss, 'g_loss': g_loss, **d_extra, **g_extra}
    return {'step': state['step'] + 1, 'g': new_g, 'd': new_d}, measurements

  return step


# --------------------------------------------------------------------------- driver


def _sub_state(model, tx):
  graphdef, params, model_state = split_model(model)
  return graphdef, {'params': params, 'model_state': model_state, 'opt_state': tx.init(params)}


def make_gan_optimizer(*, learning_rate: float, beta1: float = 0.5, beta2: float = 0.999):
  """Adam(lr, β=(0.5, 0.999)): the DCGAN setting GMI and KEDMI train with."""
  return optax.adam(learning_rate, b1=beta1, b2=beta2)


def build_gan(*, image_shape, latent_dim: int = 100, num_classes: int = 0, conditional: bool = False,
              loss: str = 'wgan-gp', width: int = 64, seed: int = 0):
  """(generator, discriminator) modules for a loss and conditioning."""
  if loss not in LOSSES:
    raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
  if loss == 'kedmi' and conditional:
    raise ValueError("conditional must be False with loss='kedmi' (its discriminator's head is the class head)")
  rngs = nnx.Rngs(seed)
  generator = Generator(latent_dim=latent_dim, image_shape=image_shape,
                        num_classes=num_classes if conditional else 0, width=width, rngs=rngs)
  if loss == 'sngan':
    return generator, ProjectionDiscriminator(image_shape=image_shape, num_classes=num_classes if conditional else 0,
                                              width=width, rngs=rngs)
  discriminator = Discriminator(image_shape=image_shape, num_classes=num_classes if (conditional or loss == 'kedmi') else 0,
                                width=width, class_head=loss == 'kedmi', rngs=rngs)
  return generator, discriminator


def train_gan(
    *,
    images: np.ndarray,
    labels: Optional[np.ndarray] = None,
    conditional: bool = False,
    loss: str = 'wgan-gp',
    latent_dim: int = 100,
    epochs: int,
    batch_size: int,
    learning_rate: float = 2e-4,  # GMI / KEDMI / DCGAN
    seed: int,
    mesh,
    workdir: str,
    writer,
    num_classes: Optional[int] = None,
    soft_labels: Optional[np.ndarray] = None,
    width: int = 64,
    n_critic: Optional[int] = None,
    gp_weight: float = 10.0,  # Gulrajani et al. 2017
    beta1: float = 0.5,
    beta2: float = 0.999,
    phase: str = 'gan',
    checkpoint_every: int = 500,
    log_every: int = 50,
    inversion=None,
    inversion_weight: float = 0.0,
) -> GanResult:
  """Trains a GAN on ``images`` (uint8 or [0, 1] NHWC); resumable from ``workdir``.

  ``conditional``: generator and discriminator see ``labels`` (integers in
  [0, num_classes); ``num_classes`` defaults to max(labels) + 1 — remap
  e.g. digits 5–9 to 0–4 first). ``loss='kedmi'`` needs ``soft_labels``
  (N, K), the target's probabilities on ``images``. ``n_critic`` defaults to
  5 for WGAN-GP (GMI's ``n_critic``) and SNGAN (its and PLG-MI's ``n_dis``)
  and 1 otherwise. ``inversion``, ``inversion_weight``: an extra generator
  term (:func:`make_gan_step`; PLG-MI's α·L_inv). Checkpoints go to
  ``workdir/checkpoints/<phase>``.
  """
  if loss not in LOSSES:
    raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
  if conditional and labels is None:
    raise ValueError("labels must be given when conditional=True, got None")
  if loss == 'kedmi' and soft_labels is None:
    raise ValueError("soft_labels must be given when loss='kedmi', got None")
  if epochs < 1:
    raise ValueError(f"epochs must be >= 1, got {epochs!r}")
  if learning_rate <= 0:
    raise ValueError(f"learning_rate must be > 0, got {learning_rate!r}")
  n_critic = n_critic if n_critic is not None else (5 if loss in ('wgan-gp', 'sngan') else 1)
  if loss == 'kedmi':
    num_classes = soft_labels.shape[1]
  elif conditional:
    num_classes = num_classes if num_classes is not None else int(np.max(labels)) + 1
    if np.min(labels) < 0 or np.max(labels) >= num_classes:
      raise ValueError(f"labels must lie in [0, {num_classes}) (num_classes), got [{np.min(labels)}, {np.max(labels)}]")
  else:
    num_classes = 0
  image_shape = tuple(images.shape[1:])
  generator, discriminator = build_gan(image_shape=image_shape, latent_dim=latent_dim, num_classes=num_classes,
                                       conditional=conditional, loss=loss, width=width, seed=seed)
  g_tx = make_gan_optimizer(learning_rate=learning_rate, beta1=beta1, beta2=beta2)
  d_tx = make_gan_optimizer(learning_rate=learning_rate, beta1=beta1, beta2=beta2)
  g_graphdef, g_state = _sub_state(generator, g_tx)
  d_graphdef, d_state = _sub_state(discriminator, d_tx)
  state = {'step': jnp.zeros((), jnp.int32), 'g': g_state, 'd': d_state}
  state = jax.device_put(state, replicated(mesh, state))

  arrays = {'image': images}
  if conditional:
    arrays['label'] = np.asarray(labels).astype(np.int32)
  if loss == 'kedmi':
    arrays['soft'] = np.asarray(soft_labels, np.float32)
  keys = tuple(arrays)
  steps_per_epoch = mi_data.steps_per_epoch(len(images), batch_size)

  def position_at(step):
    return mi_data.Position(*divmod(step, steps_per_epoch))

  def batch_at(step):
    parts = mi_data.local_batch(tuple(arrays[k] for k in keys), batch_size, seed=seed, position=position_at(step))
    return mi_data.to_global_array(dict(zip(keys, parts)), mesh)

  step_fn = make_gan_step(g_graphdef, d_graphdef, g_tx, d_tx, loss=loss, n_critic=n_critic,
                          gp_weight=gp_weight, conditional=conditional, num_classes=num_classes,
                          latent_dim=latent_dim, inversion=inversion, inversion_weight=inversion_weight)
  state = loop.fit(
      phase=phase, step_fn=jit_step(step_fn, state, mesh), state=state, batch_at=batch_at,
      position_at=lambda s: position_at(s)._asdict(), total_steps=epochs * steps_per_epoch,
      rng=jax.random.key(seed), checkpoint_dir=os.path.join(workdir, 'checkpoints', phase),
      checkpoint_every=checkpoint_every, log_every=log_every, writer=writer)
  strip = lambda s: {'params': s['params'], 'model_state': s['model_state']}
  # The generator's BatchNorm statistics over one epoch's worth of prior
  # samples with the final weights (mi_jax.train.batch_stats): its running
  # averages are off early in training, and sampling uses inference mode.
  prior_rng = np.random.default_rng([seed, 0x6E])
  prior = (prior_rng.standard_normal((len(images), latent_dim)).astype(np.float32),)
  if conditional:
    prior += (prior_rng.integers(0, num_classes, len(images)).astype(np.int32),)
  g_state = batch_stats.recompute_batch_stats(
      g_graphdef, strip(state['g']), prior, batch_size=batch_size, mesh=mesh, seed=seed,
      forward=lambda m, z, *labels: m(z, labels[0] if labels else None, train=True))
  return GanResult(g_graphdef, g_state, d_graphdef, strip(state['d']))


# --------------------------------------------------------------------------- sampling


def generator_fn(graphdef, state):
  """``(z, labels) -> images`` in inference mode (BatchNorm running stats), traceable."""

  def generate(z, labels=None):
    return merge_model(graphdef, state['params'], state['model_state'])(z, labels, train=False)

  return generate


def discriminator_fn(graphdef, state):
  """``(images, labels) -> logit`` or ``(logit, class_logits)``, traceable."""

  def discriminate(images, labels=None):
    return merge_model(graphdef, state['params'], state['model_state'])(images, labels, train=False)

  return discriminate


def _generator_parts(source):
  if isinstance(source, GanResult):
    return source.generator_graphdef, source.generator_state
  graphdef, state = source
  return graphdef, state


def sample(source, n: int, *, key, labels=None, batch_size: int = 256) -> np.ndarray:
  """``n`` generator samples, float32 [0, 1] NHWC, z ~ N(0, I).

  ``source`` is a :class:`GanResult` or ``(generator_graphdef, generator_state)``;
  ``labels`` (n,) are required iff the generator is conditional.
  """
  if n < 1:
    raise ValueError(f"n must be >= 1, got {n!r}")
  graphdef, state = _generator_parts(source)
  model = merge_model(graphdef, state['params'], state['model_state'])
  if model.num_classes and labels is None:
    raise ValueError(f"labels must be given for a conditional generator ({model.num_classes} classes), got None")
  z = jax.random.normal(key, (n, model.latent_dim))
  labels = None if not model.num_classes else jnp.asarray(labels, jnp.int32)
  generate = jax.jit(lambda s, z, y: generator_fn(graphdef, s)(z, y))
  outputs = []
  for start in range(0, n, batch_size):
    chunk_labels = None if labels is None else labels[start:start + batch_size]
    outputs.append(np.asarray(generate(state, z[start:start + batch_size], chunk_labels)))
  return np.concatenate(outputs).astype(np.float32)
