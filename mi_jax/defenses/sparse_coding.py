"""SPARSE-STANDARD and SPARSE-GUARD fronts (SG §2, Teti et al. 2022).

* SPARSE-STANDARD: one sparse coding layer right after the input.
* SPARSE-GUARD: [SCL → BatchNorm] × 2 (SG code: 16 then 28 features for
  MNIST, 5×5 kernels, stride 1, λ ∈ {0.1, 0.25, 0.5, 0.75}, 500 LCA steps).

The dense layers after the front belong to the target network. The LCA
settings (λ, τ, steps, features, kernel) live in ``config.defense``.

How the dictionaries learn (fidelity.md #6, #15). The SG text: after each
backpropagation step the sparse layers get a fast (Hebbian) update, "except
for the very first sparse layer", and its footnote 1: backpropagation may
also update the first sparse layer, "We do this in our experiments". So:

* Sparse-Guard: ``defense.dictionary_update`` per layer, default
  ('frozen', 'hebbian') at every scale. Training the first layer by
  backpropagation needs gradients through the second LCA loop as well
  (``defense.grad`` must not be 'stop'), which the paper config does
  (``('gradient', 'hebbian')`` with ``grad='checkpoint'`` is one override
  away) but a CPU run cannot afford.
* Sparse-Standard: its one layer *is* the first sparse layer, which the
  paper's experiments trained by backpropagation, so
  ``defense.sparse_standard.dictionary_update = 'gradient'`` by default, at
  every scale (one small LCA layer is affordable to backprop through on a
  CPU); 'frozen' (the SG code: a fixed random LCA encoder) and 'hebbian' are
  the alternatives.

``sg_legacy`` forces the SG code's frozen random atoms and lcapt's
per-sample input normalisation, and its Sparse-Standard script's extra
``Conv2d(16, 28, 5, padding 2)`` (no activation) after the sparse layer.
"""

from __future__ import annotations

from flax import nnx
from ml_collections import config_dict

from mi_jax.defenses.registry import Defense, Knob, PostStep, register
from mi_jax.lca.solver import LATERALS, SOLVERS
from mi_jax.models.sparse_coding import (DICTIONARY_UPDATES, SCL_GRADS, HebbianBatch, SparseCodingLayer,
                                         apply_dictionary_updates)
from mi_jax.utils import config_rules as rules

THRESHOLDS = ('soft', 'hard')
# 'same' padding (lcapt's) pads k // 2 on each side, which needs an odd kernel.
_KERNEL = rules.Rule(lambda v: rules.integer(low=1).allows(v) and v % 2 == 1,
                     'an odd integer >= 1 (the sparse layers pad k // 2 on each side)')
# The LCA fields both sparse defenses read under ``config.defense`` (they live
# there, not in a block, so ``--config.defense.lam=0.25`` sets λ).
FIELDS = {
    'defense.lam': rules.number(low=0),
    'defense.features': rules.tuple_of(rules.integer(low=1), length=2,
                                       text='two integers >= 1 (the atoms of each sparse layer)'),
    'defense.kernel_size': _KERNEL,
    'defense.stride': rules.integer(low=1),
    'defense.tau': rules.number(above=0),
    'defense.dt': rules.number(above=0),
    'defense.n_steps': rules.integer(low=1),
    'defense.threshold': rules.one_of(THRESHOLDS),
    'defense.nonneg': rules.BOOLEAN,
    'defense.normalize_input': rules.BOOLEAN,
    'defense.dictionary_update': rules.tuple_of(rules.one_of(DICTIONARY_UPDATES), length=2,
                                                text=f'two of {DICTIONARY_UPDATES} (one per sparse layer)'),
    'defense.hebbian_eta': rules.number(low=0),
    'defense.grad': rules.one_of(SCL_GRADS),
    'defense.lateral': rules.one_of(LATERALS),
    'defense.solver': rules.one_of(SOLVERS),
    'defense.tol': rules.optional(rules.number(above=0)),
}


def _layer(cfg, index: int, in_features: int, *, legacy: bool, dictionary_update: str, grad: str,
           rngs: nnx.Rngs):
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
      grad=grad,
      lateral=cfg.lateral,
      dictionary_update='frozen' if legacy else dictionary_update,
      hebbian_eta=cfg.hebbian_eta,
      solver=cfg.solver,
      tol=cfg.tol,
      rngs=rngs,
  )


