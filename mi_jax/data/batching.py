"""Deterministic, resumable, sharded batches of host arrays.

* Epoch ``e`` visits the examples in ``np.random.default_rng([seed, e])``'s
  permutation: a pure function of (seed, epoch), so any process, and any
  restart, computes the same order without shared state.
* Global batches have a fixed ``batch_size`` and the last partial batch of
  an epoch is dropped, so every step has the same shape (one compilation).
* A :class:`Position` ``(epoch, step)`` names the next batch; save it with
  a checkpoint and pass it back as ``start`` to resume exactly.
* Each process takes its contiguous slice of every global batch
  (``jax.process_index()`` of ``jax.process_count()``);
  :func:`to_global_array` assembles the slices into one ``jax.Array``
  sharded over the mesh's ``'data'`` axis.

Images stay uint8 on the host; converting to float is the model's job.
"""

from __future__ import annotations

import numbers
from typing import Iterator, NamedTuple, Optional, Sequence

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

DATA_AXIS = 'data'


class Position(NamedTuple):
  """The next batch to produce: ``step`` of ``epoch`` (both from 0)."""

  epoch: int
  step: int


class Batch(NamedTuple):
  """One local batch, where it came from, and where to resume after it."""

  position: Position  # this batch's position
  next_position: Position  # save this after training on the batch
  data: tuple  # this process's slice of each array


def _is_int(value) -> bool:
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
  """Full global batches per epoch (the partial last batch is dropped)."""
  if not _is_int(batch_size) or not 1 <= batch_size <= num_examples:
    raise ValueError(
        f'batch_size must be an integer in [1, {num_examples}] (the number of examples), '
        f'got {batch_size!r}'
    )
  return num_examples // batch_size


def epoch_permutation(num_examples: int, *, seed: int, epoch: int) -> np.ndarray:
  """The order in which epoch ``epoch`` visits the examples."""
  if not _is_int(seed) or seed < 0:
    raise ValueError(f'seed must be an integer >= 0, got {seed!r}')
  if not _is_int(epoch) or epoch < 0:
    raise ValueError(f'epoch must be an integer >= 0, got {epoch!r}')
  return np.random.default_rng([seed, epoch]).permutation(num_examples)


def advance(position: Position, num_steps: int) -> Position:
  """The position after ``position`` in epochs of ``num_steps`` steps."""
  epoch, step = position
  return Position(epoch + 1, 0) if step + 1 >= num_steps else Position(epoch, step + 1)


def _check_position(position, num_steps: int) -> Position:
  ok = len(position) == 2 and all(_is_int(v) for v in position)
  if not ok or position[0] < 0 or not 0 <= position[1] < num_steps:
    raise ValueError(
        f'position must be (epoch >= 0, step in [0, {num_steps})) '
        f'for {num_steps} steps per epoch, got {position!r}'
    )
  return Position(int(position[0]), int(position[1]))


def process_slice(batch_size: int, process_index: int, process_count: int) -> slice:
  """This process's contiguous rows of a global batch."""
  if not _is_int(process_count) or process_count < 1:
    raise ValueError(f'process_count must be an integer >= 1, got {process_count!r}')
  if not _is_int(process_index) or not 0 <= process_index < process_count:
    raise ValueError(
        f'process_index must be an integer in [0, {process_count}), got {process_index!r}'
    )
  if batch_size % process_count:
    raise ValueError(
        f'batch_size {batch_size} must be divisible by the process count {process_count}'
    )
  per_process = batch_size // process_count
  return slice(process_index * per_process, (process_index + 1) * per_process)


def global_batch_indices(
    num_examples: int, batch_size: int, *, seed: int, position: Position
) -> np.ndarray:
  """The example indices of the global batch at ``position``."""
  num_steps = steps_per_epoch(num_examples, batch_size)
  epoch, step = _check_position(position, num_steps)
  order = epoch_permutation(num_examples, seed=seed, epoch=epoch)
  return order[step * batch_size:(step + 1) * batch_size]


def _num_examples(arrays: Sequence[np.ndarray]) -> int:
  sizes = {len(a) for a in arrays}
  if len(arrays) == 0 or len(sizes) != 1:
    lengths = [len(a) for a in arrays]
    raise ValueError(f'arrays must be one or more arrays of one length, got lengths {lengths}')
  return sizes.pop()


