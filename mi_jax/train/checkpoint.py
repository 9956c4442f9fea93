"""Orbax checkpoints of a train state plus its data position.

The data position is saved next to the state (JSON) so a resumed run draws
exactly the batches an uninterrupted run would have drawn.
"""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp


class Checkpointer:
  """A thin wrapper over ``ocp.CheckpointManager`` for one phase of a run."""

  def __init__(self, directory: str, *, max_to_keep: int = 2):
    self.manager = ocp.CheckpointManager(
        os.path.abspath(directory),
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
    )

  def latest_step(self):
    return self.manager.latest_step()

  def save(self, step: int, state, position: dict) -> None:
    self.manager.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), position=ocp.args.JsonSave(position)
        ),
    )

  def restore(self, step: int, like_state):
    """Restores into the shapes, dtypes and shardings of ``like_state``."""
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

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