def _out_shape(image_shape, cfg, n_layers, features):
  h, w, _ = image_shape
  for _ in range(n_layers):  # 'same' padding: ⌈H / s⌉
    h, w = -(-h // cfg.stride), -(-w // cfg.stride)
  return (h, w, features)


def standard_config_block() -> config_dict.ConfigDict:
  """``config.defense.sparse_standard``: how its one dictionary learns."""
  c = config_dict.ConfigDict()
  # SG footnote 1: the paper's experiments update the first sparse layer by
  # backpropagation (module docstring).
  c.dictionary_update = 'gradient'
  # Backprop through the LCA loop: √T checkpointing keeps memory O(√T).
  c.grad = 'checkpoint'
  return c


def validate_standard(config) -> None:
  """One-line ``ValueError`` for a bad ``defense.sparse_standard`` field."""
  _check_solver(config)
  cfg = config.defense.sparse_standard
  rules.check_fields(cfg, {'dictionary_update': rules.one_of(DICTIONARY_UPDATES), 'grad': rules.one_of(SCL_GRADS)},
                     'defense.sparse_standard')
  if cfg.dictionary_update == 'gradient' and cfg.grad == 'stop':
    raise ValueError("defense.sparse_standard.dictionary_update 'gradient' needs defense.sparse_standard.grad "
                     "in ('unroll', 'checkpoint'), got 'stop'")


class _Front(nnx.Module):
  """A front = ``after_codes(sparse_codes(x))``: the split lets an attacker
  that cannot move the sparse layers compute their codes once per image.

  ``TRAINED_AFTER_CODES`` names the submodules after the last sparse layer.
  """

  TRAINED_AFTER_CODES: tuple = ()

  def sparse_layers(self) -> tuple:
    raise NotImplementedError

  def codes_are_fixed(self) -> bool:
    """True when the sparse codes are a fixed function of the input in
    inference mode: frozen dictionaries and no gradient through any LCA
    loop, so nothing upstream of the last sparse layer can learn."""
    return all(layer.grad == 'stop' and layer.dictionary_update == 'frozen' for layer in self.sparse_layers())

  def __call__(self, x, *, train: bool = False):
    return self.after_codes(self.sparse_codes(x, train=train), train=train)


class SparseStandardFront(_Front):
  """x → SCL (→ Conv2d under ``sg_legacy``, as the SG script has it)."""

  TRAINED_AFTER_CODES = ('conv',)

  def __init__(self, cfg, image_shape, *, legacy: bool, rngs: nnx.Rngs):
    block = cfg.sparse_standard
    self.scl = _layer(cfg, 0, image_shape[-1], legacy=legacy, dictionary_update=block.dictionary_update,
                      grad=block.grad, rngs=rngs)
    features = cfg.features[0]
    # The SG Sparse-Standard scripts: LCA(16) → Conv2d(16, 28, 5, 1, 2), no
    # nonlinearity, before the width-axis Linear(28, 500).
    self.conv = nnx.data(nnx.Conv(features, cfg.features[1], (5, 5), padding='SAME', rngs=rngs) if legacy else None)
    if legacy:
      features = cfg.features[1]
    self.out_shape = _out_shape(image_shape, cfg, 1, features)

  def sparse_layers(self) -> tuple:
    return (self.scl,)

  def sparse_codes(self, x, *, train: bool = False):
    return self.scl(x, train=train)

  def after_codes(self, codes, *, train: bool = False):
    del train
    return codes if self.conv is None else self.conv(codes)


class SparseGuardFront(_Front):
  """x → SCL → BatchNorm → SCL → BatchNorm."""

  TRAINED_AFTER_CODES = ('bn2',)

  def __init__(self, cfg, image_shape, *, legacy: bool, rngs: nnx.Rngs):
    f1, f2 = cfg.features[0], cfg.features[1]
    self.scl1 = _layer(cfg, 0, image_shape[-1], legacy=legacy, dictionary_update=cfg.dictionary_update[0],
                       grad=cfg.grad, rngs=rngs)
    # torch BatchNorm2d defaults: momentum 0.1 (= flax 0.9), eps 1e-5.
    # Their statistics are recomputed after training (mi_jax.train.batch_stats).
    self.bn1 = nnx.BatchNorm(f1, momentum=0.9, epsilon=1e-5, rngs=rngs)
    self.scl2 = _layer(cfg, 1, f1, legacy=legacy, dictionary_update=cfg.dictionary_update[1], grad=cfg.grad,
                       rngs=rngs)
    self.bn2 = nnx.BatchNorm(f2, momentum=0.9, epsilon=1e-5, rngs=rngs)
    self.out_shape = _out_shape(image_shape, cfg, 2, f2)

  def sparse_layers(self) -> tuple:
    return (self.scl1, self.scl2)

  def sparse_codes(self, x, *, train: bool = False):
    x = self.bn1(self.scl1(x, train=train), use_running_average=not train)
    return self.scl2(x, train=train)

  def after_codes(self, codes, *, train: bool = False):
    return self.bn2(codes, use_running_average=not train)


def _check_solver(config) -> None:
  if config.defense.tol is not None and config.defense.solver != 'fista':
    raise ValueError(f"defense.tol applies to defense.solver='fista' only (the LCA runs defense.n_steps), "
                     f"got defense.tol={config.defense.tol!r} with defense.solver={config.defense.solver!r}")


def validate_guard(config) -> None:
  """Sparse-Guard's relation between fields (each field has its rule in :data:`FIELDS`)."""
  _check_solver(config)
  if config.defense.grad == 'stop' and 'gradient' in config.defense.dictionary_update:
    raise ValueError("defense.dictionary_update 'gradient' needs defense.grad in ('unroll', 'checkpoint'), got 'stop'")


# The Hebbian (fast) dictionary update after each optimiser step, from the
# batches the sparse layers sowed in the forward pass.
HEBBIAN_POST_STEP = PostStep(collects=HebbianBatch, apply=apply_dictionary_updates)

register(Defense(
    name='sparse-standard',
    summary='one sparse coding (LCA) layer after the input (SG §2)',
    block='sparse_standard', config_block=standard_config_block, validate=validate_standard,
    fields=FIELDS, knob=Knob('lam', 'λ'), front=SparseStandardFront, post_step=HEBBIAN_POST_STEP,
    legacy_script='sparse_standard', sparse_coding=True,
))
register(Defense(
    name='sparse-guard',
    summary='[sparse coding layer → BatchNorm] × 2 (SG §2)',
    validate=validate_guard, fields=FIELDS, knob=Knob('lam', 'λ'), front=SparseGuardFront,
    post_step=HEBBIAN_POST_STEP, legacy_script='sparse_guard', sparse_coding=True,
))
