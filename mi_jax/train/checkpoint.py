"""Orbax checkpoints of a train state plus its data position.

The data position is saved next to the state (JSON) so a resumed run draws
exactly the batches an uninterrupted run would have drawn.

Saves are synchronous: the states here are small (a save takes ~0.1 s), and
a synchronous save reports a full or read-only disk at the save that hit it,
as one :class:`StorageError`, instead of orbax's background threads logging
the failure again and again before it resurfaces at a later save.
"""

from __future__ import annotations

import logging
import os
import sys

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from mi_jax.utils import storage
from mi_jax.utils.metric_writer import StorageError, os_errno, storage_error


class CheckpointRestoreError(StorageError):
  """A checkpoint (or every checkpoint of a directory) cannot be restored;
  the message is one line naming the directory and the cause."""


@jax.jit
def _all_finite(float_leaves):
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in float_leaves]))


def all_finite(tree) -> bool:
  """Whether every float leaf of ``tree`` is free of NaN/inf: one jitted
  reduction and one scalar copied to the host. Integer and PRNG-key leaves
  cannot hold NaN and are skipped."""
  floats = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
  return bool(_all_finite(floats)) if floats else True


def _cause(error: BaseException, limit: int = 200) -> str:
  """A short one-line cause: the OS error text when there is one, else the
  exception type and its first line, without TensorStore's JSON spec (which
  runs to kilobytes) and, when still long, shortened in the middle: TensorStore
  puts the status first and the actual reason last."""
  code = os_errno(error)
  if code is not None:
    return os.strerror(code)
  first = str(error).strip().splitlines()[0] if str(error).strip() else ''
  first = first.split(' [tensorstore_spec')[0]
  if len(first) > limit:
    first = first[:limit // 4] + ' … ' + first[-(limit - limit // 4):]
  return f"{type(error).__name__}: {first}" if first else type(error).__name__


class _HeldOrbaxErrors(logging.Filter):
  """Holds orbax's error logs while a checkpoint is written or read.

  Orbax's worker threads log each failure with its traceback (a full disk
  gives ~100 lines per save) before the call raises. When the failure is the
  disk's or a corrupt file's, the one-line error raised here says all of it,
  so the held records are dropped (:meth:`drop`); otherwise they are logged
  on exit, as they would have been.
  """

  def __init__(self):
    super().__init__()
    self.records, self.dropped = [], False
    self.logger = logging.getLogger('absl')  # orbax logs through absl.logging

  def filter(self, record):
    if record.levelno >= logging.ERROR and f'{os.sep}orbax{os.sep}' in record.pathname:
      self.records.append(record)
      return False
    return True

  def drop(self):
    self.dropped = True

  def __enter__(self):
    self.logger.addFilter(self)
    return self

  def __exit__(self, *exc_info):
    self.logger.removeFilter(self)
    if not self.dropped:
      for record in self.records:
        self.logger.handle(record)


def _raise_as_storage_error(error: BaseException, doing: str, path: str, held: _HeldOrbaxErrors = None):
  converted = storage_error(error, doing, path)
  if converted is None:
    raise error
  if held is not None:
    held.drop()
  raise converted from error


class Checkpointer:
  """A thin wrapper over ``ocp.CheckpointManager`` for one phase of a run."""

  def __init__(self, directory: str, *, max_to_keep: int = 2):
    # An object-store URL (gs://…) goes to orbax as it is: abspath would make it a local path.
    self.directory = os.path.abspath(directory) if storage.is_local(directory) else os.fspath(directory)
    try:
      self.manager = ocp.CheckpointManager(
          self.directory,
          options=ocp.CheckpointManagerOptions(
              max_to_keep=max_to_keep, create=True, enable_async_checkpointing=False),
      )
    except Exception as error:
      _raise_as_storage_error(error, 'cannot create the checkpoint directory', self.directory)

  def latest_step(self):
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def save(self, step: int, state, position: dict) -> None:
    """Saves ``state`` and ``position`` as ``step``; a disk failure raises
    :class:`StorageError` (errno, cause and directory on one line)."""
    with _HeldOrbaxErrors() as held:
      try:
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), position=ocp.args.JsonSave(position)
            ),
        )
      except Exception as error:
        _raise_as_storage_error(error, f'cannot save checkpoint step {step}', self.directory, held)

  def _restore(self, step: int, like_state):
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), like_state
    )
    restored = self.manager.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), position=ocp.args.JsonRestore()
        ),
    )
    return restored['state'], restored['position']

  def restore(self, step: int, like_state):
    """Restores into the shapes, dtypes and shardings of ``like_state``;
    returns ``(state, position)``. Raises :class:`CheckpointRestoreError`
    (one line) when the step's files are missing, corrupt or do not match."""
    with _HeldOrbaxErrors() as held:
      try:
        return self._restore(step, like_state)
      except Exception as error:
        held.drop()
        raise CheckpointRestoreError(
            f"checkpoint step {step} in {self.directory} cannot be restored ({_cause(error)})") from error

  def restore_latest(self, like_state, *, stream=None):
    """``(step, state, position)`` of the newest usable checkpoint, or ``None``
    when the directory holds none.

    A checkpoint that cannot be restored (corrupt or truncated files) or holds
    NaN/inf is skipped, with one line on ``stream`` (stderr); once an older one restores,
    the skipped ones are deleted, since the resumed run will write those steps
    again (orbax refuses to save over an existing step). When no checkpoint is
    usable, nothing is deleted and :class:`CheckpointRestoreError` names the
    directory and each step's cause on one line.
    """
    skipped = []
    for step in sorted(self.manager.all_steps(), reverse=True):
      with _HeldOrbaxErrors() as held:
        try:
          state, position = self._restore(step, like_state)
        except Exception as error:
          held.drop()  # the cause goes into the one-line report below
          skipped.append((step, _cause(error)))
          continue
      if not all_finite(state):
        skipped.append((step, 'holds NaN/inf'))
        continue
      if skipped:
        for bad, _ in skipped:
          self.manager.delete(bad)
        causes = '; '.join(f"step {bad}: {cause}" for bad, cause in skipped)
        print(f"warning: unusable checkpoint(s) in {self.directory} ({causes}) deleted; "
              f"falling back to step {step}", file=stream or sys.stderr, flush=True)
      return step, state, position
    if skipped:
      causes = '; '.join(f"step {bad}: {cause}" for bad, cause in skipped)
      raise CheckpointRestoreError(f"no usable checkpoint in {self.directory} ({causes})")
    return None

  def close(self) -> None:
    with _HeldOrbaxErrors() as held:
      try:
        self.manager.wait_until_finished()
        self.manager.close()
      except Exception as error:
        _raise_as_storage_error(error, 'cannot finish writing checkpoints', self.directory, held)
