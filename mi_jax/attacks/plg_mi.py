"""PLG-MI: pseudo label-guided model inversion (Yuan et al., AAAI 2023,
"Pseudo Label-Guided Model Inversion Attack via Conditional Generative
Adversarial Network").

Three stages, the subsections of the paper's method section (its section
and equation numbers are not cited here: we could not check them against the
paper; the formulas below are checked against the authors' code,
LetheSec/PLG-MI-Attack).

1. **Top-n selection strategy**. The target T scores every public image;
   for each attacked class y the n public images with the highest softmax
   probability p_T(y | x) get the pseudo-label y (:func:`top_n_pseudo_labels`).
   Classes choose independently, as in the authors' ``top_n_selection.py``
   (one priority queue per class over all public images, each winner copied
   into that class's folder): an image may be chosen by several classes
   (and is then in the training set once per class) or by none.
   :func:`train_plg_gan` takes the softmax over the logits of the attacked
   classes only, as the house KEDMI soft labels do (our targets keep a
   10-way head of which only the private classes are trained); in the
   authors' setting every output is an attacked class and the two agree.
   Ties are broken towards the lower index (theirs depend on the queue's
   order; they only matter for exactly equal probabilities).

2. **Pseudo label-guided cGAN**. A conditional GAN
   G(z, y) with a projection discriminator D(x, y) (SNGAN: spectral norm,
   Miyato & Koyama 2018) is trained on the pseudo-labelled public images with
   the hinge loss, and the generator also minimises the target's max-margin
   loss on augmented fakes:

       L_D = E_{x,y}[max(0, 1 − D(x, y))] + E_{z,y}[max(0, 1 + D(G(z, y), y))]
       L_G = −E_{z,y}[D(G(z, y), y)] + α · L_inv
       L_inv = E_{z,y}[L_mm(T(A(G(z, y))), y)],  L_mm(l, y) = −l_y + max_{j≠y} l_j

   with l the target's logits, y drawn uniformly over the classes and A a
   random augmentation. The authors' ``train_cgan.py``: α = 0.2, Adam
   lr 2·10⁻⁴ with β = (0, 0.9), 5 discriminator steps per generator step
   (``n_dis``), batch 64, 30000 generator iterations, and A = RandomResizedCrop
   (area 0.8–1, aspect 1) → ColorJitter(brightness 0.2, contrast 0.2, p 0.5)
   → horizontal flip (p 0.5) → rotation ±5° (kornia). :func:`train_plg_gan`
   runs :func:`mi_jax.train.gan.train_gan` with ``loss='sngan'`` and the
   L_inv term (:func:`inversion_loss_fn`), so it is data-parallel over the
   mesh and checkpoints/resumes like the other GANs. The generator's class
   input is the position k of the class in ``classes`` (the pseudo-labelled
   set has no other classes, and the fakes' labels are drawn uniformly over
   the generator's classes); :func:`class_generator` maps target classes to
   positions.

3. **Image reconstruction**. For each attacked class y,
   latents z are optimised with y fixed:

       z* = argmin_z  Σ_{k=1}^{2} L_mm(T(A_k(G(z, y))), y)

   with two independently augmented views per step (``reconstruct.py``:
   ``out1``, ``out2``; ColorJitter there has kornia's default p = 1), Adam,
   lr 0.1, 600 iterations, z₀ ~ N(0, I) unclamped, 5 seeds (attacks) per
   class; the reconstruction is G(z*, y). :func:`plg_attack` does this with
   :func:`mi_jax.attacks.latent.optimize_latents` (one row per attack,
   sharded over the mesh). Its ``identity(images, labels)`` replaces
   L_mm(T(x), y) per view (LOMMA's :func:`mi_jax.attacks.lomma.identity_fn`,
   the 'plg+lomma' switch); the cGAN is trained with L_mm either way.

Deviations, all at the house (28×28 digits) scale: the generator is
:class:`mi_jax.models.gan.Generator` with the class concatenated to z (theirs
is a 64×64 ResNet with conditional BatchNorm); the discriminator is
:class:`mi_jax.models.gan.ProjectionDiscriminator` (two SN convolutions, not
their SN-ResNet); the spectral norm is computed exactly at every call
rather than by one power-iteration step per training step (same gradient,
:func:`mi_jax.models.gan.spectral_norm`); the horizontal flip is off by
default (``flip_prob``: a mirrored digit can read as another digit; their
faces flip with p 0.5), and the colour jitter is applied before the geometric
part, in a fixed order, while kornia crops first; each of our steps is a
discriminator step and, every ``n_critic``-th, a generator step after it
(theirs: one generator step, then ``n_dis`` discriminator steps). They add
uniform [0, 1/256) dequantisation noise to real images; we do not.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mi_jax.attacks import latent, ppa
from mi_jax.data.batching import DATA_AXIS
from mi_jax.train import gan
from mi_jax.train.inference import apply_in_batches
from mi_jax.utils.metric_writer import MetricWriter

# The authors' reconstruct.py: --lr 0.1 --iter_times 600, num_seeds=5, two augmented views per step.
DEFAULTS = dict(iterations=600, learning_rate=0.1, attacks_per_class=5, views=2, flip_prob=0.0)
# The authors' top_n_selection.py / train_cgan.py: --top_n 30, --alpha 0.2, Adam(2e-4, β=(0, 0.9)),
# --n_dis 5, batch 64, --gen_dim_z 128 (keyword arguments of train_plg_gan). Their length,
# --max_iteration 30000 generator steps, is AUTHORS_GENERATOR_STEPS (see train_plg_gan for epochs).
GAN_DEFAULTS = dict(top_n=30, alpha=0.2, learning_rate=2e-4, beta1=0.0, beta2=0.9, n_critic=5, batch_size=64,
                    latent_dim=128)
AUTHORS_GENERATOR_STEPS = 30000
# Their faces flip with probability 0.5; the digit default is 0 (module docstring).
AUTHORS_FLIP_PROB = 0.5


@dataclasses.dataclass(frozen=True)
class Augmentation:
  """A: colour jitter (brightness and contrast factors in [1 − b, 1 + b], applied
  to an image with probability ``jitter_prob``), then a random resized crop,
  flip and rotation (:class:`mi_jax.attacks.ppa.TransformSpec`)."""

  transform: ppa.TransformSpec = ppa.TransformSpec(scale=(0.8, 1.0), ratio=(1.0, 1.0), rotation_degrees=5.0,
                                                   flip_prob=DEFAULTS['flip_prob'])
  brightness: float = 0.2
  contrast: float = 0.2
  jitter_prob: float = 1.0

  def __post_init__(self):
    if not 0 <= self.brightness < 1 or not 0 <= self.contrast < 1:
      raise ValueError(f"brightness and contrast must be in [0, 1), got {self.brightness!r}, {self.contrast!r}")
    if not 0 <= self.jitter_prob <= 1:
      raise ValueError(f"jitter_prob must be in [0, 1], got {self.jitter_prob!r}")


def augmentation(*, stage: str, flip_prob: float = DEFAULTS['flip_prob']) -> Augmentation:
  """The authors' A for ``stage`` 'gan' (ColorJitter p = 0.5) or 'attack' (kornia's default p = 1)."""
  if stage not in ('gan', 'attack'):
    raise ValueError(f"stage must be 'gan' or 'attack', got {stage!r}")
  spec = dataclasses.replace(Augmentation().transform, flip_prob=flip_prob)
  return Augmentation(transform=spec, jitter_prob=0.5 if stage == 'gan' else 1.0)


def _gray_mean(images):
  if images.shape[-1] == 3:  # torchvision's rgb_to_grayscale weights
    gray = images @ jnp.asarray([0.299, 0.587, 0.114], images.dtype)
  else:
    gray = jnp.mean(images, axis=-1)
  return jnp.mean(gray, axis=(1, 2))


def color_jitter(images, key, *, brightness: float, contrast: float, prob: float):
  """torchvision's brightness (x·b) then contrast (c·x + (1 − c)·mean gray), clipped to [0, 1], per image."""
  n = images.shape[0]
  b_key, c_key, p_key = jax.random.split(key, 3)
  shape = (n, 1, 1, 1)
  b = jax.random.uniform(b_key, shape, minval=1.0 - brightness, maxval=1.0 + brightness)
  c = jax.random.uniform(c_key, shape, minval=1.0 - contrast, maxval=1.0 + contrast)
  x = jnp.clip(images * b, 0.0, 1.0)
  x = jnp.clip(c * x + (1.0 - c) * _gray_mean(x)[:, None, None, None], 0.0, 1.0)
  apply = jax.random.uniform(p_key, shape) < prob
  return jnp.where(apply, x, images)


