"""``config.json`` + ``metrics.jsonl`` in the workdir, written by process 0.

A local ``metrics.jsonl`` is appended to; on an object store (gs://…), which
cannot append, each record rewrites the whole object (see
:mod:`mi_jax.utils.storage`): metrics files are small, and every reader
sees whole records.

Disk failures (full, read-only, permission) surface as :class:`StorageError`,
an ``OSError`` whose message is one line naming the path and the cause, so a
command-line entry point can print it instead of a traceback.
"""

from __future__ import annotations

import json
import math
import os
import re

import jax
import numpy as np

from mi_jax.utils import storage


class StorageError(OSError):
  """Writing to (or reading from) the workdir failed; ``str()`` is one line
  with the errno, the cause and the path."""


# TensorStore (under orbax) reports OS failures as ValueErrors that end with
# "[os_error_code='28']"; the code is all a one-line message needs.
_TENSORSTORE_ERRNO = re.compile(r"os_error_code='?(\d+)")


def os_errno(error: BaseException):
  """The errno behind ``error`` (an ``OSError`` or a TensorStore error), following
  ``__cause__``/``__context__``; ``None`` when the failure is not an OS one."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno:
      return error.errno
    found = _TENSORSTORE_ERRNO.search(str(error))
    if found:
      return int(found.group(1))
    error = error.__cause__ or error.__context__
  return None


def storage_error(error: BaseException, doing: str, path: str):
  """``StorageError(errno, "<doing>: <strerror>", path)`` for an OS failure, else ``None``
  (an error that is not the disk's, e.g. a bug, is better re-raised as it is)."""
  code = os_errno(error)
  if code is not None:
    return StorageError(code, f"{doing}: {os.strerror(code)}", path)
  if isinstance(error, OSError):
    return StorageError(f"{doing}: {str(error).splitlines()[0] if str(error) else type(error).__name__}: {path!r}")
  return None


def _plain(value):
  value = np.asarray(value)
  return value.item() if value.ndim == 0 else value.tolist()


def read_records(path: str) -> list[dict]:
  """The records of a ``metrics.jsonl``; a line cut short by a kill (it does not
  parse) is skipped, so readers never fail on a half-written last line."""
  if not storage.isfile(path):
    return []
  records = []
  for line in storage.read_text(path).split('\n'):
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError:
      continue
  return records


class MetricWriter:
  """Appends one JSON line per record: ``{"phase": …, "step": …, …}``.

  A run killed mid-write can leave a partial last line in a local file; it is
  dropped when the next writer opens the file, so new lines never get glued
  onto it. On an object store each record rewrites the whole object
  (read, add the line, write), which leaves no partial line, and writers of
  one file in turn (e.g. a resumed run) never lose each other's records.
  """

  def __init__(self, workdir: str, filename: str = 'metrics.jsonl'):
    self.path = os.path.join(workdir, filename)
    self.local = storage.is_local(self.path)
    self.enabled = jax.process_index() == 0
    if self.enabled:
      try:
        storage.makedirs(workdir)
        if self.local:
          self._drop_partial_last_line()
      except OSError as error:
        raise storage_error(error, 'cannot open the metrics file', self.path) from error

  def _drop_partial_last_line(self) -> None:
    if not os.path.isfile(self.path) or os.path.getsize(self.path) == 0:
      return
    with open(self.path, 'rb+') as f:
      f.seek(-1, os.SEEK_END)
      if f.read(1) == b'\n':
        return
      f.seek(0)
      content = f.read()
      f.seek(content.rfind(b'\n') + 1)  # 0 when the only line is partial
      f.truncate()

  def write(self, phase: str, step: int, measurements: dict) -> None:
    if not self.enabled:
      return
    record = {'phase': phase, 'step': int(step)}
    for key, value in measurements.items():
      value = _plain(value)
      record[key] = None if isinstance(value, float) and not math.isfinite(value) else value
    line = json.dumps(record) + '\n'
    try:
      if self.local:
        with open(self.path, 'a') as f:
          f.write(line)
      else:
        before = storage.read_text(self.path) if storage.exists(self.path) else ''
        storage.write_bytes_atomic(self.path, (before + line).encode('utf-8'), overwrite=True)
    except OSError as error:
      raise storage_error(error, 'cannot write metrics', self.path) from error

  def rewind(self, phase: str, step: int) -> None:
    """Drops the records of ``phase`` after ``step``: a run resumed from the
    checkpoint at ``step`` writes those steps again, and each must appear once.

    The file is rewritten whole (:func:`mi_jax.utils.storage.write_bytes_atomic`),
    so a kill during the rewind leaves either the old or the new file.
    """
    if not self.enabled or not storage.isfile(self.path):
      return
    records = read_records(self.path)
    kept = [r for r in records if not (r.get('phase') == phase and r.get('step', 0) > step)]
    if len(kept) == len(records):
      return
    text = ''.join(json.dumps(r) + '\n' for r in kept)
    try:
      storage.write_bytes_atomic(self.path, text.encode('utf-8'), overwrite=True)
    except OSError as error:
      raise storage_error(error, 'cannot rewrite the metrics file', self.path) from error