def _processes(process_index, process_count) -> tuple[int, int]:
  return (
      jax.process_index() if process_index is None else process_index,
      jax.process_count() if process_count is None else process_count,
  )


def local_batch(
    arrays: Sequence[np.ndarray],
    batch_size: int,
    *,
    seed: int,
    position: Position,
    process_index: Optional[int] = None,
    process_count: Optional[int] = None,
) -> tuple:
  """This process's slice of the global batch at ``position``, of each array."""
  n = _num_examples(arrays)
  index, count = _processes(process_index, process_count)
  rows = global_batch_indices(n, batch_size, seed=seed, position=position)
  rows = rows[process_slice(batch_size, index, count)]
  return tuple(a[rows] for a in arrays)


def batches(
    arrays: Sequence[np.ndarray],
    batch_size: int,
    *,
    seed: int,
    start: Position = Position(0, 0),
    num_epochs: Optional[int] = None,
    process_index: Optional[int] = None,
    process_count: Optional[int] = None,
) -> Iterator[Batch]:
  """Yields :class:`Batch` es from ``start`` on, until ``num_epochs`` (or forever).

  ``batches(..., start=b.next_position)`` continues exactly after batch ``b``.
  """
  n = _num_examples(arrays)
  num_steps = steps_per_epoch(n, batch_size)
  position = _check_position(start, num_steps)
  index, count = _processes(process_index, process_count)
  mine = process_slice(batch_size, index, count)
  order, order_epoch = None, None
  while num_epochs is None or position.epoch < num_epochs:
    if order_epoch != position.epoch:  # one permutation per epoch, not per step
      order, order_epoch = epoch_permutation(n, seed=seed, epoch=position.epoch), position.epoch
    rows = order[position.step * batch_size:(position.step + 1) * batch_size][mine]
    following = advance(position, num_steps)
    yield Batch(position, following, tuple(a[rows] for a in arrays))
    position = following


def make_data_mesh(num_devices: Optional[int] = None) -> jax.sharding.Mesh:
  """A 1-D mesh ``('data',)`` over the first ``num_devices`` devices (default all)."""
  available = jax.device_count()
  n = available if num_devices is None else num_devices
  if not _is_int(n) or not 1 <= n <= available:
    raise ValueError(f'num_devices must be an integer in [1, {available}], got {num_devices!r}')
  # Auto axes: jit's explicit in/out shardings pin the layout, and XLA
  # partitions the rest. Explicit axes would demand out_sharding annotations
  # on every convolution that contracts over the sharded batch (the LCA
  # dictionary gradients), leaking sharding into the pure solver.
  return jax.make_mesh(
      (n,), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,), devices=jax.devices()[:n]
  )


def check_batch_size(batch_size: int, mesh: jax.sharding.Mesh, axis: str = DATA_AXIS) -> None:
  """Raises unless the global ``batch_size`` splits evenly over the mesh's ``axis``."""
  if axis not in mesh.shape:
    raise ValueError(f'axis must be one of the mesh axes {tuple(mesh.shape)}, got {axis!r}')
  devices = mesh.shape[axis]
  if batch_size % devices:
    raise ValueError(
        f'batch_size {batch_size} must be divisible by the {devices} devices '
        f'on the {axis!r} mesh axis'
    )


def to_global_array(local_batch, mesh: jax.sharding.Mesh, axis: str = DATA_AXIS):
  """Assembles every process's local batch (a pytree of arrays) into global arrays.

  The leading axis is sharded over ``axis``; the global batch size is the
  local one times ``jax.process_count()``.
  """
  leaves = jax.tree.leaves(local_batch)
  if not leaves:
    raise ValueError('local_batch must contain at least one array')
  check_batch_size(leaves[0].shape[0] * jax.process_count(), mesh, axis)
  sharding = NamedSharding(mesh, P(axis))
  # dtypes are kept (uint8 images stay uint8), except that int64 becomes
  # int32 unless jax_enable_x64 is on, as for any array handed to JAX.
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)