def augment(images, key, spec: Augmentation):
  """A(x): :func:`color_jitter` then :func:`mi_jax.attacks.ppa.random_transform`; differentiable in ``images``."""
  jitter_key, transform_key = jax.random.split(key)
  x = color_jitter(images, jitter_key, brightness=spec.brightness, contrast=spec.contrast, prob=spec.jitter_prob)
  return ppa.random_transform(x, transform_key, spec.transform)


def max_margin_loss(logits, labels):
  """L_mm = −l_y + max_{j≠y} l_j per example (the authors' ``max_margin_loss``, per example).

  Theirs takes the runner-up from an argsort of the top two logits; its
  value is max over j ≠ y whatever the ties, which is what this computes.
  """
  if logits.shape[-1] < 2:
    raise ValueError(f"the max-margin loss needs >= 2 classes, got logits of shape {logits.shape}")
  labels = jnp.asarray(labels)
  true = jnp.take_along_axis(logits, labels[:, None], axis=-1)[:, 0]
  others = jnp.where(jax.nn.one_hot(labels, logits.shape[-1], dtype=bool), -jnp.inf, logits)
  return jnp.max(others, axis=-1) - true


def top_n_pseudo_labels(probabilities, classes: Sequence[int], n: int):
  """(indices, labels): for each of ``classes`` in order, the ``n`` rows of
  ``probabilities`` (N, K) with the highest probability of that class, best
  first (ties: lower index first), labelled with the class.

  A row may appear under several classes, or under none (module docstring).
  """
  p = np.asarray(probabilities)
  classes = np.asarray(classes, np.int64)
  if p.ndim != 2:
    raise ValueError(f"probabilities must be (N, K), got shape {p.shape}")
  if not 1 <= n <= p.shape[0]:
    raise ValueError(f"n must be in [1, {p.shape[0]}] (the number of public images), got {n!r}")
  if classes.ndim != 1 or len(classes) == 0 or classes.min() < 0 or classes.max() >= p.shape[1]:
    raise ValueError(f"classes must be a non-empty list of columns in [0, {p.shape[1]}), got {classes.tolist()!r}")
  indices = np.concatenate([np.argsort(-p[:, c], kind='stable')[:n] for c in classes])
  return indices.astype(np.int64), np.repeat(classes, n)


