"""Checkpointer and metric writer: corrupt checkpoints, NaN checkpoints, disk errors."""

import errno
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mi_jax.train.checkpoint import CheckpointRestoreError, Checkpointer, _HeldOrbaxErrors, all_finite
from mi_jax.utils.metric_writer import MetricWriter, StorageError, read_records, storage_error


def _state(value):
  return {'w': jnp.full((3, 2), value, jnp.float32), 'step': jnp.asarray(7, jnp.int32)}


def _saved(directory, steps):
  checkpointer = Checkpointer(str(directory), max_to_keep=len(steps))
  for step in steps:
    checkpointer.save(step, _state(step), {'step': step})
  checkpointer.close()


def _truncate_all(step_dir):
  for root, _, files in os.walk(step_dir):
    for name in files:
      open(os.path.join(root, name), 'w').close()


def _scramble_data(step_dir):
  """Overwrites the array data files (those under a ``d`` folder) with bytes of the same size."""
  data = [os.path.join(root, name) for root, _, files in os.walk(step_dir) if os.path.basename(root) == 'd'
          for name in files]
  assert data, f"no array data files under {step_dir}"
  for path in data:
    size = os.path.getsize(path)
    with open(path, 'wb') as f:
      f.write(bytes(np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8)))


def test_all_finite_checks_every_float_leaf_and_skips_integers_and_keys():
  assert all_finite({**_state(1.0), 'key': jax.random.key(0)})
  assert not all_finite({**_state(1.0), 'b': jnp.array([0.0, jnp.inf])})
  assert not all_finite({**_state(1.0), 'b': jnp.array([jnp.nan], jnp.bfloat16)})
  assert all_finite({'step': jnp.int32(3)})


@pytest.mark.parametrize('corrupt', [_truncate_all, _scramble_data])
def test_a_corrupt_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, capsys, corrupt):
  _saved(tmp_path, [2, 3])
  corrupt(tmp_path / '3')
  checkpointer = Checkpointer(str(tmp_path))
  step, state, position = checkpointer.restore_latest(_state(0))
  assert (step, position) == (2, {'step': 2})
  np.testing.assert_array_equal(np.asarray(state['w']), np.full((3, 2), 2.0))
  lines = capsys.readouterr().err.strip().splitlines()
  fallback = [line for line in lines if 'falling back' in line]
  assert len(fallback) == 1 and 'step 3' in fallback[0] and 'falling back to step 2' in fallback[0]
  assert checkpointer.all_steps() == [2]  # step 3 is written again by the resumed run
  checkpointer.close()


def test_no_usable_checkpoint_is_one_line_naming_the_directory_and_deletes_nothing(tmp_path):
  _saved(tmp_path, [2, 3])
  _truncate_all(tmp_path / '2')
  _scramble_data(tmp_path / '3')
  checkpointer = Checkpointer(str(tmp_path))
  with pytest.raises(CheckpointRestoreError) as failure:
    checkpointer.restore_latest(_state(0))
  message = str(failure.value)
  assert isinstance(failure.value, OSError)
  assert '\n' not in message and len(message) < 1000
  assert message.startswith(f"no usable checkpoint in {tmp_path}") and 'step 3' in message and 'step 2' in message
  assert checkpointer.all_steps() == [2, 3]
  checkpointer.close()


def test_restoring_a_named_corrupt_step_is_one_line(tmp_path):
  _saved(tmp_path, [2])
  _scramble_data(tmp_path / '2')
  checkpointer = Checkpointer(str(tmp_path))
  with pytest.raises(CheckpointRestoreError, match=rf"checkpoint step 2 in {tmp_path} cannot be restored") as failure:
    checkpointer.restore(2, _state(0))
  assert '\n' not in str(failure.value)
  checkpointer.close()


def test_a_checkpoint_holding_nan_is_skipped(tmp_path, capsys):
  checkpointer = Checkpointer(str(tmp_path))
  checkpointer.save(1, _state(1), {'step': 1})
  checkpointer.save(2, _state(np.nan), {'step': 2})
  step, _, _ = checkpointer.restore_latest(_state(0))
  assert step == 1 and 'step 2: holds NaN/inf' in capsys.readouterr().err
  checkpointer.close()


def test_an_empty_directory_has_nothing_to_restore(tmp_path):
  checkpointer = Checkpointer(str(tmp_path))
  assert checkpointer.restore_latest(_state(0)) is None
  checkpointer.close()


