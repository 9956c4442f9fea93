"""SPARSE-STANDARD and SPARSE-GUARD fronts (SG §2, Teti et al. 2022).

* SPARSE-STANDARD: one sparse coding layer right after the input.
* SPARSE-GUARD: [SCL → BatchNorm] × 2 (SG code: 16 then 28 features for
  MNIST, 5×5 kernels, stride 1, λ ∈ {0.1, 0.25, 0.5, 0.75}, 500 LCA steps).

The dense layers after the front belong to the target network. Dictionary
learning per layer comes from ``defense.dictionary_update`` (a tuple, one
entry per SCL); ``sg_legacy`` forces the SG code's frozen random atoms and
lcapt's per-sample input normalisation (fidelity.md #6).
"""

from __future__ import annotations

from flax import nnx

from mi_jax.models.sparse_coding import SparseCodingLayer


def _layer(cfg, index: int, in_features: int, *, legacy: bool, rngs: nnx.Rngs):
  return SparseCodingLayer(
      in_features,
      cfg.features[index],
      kernel_size=cfg.kernel_size,
      stride=cfg.stride,
      lam=cfg.lam,
      tau=cfg.tau,
      dt=cfg.dt,
      n_steps=cfg.n_steps,
      threshold=cfg.threshold,
      nonneg=cfg.nonneg,
      normalize_input=True if legacy else cfg.normalize_input,
      grad=cfg.grad,
      lateral=cfg.lateral,
      dictionary_update='frozen' if legacy else cfg.dictionary_update[index],
      hebbian_eta=cfg.hebbian_eta,
      rngs=rngs,
  )


def _out_shape(image_shape, cfg, n_layers):
  h, w, _ = image_shape
  for _ in range(n_layers):  # 'same' padding: ⌈H / s⌉
    h, w = -(-h // cfg.stride), -(-w // cfg.stride)
  return (h, w, cfg.features[n_layers - 1])


class SparseStandardFront(nnx.Module):
  """x → SCL."""

  def __init__(self, cfg, image_shape, *, legacy: bool, rngs: nnx.Rngs):
    self.scl = _layer(cfg, 0, image_shape[-1], legacy=legacy, rngs=rngs)
    self.out_shape = _out_shape(image_shape, cfg, 1)

  def __call__(self, x, *, train: bool = False):
    return self.scl(x, train=train)


class SparseGuardFront(nnx.Module):
  """x → SCL → BatchNorm → SCL → BatchNorm."""

  def __init__(self, cfg, image_shape, *, legacy: bool, rngs: nnx.Rngs):
    f1, f2 = cfg.features[0], cfg.features[1]
    self.scl1 = _layer(cfg, 0, image_shape[-1], legacy=legacy, rngs=rngs)
    # torch BatchNorm2d defaults: momentum 0.1 (= flax 0.9), eps 1e-5.
    self.bn1 = nnx.BatchNorm(f1, momentum=0.9, epsilon=1e-5, rngs=rngs)
    self.scl2 = _layer(cfg, 1, f1, legacy=legacy, rngs=rngs)
    self.bn2 = nnx.BatchNorm(f2, momentum=0.9, epsilon=1e-5, rngs=rngs)
    self.out_shape = _out_shape(image_shape, cfg, 2)

  def __call__(self, x, *, train: bool = False):
    x = self.bn1(self.scl1(x, train=train), use_running_average=not train)
    return self.bn2(self.scl2(x, train=train), use_running_average=not train)