# --------------------------------------------------------------------------- the cGAN


def inversion_loss_fn(target: Callable, classes: Sequence[int], *, spec: Augmentation) -> Callable:
  """``inversion(fakes, generator_labels, key) -> L_inv``: the batch mean of
  L_mm(T(A(G(z, k))), classes[k]) (L_inv; ``train_cgan.py`` averages over its batch)."""
  class_of = jnp.asarray(np.asarray(classes, np.int32))

  def inversion(images, generator_labels, key):
    return jnp.mean(max_margin_loss(target(augment(images, key, spec)), class_of[generator_labels]))

  return inversion


def class_generator(generator: Callable, classes: Sequence[int]) -> Callable:
  """``(z, target classes) -> G(z, k)`` with k the position of each class in ``classes``."""
  classes = np.asarray(classes, np.int64)
  position = np.full(int(classes.max()) + 1, -1, np.int32)
  position[classes] = np.arange(len(classes), dtype=np.int32)
  position = jnp.asarray(position)
  return lambda z, labels: generator(z, position[labels])


class PlgGan(NamedTuple):
  """A trained PLG cGAN and the pseudo-labelled set it was trained on."""

  gan: object  # mi_jax.train.gan.GanResult; the generator's class k is classes[k]
  classes: tuple  # the target classes, in the generator's class order
  indices: np.ndarray  # rows of the public images chosen (class-major, best first)
  labels: np.ndarray  # their pseudo-labels (target classes)


