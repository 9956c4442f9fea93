"""GAN augmentation: the Sparse-Guard paper's GAN baseline (methods.md §3).

Recipe (SG code ``MNIST/mnist_etn_gan.py``, ``CIFAR10/cifar10_gan.py``):

1. train a *conditional* GAN on the private training set (SG: 25 epochs), so
   that every generated sample carries the class it was generated for;
2. train the target (the grid's no-defense architecture) on the private
   images plus generated ones, each labelled with its conditioning class.

What the SG code does, and what we do:

* **GAN.** SG: an MLP conditional GAN (label embedding concatenated to z and
  to the flattened image), Adam(lr = 1e-4, torch's β = (0.9, 0.999)), batch
  32, 25 epochs, 5 discriminator updates per generator update, the standard
  (sigmoid/BCE) GAN loss. Here: the conditional DCGAN of
  :mod:`mi_jax.models.gan` with the non-saturating ``'dcgan'`` loss, the
  same optimiser, batch and n_critic. Our n_critic draws a fresh real batch
  for each discriminator update (the SG code reuses one batch five times),
  so one epoch here is 1/5 of SG's generator updates; set ``gan_epochs`` to
  125 to match SG's generator-update count at paper scale.
* **Labels of generated samples.** SG conditions each generated image on the
  label ``Y[i]`` of a real sample of the current batch, i.e. labels follow
  the private label distribution. We draw the conditioning labels from the
  private labels' empirical distribution and label each fake with its
  conditioning class.
* **Ratio.** SG's per-batch loss is CE(real batch) + mean CE(fakes), the
  two means with equal weight. We mix ``n_fake = round(fake_fraction·n_real)``
  generated samples into the training set; ``fake_fraction = 1`` gives the
  real and generated parts equal total weight in expectation, the SG
  intent. Steps per epoch grow by (1 + fake_fraction); ``config.train.epochs``
  counts passes over the augmented set.
* **Departures (bugs not reproduced).** SG's loop runs ``range(Y[0])``
  fakes per batch (0–9 depending on the first label), feeds each fake
  repeated 64 times but scores only row 0, shifts it to [0.5, 1.5] before
  the target's normalisation, and appends ``loss2.item()``: the GAN term is
  a Python float, so no gradient flows through the generated samples and
  the SG "GAN" target is trained on real data only. We train on the
  generated samples for real, in [0, 1] like the real images.

Parameter counts and architecture are those of the no-defense target
(:func:`mi_jax.defenses.build_target`), so the attack and metrics apply as
to every other grid point.
"""

from __future__ import annotations

from typing import Optional

import jax
import numpy as np
from flax import nnx
from ml_collections import config_dict

from mi_jax.defenses.registry import Defense, register
from mi_jax.defenses.target import build_target, num_classes_of
from mi_jax.train import gan as gan_train
from mi_jax.train.classifier import train_classifier
from mi_jax.train.state import make_optimizer
from mi_jax.utils import config_rules as rules

NAME = 'gan-augmentation'
GAN_LOSSES = ('dcgan', 'wgan-gp')
# Salts of the key streams derived from config.seed (kept apart so a change
# in one stage never reuses another's randomness).
_LABEL_SALT, _SAMPLE_SALT = 101, 102


# --------------------------------------------------------------- config

def config_block() -> config_dict.ConfigDict:
  """``config.defense.gan_augmentation`` (paper-scale defaults; small runs
  override ``gan_epochs``)."""
  b = config_dict.ConfigDict()
  add_gan_fields(b)
  # Generated samples per private sample: SG adds the mean CE of the fakes
  # to the mean CE of the real batch with weight 1 (equal total weight).
  b.fake_fraction = 1.0
  return b


