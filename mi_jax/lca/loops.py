"""Fixed-length iteration with optional O(√n)-memory reverse mode."""

from __future__ import annotations

import math
from typing import Callable, TypeVar

import jax

Carry = TypeVar('Carry')


def iterate(step: Callable[[Carry], Carry], init: Carry, n: int, *, checkpoint: bool) -> Carry:
  """Applies ``step`` n times with ``lax.scan``.

  With ``checkpoint`` the loop is a scan over ⌈√n⌉-step segments, each under
  ``jax.checkpoint``: reverse mode then stores one carry per segment plus the
  carries of the segment being differentiated (O(√n)), recomputing each
  segment's forward pass once.
  """
  plain = lambda c, length: jax.lax.scan(lambda v, _: (step(v), None), c, length=length)[0]
  if not checkpoint or n < 4:
    return plain(init, n)
  segment = math.isqrt(n - 1) + 1  # ⌈√n⌉
  n_segments, remainder = divmod(n, segment)
  run_segment = jax.checkpoint(lambda c: plain(c, segment))
  carry = jax.lax.scan(lambda c, _: (run_segment(c), None), init, length=n_segments)[0]
  return plain(carry, remainder) if remainder else carry


def iterate_recorded(step: Callable[[Carry], Carry], init: Carry, n: int,
                     record: Callable[[Carry], object]) -> tuple[Carry, object]:
  """Applies ``step`` n times; also stacks ``record(carry)`` after each step.

  No checkpointing: the records hold every step anyway.
  """
  def recorded_step(carry, _):
    carry = step(carry)
    return carry, record(carry)

  return jax.lax.scan(recorded_step, init, length=n)
