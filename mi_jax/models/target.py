"""Target networks of the Sparse-Guard family ("linear networks", SG §2).

    image → preprocess → front (defense layers, may be empty)
          → hidden dense layers (ReLU) → classifier

The front is the defense's: nothing (NO-DEFENSE), one sparse coding layer
(SPARSE-STANDARD), or [SCL → BatchNorm] × 2 (SPARSE-GUARD). SG uses 5 fully
connected layers end-to-end (4 hidden + classifier) and 3 in the split
setting (2 hidden + classifier).

Leaked layers (what the black-box attacker observes), by name:

* ``'first'``: output of the first hidden dense layer (split setting);
* ``'last_hidden'``: output of the last hidden layer before the classifier
  (end-to-end setting).

``width_axis_linear`` reproduces the SG code's MNIST quirk (fidelity.md #6):
its first ``Linear(28, 500)`` acts on the last axis of an NCHW tensor, i.e.
along the image width for every (channel, row), instead of on the flattened
image. The corrected default flattens first.
"""

from __future__ import annotations

from typing import Optional, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

LEAKS = ('first', 'last_hidden')


class TargetNetwork(nnx.Module):
  """A classifier whose intermediate layers can be read by name."""

  def __init__(
      self,
      *,
      image_shape: tuple[int, int, int],
      num_classes: int,
      hidden_widths: Sequence[int],
      front: Optional[nnx.Module] = None,
      front_out_shape: Optional[tuple[int, int, int]] = None,
      normalization: tuple[float, float] = (0.0, 1.0),
      width_axis_linear: bool = False,
      rngs: nnx.Rngs,
  ):
    if len(hidden_widths) < 1:
      raise ValueError(f"hidden_widths must name at least one layer, got {hidden_widths!r}")
    self.front = front
    self.mean, self.std = normalization
    self.width_axis_linear = width_axis_linear
    h, w, c = front_out_shape if front is not None else image_shape
    if width_axis_linear:
      # Linear(W, width) on (N, C, H, W): C·H rows of `width` features each.
      self.first = nnx.Linear(w, hidden_widths[0], rngs=rngs)
      first_size = c * h * hidden_widths[0]
    else:
      self.first = nnx.Linear(h * w * c, hidden_widths[0], rngs=rngs)
      first_size = hidden_widths[0]
    sizes = (first_size, *hidden_widths[1:])
    self.hidden = nnx.List(
        [nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])])
    self.classifier = nnx.Linear(sizes[-1], num_classes, rngs=rngs)

  def preprocess(self, images: jax.Array) -> jax.Array:
    """uint8 [0, 255] (or float [0, 1]) → (x − mean) / std, float32."""
    x = images.astype(jnp.float32)
    if jnp.issubdtype(images.dtype, jnp.integer):
      x = x / 255.0
    return (x - self.mean) / self.std

  def _first_layer(self, x):
    if self.width_axis_linear:
      rows = jnp.transpose(x, (0, 3, 1, 2))  # NCHW, as the SG code sees it
      return jax.nn.relu(self.first(rows)).reshape(x.shape[0], -1)
    return jax.nn.relu(self.first(x.reshape(x.shape[0], -1)))

  def activations(self, images: jax.Array, *, train: bool = False, key=None,
                  stop_at: str = 'logits'):
    """Named activations up to ``stop_at`` ('first', 'last_hidden' or 'logits').

    ``key`` is the randomness of stochastic defenses (noise layers); the
    deterministic ones here ignore it.
    """
    x = self.preprocess(images)
    if self.front is not None:
      x = self.front(x, train=train)
    out = {'first': self._first_layer(x)}
    if stop_at == 'first':
      return out
    h = out['first']
    for layer in self.hidden:
      h = jax.nn.relu(layer(h))
    out['last_hidden'] = h
    if stop_at == 'last_hidden':
      return out
    out['logits'] = self.classifier(h)
    return out

  def __call__(self, images: jax.Array, *, train: bool = False, key=None) -> jax.Array:
    return self.activations(images, train=train, key=key)['logits']

  def leak(self, images: jax.Array, name: str, *, key=None) -> jax.Array:
    """What the attacker observes at layer ``name`` (inference mode)."""
    if name not in LEAKS:
      raise ValueError(f"leak must be one of {LEAKS}, got {name!r}")
    return self.activations(images, train=False, key=key, stop_at=name)[name]
