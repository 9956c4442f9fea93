"""Plug & Play Attacks (Struppek et al. 2022) at MNIST scale.

As the Sparse-Guard code does for MNIST-like data, the image prior is a small
conditional GAN trained on public data (``train_gan(conditional=True)``;
StyleGAN takes its place for faces). For each attacked class y:

1. *Initial selection*: draw ``initial_candidates`` latents (z ~ N(0, I) with a
   random public class label for the conditional generator, kept fixed) and
   keep the ``candidates`` on which the target is most confident of y under
   random transforms (PPA's latent-vector selection).
2. *Optimisation*: Adam (TL App. D.3: lr 0.005, 50 iterations) on z, the
   target seeing a randomly transformed G(z) every iteration (robustness to
   the target's sensitivity to small shifts), with the Poincaré loss

       d(u, v) = arccosh(1 + 2‖u − v‖² / ((1 − ‖u‖²)(1 − ‖v‖²))),
       u = logits / ‖logits‖₁,  v = max(onehot(y) − ξ, 0), ξ = 10⁻⁴

   and z clipped to [−c, c] after every step.
3. *Final selection*: score each optimised candidate by the target's mean
   softmax confidence p_T(y | t(G(z))) over ``selection_transforms`` random
   transforms t and keep the ``final`` highest-scoring per class.

Each candidate's step is Adam on its own loss (the shared loop sums the
per-candidate losses, :mod:`mi_jax.attacks.latent`; PPA's code averages
them, which Adam's per-coordinate normalisation makes equivalent up to ε).

Transforms are a random resized crop (area scale, aspect ratio), a rotation
and an optional horizontal flip, composed into one affine map sampled
bilinearly; PPA's face-scale settings are (0.5–0.9 area, 0.8–1.25 ratio,
flip 0.5); the digit defaults here are milder and never flip (a flipped
digit can be another digit).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from mi_jax.attacks import latent

POINCARE_XI = 1e-4  # PPA's default ξ
DEFAULTS = dict(iterations=50, learning_rate=0.005, clip=3.0, candidates=50, initial_candidates=200, final=5,
                selection_transforms=50)


@dataclasses.dataclass(frozen=True)
class TransformSpec:
  """Random affine transforms: area ``scale`` and aspect ``ratio`` ranges of a
  resized crop, rotation by ±``rotation_degrees`` and a flip with ``flip_prob``."""

  scale: tuple = (0.8, 1.0)
  ratio: tuple = (0.9, 1.1)
  rotation_degrees: float = 10.0
  flip_prob: float = 0.0

  def __post_init__(self):
    if not 0 < self.scale[0] <= self.scale[1] <= 1:
      raise ValueError(f"scale must satisfy 0 < low <= high <= 1, got {self.scale!r}")
    if not 0 < self.ratio[0] <= self.ratio[1]:
      raise ValueError(f"ratio must satisfy 0 < low <= high, got {self.ratio!r}")
    if self.rotation_degrees < 0:
      raise ValueError(f"rotation_degrees must be >= 0, got {self.rotation_degrees!r}")
    if not 0 <= self.flip_prob <= 1:
      raise ValueError(f"flip_prob must be in [0, 1], got {self.flip_prob!r}")


def poincare_loss(logits, labels, *, xi: float = POINCARE_XI):
  """Per-example Poincaré distance between L1-normalised logits and the shrunk one-hot target."""
  u = logits / jnp.sum(jnp.abs(logits), axis=-1, keepdims=True)
  v = jnp.clip(jax.nn.one_hot(labels, logits.shape[-1]) - xi, 0.0, 1.0)
  u2, v2 = jnp.sum(u ** 2, -1), jnp.sum(v ** 2, -1)
  delta = 2.0 * jnp.sum((u - v) ** 2, -1) / ((1.0 - u2) * (1.0 - v2))
  return jnp.arccosh(1.0 + delta)


def _warp(image, matrix, offset):
  """Output pixel p samples the input at matrix @ (p − centre) + centre + offset (bilinear, zero outside)."""
  h, w, c = image.shape
  centre = jnp.array([(h - 1) / 2.0, (w - 1) / 2.0])
  grid = jnp.stack(jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32),
                                indexing='ij'), 0).reshape(2, -1)
  coords = matrix @ (grid - centre[:, None]) + (centre + offset)[:, None]
  channels = [jax.scipy.ndimage.map_coordinates(image[..., k], list(coords), order=1, mode='constant', cval=0.0)
              for k in range(c)]
  return jnp.stack(channels, -1).reshape(h, w, c)


def random_transform(images, key, spec: TransformSpec):
  """One random affine transform per image (see :class:`TransformSpec`); differentiable in ``images``."""
  n, h, w, _ = images.shape
  keys = jax.random.split(key, 6)
  area = jax.random.uniform(keys[0], (n,), minval=spec.scale[0], maxval=spec.scale[1])
  log_ratio = jax.random.uniform(keys[1], (n,), minval=math.log(spec.ratio[0]), maxval=math.log(spec.ratio[1]))
  ratio = jnp.exp(log_ratio)
  # torchvision's crop: width = √(area·ratio), height = √(area/ratio), as fractions of the image.
  sy = jnp.minimum(jnp.sqrt(area / ratio), 1.0)
  sx = jnp.minimum(jnp.sqrt(area * ratio), 1.0)
  ty = (jax.random.uniform(keys[2], (n,)) - 0.5) * (1.0 - sy) * (h - 1)
  tx = (jax.random.uniform(keys[3], (n,)) - 0.5) * (1.0 - sx) * (w - 1)
  theta = jnp.deg2rad(jax.random.uniform(keys[4], (n,), minval=-spec.rotation_degrees, maxval=spec.rotation_degrees))
  flip = jnp.where(jax.random.uniform(keys[5], (n,)) < spec.flip_prob, -1.0, 1.0)
  cos, sin = jnp.cos(theta), jnp.sin(theta)
  rotation = jnp.stack([jnp.stack([cos, -sin], -1), jnp.stack([sin, cos], -1)], -2)  # (n, 2, 2)
  scale = jax.vmap(jnp.diag)(jnp.stack([sy, sx * flip], -1))
  matrix = rotation @ scale
  return jax.vmap(_warp)(images, matrix, jnp.stack([ty, tx], -1))


def transformed_confidence(target: Callable, images, labels, key, *, spec: TransformSpec, num: int):
  """Mean over ``num`` random transforms of p_T(y | t(x)) per image."""
  def one(i):
    probs = jax.nn.softmax(target(random_transform(images, jax.random.fold_in(key, i), spec)))
    return jnp.take_along_axis(probs, labels[:, None], -1)[:, 0]
  return jnp.mean(jax.lax.map(one, jnp.arange(num)), 0)


def select_candidates(scores, labels, k: int) -> np.ndarray:
  """Indices of the ``k`` highest ``scores`` within each label (classes in order of first appearance)."""
  scores, labels = np.asarray(scores), np.asarray(labels)
  chosen = []
  for y in dict.fromkeys(labels.tolist()):
    rows = np.flatnonzero(labels == y)
    if k > len(rows):
      raise ValueError(f"k must be <= the {len(rows)} candidates of class {y}, got {k!r}")
    chosen.append(rows[np.argsort(-scores[rows], kind='stable')[:k]])
  return np.concatenate(chosen)


def ppa_attack(
    *,
    target: Callable,
    generator: Callable,
    classes,
    latent_dim: int,
    generator_classes: int,
    mesh,
    key,
    candidates: int = DEFAULTS['candidates'],
    initial_candidates: int = DEFAULTS['initial_candidates'],
    final: int = DEFAULTS['final'],
    iterations: int = DEFAULTS['iterations'],
    learning_rate: float = DEFAULTS['learning_rate'],
    clip: Optional[float] = DEFAULTS['clip'],
    selection_transforms: int = DEFAULTS['selection_transforms'],
    transform: TransformSpec = TransformSpec(),
    log_every: int = 10,
    writer=None,
) -> latent.AttackResult:
  """PPA on each of ``classes``; returns the ``final`` selected reconstructions per class.

  ``generator(z, generator_labels) -> images`` is a conditional generator
  over ``generator_classes`` public classes (0: unconditional, labels ignored).
  """
  if not 1 <= final <= candidates <= initial_candidates:
    raise ValueError(f"need 1 <= final <= candidates <= initial_candidates, got {final}, {candidates}, {initial_candidates}")
  init_key, label_key, score_key, run_key, final_key = jax.random.split(key, 5)
  labels0 = latent.class_attack_labels(classes, initial_candidates)
  z0 = np.asarray(jax.random.normal(init_key, (len(labels0), latent_dim)))
  g_labels0 = (np.asarray(jax.random.randint(label_key, (len(labels0),), 0, generator_classes))
               if generator_classes else np.zeros(len(labels0), np.int32))
  project = latent.clip_latents(clip)
  z0 = np.asarray(project(jnp.asarray(z0)))
  gen = (lambda z, g: generator(z, g)) if generator_classes else (lambda z, g: generator(z))

  def confidence(key_, num):
    return lambda rows: transformed_confidence(target, gen(rows['z'], rows['g']), rows['y'], key_,
                                               spec=transform, num=num)

  scores0 = latent.apply_rows(confidence(score_key, max(1, selection_transforms // 5)),
                              {'z': z0, 'g': g_labels0, 'y': labels0}, mesh=mesh)
  keep = select_candidates(scores0, labels0, candidates)
  labels, g_labels = labels0[keep], g_labels0[keep]

  def loss_fn(z, y, g, step_key):
    return poincare_loss(target(random_transform(gen(z, g), step_key, transform)), y)

  result = latent.optimize_latents(
      loss_fn=loss_fn, init=z0[keep], labels=labels, extras=g_labels,
      tx=latent.make_optimizer(name='adam', learning_rate=learning_rate), iterations=iterations, mesh=mesh,
      key=run_key, project=project, log_every=log_every, writer=writer, phase='ppa')
  rows = {'z': result.latents, 'g': g_labels, 'y': labels}
  scores = latent.apply_rows(confidence(final_key, selection_transforms), rows, mesh=mesh)
  best = select_candidates(scores, labels, final)
  generate = lambda rows: latent.apply_rows(lambda r: gen(r['z'], r['generator_label']), rows,
                                           mesh=mesh).astype(np.float32)
  final_latents = {'z': result.latents[best], 'generator_label': g_labels[best]}
  # Baseline: the first `final` initial candidates of each class, prior draws
  # before any target-guided step (selection or optimisation).
  first = np.concatenate([np.flatnonzero(labels0 == c)[:final] for c in dict.fromkeys(labels0.tolist())])
  initial_latents = {'z': z0[first], 'generator_label': g_labels0[first]}
  return latent.AttackResult(generate(final_latents), labels[best], final_latents, result.losses,
                             initial_images=generate(initial_latents), initial_latents=initial_latents)
