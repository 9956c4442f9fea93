"""The training loop: jitted steps, checkpoints with resume, metrics, NaN guard."""

from __future__ import annotations

from typing import Callable

import jax
import numpy as np

from mi_jax.train.checkpoint import Checkpointer
from mi_jax.utils.metric_writer import MetricWriter
from mi_jax.utils.progress import Progress


class NonFiniteLossError(FloatingPointError):
  """Training produced NaN/inf; the message names the step window."""


def fit(
    *,
    phase: str,
    step_fn: Callable,
    state,
    batch_at: Callable[[int], dict],
    position_at: Callable[[int], dict],
    total_steps: int,
    rng,
    checkpoint_dir: str,
    checkpoint_every: int,
    log_every: int,
    writer: MetricWriter,
):
  """Runs ``state, m = step_fn(state, batch_at(step), rng)`` up to ``total_steps``.

  Resumes from the latest checkpoint in ``checkpoint_dir`` when there is one
  (``batch_at`` must be a pure function of the step for the resumed run to
  equal an uninterrupted one). Measurements are averaged over each logging
  window, checked for NaN/inf, and written to ``metrics.jsonl``.
  """
  checkpointer = Checkpointer(checkpoint_dir)
  start = checkpointer.latest_step() or 0
  if start:
    state, position = checkpointer.restore(start, state)
    expected = position_at(start)
    if position != expected:
      raise RuntimeError(
          f"checkpoint at step {start} in {checkpoint_dir} was written with data position "
          f"{position}, but this run's data gives {expected}; refusing to resume a different run")
    print(f"[{phase}] resumed from step {start} ({checkpoint_dir})", flush=True)
  progress = Progress(phase, total_steps, start=start)
  window, window_start = [], start
  try:
    for step in range(start, total_steps):
      state, measurements = step_fn(state, batch_at(step), rng)
      window.append(measurements)
      done = step + 1
      if done % log_every == 0 or done == total_steps:
        means = {k: float(np.mean([jax.device_get(m[k]) for m in window])) for k in window[0]}
        if not all(np.isfinite(v) for v in means.values()):
          raise NonFiniteLossError(
              f"[{phase}] non-finite measurements {means} between steps {window_start + 1} and {done}")
        writer.write(phase, done, means)
        progress.update(done, ' '.join(f"{k}={v:.4g}" for k, v in means.items()))
        window, window_start = [], done
      if done % checkpoint_every == 0 or done == total_steps:
        checkpointer.save(done, state, position_at(done))
  finally:
    checkpointer.close()
  return state
