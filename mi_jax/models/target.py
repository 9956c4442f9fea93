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

``row_wise_layers`` reproduces the SG code's architecture (fidelity.md #6,
#14): there every ``Linear`` before the flatten acts on the last axis of an
NCHW tensor, i.e. along the image width for every (channel, row). Its
split networks have one such layer (``Linear(28, 500)``, the leak, a
C×H×500 map) before flattening into the rest; its end-to-end networks apply
all four hidden layers row by row (500, 500, 28, 500, the last one linear)
and flatten only for the classifier, so the end-to-end leak is also a
C×H×500 map. The corrected default (``row_wise_layers=0``) flattens the
image first. Row-wise activations are recorded flattened (N, C·H·width),
channel-major as the SG code's ``view`` flattens them.
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
      row_wise_layers: int = 0,
      noise: Optional[Mapping[str, NoiseSpec]] = None,
      tanh_layers: Sequence[str] = (),
      linear_layers: Sequence[str] = (),
      bottleneck: Optional[int] = None,
      bottleneck_std_shift: float = 5.0,
      rngs: nnx.Rngs,
  ):
    """``noise``: layer name ('input' or 'hidden_k') → :class:`NoiseSpec`.
    ``row_wise_layers``: how many leading hidden layers act along the width
    axis (the SG code's layout, module docstring); 0 flattens first.
    ``tanh_layers``: hidden layers whose ReLU becomes tanh (bounded features).
    ``linear_layers``: hidden layers with no nonlinearity (the SG code's
    last end-to-end hidden layer).
    ``bottleneck``: width k of a MID variational bottleneck before the
    classifier (None: none); σ = softplus(s − ``bottleneck_std_shift``).
    """
    if len(hidden_widths) < 1:
      raise ValueError(f"hidden_widths must name at least one layer, got {hidden_widths!r}")
    if not 0 <= row_wise_layers <= len(hidden_widths):
      raise ValueError(f"row_wise_layers must be in [0, {len(hidden_widths)}] (the hidden layers), "
                       f"got {row_wise_layers!r}")
    hidden_names = tuple(f'hidden_{i + 1}' for i in range(len(hidden_widths)))
    noise = dict(noise or {})
    for name in noise:
      if name not in ('input', *hidden_names):
        raise ValueError(f"noise layer must be one of {('input', *hidden_names)}, got {name!r}")
    for field, names in (('tanh_layers', tanh_layers), ('linear_layers', linear_layers)):
      for name in names:
        if name not in hidden_names:
          raise ValueError(f"{field} must be among {hidden_names}, got {name!r}")
    if bottleneck is not None and bottleneck < 1:
      raise ValueError(f"bottleneck must be None or >= 1, got {bottleneck!r}")
    self.front = front
    self.mean, self.std = normalization
    self.row_wise_layers = row_wise_layers
    self.width_axis_linear = row_wise_layers > 0
    # Static (hashable) so the graphdef, not the state, carries the hooks.
    self.noise = tuple(sorted(noise.items()))
    self.tanh_layers = tuple(tanh_layers)
    self.linear_layers = tuple(linear_layers)
    self.hidden_names = hidden_names
    self.hidden_widths = tuple(int(w) for w in hidden_widths)
    self.bottleneck = bottleneck
    self.bottleneck_std_shift = float(bottleneck_std_shift)
    h, w, c = front_out_shape if front is not None else image_shape
    self.row_grid = (c, h)  # the (channel, row) pairs a row-wise layer maps
    # Input size of each hidden layer: row-wise layers see the last axis of
    # (N, C, H, ·); the first flat layer sees everything flattened.
    in_sizes, row_width = [], w
    for k, width in enumerate(hidden_widths):
      if k < row_wise_layers:
        in_sizes.append(row_width)
        row_width = width
      elif k == row_wise_layers:
        in_sizes.append(c * h * row_width if row_wise_layers else h * w * c)
      else:
        in_sizes.append(hidden_widths[k - 1])
    out_size = c * h * hidden_widths[-1] if row_wise_layers == len(hidden_widths) else hidden_widths[-1]
    self.first = nnx.Linear(in_sizes[0], hidden_widths[0], rngs=rngs)
    self.hidden = nnx.List(
        [nnx.Linear(a, b, rngs=rngs) for a, b in zip(in_sizes[1:], hidden_widths[1:])])
    if bottleneck is not None:
      # MID (Wang et al. 2021; its code's st_layer): one linear map to the
      # 2k statistics (μ, s) of the posterior q(z | h).
      self.mid = nnx.Linear(out_size, 2 * bottleneck, rngs=rngs)
      self.classifier = nnx.Linear(bottleneck, num_classes, rngs=rngs)
    else:
      self.classifier = nnx.Linear(out_size, num_classes, rngs=rngs)

  def preprocess(self, images: jax.Array) -> jax.Array:
    """uint8 [0, 255] (or float [0, 1]) → (x − mean) / std, float32."""
    x = images.astype(jnp.float32)
    if jnp.issubdtype(images.dtype, jnp.integer):
      x = x / 255.0
    return (x - self.mean) / self.std

  def _activation(self, name: str, z: jax.Array) -> jax.Array:
    if name in self.linear_layers:
      return z
    return jnp.tanh(z) if name in self.tanh_layers else jax.nn.relu(z)

  def leak_row_shape(self, name: str):
    """(C, H, width) of a leak computed row-wise, else None (a flat vector)."""
    if name not in LEAKS:
      raise ValueError(f"leak must be one of {LEAKS}, got {name!r}")
    index = 0 if name == 'first' else len(self.hidden_names) - 1
    if index >= self.row_wise_layers or (name == 'last_hidden' and self.bottleneck is not None):
      return None
    return (*self.row_grid, self.hidden_widths[index])

  def stochastic_at_inference(self) -> bool:
    """Whether a query with a key differs from one without (random noise
    hooks that act outside training, or the MID bottleneck)."""
    return self.bottleneck is not None or any(
        spec.kind in ('gaussian', 'laplace') and not spec.train_only for _, spec in self.noise)

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

  def front_codes_are_fixed(self) -> bool:
    """Whether :meth:`front_codes` of an image cannot change while the
    layers after them learn (see ``activations(front_codes=...)``)."""
    input_noise = any(name == 'input' and not spec.train_only for name, spec in self.noise)
    return self.front is not None and self.front.codes_are_fixed() and not input_noise

  def front_codes(self, images: jax.Array) -> jax.Array:
    """The front's sparse codes in inference mode (before the layers after
    its last sparse layer)."""
    return self.front.sparse_codes(self._hook('input', self.preprocess(images), train=False, key=None))

  def activations(self, images: jax.Array, *, train: bool = False, key=None,
                  stop_at: str = 'logits', front_codes=None):
    """Named activations (see the module docstring) up to ``stop_at``.

    ``key`` is the randomness of stochastic defenses (noise layers, the MID
    bottleneck): given → sampled; None → noise-free (MID: z = μ).
    ``front_codes``: :meth:`front_codes` of ``images``, computed earlier;
    the forward then starts after the sparse layers (``images`` unused;
    'input' is not recorded).
    """
    if stop_at not in self._names():
      raise ValueError(f"stop_at must be one of {self._names()}, got {stop_at!r}")
    if front_codes is not None:
      if self.front is None:
        raise ValueError("front_codes were given to a target without a front")
      x = self.front.after_codes(front_codes, train=train)
      out = {'front': x}
    else:
      x = self._hook('input', self.preprocess(images), train=train, key=key)
      out = {'input': x}
      if stop_at == 'input':
        return out
      if self.front is not None:
        x = self.front(x, train=train)
        out['front'] = x
    if stop_at == 'front':
      return out
    n = x.shape[0]
    # Row-wise layers work on (N, C, H, ·), as the SG code's NCHW tensors.
    h = jnp.transpose(x, (0, 3, 1, 2)) if self.row_wise_layers else x.reshape(n, -1)
    for k, (name, layer) in enumerate(zip(self.hidden_names, (self.first, *self.hidden))):
      if self.row_wise_layers and k == self.row_wise_layers:
        h = h.reshape(n, -1)
      h = self._hook(name, self._activation(name, layer(h)), train=train, key=key)
      out[name] = h.reshape(n, -1)
      if k == 0:
        out['first'] = out[name]
      if stop_at in out:
        return out
    h = h.reshape(n, -1)
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

  def leak(self, images: jax.Array, name: str, *, key=None, front_codes=None) -> jax.Array:
    """What the attacker observes at layer ``name`` (inference mode)."""
    if name not in LEAKS:
      raise ValueError(f"leak must be one of {LEAKS}, got {name!r}")
    return self.activations(images, train=False, key=key, stop_at=name, front_codes=front_codes)[name]