# --------------------------------------------------------------------------- disk errors
# As root (CI containers), chmod does not stop writes: the read-only-directory
# tests then skip, and the others fail a write for real through /dev/full (a
# device that always answers ENOSPC) or make os.mkdir raise ENOSPC.

_ROOT = os.geteuid() == 0


@pytest.mark.skipif(not os.path.exists('/dev/full'), reason='needs /dev/full')
def test_a_full_disk_stops_the_metric_writer_with_one_line(tmp_path):
  os.symlink('/dev/full', tmp_path / 'metrics.jsonl')
  writer = MetricWriter(str(tmp_path))
  with pytest.raises(StorageError) as failure:
    writer.write('toy', 1, {'loss': 1.0})
  assert failure.value.errno == errno.ENOSPC
  assert '\n' not in str(failure.value) and str(tmp_path / 'metrics.jsonl') in str(failure.value)


@pytest.mark.skipif(_ROOT, reason='root writes through chmod; the /dev/full test covers this path')
def test_a_read_only_workdir_stops_the_metric_writer_with_one_line(tmp_path):
  writer = MetricWriter(str(tmp_path))
  os.chmod(tmp_path, 0o500)
  try:
    with pytest.raises(StorageError) as failure:
      writer.write('toy', 1, {'loss': 1.0})
  finally:
    os.chmod(tmp_path, 0o700)
  assert failure.value.errno == errno.EACCES and '\n' not in str(failure.value)


def test_a_failing_disk_stops_a_save_with_one_line(tmp_path, monkeypatch):
  checkpointer = Checkpointer(str(tmp_path))
  checkpointer.save(1, _state(1), {'step': 1})
  if _ROOT:
    def full(path, *args, **kwargs):
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
    monkeypatch.setattr(os, 'mkdir', full)
  else:
    os.chmod(tmp_path, 0o500)
  try:
    with pytest.raises(StorageError) as failure:
      checkpointer.save(2, _state(2), {'step': 2})
  finally:
    monkeypatch.undo()
    os.chmod(tmp_path, 0o700)
  checkpointer.close()
  message = str(failure.value)
  assert '\n' not in message and f"cannot save checkpoint step 2" in message and str(tmp_path) in message
  assert failure.value.errno == (errno.ENOSPC if _ROOT else errno.EACCES)


def test_orbax_error_logs_are_dropped_when_a_one_line_error_replaces_them(caplog):
  # Orbax's worker threads log a failed write with its traceback (a full disk: ~100 lines per save).
  logger = logging.getLogger('absl')

  def orbax_record(message):
    return logger.makeRecord('absl', logging.ERROR, os.path.join(os.sep, 'site', 'orbax', 'f.py'), 1, message,
                             (), None)

  with _HeldOrbaxErrors() as held:
    logger.handle(orbax_record('replaced by the one-line error'))
    held.drop()
  with _HeldOrbaxErrors():
    logger.handle(orbax_record('not replaced'))
    assert not caplog.records  # held until the call ends
  assert [r.getMessage() for r in caplog.records] == ['not replaced']


def test_tensorstore_os_errors_become_one_line_storage_errors():
  # TensorStore (under orbax) raises ValueErrors whose text ends with the OS error code.
  error = ValueError('RESOURCE_EXHAUSTED: Error writing local file "/x/_sharding": Failed to write 165 bytes '
                     "to file 4: No space left on device [os_error_code='28']")
  converted = storage_error(error, 'cannot save checkpoint step 5', '/x')
  assert converted.errno == errno.ENOSPC
  assert str(converted) == "[Errno 28] cannot save checkpoint step 5: No space left on device: '/x'"
  assert storage_error(ValueError('shape mismatch'), 'saving', '/x') is None  # not the disk: re-raised as is


def test_a_partial_last_line_is_dropped_and_never_breaks_reading(tmp_path):
  path = tmp_path / 'metrics.jsonl'
  path.write_text('{"phase": "a", "step": 1}\n{"phase": "a", "st')
  assert read_records(str(path)) == [{'phase': 'a', 'step': 1}]
  writer = MetricWriter(str(tmp_path))
  writer.write('a', 2, {})
  assert path.read_text() == '{"phase": "a", "step": 1}\n{"phase": "a", "step": 2}\n'


def test_rewind_drops_the_phase_records_after_the_step_only(tmp_path):
  writer = MetricWriter(str(tmp_path))
  for phase, step in [('a', 1), ('b', 5), ('a', 2), ('a', 3)]:
    writer.write(phase, step, {'v': float(step)})
  writer.rewind('a', 1)
  assert [(r['phase'], r['step']) for r in read_records(writer.path)] == [('a', 1), ('b', 5)]