def add_gan_fields(b: config_dict.ConfigDict) -> None:
  """The conditional-GAN fields shared with :mod:`mi_jax.defenses.gan_opt`."""
  b.gan_epochs = 25  # SG code: num_epochs = 25 (CIFAR-10: 50)
  b.gan_batch_size = 32  # SG code: gan_batch_size = 32
  b.gan_learning_rate = 1e-4  # SG code: Adam(lr=1e-4) for G and D
  b.gan_beta1 = 0.9  # SG code: torch Adam's default β1 (DCGAN's 0.5 is not used there)
  b.gan_n_critic = 5  # SG code: n_critic = 5 discriminator steps per generator step
  b.gan_loss = 'dcgan'  # SG: sigmoid discriminator, BCE (standard, non-saturating) GAN
  b.gan_width = 64  # DCGAN base width of mi_jax.models.gan
  b.latent_dim = 100  # SG code: z ~ N(0, I_100)


def _block(config_or_block, field: str = 'gan_augmentation'):
  if 'defense' in config_or_block:
    if field not in config_or_block.defense:
      raise ValueError(f'defense.{field} is missing: its defense needs the config block')
    return config_or_block.defense[field]
  return config_or_block


def validate_gan_fields(b, prefix: str) -> None:
  """One-line ``ValueError`` for a bad shared GAN field of block ``prefix``.

  (That ``gan_batch_size`` splits over the devices and fits the private set
  is the experiment's check: it knows both.)
  """
  rules.check_fields(b, {
      'gan_epochs': rules.integer(low=1),
      'gan_batch_size': rules.integer(low=1),
      'gan_n_critic': rules.integer(low=1),
      'gan_width': rules.integer(low=1),
      'latent_dim': rules.integer(low=1),
      'gan_learning_rate': rules.number(above=0),
      'gan_beta1': rules.number(low=0, below=1),
      'gan_loss': rules.one_of(GAN_LOSSES),
  }, prefix)


def validate(config_or_block) -> None:
  """One-line ``ValueError`` for a bad ``defense.gan_augmentation`` field (block or full config)."""
  b = _block(config_or_block)
  validate_gan_fields(b, 'defense.gan_augmentation')
  rules.check_fields(b, {'fake_fraction': rules.number(above=0)}, 'defense.gan_augmentation')


# --------------------------------------------------------------- pieces

def no_defense(config):
  """``config`` with ``defense.name = 'no-defense'``: the plain target architecture."""
  c = config.copy_and_resolve_references()
  with c.unlocked():
    c.defense.name = 'no-defense'
  return c


def n_generated(n_real: int, fake_fraction: float) -> int:
  """round(fake_fraction · n_real), at least 1."""
  return max(1, int(round(float(fake_fraction) * n_real)))


def labels_like(labels: np.ndarray, n: int, *, seed: int) -> np.ndarray:
  """``n`` labels drawn with replacement from ``labels`` (their empirical
  distribution: SG conditions each fake on a real sample's label)."""
  rng = np.random.default_rng([seed, _LABEL_SALT])
  return np.asarray(labels)[rng.integers(0, len(labels), n)].astype(np.int64)


def to_uint8(images: np.ndarray) -> np.ndarray:
  """float [0, 1] → uint8 [0, 255], the private images' dtype (the target
  normalises both the same way)."""
  return np.clip(np.round(np.asarray(images, np.float32) * 255.0), 0, 255).astype(np.uint8)


def train_conditional_gan(b, images: np.ndarray, labels: np.ndarray, *, num_classes: int, seed: int,
                          mesh, workdir: str, writer, phase: str = 'gan') -> gan_train.GanResult:
  """The conditional GAN of block ``b`` on (images, labels); resumable per ``phase``."""
  return gan_train.train_gan(
      images=images, labels=labels, conditional=True, num_classes=num_classes, loss=b.gan_loss,
      latent_dim=int(b.latent_dim), epochs=int(b.gan_epochs), batch_size=int(b.gan_batch_size),
      learning_rate=float(b.gan_learning_rate), beta1=float(b.gan_beta1), n_critic=int(b.gan_n_critic),
      width=int(b.gan_width), seed=seed, mesh=mesh, workdir=workdir, writer=writer, phase=phase)


