"""Target networks of the Sparse-Guard family ("linear networks", SG §2).

    image → preprocess → front (defense layers, may be empty)
          → hidden dense layers (ReLU) → [MID bottleneck] → classifier

The front is the defense's: nothing (NO-DEFENSE), one sparse coding layer
(SPARSE-STANDARD), or [SCL → BatchNorm] × 2 (SPARSE-GUARD). SG uses 5 fully
connected layers end-to-end (4 hidden + classifier) and 3 in the split
setting (2 hidden + classifier).

Named activations (``activations(...)``), in forward order:

* ``'input'``: the preprocessed image (x − mean) / std, NHWC, before the front;
* ``'front'``: the front's output (only when there is a front);
* ``'hidden_1'`` … ``'hidden_L'``: each hidden dense layer after its
  nonlinearity (ReLU, or tanh where a defense bounds it);
* ``'mid_mu'``, ``'mid_std'``, ``'mid_log_std'``, ``'mid_z'``: the MID
  bottleneck, if any (z = μ + σ·ε with a key, z = μ without);
* ``'logits'``.

Leaked layers (what the black-box attacker observes), by name:

* ``'first'`` = ``'hidden_1'``: the first hidden dense layer (split setting);
* ``'last_hidden'``: the classifier's input (end-to-end setting), i.e.
  ``'hidden_L'``, or ``'mid_z'`` when the MID bottleneck sits between the
  last hidden layer and the classifier.

Noise hooks (:class:`NoiseSpec`, per named layer) act on a layer's output
*before* it is recorded: every named activation, the leaks included, is the
value the next layer consumes. So noise on ``'hidden_1'`` is part of
``'first'``, noise on ``'hidden_L'`` is part of ``'last_hidden'``, and noise
on ``'input'`` reaches the leak only through the layers after it. Random
noise is drawn iff ``key`` is given (the train step always passes one; the
attacker's query passes one iff ``config.attack.noise_at_query``); the SG
code's ``train_only`` noise acts iff ``train=True`` (fidelity.md #4).

``width_axis_linear`` reproduces the SG code's MNIST quirk (fidelity.md #6):
its first ``Linear(28, 500)`` acts on the last axis of an NCHW tensor, i.e.
along the image width for every (channel, row), instead of on the flattened
image. The corrected default flattens first.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

LEAKS = ('first', 'last_hidden')
NOISE_KINDS = ('gaussian', 'laplace', 'relative')
# Salt of the MID reparameterisation noise (layers use their depth: input 0,
# hidden_k k), so every stochastic layer gets its own stream from one key.
_MID_SALT = 10_000


@dataclasses.dataclass(frozen=True)
class NoiseSpec:
  """Noise added to one named layer's output.

  * ``'gaussian'``: h + scale·ε, ε ~ N(0, 1);
  * ``'laplace'``: h + ε, ε ~ Laplace(0, scale) (density e^{−|ε|/b} / 2b);
  * ``'relative'``: h + scale·h, the SG code's deterministic "Gaussian" noise
    (its ``GaussianNoise`` multiplies by a constant tensor 1, fidelity.md #4).

  ``train_only``: act only when ``train=True`` (the SG code's layers are off
  in eval mode, so its attacker never sees them); otherwise act whenever a
  key is given. 'relative' needs no key.
  """
  kind: str
  scale: float
  train_only: bool = False

  def __post_init__(self):
    if self.kind not in NOISE_KINDS:
      raise ValueError(f"noise kind must be one of {NOISE_KINDS}, got {self.kind!r}")
    if not self.scale >= 0:
      raise ValueError(f"noise scale must be >= 0, got {self.scale!r}")


def layer_salt(name: str) -> int:
  """Stable integer per layer name for ``fold_in`` ('input' 0, 'hidden_k' k)."""
  if name == 'input':
    return 0
  if name.startswith('hidden_') and name[7:].isdigit():
    return int(name[7:])
  raise ValueError(f"noise layer must be 'input' or 'hidden_<k>', got {name!r}")


def add_noise(h: jax.Array, spec: NoiseSpec, *, train: bool, key) -> jax.Array:
  """``h`` with the noise of ``spec`` (see :class:`NoiseSpec` for when it acts)."""
  if spec.train_only and not train:
    return h
  if spec.kind == 'relative':
    return h + spec.scale * h
  if key is None:
    return h
  if spec.kind == 'gaussian':
    return h + spec.scale * jax.random.normal(key, h.shape, h.dtype)
  return h + spec.scale * jax.random.laplace(key, h.shape, h.dtype)


def _log_softplus(t: jax.Array) -> jax.Array:
  """log(softplus(t)), finite for very negative t (softplus(t) ≈ e^t there)."""
  safe = jnp.where(t < -20.0, 0.0, t)
  return jnp.where(t < -20.0, t, jnp.log(jax.nn.softplus(safe)))


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
      noise: Optional[Mapping[str, NoiseSpec]] = None,
      tanh_layers: Sequence[str] = (),
      bottleneck: Optional[int] = None,
      bottleneck_std_shift: float = 5.0,
      rngs: nnx.Rngs,
  ):
    """``noise``: layer name ('input' or 'hidden_k') → :class:`NoiseSpec`.
    ``tanh_layers``: hidden layers whose ReLU becomes tanh (bounded features).
    ``bottleneck``: width k of a MID variational bottleneck before the
    classifier (None: none); σ = softplus(s − ``bottleneck_std_shift``).
    """
    if len(hidden_widths) < 1:
      raise ValueError(f"hidden_widths must name at least one layer, got {hidden_widths!r}")
    hidden_names = tuple(f'hidden_{i + 1}' for i in range(len(hidden_widths)))
    noise = dict(noise or {})
    for name in noise:
      if name not in ('input', *hidden_names):
        raise ValueError(f"noise layer must be one of {('input', *hidden_names)}, got {name!r}")
    for name in tanh_layers:
      if name not in hidden_names:
        raise ValueError(f"tanh_layers must be among {hidden_names}, got {name!r}")
    if bottleneck is not None and bottleneck < 1:
      raise ValueError(f"bottleneck must be None or >= 1, got {bottleneck!r}")
    self.front = front
    self.mean, self.std = normalization
    self.width_axis_linear = width_axis_linear
    # Static (hashable) so the graphdef, not the state, carries the hooks.
    self.noise = tuple(sorted(noise.items()))
    self.tanh_layers = tuple(tanh_layers)
    self.hidden_names = hidden_names
    self.bottleneck = bottleneck
    self.bottleneck_std_shift = float(bottleneck_std_shift)
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
    if bottleneck is not None:
      # MID (Wang et al. 2021; its code's st_layer): one linear map to the
      # 2k statistics (μ, s) of the posterior q(z | h).
      self.mid = nnx.Linear(sizes[-1], 2 * bottleneck, rngs=rngs)
      self.classifier = nnx.Linear(bottleneck, num_classes, rngs=rngs)
    else:
      self.classifier = nnx.Linear(sizes[-1], num_classes, rngs=rngs)

  def preprocess(self, images: jax.Array) -> jax.Array:
    """uint8 [0, 255] (or float [0, 1]) → (x − mean) / std, float32."""
    x = images.astype(jnp.float32)
    if jnp.issubdtype(images.dtype, jnp.integer):
      x = x / 255.0
    return (x - self.mean) / self.std

  def _activation(self, name: str, z: jax.Array) -> jax.Array:
    return jnp.tanh(z) if name in self.tanh_layers else jax.nn.relu(z)

  def _first_layer(self, x):
    if self.width_axis_linear:
      rows = jnp.transpose(x, (0, 3, 1, 2))  # NCHW, as the SG code sees it
      return self._activation('hidden_1', self.first(rows)).reshape(x.shape[0], -1)
    return self._activation('hidden_1', self.first(x.reshape(x.shape[0], -1)))

  def _hook(self, name: str, h: jax.Array, *, train: bool, key) -> jax.Array:
    for layer, spec in self.noise:
      if layer == name:
        layer_key = None if key is None else jax.random.fold_in(key, layer_salt(name))
        return add_noise(h, spec, train=train, key=layer_key)
    return h

  def _names(self) -> tuple[str, ...]:
    front = ('front',) if self.front is not None else ()
    mid = ('mid_mu', 'mid_std', 'mid_log_std', 'mid_z') if self.bottleneck is not None else ()
    return ('input', *front, *self.hidden_names, *LEAKS, *mid, 'logits')

  def activations(self, images: jax.Array, *, train: bool = False, key=None,
                  stop_at: str = 'logits'):
    """Named activations (see the module docstring) up to ``stop_at``.

    ``key`` is the randomness of stochastic defenses (noise layers, the MID
    bottleneck): given → sampled; None → noise-free (MID: z = μ).
    """
    if stop_at not in self._names():
      raise ValueError(f"stop_at must be one of {self._names()}, got {stop_at!r}")
    x = self._hook('input', self.preprocess(images), train=train, key=key)
    out = {'input': x}
    if stop_at == 'input':
      return out
    if self.front is not None:
      x = self.front(x, train=train)
      out['front'] = x
      if stop_at == 'front':
        return out
    h = self._hook('hidden_1', self._first_layer(x), train=train, key=key)
    out['hidden_1'] = out['first'] = h
    if stop_at in out:
      return out
    for name, layer in zip(self.hidden_names[1:], self.hidden):
      h = self._hook(name, self._activation(name, layer(h)), train=train, key=key)
      out[name] = h
      if stop_at == name:
        return out
    if self.bottleneck is not None:
      k = self.bottleneck
      stats = self.mid(h)
      mu, s = stats[:, :k], stats[:, k:]
      shifted = s - self.bottleneck_std_shift
      std = jax.nn.softplus(shifted)
      out['mid_mu'], out['mid_std'] = mu, std
      out['mid_log_std'] = _log_softplus(shifted)
      if key is None:
        h = mu
      else:
        eps = jax.random.normal(jax.random.fold_in(key, _MID_SALT), mu.shape, mu.dtype)
        h = mu + std * eps
      out['mid_z'] = h
    out['last_hidden'] = h
    if stop_at in out:
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