def train_plg_gan(
    *,
    public_images: np.ndarray,
    target: Callable,
    classes: Sequence[int],
    mesh,
    workdir: str,
    writer=None,
    epochs: int,
    seed: int,
    top_n: int = GAN_DEFAULTS['top_n'],
    alpha: float = GAN_DEFAULTS['alpha'],
    latent_dim: int = GAN_DEFAULTS['latent_dim'],
    batch_size: int = GAN_DEFAULTS['batch_size'],
    learning_rate: float = GAN_DEFAULTS['learning_rate'],
    beta1: float = GAN_DEFAULTS['beta1'],
    beta2: float = GAN_DEFAULTS['beta2'],
    n_critic: int = GAN_DEFAULTS['n_critic'],
    width: int = 64,
    flip_prob: float = DEFAULTS['flip_prob'],
    phase: str = 'gan_plg',
    checkpoint_every: int = 500,
    log_every: int = 50,
) -> PlgGan:
  """Stages 1–2: pseudo-labels ``public_images`` (uint8 or [0, 1] NHWC) with
  ``target`` (``images [0, 1] -> logits``; softmax over the logits of
  ``classes``) for ``classes`` and trains the cGAN
  on them (``train_gan(loss='sngan', conditional=True)`` plus α·L_inv).

  ``epochs`` are over the pseudo-labelled set (``top_n · len(classes)``
  images) and count discriminator steps, ``n_critic`` per generator step
  (the authors' 30000 generator iterations of batch 64 are
  30000 · 5 · 64 / (top_n · len(classes)) epochs). The authors' top_n = 30
  picks 30 000 of their public images over 1000 classes; with a handful of
  classes it is a tiny training set, so choose ``top_n`` for the scale.
  Resumable from ``workdir`` (``workdir/checkpoints/<phase>``); the
  pseudo-labels are a pure function of the target and the images, so a
  resumed run trains on the same set.
  """
  classes = tuple(int(c) for c in classes)
  devices = mesh.shape[DATA_AXIS]
  score_batch = -(-min(256, len(public_images)) // devices) * devices
  columns = jnp.asarray(classes)
  # p_T(y | x) over the attacked classes (module docstring), column k for classes[k].
  probabilities = apply_in_batches(jax.jit(lambda x: jax.nn.softmax(target(gan.to_unit(x))[:, columns], -1)),
                                   (public_images,), batch_size=score_batch, mesh=mesh)
  indices, positions = top_n_pseudo_labels(probabilities, range(len(classes)), top_n)
  labels = np.asarray(classes, np.int64)[positions]
  result = gan.train_gan(
      images=public_images[indices], labels=positions, conditional=True, num_classes=len(classes), loss='sngan',
      latent_dim=latent_dim, epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, seed=seed,
      mesh=mesh, workdir=workdir, writer=writer if writer is not None else MetricWriter(workdir), width=width,
      n_critic=n_critic, beta1=beta1, beta2=beta2, phase=phase, checkpoint_every=checkpoint_every,
      log_every=log_every, inversion=inversion_loss_fn(target, classes, spec=augmentation(stage='gan',
                                                                                           flip_prob=flip_prob)),
      inversion_weight=alpha)
  return PlgGan(result, classes, indices, labels)


def plg_generator(plg: PlgGan) -> Callable:
  """``(z, target classes) -> images`` of a trained :class:`PlgGan` (inference mode), traceable."""
  return class_generator(gan.generator_fn(plg.gan.generator_graphdef, plg.gan.generator_state), plg.classes)


# --------------------------------------------------------------------------- the attack


def plg_objective(z, labels, key, *, target: Callable, generator: Callable, spec: Augmentation, views: int,
                  identity: Optional[Callable] = None):
  """Per-latent Σ_{k<views} L_id(A_k(G(z, y)), y): L_id is L_mm(T(x), y) unless ``identity`` is given."""
  images = generator(z, labels)
  total = 0.0
  for view_key in jax.random.split(key, views):
    x = augment(images, view_key, spec)
    total = total + (max_margin_loss(target(x), labels) if identity is None else identity(x, labels))
  return total


def plg_attack(
    *,
    target: Callable,
    generator: Callable,
    classes,
    latent_dim: int,
    mesh,
    key,
    attacks_per_class: int = DEFAULTS['attacks_per_class'],
    iterations: int = DEFAULTS['iterations'],
    learning_rate: float = DEFAULTS['learning_rate'],
    views: int = DEFAULTS['views'],
    flip_prob: float = DEFAULTS['flip_prob'],
    log_every: int = 100,
    writer=None,
    identity: Optional[Callable] = None,
) -> latent.AttackResult:
  """Stage 3 on each of ``classes``, ``attacks_per_class`` latents each.

  ``generator(z, labels) -> images [0, 1]`` takes *target* classes
  (:func:`plg_generator`; :func:`class_generator` for a bare G);
  ``target(images) -> logits``; ``identity(images, labels) -> per-example
  loss`` replaces L_mm(T(x), y) on each view (LOMMA's, :func:`mi_jax.attacks.lomma.identity_fn`).
  ``initial_images`` are G(z₀, y) at the unoptimised draws.
  """
  if views < 1:
    raise ValueError(f"views must be >= 1, got {views!r}")
  labels = latent.class_attack_labels(classes, attacks_per_class)
  init_key, run_key = jax.random.split(key)
  z0 = np.asarray(jax.random.normal(init_key, (len(labels), latent_dim)))
  spec = augmentation(stage='attack', flip_prob=flip_prob)

  def loss_fn(z, y, _extras, step_key):
    return plg_objective(z, y, step_key, target=target, generator=generator, spec=spec, views=views,
                         identity=identity)

  result = latent.optimize_latents(
      loss_fn=loss_fn, init=z0, labels=labels, tx=latent.make_optimizer(name='adam', learning_rate=learning_rate),
      iterations=iterations, mesh=mesh, key=run_key, log_every=log_every, writer=writer, phase='plg')
  generate = lambda z: latent.apply_rows(lambda r: generator(r['z'], r['y']), {'z': z, 'y': labels},
                                         mesh=mesh).astype(np.float32)
  return latent.AttackResult(generate(result.latents), labels, result.latents, result.losses,
                             initial_images=generate(z0), initial_latents=z0)
