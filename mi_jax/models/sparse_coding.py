"""The sparse coding layer (SCL): a thin Flax NNX module over ``mi_jax.lca``.

The layer holds one dictionary Ω (HWIO) and returns ``lca.solve(x, Ω)``. How Ω
learns is a configuration, not a different module:

* ``'frozen'``: random unit-norm atoms that never change (the SG code).
* ``'hebbian'``: in training the layer sows the (input, codes) it saw as a
  :class:`HebbianBatch` intermediate; after each optimiser step the train
  step collects it and calls :meth:`SparseCodingLayer.hebbian_step`, lcapt's
  rule (the SG paper's "fast update on the sparse layers"). The train step
  collects the batches with ``nnx.capture``.
* ``'gradient'``: Ω is an ``nnx.Param`` trained by backprop through the
  solver, renormalised after each step (:meth:`project`).

Frozen and Hebbian dictionaries live in :class:`LcaDictionary`, a variable
type that is *not* an ``nnx.Param``, so optimisers and gradients never see
them. Gradients still flow through the codes to the layer's input.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import PartitionSpec as P

from mi_jax import lca
from mi_jax.data.batching import DATA_AXIS
from mi_jax.lca.solver import SOLVERS

DICTIONARY_UPDATES = ('frozen', 'hebbian', 'gradient')
# 'unroll' / 'checkpoint': backprop through the LCA loop (as the SG code's
# autograd does). 'stop': the codes pass no gradient to the layer's input or
# dictionary — a forward-only layer, for machines where the backward pass
# through the loop is unaffordable (XLA:CPU: ~20× the forward).
SCL_GRADS = ('unroll', 'checkpoint', 'stop')


class LcaDictionary(nnx.Variable):
  """A dictionary updated outside backprop (frozen or Hebbian)."""


class HebbianBatch(nnx.Intermediate):
  """The (input, codes) pair the layer saw in its last training call."""


def _per_device(solve, batch: int):
  """``solve`` run by each device on its own slice of the batch, when a mesh
  with a 'data' axis is set (``jax.set_mesh``; the train step and batched
  inference set it) and divides the batch.

  Every sample's sparse code is independent, so no device needs another's
  data inside the LCA loop; but XLA's automatic partitioning of a sharded
  batch through the loop (its FFT and per-frequency products) does not
  always see that: measured on 2 CPU devices, SG layer 2 took 23 ms per image
  sharded by ``jit`` against 14 ms under ``shard_map``. The dictionary is
  replicated; its gradient is summed over the devices by ``shard_map``'s
  transpose.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or DATA_AXIS not in mesh.axis_names:
    return solve
  devices = mesh.shape[DATA_AXIS]
  if devices == 1 or batch % devices:
    return solve
  return jax.shard_map(solve, mesh=mesh, in_specs=(P(DATA_AXIS), P()), out_specs=P(DATA_AXIS))


