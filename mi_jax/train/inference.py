"""Apply a jitted function to a whole in-memory dataset, batch by batch.

Each global batch is sharded over the mesh's 'data' axis (every process
contributes its contiguous slice), the last batch is padded to full size so
one program serves all batches, and outputs come back to the host in order.
"""

from __future__ import annotations

from typing import Callable

import jax
import numpy as np
from jax.experimental import multihost_utils

from mi_jax.data.batching import process_slice, to_global_array


def apply_in_batches(fn: Callable, arrays, *, batch_size: int, mesh):
  """``fn(*batch)`` over aligned arrays (same length); returns host outputs."""
  n = len(arrays[0])
  mine = process_slice(batch_size, jax.process_index(), jax.process_count())
  outputs = []
  for start in range(0, n, batch_size):
    chunk = [a[start:start + batch_size] for a in arrays]
    valid = len(chunk[0])
    if valid < batch_size:  # pad with copies of the first row: static shapes
      chunk = [np.concatenate([c, np.repeat(c[:1], batch_size - valid, axis=0)]) for c in chunk]
    with jax.set_mesh(mesh):  # per-device layers (shard_map) see the mesh
      result = fn(*to_global_array(tuple(c[mine] for c in chunk), mesh))
    if jax.process_count() > 1:
      result = multihost_utils.process_allgather(result, tiled=True)
    outputs.append(jax.tree.map(lambda r: np.asarray(r)[:valid], result))
  return jax.tree.map(lambda *parts: np.concatenate(parts), *outputs)
