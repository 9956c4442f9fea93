"""The loop: kill mid-run, rerun → resumes and ends where an uninterrupted run ends;
NaN guard, corrupt checkpoints, metrics written once, time-based checkpoints."""

import errno
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mi_jax.defenses import build_target
from mi_jax.train import loop
from mi_jax.train.checkpoint import CheckpointRestoreError, Checkpointer
from mi_jax.data import to_global_array
from mi_jax.train.state import init_train_state, make_optimizer, replicated
from mi_jax.defenses.sparse_coding import HEBBIAN_POST_STEP
from mi_jax.train.step import jit_step, make_classifier_step
from mi_jax.utils.metric_writer import MetricWriter, StorageError
from tests.helpers import load_config, mesh_of, synthetic_digits

TOTAL = 6


class Killed(Exception):
  pass


def _train(workdir, *, kill_at=None, make_nan=False, batches_per_epoch=4):
  config = load_config('tiny')
  model = build_target(config, (28, 28, 1), 10, rngs=nnx.Rngs(0))
  tx = make_optimizer(config.train)
  graphdef, state = init_train_state(model, tx)
  mesh = mesh_of(2)
  state = jax.device_put(state, replicated(mesh, state))
  images, labels = synthetic_digits(64)
  if make_nan:
    images = images.astype(np.float32) * np.nan

  def batch_at(step):
    if step == kill_at:
      raise Killed(step)
    order = np.random.default_rng([0, step // 4]).permutation(64)[(step % 4) * 16:(step % 4 + 1) * 16]
    return to_global_array({'image': images[order], 'label': labels[order]}, mesh)

  with jax.set_mesh(mesh):
    return loop.fit(
        phase='target', step_fn=jit_step(make_classifier_step(graphdef, tx, post_step=HEBBIAN_POST_STEP), state, mesh),
        state=state, batch_at=batch_at, position_at=lambda s: {'epoch': s // batches_per_epoch, 'batch': s % batches_per_epoch},
        total_steps=TOTAL, rng=jax.random.key(0), checkpoint_dir=str(workdir / 'ckpt'),
        checkpoint_every=2, log_every=1, writer=MetricWriter(str(workdir)))


def test_resume_after_a_kill_matches_an_uninterrupted_run(tmp_path):
  uninterrupted = jax.device_get(_train(tmp_path / 'a'))
  with pytest.raises(Killed):
    _train(tmp_path / 'b', kill_at=3)  # checkpoints exist for step 2 only
  resumed = jax.device_get(_train(tmp_path / 'b'))
  for a, b in zip(jax.tree.leaves(uninterrupted), jax.tree.leaves(resumed)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-6, atol=1e-7)
  steps = [json.loads(line)['step'] for line in (tmp_path / 'b' / 'metrics.jsonl').read_text().splitlines()]
  assert steps == [1, 2, 3, 4, 5, 6]  # step 3 ran twice (before the kill, after resuming from 2), logged once


def test_a_checkpoint_of_a_different_data_order_is_refused_as_a_restore_error(tmp_path):
  """A checkpoint whose data position disagrees with this run's is another
  run's: the loop refuses it with the storage error the CLI prints as one line."""
  with pytest.raises(Killed):
    _train(tmp_path, kill_at=3)
  with pytest.raises(CheckpointRestoreError, match='data position'):
    _train(tmp_path, batches_per_epoch=2)  # step 2 is epoch 1, batch 0 now


def test_non_finite_loss_stops_at_the_step_that_made_it(tmp_path):
  # NaN images: the loss of the very first step is NaN.
  with pytest.raises(loop.NonFiniteLossError, match=r"non-finite measurements at step 1 \(.*\); no checkpoint"):
    _train(tmp_path, make_nan=True)


# --------------------------------------------------------------------------- a toy run
# A deterministic step on a 4-vector: loss = |w|² (from w before the update, as
# real steps measure), then w ← 0.9 w + x. A NaN in x at step index u - 1 makes
# the state non-finite after update u and the loss non-finite at step u + 1.


@jax.jit
def _toy_step(state, batch, rng):
  del rng
  loss = jnp.sum(state['w'] ** 2)
  return {'w': 0.9 * state['w'] + batch['x'], 'step': state['step'] + 1}, {'loss': loss}


def _toy_state():
  return {'w': jnp.arange(4, dtype=jnp.float32), 'step': jnp.zeros((), jnp.int32)}


def _fit_toy(workdir, *, total, checkpoint_every=None, every_seconds=None, log_every=1, nan_at=None,
             hooks=None, clock=None):
  """``hooks[step]()`` runs when batch ``step`` (0-based) is drawn (it may raise
  Killed); ``clock[0]`` advances by one second per batch drawn."""

  def batch_at(step):
    if hooks and step in hooks:
      hooks[step]()
    if clock is not None:
      clock[0] += 1.0
    value = np.nan if step == nan_at else np.sin(step)
    return {'x': jnp.full((4,), value, jnp.float32)}

  return loop.fit(
      phase='toy', step_fn=_toy_step, state=_toy_state(), batch_at=batch_at,
      position_at=lambda s: {'step': s}, total_steps=total, rng=jax.random.key(0),
      checkpoint_dir=str(workdir / 'ckpt'), checkpoint_every=checkpoint_every,
      checkpoint_every_seconds=every_seconds, log_every=log_every, writer=MetricWriter(str(workdir)))


def _kill():
  raise Killed()


def _assert_same_state(a, b):
  for x, y in zip(jax.tree.leaves(jax.device_get(a)), jax.tree.leaves(jax.device_get(b))):
    np.testing.assert_array_equal(np.asarray(y), np.asarray(x))


def _records(workdir):
  return [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]


def test_a_nan_state_is_never_checkpointed_and_a_rerun_names_the_same_steps(tmp_path, capsys):
  # Issue 10.3: log every 4 steps, save every step; the update of step 3 makes NaN.
  for _ in range(2):  # the run, then a rerun that resumes from the last finite checkpoint
    with pytest.raises(loop.NonFiniteLossError) as failure:
      _fit_toy(tmp_path, total=8, checkpoint_every=1, log_every=4, nan_at=2)
    message = str(failure.value)
    assert '\n' not in message
    assert 'after step 3' in message and 'finite after step 2' in message and 'update of step 3' in message
  assert 'resumed from step 2' in capsys.readouterr().out
  checkpointer = Checkpointer(str(tmp_path / 'ckpt'))
  assert checkpointer.all_steps() == [1, 2]
  for step in checkpointer.all_steps():
    state, _ = checkpointer.restore(step, _toy_state())
    assert np.isfinite(np.asarray(state['w'])).all()
  checkpointer.close()


def test_the_state_check_names_the_window_since_the_last_save(tmp_path):
  # Saves every 3 steps; NaN made by update 5; the measurements of steps 4-6
  # are only fetched at the save of step 6, where the loss of step 6 is NaN.
  with pytest.raises(loop.NonFiniteLossError,
                     match=r"non-finite measurements at step 6 \(loss=nan\); last checkpoint: step 3 \(finite\)"):
    _fit_toy(tmp_path, total=9, checkpoint_every=3, log_every=100, nan_at=4)
  # Saves every 3 steps from 0; NaN made by update 6 (the loss of step 6 is still finite).
  with pytest.raises(loop.NonFiniteLossError,
                     match=r"after step 6 .*finite after step 3, so an update of steps 4-6 produced it"):
    _fit_toy(tmp_path / 'b', total=9, checkpoint_every=3, log_every=100, nan_at=5)


def test_non_finite_measurements_are_checked_step_by_step_not_as_window_means(tmp_path):
  # The update of step 2 makes NaN; the loss of step 3 is the first NaN, found at the log of step 4.
  with pytest.raises(loop.NonFiniteLossError,
                     match=r"non-finite measurements at step 3 \(loss=nan\); no checkpoint written yet"):
    _fit_toy(tmp_path, total=8, checkpoint_every=100, log_every=4, nan_at=1)


def test_a_nan_checkpoint_left_by_an_older_run_is_not_resumed_from(tmp_path, capsys):
  checkpointer = Checkpointer(str(tmp_path / 'ckpt'))
  good = _fit_toy(tmp_path / 'reference', total=2)
  checkpointer.save(2, good, {'step': 2})
  checkpointer.save(3, {'w': jnp.full((4,), jnp.nan), 'step': jnp.asarray(3, jnp.int32)}, {'step': 3})
  checkpointer.close()
  resumed = _fit_toy(tmp_path, total=5)
  captured = capsys.readouterr()
  assert 'resumed from step 2' in captured.out
  assert 'step 3: holds NaN/inf' in captured.err
  _assert_same_state(_fit_toy(tmp_path / 'uninterrupted', total=5), resumed)


def test_a_corrupt_latest_checkpoint_is_skipped_and_the_run_ends_as_an_uninterrupted_one(tmp_path, capsys):
  _fit_toy(tmp_path, total=4, checkpoint_every=1)  # keeps steps 3 and 4
  state_dir = tmp_path / 'ckpt' / '4' / 'state'
  for root, _, files in os.walk(state_dir):
    for name in files:
      open(os.path.join(root, name), 'w').close()  # truncate every file of step 4's state
  resumed = _fit_toy(tmp_path, total=6, checkpoint_every=1)
  captured = capsys.readouterr()
  fallback = [line for line in (captured.out + captured.err).splitlines() if 'falling back' in line]
  assert len(fallback) == 1 and 'step 4' in fallback[0] and 'falling back to step 3' in fallback[0]
  assert 'resumed from step 3' in captured.out
  _assert_same_state(_fit_toy(tmp_path / 'uninterrupted', total=6, checkpoint_every=1), resumed)


def test_metrics_hold_each_step_once_after_a_kill_and_resume(tmp_path):
  MetricWriter(str(tmp_path)).write('other', 9, {'x': 1.0})
  with pytest.raises(Killed):
    _fit_toy(tmp_path, total=6, checkpoint_every=2, hooks={3: _kill})  # logs steps 1-3, checkpoint at 2
  with open(tmp_path / 'metrics.jsonl', 'a') as f:
    f.write('{"phase": "toy", "step": 4, "lo')  # a kill in the middle of a write
  _fit_toy(tmp_path, total=6, checkpoint_every=2)
  records = _records(tmp_path)  # every line parses
  assert [(r['phase'], r['step']) for r in records] == [('other', 9)] + [('toy', s) for s in range(1, 7)]
  _fit_toy(tmp_path / 'uninterrupted', total=6, checkpoint_every=2)
  assert records[1:] == _records(tmp_path / 'uninterrupted')


def test_time_based_checkpoints_resume_like_an_uninterrupted_run(tmp_path, monkeypatch):
  clock = [0.0]  # one second per batch: saves when 2.5 s have passed, i.e. every 3 steps
  monkeypatch.setattr(loop, '_clock', lambda: clock[0])
  with pytest.raises(Killed):
    _fit_toy(tmp_path, total=10, every_seconds=2.5, hooks={7: _kill}, clock=clock)
  checkpointer = Checkpointer(str(tmp_path / 'ckpt'))
  assert checkpointer.all_steps() == [3, 6]
  checkpointer.close()
  resumed = _fit_toy(tmp_path, total=10, every_seconds=2.5, clock=clock)
  _assert_same_state(_fit_toy(tmp_path / 'uninterrupted', total=10, every_seconds=2.5, clock=clock), resumed)


def test_time_and_step_checkpoints_combine(tmp_path, monkeypatch):
  clock, saved = [0.0], []
  monkeypatch.setattr(loop, '_clock', lambda: clock[0])
  save = Checkpointer.save
  monkeypatch.setattr(Checkpointer, 'save', lambda self, step, *a: (saved.append(step), save(self, step, *a)))
  _fit_toy(tmp_path, total=10, checkpoint_every=4, every_seconds=2.5, clock=clock)
  # 3 (2.5 s passed), 4 (every 4 steps: the clock restarts), 7 (3 s since 4), 8, 10 (the end)
  assert saved == [3, 4, 7, 8, 10]


def test_checkpoint_arguments_are_validated(tmp_path):
  with pytest.raises(ValueError, match='checkpoint_every_seconds must be > 0'):
    _fit_toy(tmp_path, total=2, every_seconds=0)
  with pytest.raises(ValueError, match='checkpoint_every must be an integer >= 1 or None'):
    _fit_toy(tmp_path, total=2, checkpoint_every=0)


def test_a_disk_failing_mid_run_ends_fit_with_one_line_naming_the_checkpoint_directory(tmp_path, monkeypatch):
  directory = tmp_path / 'ckpt'

  def break_the_disk():
    if os.geteuid() != 0:
      os.chmod(directory, 0o500)  # read-only: the next save fails with EACCES
    else:  # root writes through chmod; make orbax's directory creation fail as a full disk does
      def full(path, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
      monkeypatch.setattr(os, 'mkdir', full)

  try:
    with pytest.raises(StorageError) as failure:
      _fit_toy(tmp_path, total=6, checkpoint_every=2, hooks={3: break_the_disk})
  finally:
    os.chmod(directory, 0o700)
  message = str(failure.value)
  assert '\n' not in message
  assert 'cannot save checkpoint step 4' in message and str(directory) in message
  assert failure.value.errno in (errno.EACCES, errno.ENOSPC)


def test_with_several_processes_process_0_decides_when_to_save_at_logging_steps(monkeypatch):
  # Orbax saves are collective: every process must take process 0's decision.
  broadcast = []
  monkeypatch.setattr(jax, 'process_count', lambda: 2)
  monkeypatch.setattr(loop.multihost_utils, 'broadcast_one_to_all',
                      lambda due: (broadcast.append(bool(due)), np.bool_(False))[1])
  monkeypatch.setattr(loop, '_clock', lambda: 10.0)
  assert not loop._time_to_save(1.0, 0.0, log_now=False) and broadcast == []  # no collective between logs
  assert not loop._time_to_save(1.0, 0.0, log_now=True) and broadcast == [True]  # this process was due; 0 was not
