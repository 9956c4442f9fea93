"""Convolutional trunks: the front of a target for images that an MLP on raw
pixels classifies poorly (CIFAR-10, the medical sets, faces).

A trunk takes the place of a defense's front in :class:`TargetNetwork`
(``image → preprocess → trunk → hidden dense layers → classifier``), so the
leaks keep their meaning: 'first' is the first dense layer after the
convolutions (the split setting's leak), 'last_hidden' the classifier's
input. A defense with a front of its own (Sparse-Standard, Sparse-Guard)
replaces the trunk's convolutions with its sparse layers, as the SG paper
does for its CIFAR-10 model (the sparse layers sit where the CNN's first
convolutions were).

Trunks (``model.trunk``):

* ``'none'``: no trunk, the SG paper's MLPs on the flattened image (MNIST,
  Fashion-MNIST).
* ``'sg_cnn'``: the SG code's small CIFAR-10 CNN front, two 5×5
  convolutions with ReLU, 'same' padding, stride 1 (F1 then F2 maps, the
  sizes of the Sparse-Guard layers they stand for, ``defense.features``).
  Also the SG paper's Medical MNIST model (same layout, one channel in).
* ``'vgg16'``: the feature extractor of VGG16 with batch norm (Simonyan and
  Zisserman 2015, configuration D; torchvision's ``vgg16_bn.features``),
  the target family of the GAN-attack line on 64×64 faces (GMI, KEDMI,
  PLG-MI, LOMMA use VGG16 targets on CelebA). 13 3×3 convolutions in five
  blocks (64, 64 | 128, 128 | 256 ×3 | 512 ×3 | 512 ×3), each followed by
  BatchNorm and ReLU, a 2×2 max-pool after each block: H×W → H/32×W/32×512.
  ``width`` scales every block's channel count (1.0: the published
  network, 14,723,136 parameters; the CPU configs use a fraction).

Every trunk exposes what :class:`TargetNetwork` asks of a front:
``out_shape``, ``__call__(x, train=)``, ``sparse_layers()`` (none) and
``codes_are_fixed()`` (False: every parameter of a trunk learns).
"""

from __future__ import annotations

from typing import Sequence

import jax
from flax import nnx

TRUNKS = ('none', 'sg_cnn', 'vgg16')
# VGG16 configuration D: channels of each convolution, 'M' a 2×2 max-pool.
VGG16_LAYOUT = (64, 64, 'M', 128, 128, 'M', 256, 256, 256, 'M', 512, 512, 512, 'M', 512, 512, 512, 'M')
VGG16_DOWNSAMPLING = 32  # five 2×2 pools


class SGConvFront(nnx.Module):
  """x (N, H, W, C) → ReLU(conv5×5) → ReLU(conv5×5): (N, H, W, F2)."""

  def __init__(self, image_shape, features: Sequence[int], *, rngs: nnx.Rngs):
    if len(features) != 2 or min(features) < 1:
      raise ValueError(f"defense.features must be two positive map counts for the sg_cnn trunk, got {tuple(features)!r}")
    h, w, c = image_shape
    f1, f2 = int(features[0]), int(features[1])
    self.conv1 = nnx.Conv(c, f1, (5, 5), padding='SAME', rngs=rngs)
    self.conv2 = nnx.Conv(f1, f2, (5, 5), padding='SAME', rngs=rngs)
    self.out_shape = (h, w, f2)

  def sparse_layers(self) -> tuple:
    return ()

  def codes_are_fixed(self) -> bool:
    return False

  def __call__(self, x, *, train: bool = False):
    del train
    return jax.nn.relu(self.conv2(jax.nn.relu(self.conv1(x))))


def vgg16_channels(width: float) -> tuple:
  """VGG16_LAYOUT with every channel count scaled by ``width`` (at least 1)."""
  return tuple(v if v == 'M' else max(1, int(round(v * width))) for v in VGG16_LAYOUT)


class VGG16Front(nnx.Module):
  """VGG16-BN features: [conv3×3 → BatchNorm → ReLU]+ → max-pool, five blocks."""

  def __init__(self, image_shape, *, width: float = 1.0, rngs: nnx.Rngs):
    h, w, c = image_shape
    if h % VGG16_DOWNSAMPLING or w % VGG16_DOWNSAMPLING:
      raise ValueError(f"the vgg16 trunk needs image height and width that are multiples of {VGG16_DOWNSAMPLING} "
                       f"(five 2×2 pools), got {h}×{w}")
    if not width > 0:
      raise ValueError(f"model.trunk_width must be > 0, got {width!r}")
    convs, norms, pool_after = [], [], []
    channels = c
    for v in vgg16_channels(width):
      if v == 'M':
        pool_after[-1] = True
        continue
      convs.append(nnx.Conv(channels, v, (3, 3), padding=1, rngs=rngs))
      # torch BatchNorm2d defaults (momentum 0.1 = flax 0.9, eps 1e-5).
      norms.append(nnx.BatchNorm(v, momentum=0.9, epsilon=1e-5, rngs=rngs))
      pool_after.append(False)
      channels = v
    self.convs, self.norms = nnx.List(convs), nnx.List(norms)
    self.pool_after = tuple(pool_after)
    self.out_shape = (h // VGG16_DOWNSAMPLING, w // VGG16_DOWNSAMPLING, channels)

  def sparse_layers(self) -> tuple:
    return ()

  def codes_are_fixed(self) -> bool:
    return False

  def __call__(self, x, *, train: bool = False):
    for conv, norm, pool in zip(self.convs, self.norms, self.pool_after):
      x = jax.nn.relu(norm(conv(x), use_running_average=not train))
      if pool:
        x = nnx.max_pool(x, (2, 2), strides=(2, 2))
    return x


def parameterised_layers(trunk: str) -> int:
  """How many layers with parameters a trunk adds before the dense layers
  (convolutions and batch norms; what ``freeze_depth`` counts)."""
  if trunk not in TRUNKS:
    raise ValueError(f"model.trunk must be one of {TRUNKS}, got {trunk!r}")
  return {'none': 0, 'sg_cnn': 2, 'vgg16': 26}[trunk]


def build_trunk(trunk: str, image_shape, *, features: Sequence[int], width: float = 1.0, rngs: nnx.Rngs):
  """The trunk module of ``model.trunk`` (None for 'none')."""
  if trunk not in TRUNKS:
    raise ValueError(f"model.trunk must be one of {TRUNKS}, got {trunk!r}")
  if trunk == 'none':
    return None
  if trunk == 'sg_cnn':
    return SGConvFront(image_shape, features, rngs=rngs)
  return VGG16Front(image_shape, width=width, rngs=rngs)
