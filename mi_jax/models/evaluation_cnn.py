"""The evaluation classifier ("judge") of the attack-success metrics.

A small VGG-style CNN, deliberately unlike every target (the targets are
MLPs, optionally behind sparse-coding fronts), so that attack accuracy
measures recovered class evidence rather than the target's own quirks
(fidelity.md #7):

    [conv3×3(w) → ReLU → conv3×3(w) → ReLU → maxpool2] ,
    [conv3×3(2w) → ReLU → conv3×3(2w) → ReLU → maxpool2] ,
    flatten → dense(feature_width) → ReLU  = φ(x)  (the KNN feature space)
            → dense(num_classes)           = logits

No BatchNorm, so inference needs no statistics and the same function serves
training and evaluation.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


def to_unit_float(images: jax.Array) -> jax.Array:
  """uint8 [0, 255] → float32 [0, 1]; float input is taken to be in [0, 1] already."""
  if jnp.issubdtype(images.dtype, jnp.integer):
    return images.astype(jnp.float32) / 255.0
  return images.astype(jnp.float32)


class EvaluationCNN(nnx.Module):

  def __init__(self, *, image_shape=(28, 28, 1), num_classes: int = 10, width: int = 32,
               feature_width: int = 128, rngs: nnx.Rngs):
    h, w, c = image_shape
    conv = lambda a, b: nnx.Conv(a, b, kernel_size=(3, 3), padding='SAME', rngs=rngs)
    self.block1 = nnx.List([conv(c, width), conv(width, width)])
    self.block2 = nnx.List([conv(width, 2 * width), conv(2 * width, 2 * width)])
    flat = (h // 4) * (w // 4) * 2 * width
    self.feature = nnx.Linear(flat, feature_width, rngs=rngs)
    self.classifier = nnx.Linear(feature_width, num_classes, rngs=rngs)

  def features(self, images: jax.Array) -> jax.Array:
    """φ(x): the penultimate features. images: uint8 [0, 255] or float [0, 1] NHWC."""
    x = to_unit_float(images) - 0.5  # centred inputs; no dataset statistics, so any image set is judged alike
    for block in (self.block1, self.block2):
      for layer in block:
        x = jax.nn.relu(layer(x))
      x = nnx.max_pool(x, window_shape=(2, 2), strides=(2, 2))
    return jax.nn.relu(self.feature(x.reshape(x.shape[0], -1)))

  def __call__(self, images: jax.Array, *, train: bool = False, key=None) -> jax.Array:
    return self.classifier(self.features(images))

  def activations(self, images: jax.Array, *, train: bool = False, key=None, stop_at: str = 'logits'):
    """The interface :func:`mi_jax.train.step.make_classifier_step` trains through."""
    features = self.features(images)
    return {'features': features, 'logits': self.classifier(features)}