class SparseCodingLayer(nnx.Module):
  """x (N, H, W, C) → LCA codes (N, H', W', F).

  Attributes mirror :func:`mi_jax.lca.solve`; λ, τ, dt are fixed per layer
  (they are run constants here; sweeps build new models).
  """

  def __init__(
      self,
      in_features: int,
      features: int,
      *,
      kernel_size: int = 5,
      stride: int = 1,
      lam: float,
      tau: float,
      dt: float = 1.0,
      n_steps: int,
      threshold: str = 'soft',
      nonneg: bool = True,
      normalize_input: bool = False,
      grad: str = 'unroll',
      lateral: str = 'auto',
      dictionary_update: str = 'frozen',
      hebbian_eta: float = 0.01,
      solver: str = 'lca',
      tol: Optional[float] = None,
      rngs: nnx.Rngs,
  ):
    """``solver='fista'`` solves the same lasso by FISTA for at most
    ``n_steps`` iterations, stopping once the largest per-sample relative
    code change is below ``tol`` (None: all ``n_steps``); with a ``tol`` its
    gradient is the implicit one (``grad`` 'unroll'/'checkpoint' become
    'implicit': a converged solve is differentiated at its fixed point)."""
    if solver not in SOLVERS:
      raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    if tol is not None and solver != 'fista':
      raise ValueError(f"tol applies to solver='fista' only, got tol={tol!r} with solver={solver!r}")
    if grad not in SCL_GRADS:
      raise ValueError(f"grad must be one of {SCL_GRADS}, got {grad!r}")
    if dictionary_update not in DICTIONARY_UPDATES:
      raise ValueError(
          f"dictionary_update must be one of {DICTIONARY_UPDATES}, got {dictionary_update!r}"
      )
    if dictionary_update == 'gradient' and grad == 'stop':
      raise ValueError("dictionary_update='gradient' needs gradients through the codes: grad must not be 'stop'")
    shape = (kernel_size, kernel_size, in_features, features)
    # lcapt initialises with torch.nn.init.trunc_normal_ (N(0, 1) cut at ±2)
    # and then normalises every atom.
    init = jax.random.truncated_normal(rngs.params(), -2.0, 2.0, shape, jnp.float32)
    variable = nnx.Param if dictionary_update == 'gradient' else LcaDictionary
    self.dictionary = variable(lca.normalize_dictionary(init))
    self.stride = stride
    self.lam, self.tau, self.dt, self.n_steps = lam, tau, dt, n_steps
    self.threshold, self.nonneg = threshold, nonneg
    self.normalize_input, self.grad, self.lateral = normalize_input, grad, lateral
    self.dictionary_update, self.hebbian_eta = dictionary_update, hebbian_eta
    self.solver, self.tol = solver, tol

  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    if self.normalize_input:
      x = lca.normalize_per_sample(x)
    dictionary = self.dictionary[...]
    if self.grad == 'stop':
      x, dictionary = jax.lax.stop_gradient((x, dictionary))
    solve = lambda x, dictionary: lca.solve(
        x,
        dictionary,
        lam=self.lam,
        n_steps=self.n_steps,
        tau=self.tau,
        dt=self.dt,
        stride=self.stride,
        threshold=self.threshold,
        nonneg=self.nonneg,
        solver=self.solver,
        tol=self.tol,
        grad=self._solver_grad(),
        lateral=self._lateral(),
    )
    codes = _per_device(solve, x.shape[0])(x, dictionary)
    if train and self.dictionary_update == 'hebbian':
      batch = jax.lax.stop_gradient((x, codes))
      self.sow(HebbianBatch, 'hebbian_batch', batch, reduce_fn=lambda _, new: new,
               init_fn=lambda: None)
    return codes

  def _solver_grad(self) -> str:
    """The solve's grad mode: behind a stop_gradient any differentiable mode
    does (none runs); a FISTA solve that stops on ``tol`` is differentiable
    only implicitly."""
    if self.solver == 'fista' and self.tol is not None:
      return 'implicit'
    return 'unroll' if self.grad == 'stop' else self.grad

  def _lateral(self) -> str:
    """'auto' chooses by forward cost (mi_jax.lca.solver.auto_lateral); a layer
    that backpropagates through the loop on CPU runs the FFT form, whose
    backward pass is 5-17x faster there than the GEMM form's and over 100x
    faster than the Gram convolution's (benchmarks/lca_bench.py lateral_grad)."""
    if self.lateral == 'auto' and self.grad != 'stop' and jax.default_backend() == 'cpu':
      return 'fft'
    return self.lateral

  def hebbian_step(self, x: jax.Array, codes: jax.Array) -> None:
    """lcapt's Hebbian rule on a batch this layer coded (no-op unless 'hebbian')."""
    if self.dictionary_update != 'hebbian':
      return
    self.dictionary[...], _ = lca.hebbian_update(
        x, codes, self.dictionary[...], eta=self.hebbian_eta, stride=self.stride
    )

  def project(self) -> None:
    """Renormalises a gradient-trained dictionary's atoms to unit norm."""
    if self.dictionary_update == 'gradient':
      self.dictionary[...] = lca.normalize_dictionary(self.dictionary[...])


def apply_dictionary_updates(model: nnx.Module, hebbian_batches) -> None:
  """After an optimiser step: Hebbian updates from the collected batches, then
  renormalisation of gradient-trained dictionaries.

  ``hebbian_batches`` is the pure dict of what ``nnx.capture(…, HebbianBatch)``
  collected in the forward pass:
  nested dicts keyed by module path, ending in ``{'hebbian_batch': (x, a)}``.
  """

  def visit(module, tree):
    for key, value in tree.items():
      if key == 'hebbian_batch':
        module.hebbian_step(*value)
      else:
        visit(getattr(module, key) if not isinstance(key, int) else module[key], value)

  visit(model, hebbian_batches)
  for _, node in nnx.iter_graph(model):
    if isinstance(node, SparseCodingLayer):
      node.project()
