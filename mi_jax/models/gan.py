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

:class:`ProjectionDiscriminator` is the SNGAN alternative (spectral norm on
every layer, the class by projection; PLG-MI's GAN, ``loss='sngan'`` in
:mod:`mi_jax.train.gan`).
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


# --------------------------------------------------------------------------- SNGAN projection discriminator

def spectral_norm(matrix):
  """σ_max(matrix), differentiable as uᵀ W v with the top singular pair (u, v) held constant.

  The gradient is u vᵀ, as in SNGAN (Miyato et al. 2018, Sec. 2.2 and
  App. A), whose singular vectors are constants of the backward pass. SNGAN
  estimates them with one power-iteration step per training step on a
  vector u kept between steps; we compute them afresh at every call from the
  eigendecomposition of the smaller Gram matrix (WᵀW or WWᵀ, at most
  fan-out × fan-out here), so no state is carried and the value is exact
  to float precision (power iteration from a fixed start converges slowly
  when the top singular values are close, as in a fresh class embedding).
  """
  w = jax.lax.stop_gradient(matrix.astype(jnp.float32))
  normalize = lambda x: x / (jnp.linalg.norm(x) + 1e-12)
  if w.shape[1] <= w.shape[0]:
    v = jnp.linalg.eigh(w.T @ w)[1][:, -1]  # eigh sorts eigenvalues in ascending order
    u = normalize(w @ v)
  else:
    u = jnp.linalg.eigh(w @ w.T)[1][:, -1]
    v = normalize(w.T @ u)
  u, v = jax.lax.stop_gradient(u), jax.lax.stop_gradient(v)
  return u @ matrix.astype(jnp.float32) @ v


def _sn(kernel):
  """kernel / σ_max(kernel as a (fan_in, fan_out) matrix), torch's ``spectral_norm`` reshaping."""
  return kernel / spectral_norm(kernel.reshape(-1, kernel.shape[-1]))


class ProjectionDiscriminator(nnx.Module):
  """SNGAN-style projection discriminator (Miyato & Koyama 2018), spectral norm on every layer.

  images (N, H, W, C) in [0, 1] [and labels (N,)] → logit (N,)::

      φ(x) = flatten(LeakyReLU(SNConv 4×4/2(LeakyReLU(SNConv 4×4/2(x)))))
      D(x, y) = ψ(φ(x)) + ⟨V e_y, φ(x)⟩,   ψ an SN linear map, V an SN embedding

  The trunk is :class:`Discriminator`'s without its InstanceNorm (spectral
  normalisation is the only normalisation in SNGAN); the class enters by the
  inner product with its embedding rather than as input channels. PLG-MI's
  discriminator (Yuan et al. 2023, ``SNResNetProjectionDiscriminator``) is a
  64×64 ResNet with the same head on globally sum-pooled features; at 28×28
  two stride-2 convolutions and flattened features are the house scale.
  ``num_classes=0``: no projection term (an unconditional SN discriminator).
  """

  def __init__(self, *, image_shape=(28, 28, 1), num_classes: int = 0, width: int = 64, rngs: nnx.Rngs):
    if num_classes < 0:
      raise ValueError(f"num_classes must be >= 0 (0: unconditional), got {num_classes!r}")
    if width < 1:
      raise ValueError(f"width must be >= 1, got {width!r}")
    h, w, c = check_image_shape(image_shape)
    self.image_shape, self.num_classes, self.class_head = (h, w, c), num_classes, False
    self.down1 = nnx.Conv(c, width, (4, 4), strides=(2, 2), padding='SAME', rngs=rngs)
    self.down2 = nnx.Conv(width, 2 * width, (4, 4), strides=(2, 2), padding='SAME', rngs=rngs)
    self.feature_size = h // 4 * (w // 4) * 2 * width
    self.head = nnx.Linear(self.feature_size, 1, rngs=rngs)
    # PLG-MI's (and SNGAN's) embedding is Xavier-uniform initialised.
    self.embed = (nnx.Embed(num_classes, self.feature_size, embedding_init=nnx.initializers.xavier_uniform(),
                            rngs=rngs) if num_classes else None)

  @staticmethod
  def _conv(layer, x):
    y = jax.lax.conv_general_dilated(x, _sn(layer.kernel[...]), window_strides=(2, 2), padding='SAME',
                                     dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    return y + layer.bias[...]

  def features(self, images, labels=None):
    """φ(x), the flattened trunk features (the labels are not used here)."""
    del labels
    x = images.astype(jnp.float32)
    x = jax.nn.leaky_relu(self._conv(self.down1, x), 0.2)
    x = jax.nn.leaky_relu(self._conv(self.down2, x), 0.2)
    return x.reshape(x.shape[0], -1)

  def __call__(self, images, labels=None, *, train: bool = False):
    del train  # uniform interface; nothing here depends on it
    phi = self.features(images)
    out = phi @ _sn(self.head.kernel[...])[:, 0] + self.head.bias[...][0]
    if self.num_classes:
      embedding = _sn(self.embed.embedding[...])  # (K, F): σ_max of the class-by-feature matrix
      out = out + jnp.sum(embedding[_labels(labels, self.num_classes)] * phi, axis=-1)
    return out


def _labels(labels, num_classes: int):
  if labels is None:
    raise ValueError(f"labels must be given for a conditional network (num_classes={num_classes}), got None")
  return jnp.asarray(labels, jnp.int32)
