"""Issue 10: a disk that fills or turns read-only mid-run, or a workdir that
cannot be written, ends in one line naming the path and the cause, and
corrupts nothing: a rerun on a healthy disk finishes from what was kept.
(Checkpoints and metrics.jsonl: tests/train/.)"""

import errno
import os

import pytest

from mi_jax.utils import results as results_io
from mi_jax.utils import storage
from tests.hardening import POINTS, run, tiny


def _failing(monkeypatch, code: int, *, when=lambda prefix: True):
  """The atomic writers' temporary files fail with ``code`` (ENOSPC: full; EROFS: read-only)."""
  make = storage.tempfile.mkstemp

  def mkstemp(*args, prefix='', **kwargs):
    if when(prefix):
      raise OSError(code, os.strerror(code))
    return make(*args, prefix=prefix, **kwargs)

  monkeypatch.setattr(storage.tempfile, 'mkstemp', mkstemp)


@pytest.mark.parametrize('code', [errno.ENOSPC, errno.EROFS])
def test_atomic_write_on_a_failing_disk_names_the_path_and_keeps_the_old_file(tmp_path, monkeypatch, code):
  path = tmp_path / 'results.md'
  path.write_text('old table')
  _failing(monkeypatch, code)
  with pytest.raises(OSError) as error:
    results_io.write_text_atomic(path, 'new table', overwrite=True)
  assert error.value.errno == code
  assert str(error.value) == f"[Errno {code}] cannot write: {os.strerror(code)}: '{path}'"
  assert path.read_text() == 'old table' and os.listdir(tmp_path) == ['results.md']


def test_a_write_that_fails_halfway_leaves_no_temporary_file(tmp_path, monkeypatch):
  path = tmp_path / 'row.json'

  def full(fd):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

  monkeypatch.setattr(storage.os, 'fsync', full)
  with pytest.raises(OSError, match=f"No space left on device: '{path}'"):
    results_io.write_json_atomic(path, {'a': 1})
  assert os.listdir(tmp_path) == []


def test_disk_full_while_writing_the_outputs_then_a_rerun_finishes(tmp_path, stand_in_points, monkeypatch):
  """The rows are kept; no results.json marks a finished run; the rerun reuses the points."""
  with monkeypatch.context() as patch:
    _failing(patch, errno.ENOSPC, when=lambda prefix: prefix.startswith('.results.md.'))
    with pytest.raises(OSError) as error:
      run(tiny(), tmp_path)
  assert str(error.value).endswith(f"No space left on device: '{tmp_path / 'results.md'}'")
  assert '\n' not in str(error.value)
  assert not (tmp_path / 'results.json').exists()
  assert all((tmp_path / 'points' / name / 'row.json').exists() for name in POINTS)
  stand_in_points.clear()
  assert len(run(tiny(), tmp_path)) == 2
  assert stand_in_points == [] and (tmp_path / 'results.json').exists()


def test_an_unwritable_workdir_is_one_line_naming_it(tmp_path, stand_in_points):
  (tmp_path / 'file').write_text('not a directory')
  workdir = tmp_path / 'file' / 'run'
  with pytest.raises(OSError) as error:
    run(tiny(), workdir)
  assert error.value.errno == errno.ENOTDIR
  assert str(workdir) in str(error.value) and '\n' not in str(error.value)
  assert stand_in_points == []

