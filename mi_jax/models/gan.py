"""DCGAN-sized generator and discriminator for small images (28×28 digits).

Both networks are the MNIST-scale counterparts of the GAN priors that the
GAN-based inversion attacks use (GMI: Zhang et al. 2020, "The Secret
Revealer"; KEDMI: Chen et al. 2021, "Knowledge-Enriched Distributional Model
Inversion"; PPA at MNIST scale as in the Sparse-Guard code's conditional GAN)
and that the GAN-based defenses build on.

Generator, for an image of H×W×C with H, W multiples of 4 (two ×2 upsamplings)::

    [z ; onehot(y)] → Linear → (H/4, W/4, 2·width) → BN → ReLU
                    → ConvT 4×4/2 → (H/2, W/2, width) → BN → ReLU
                    → ConvT 4×4/2 → (H, W, C) → sigmoid ∈ [0, 1]

Discriminator (no BatchNorm: a WGAN-GP critic's gradient penalty is taken
per example, which batch statistics would couple; GMI's DGWGAN uses
InstanceNorm for the same reason)::

    [x ; onehot(y) broadcast as channels] → Conv 4×4/2 → LeakyReLU(0.2)
        → Conv 4×4/2 → InstanceNorm → LeakyReLU(0.2) → flatten = features
        → Linear → real/fake logit

With ``class_head=True`` (KEDMI's inversion-specific discriminator) the last
layer instead predicts ``num_classes`` class logits l(x), and the real/fake
logit is their log-sum-exp, log Z(x) = log Σ_k exp l_k(x): the
semi-supervised GAN parametrisation of Salimans et al. (2016) that KEDMI's
code uses, D(x) = Z(x) / (Z(x) + 1) = sigmoid(log Z(x)). A class-head
discriminator is unconditional (``num_classes`` is the head's size).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

# BatchNorm running averages follow torch's default (new = 0.9·old + 0.1·batch):
# a short GAN run must leave eval-mode statistics close to the training ones.
BN_MOMENTUM = 0.9


def check_image_shape(image_shape) -> tuple[int, int, int]:
  """(H, W, C) with H, W positive multiples of 4 (two stride-2 stages)."""
  shape = tuple(int(s) for s in image_shape)
  if len(shape) != 3 or shape[0] % 4 or shape[1] % 4 or min(shape) < 1:
    raise ValueError(f"image_shape must be (H, W, C) with H, W positive multiples of 4, got {image_shape!r}")
  return shape


def _one_hot(labels, num_classes: int, dtype=jnp.float32):
  if labels is None:
    raise ValueError(f"labels must be given for a conditional network (num_classes={num_classes}), got None")
  return jax.nn.one_hot(labels, num_classes, dtype=dtype)


class Generator(nnx.Module):
  """z (N, latent_dim) [and labels (N,)] → images (N, H, W, C) float32 in [0, 1]."""

  def __init__(self, *, latent_dim: int = 100, image_shape=(28, 28, 1), num_classes: int = 0,
               width: int = 64, rngs: nnx.Rngs):
    if latent_dim < 1:
      raise ValueError(f"latent_dim must be >= 1, got {latent_dim!r}")
    if num_classes < 0:
      raise ValueError(f"num_classes must be >= 0 (0: unconditional), got {num_classes!r}")
    if width < 1:
      raise ValueError(f"width must be >= 1, got {width!r}")
    h, w, c = check_image_shape(image_shape)
    self.latent_dim, self.num_classes, self.image_shape = latent_dim, num_classes, (h, w, c)
    self.base = (h // 4, w // 4, 2 * width)
    self.project = nnx.Linear(latent_dim + num_classes, h // 4 * (w // 4) * 2 * width, rngs=rngs)
    self.bn0 = nnx.BatchNorm(2 * width, momentum=BN_MOMENTUM, rngs=rngs)
    self.up1 = nnx.ConvTranspose(2 * width, width, (4, 4), strides=(2, 2), padding='SAME', rngs=rngs)
    self.bn1 = nnx.BatchNorm(width, momentum=BN_MOMENTUM, rngs=rngs)
    self.up2 = nnx.ConvTranspose(width, c, (4, 4), strides=(2, 2), padding='SAME', rngs=rngs)

  def __call__(self, z, labels=None, *, train: bool = False):
    if z.ndim != 2 or z.shape[-1] != self.latent_dim:
      raise ValueError(f"z must have shape (N, {self.latent_dim}), got {z.shape}")
    x = z.astype(jnp.float32)
    if self.num_classes:
      x = jnp.concatenate([x, _one_hot(labels, self.num_classes)], axis=-1)
    x = self.project(x).reshape(z.shape[0], *self.base)
    x = jax.nn.relu(self.bn0(x, use_running_average=not train))
    x = jax.nn.relu(self.bn1(self.up1(x), use_running_average=not train))
    return jax.nn.sigmoid(self.up2(x))


class Discriminator(nnx.Module):
  """images (N, H, W, C) in [0, 1] [and labels] → logit (N,), or (logit, class_logits)."""

  def __init__(self, *, image_shape=(28, 28, 1), num_classes: int = 0, width: int = 64,
               class_head: bool = False, rngs: nnx.Rngs):
    if num_classes < 0:
      raise ValueError(f"num_classes must be >= 0 (0: unconditional), got {num_classes!r}")
    if class_head and num_classes < 2:
      raise ValueError(f"num_classes must be >= 2 with class_head=True, got {num_classes!r}")
    if width < 1:
      raise ValueError(f"width must be >= 1, got {width!r}")
    h, w, c = check_image_shape(image_shape)
    self.image_shape, self.num_classes, self.class_head = (h, w, c), num_classes, bool(class_head)
    conditional = num_classes if (num_classes and not class_head) else 0
    self.conditional = conditional
    self.down1 = nnx.Conv(c + conditional, width, (4, 4), strides=(2, 2), padding='SAME', rngs=rngs)
    self.down2 = nnx.Conv(width, 2 * width, (4, 4), strides=(2, 2), padding='SAME', rngs=rngs)
    self.norm2 = nnx.InstanceNorm(2 * width, rngs=rngs)
    self.feature_size = h // 4 * (w // 4) * 2 * width
    self.head = nnx.Linear(self.feature_size, num_classes if class_head else 1, rngs=rngs)

  def features(self, images, labels=None):
    """The flattened penultimate features (KEDMI's feature matching uses them)."""
    x = images.astype(jnp.float32)
    if self.conditional:
      onehot = _one_hot(labels, self.conditional)
      x = jnp.concatenate([x, jnp.broadcast_to(onehot[:, None, None, :], (*x.shape[:3], self.conditional))], -1)
    x = jax.nn.leaky_relu(self.down1(x), 0.2)
    x = jax.nn.leaky_relu(self.norm2(self.down2(x)), 0.2)
    return x.reshape(x.shape[0], -1)

  def from_features(self, features):
    """Head on precomputed features: logit, or (logit, class_logits)."""
    out = self.head(features)
    if self.class_head:
      return jax.nn.logsumexp(out, axis=-1), out
    return out[:, 0]

  def __call__(self, images, labels=None, *, train: bool = False):
    # ``train`` is accepted for a uniform interface; nothing here depends on it.
    del train
    return self.from_features(self.features(images, labels))
