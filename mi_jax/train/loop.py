"""The training loop: jitted steps, checkpoints with resume, metrics, NaN guard."""

from __future__ import annotations

import contextlib
import time
from typing import Callable, Optional

import jax
import numpy as np
from jax.experimental import multihost_utils

from mi_jax.train.checkpoint import CheckpointRestoreError, Checkpointer, all_finite
from mi_jax.utils.metric_writer import MetricWriter
from mi_jax.utils.progress import Progress

# The wall clock of time-based checkpoints (a module attribute so tests can
# drive it deterministically).
_clock = time.monotonic

# Steps allowed in flight before the loop waits for the oldest one. JAX
# dispatches asynchronously, so without a bound hundreds of steps queue up
# between two logging steps; on XLA:CPU with several host devices, a queue
# of steps that all-reduce their gradients deadlocked (one device's half of
# a collective waits for a launch slot held by queued work) and aborted
# after the 40 s rendezvous timeout, in three of three runs of a 2-device
# MLP training script with no logging, and never with the loop waiting on
# every step. Two in flight keeps the host's batch preparation overlapped
# with the device's step.
MAX_STEPS_IN_FLIGHT = 2


class NonFiniteLossError(FloatingPointError):
  """Training produced NaN/inf; the one-line message names the step(s) responsible."""


def _check_arguments(checkpoint_every, checkpoint_every_seconds, log_every):
  if not isinstance(log_every, (int, np.integer)) or log_every < 1:
    raise ValueError(f"log_every must be an integer >= 1, got {log_every!r}")
  if checkpoint_every is not None and (not isinstance(checkpoint_every, (int, np.integer)) or checkpoint_every < 1):
    raise ValueError(f"checkpoint_every must be an integer >= 1 or None, got {checkpoint_every!r}")
  if checkpoint_every_seconds is not None and not checkpoint_every_seconds > 0:
    raise ValueError(f"checkpoint_every_seconds must be > 0 or None, got {checkpoint_every_seconds!r}")


def _time_to_save(every_seconds, last_save_time, log_now: bool) -> bool:
  """Whether ``every_seconds`` have passed since the last save.

  Orbax saves are collective, so every process must decide alike: with several
  processes, process 0's decision is broadcast. The broadcast is a blocking
  collective, so it is made only at logging steps, where the loop waits for
  the device anyway; a single process checks its clock at every step.
  """
  if every_seconds is None:
    return False
  if jax.process_count() == 1:
    return _clock() - last_save_time >= every_seconds
  if not log_now:
    return False
  due = np.bool_(_clock() - last_save_time >= every_seconds)
  return bool(multihost_utils.broadcast_one_to_all(due))


def _is_finite(value) -> bool:
  return bool(np.all(np.isfinite(np.asarray(value))))


def _describe(measurements: dict) -> str:
  def one(value):
    value = np.asarray(value)
    if value.ndim == 0:
      return f"{value.item():.4g}"
    return f"<{value.size} values, {int(np.sum(~np.isfinite(value)))} non-finite>"

  return ', '.join(f"{k}={one(v)}" for k, v in measurements.items())


def _check_measurements(phase, host_measurements, first_step, last_kept):
  """Raises at the first step whose measurements hold NaN/inf (every step is
  checked, not only the window mean)."""
  for offset, measurements in enumerate(host_measurements):
    if not all(_is_finite(v) for v in measurements.values()):
      kept = f"last checkpoint: step {last_kept} (finite)" if last_kept else "no checkpoint written yet"
      raise NonFiniteLossError(
          f"[{phase}] non-finite measurements at step {first_step + offset} "
          f"({_describe(measurements)}); {kept}")