def generate(gan: gan_train.GanResult, labels: np.ndarray, *, seed: int, salt: int = _SAMPLE_SALT) -> np.ndarray:
  """uint8 NHWC samples G(z, y) for the conditioning ``labels``."""
  key = jax.random.fold_in(jax.random.key(seed), salt)
  return to_uint8(gan_train.sample(gan, len(labels), key=key, labels=np.asarray(labels)))


def augmented(real_images, real_labels, fake_images, fake_labels):
  """(images, labels): the real set followed by the generated one (the
  training loop shuffles per epoch)."""
  if fake_images.dtype != real_images.dtype or fake_images.shape[1:] != real_images.shape[1:]:
    raise ValueError(f'generated images {fake_images.dtype}{fake_images.shape[1:]} do not match '
                     f'the real {real_images.dtype}{real_images.shape[1:]}')
  return (np.concatenate([real_images, fake_images]),
          np.concatenate([np.asarray(real_labels, np.int64), np.asarray(fake_labels, np.int64)]))


def train_on(config, images, labels, *, num_classes: int, mesh, workdir: str, writer, phase: str = 'target',
             state=None, tx=None, epochs=None, seed=None):
  """The no-defense target trained on (images, labels) with ``config.train``."""
  image_shape = tuple(images.shape[1:])
  model = build_target(no_defense(config), image_shape, num_classes, rngs=nnx.Rngs(config.seed))
  t = config.train
  return train_classifier(
      model=model, tx=tx if tx is not None else make_optimizer(t), images=images, labels=labels,
      batch_size=t.batch_size, epochs=t.epochs if epochs is None else int(epochs),
      seed=config.seed if seed is None else seed, mesh=mesh, workdir=workdir, writer=writer, phase=phase,
      checkpoint_every=t.checkpoint_every_steps, log_every=t.log_every_steps, state=state)


# --------------------------------------------------------------- recipe

def train_gan_augmented_target(config, split, *, mesh, workdir: str, writer, num_classes: Optional[int] = None):
  """GAN augmentation; returns ``(graphdef, state, row_extras)``.

  Phases (each resumable): 'gan' (conditional GAN on ``split.private_*``),
  then 'target' (no-defense target on real + generated samples).
  ``row_extras``: {'gan_epochs', 'n_generated'}. ``num_classes``: the
  head's width (None: the dataset's class count).
  """
  b = _block(config)
  num_classes = num_classes_of(config) if num_classes is None else num_classes
  validate(b)
  images, labels = split.private_images, split.private_labels
  gan = train_conditional_gan(b, images, labels, num_classes=num_classes, seed=config.seed,
                              mesh=mesh, workdir=workdir, writer=writer, phase='gan')
  n_fake = n_generated(len(labels), b.fake_fraction)
  fake_labels = labels_like(labels, n_fake, seed=config.seed)
  fake_images = generate(gan, fake_labels, seed=config.seed)
  train_images, train_labels = augmented(images, labels, fake_images, fake_labels)
  graphdef, state = train_on(config, train_images, train_labels, num_classes=num_classes,
                             mesh=mesh, workdir=workdir, writer=writer, phase='target')
  return graphdef, state, {'gan_epochs': int(b.gan_epochs), 'n_generated': int(n_fake)}


def gan_batches(config, block: str = 'gan_augmentation') -> dict:
  """The GAN's batch, which splits over the devices and must fit the private set."""
  return {f'defense.{block}.gan_batch_size': config.defense[block].gan_batch_size}


register(Defense(
    name=NAME,
    summary="a conditional GAN's samples added to the private training set (SG App. B)",
    block='gan_augmentation', config_block=config_block, validate=validate,
    recipe=train_gan_augmented_target, private_batches=gan_batches,
))
