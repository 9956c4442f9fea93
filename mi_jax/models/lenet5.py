"""advertorch's pretrained MNIST LeNet-5, ported to Flax NNX (a second MNIST judge).

advertorch 0.2.3 (Ding et al. 2019, LGPL-3) ships
``advertorch_examples/trained_models/mnist_lenet5_clntrained.pt``, a
"LeNet5" trained on clean MNIST to 98.9% test accuracy. Its definition
(``advertorch/test_utils.py``), read and re-expressed here:

    x ∈ [0, 1]^{28×28×1}    (``transforms.ToTensor()`` only: no mean/std normalisation)
    → conv3×3(32, pad 1) → ReLU → maxpool 2
    → conv3×3(64, pad 1) → ReLU → maxpool 2
    → flatten → dense(200) → ReLU                     = φ(x)   (features)
    → dense(10)                                       = logits

It was trained by others on MNIST's train split, so it is independent of
every mi_jax target and of our own evaluation classifier: a cross-check
that attack accuracy does not hinge on one judge.

Weight layout: torch convs are (out, in, kh, kw) cross-correlations with
NCHW activations, flax's are (kh, kw, in, out) on NHWC. torch flattens the
(64, 7, 7) feature map in (c, h, w) order and we flatten (h, w, c), so the
rows of ``linear1`` are permuted accordingly at load time.
"""

from __future__ import annotations

import os
from typing import Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mi_jax.models.evaluation_cnn import to_unit_float

ASSET = 'lenet5_mnist'  # Key of mi_jax.weights.ASSETS (pinned sha256).
IMAGE_SHAPE = (28, 28, 1)
_SHAPES = {
    'conv1.weight': (32, 1, 3, 3), 'conv1.bias': (32,),
    'conv2.weight': (64, 32, 3, 3), 'conv2.bias': (64,),
    'linear1.weight': (200, 7 * 7 * 64), 'linear1.bias': (200,),
    'linear2.weight': (10, 200), 'linear2.bias': (10,),
}


class LeNet5(nnx.Module):
  """advertorch's LeNet5 on NHWC images (uint8 [0, 255] or float [0, 1])."""

  def __init__(self, *, rngs: nnx.Rngs):
    self.conv1 = nnx.Conv(1, 32, kernel_size=(3, 3), padding=((1, 1), (1, 1)), rngs=rngs)
    self.conv2 = nnx.Conv(32, 64, kernel_size=(3, 3), padding=((1, 1), (1, 1)), rngs=rngs)
    self.linear1 = nnx.Linear(7 * 7 * 64, 200, rngs=rngs)
    self.linear2 = nnx.Linear(200, 10, rngs=rngs)
    self.image_shape = IMAGE_SHAPE
    self.num_classes = 10

  def activations(self, images: jax.Array, *, train: bool = False, key=None,
                  stop_at: str = 'logits') -> dict[str, jax.Array]:
    """{'features': φ(x) (200-d), 'logits'}; ``train``/``key`` are unused (no dropout)."""
    del train, key
    if stop_at not in ('features', 'logits'):
      raise ValueError(f"stop_at must be one of ('features', 'logits'), got {stop_at!r}")
    x = to_unit_float(images)
    x = nnx.max_pool(jax.nn.relu(self.conv1(x)), window_shape=(2, 2), strides=(2, 2))
    x = nnx.max_pool(jax.nn.relu(self.conv2(x)), window_shape=(2, 2), strides=(2, 2))
    features = jax.nn.relu(self.linear1(x.reshape(x.shape[0], -1)))
    out = {'features': features}
    if stop_at == 'logits':
      out['logits'] = self.linear2(features)
    return out

  def features(self, images: jax.Array) -> jax.Array:
    return self.activations(images, stop_at='features')['features']

  def __call__(self, images: jax.Array, *, train: bool = False, key=None) -> jax.Array:
    return self.activations(images)['logits']


def flax_params_from_torch(weights: Mapping[str, np.ndarray]) -> dict:
  """advertorch's ``state_dict`` arrays → the pure-dict params of :class:`LeNet5`."""
  missing = sorted(set(_SHAPES) - set(weights))
  if missing:
    raise ValueError(f"weights must hold advertorch LeNet5 tensors; missing {missing}")
  for name, shape in _SHAPES.items():
    if tuple(weights[name].shape) != shape:
      raise ValueError(f"weights[{name!r}] must have shape {shape}, got {tuple(weights[name].shape)}")
  f32 = lambda a: jnp.asarray(np.asarray(a, np.float32))
  conv = lambda w: f32(np.transpose(w, (2, 3, 1, 0)))  # (O, I, kh, kw) → (kh, kw, I, O)
  # torch flat index c·49 + h·7 + w; ours h·7·64 + w·64 + c.
  linear1 = np.asarray(weights['linear1.weight']).reshape(200, 64, 7, 7).transpose(2, 3, 1, 0)
  return {
      'conv1': {'kernel': conv(weights['conv1.weight']), 'bias': f32(weights['conv1.bias'])},
      'conv2': {'kernel': conv(weights['conv2.weight']), 'bias': f32(weights['conv2.bias'])},
      'linear1': {'kernel': f32(linear1.reshape(7 * 7 * 64, 200)), 'bias': f32(weights['linear1.bias'])},
      'linear2': {'kernel': f32(np.transpose(weights['linear2.weight'])), 'bias': f32(weights['linear2.bias'])},
  }


def lenet5_from_weights(weights: Mapping[str, np.ndarray]) -> LeNet5:
  """A :class:`LeNet5` holding the given advertorch ``state_dict`` arrays."""
  model = LeNet5(rngs=nnx.Rngs(0))
  graphdef, _, rest = nnx.split(model, nnx.Param, ...)
  params = nnx.state(model, nnx.Param)
  nnx.replace_by_pure_dict(params, flax_params_from_torch(weights))
  return nnx.merge(graphdef, params, rest)


def load_lenet5(path: Optional[str | os.PathLike] = None, *, verify: bool = True) -> LeNet5:
  """The pretrained advertorch LeNet-5.

  ``path``: a local copy of ``mnist_lenet5_clntrained.pt``; by default the
  pinned asset (cache, else ``pip download advertorch==0.2.3``). The file
  is read without torch through :mod:`mi_jax.weights`' restricted
  unpickler and checked against its sha256 pin (``verify=False`` skips the
  pin for deliberately different weights).

  Raises :class:`mi_jax.weights.WeightsUnavailableError` when no copy can be had.
  """
  # Imported here: the weights package pulls in pip/zip machinery that
  # model definitions should not need.
  from mi_jax.weights import asset_path, read_torch_file
  return lenet5_from_weights(read_torch_file(asset_path(ASSET, path=path, verify=verify)))