def _check_state(phase, state, done, last_kept):
  """Raises when the state about to be saved as ``done`` holds NaN/inf."""
  if all_finite(state):
    return
  culprit = (f"the update of step {done}" if done == last_kept + 1
             else f"an update of steps {last_kept + 1}-{done}")
  raise NonFiniteLossError(
      f"[{phase}] the train state holds NaN/inf after step {done} (found before saving it; not saved); "
      f"it was finite after step {last_kept}, so {culprit} produced it")


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
    checkpoint_every: Optional[int] = None,
    checkpoint_every_seconds: Optional[float] = None,
    log_every: int,
    writer: MetricWriter,
    stop_when: Optional[Callable[[object], bool]] = None,
    log_state: Optional[Callable[[object], dict]] = None,
):
  """Runs ``state, m = step_fn(state, batch_at(step), rng)`` up to ``total_steps``.

  Early stop: ``stop_when(state) -> bool`` is asked after a resume and at
  every logging step; when it says True the state is saved (if it was not
  just saved) and returned. It must read only the state (e.g. a patience
  counter the step keeps in it), so a resumed run stops where an
  uninterrupted one would. ``log_state(state) -> {name: float}`` adds values
  read from the state at each logging step (not window means; e.g. the
  validation loss an early-stopping step keeps in its state).

  Resume: starts from the newest usable checkpoint in ``checkpoint_dir``
  (``batch_at`` must be a pure function of the step for the resumed run to
  equal an uninterrupted one); a corrupt newest checkpoint is skipped, saying
  so, for the one before it. The records of ``phase`` after the resumed step
  are dropped from ``metrics.jsonl`` first, so replayed steps appear once.
  (A resumed log window starts at the checkpoint, so its mean covers only the
  steps since then.)

  Checkpoints: every ``checkpoint_every`` steps and/or whenever
  ``checkpoint_every_seconds`` of wall time have passed since the last save
  (checked at step boundaries; with several processes, only at logging steps
  and with process 0's clock deciding for all, since saves are collective),
  and always after the last step. With neither, only the last step is saved.

  NaN guard, at no extra host synchronisation per step: the measurements of
  every step are copied to the host at each logging or saving step (where the
  loop waits for the device anyway) and each step is checked, so the error
  names the first step whose measurements are non-finite. Before every save
  the state itself is checked (one jitted reduction over its float leaves); a
  state with NaN/inf is never saved, so the directory only ever holds finite
  checkpoints and a rerun resumes from the last finite one. A NaN made by the
  update of step u is in the state after u, but shows in the measurements of
  step u + 1 (computed from the parameters before their update); the state
  check names the window between the last finite save and the failed one.
  Raises :class:`NonFiniteLossError` with a one-line message.
  """
  _check_arguments(checkpoint_every, checkpoint_every_seconds, log_every)
  checkpointer = Checkpointer(checkpoint_dir)
  try:
    state = _run(phase=phase, step_fn=step_fn, state=state, batch_at=batch_at, position_at=position_at,
                 total_steps=total_steps, rng=rng, checkpointer=checkpointer,
                 checkpoint_every=checkpoint_every, checkpoint_every_seconds=checkpoint_every_seconds,
                 log_every=log_every, writer=writer, stop_when=stop_when, log_state=log_state)
  except BaseException:
    with contextlib.suppress(Exception):  # the original failure is the one to report
      checkpointer.close()
    raise
  checkpointer.close()
  return state


def _resume(phase, state, position_at, checkpointer, writer):
  """``(start, state)``: the newest usable checkpoint's, or 0 and the given state."""
  resumed = checkpointer.restore_latest(state)
  if resumed is None:
    if not all_finite(state):
      raise NonFiniteLossError(f"[{phase}] the initial train state holds NaN/inf")
    start = 0
  else:
    start, state, position = resumed
    expected = position_at(start)
    if position != expected:
      raise CheckpointRestoreError(
          f"checkpoint at step {start} in {checkpointer.directory} was written with data position "
          f"{position}, but this run's data gives {expected}; refusing to resume a different run")
    print(f"[{phase}] resumed from step {start} ({checkpointer.directory})", flush=True)
  writer.rewind(phase, start)
  return start, state


def _run(*, phase, step_fn, state, batch_at, position_at, total_steps, rng, checkpointer, checkpoint_every,
         checkpoint_every_seconds, log_every, writer, stop_when, log_state):
  start, state = _resume(phase, state, position_at, checkpointer, writer)
  if stop_when is not None and start and stop_when(state):
    return state
  progress = Progress(phase, total_steps, start=start)
  unchecked = []  # measurements still on the device, since the last logging/saving step
  window = []  # host measurements of the current logging window
  last_kept, last_save_time = start, _clock()
  for step in range(start, total_steps):
    state, measurements = step_fn(state, batch_at(step), rng)
    unchecked.append(measurements)
    if len(unchecked) >= MAX_STEPS_IN_FLIGHT:
      jax.block_until_ready(unchecked[-MAX_STEPS_IN_FLIGHT])
    done = step + 1
    log_now = done % log_every == 0 or done == total_steps
    save_now = (done == total_steps or (checkpoint_every is not None and done % checkpoint_every == 0)
                or _time_to_save(checkpoint_every_seconds, last_save_time, log_now))
    if not (log_now or save_now):
      continue
    host = jax.device_get(unchecked)
    unchecked = []
    _check_measurements(phase, host, first_step=done - len(host) + 1, last_kept=last_kept)
    window += host
    if log_now:
      means = {k: float(np.mean([np.asarray(m[k]) for m in window])) for k in window[0]}
      if log_state is not None:
        means.update({k: float(v) for k, v in log_state(state).items()})
      writer.write(phase, done, means)
      progress.update(done, ' '.join(f"{k}={v:.4g}" for k, v in means.items()))
      window = []
    stop = log_now and stop_when is not None and done < total_steps and stop_when(state)
    if save_now or stop:
      _check_state(phase, state, done, last_kept)
      checkpointer.save(done, state, position_at(done))
      last_kept, last_save_time = done, _clock()
    if stop:
      print(f"[{phase}] stopped early after step {done}", flush=True)
      break
  return state
