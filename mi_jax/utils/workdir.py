"""The state of an experiment's workdir: one run at a time, and what a resumed run may reuse.

One run at a time: an exclusive lock on ``<workdir>/.lock``.

Two runs writing into one workdir interleave their files (one's
``results.json`` next to the other's table and figures) and trip over each
other's checkpoints. :func:`locked` takes an exclusive ``flock`` on
``<workdir>/.lock`` for the whole run, so a second run fails at once with one
line naming the holder (pid, host, start time, written into the file for
that message).

A lock left by a run that died is never an obstacle: ``flock`` belongs to
the open file, and the kernel releases it when the process exits, however
it exits (``kill -9`` included); the stale pid in the file is then simply
overwritten. The file itself is left in place: deleting it on exit would let
a third run lock a new file while a second still waits on the old one.

Only one process of a multi-process (multi-host) run writes results, so
callers take the lock in process 0 only (``enabled=jax.process_index() == 0``).

An object-store workdir (``gs://…``, see :mod:`mi_jax.utils.storage`) has no
``flock``, so no lock is taken there, silently: one run per object-store
workdir is the user's responsibility, and process 0 is its only writer.

What a resumed run reuses: :func:`check_config` refuses a workdir (or a
point's folder) whose ``config.json`` is another config's, and
:func:`finished_point` returns a finished point's row and figure only when
the row's ``config_hash`` is the point's own; a row copied from another run,
or swapped between two points, is refused with one line naming the file
(delete it to recompute that point). Files that do not parse are refused
the same way, never reused or silently recomputed.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import json
import os
import socket
import sys
import time
import zipfile
from typing import Mapping, Optional, Sequence

import numpy as np

from mi_jax.utils import results as results_io
from mi_jax.utils import storage
from mi_jax.utils.metric_writer import StorageError, storage_error

LOCK_NAME = '.lock'


class WorkdirBusyError(RuntimeError):
  """Another live run holds the workdir; the message names it."""


def _holder() -> str:
  return f"pid {os.getpid()} on {socket.gethostname()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}"


def _read_holder(fd: int) -> str:
  try:
    return os.pread(fd, 1000, 0).decode('utf-8', 'replace').strip()
  except OSError:
    return ''


def _open(workdir: str) -> int:
  """Creates the workdir if needed and opens its lock file; ``StorageError`` (one line) on failure."""
  path = os.path.join(workdir, LOCK_NAME)
  try:
    os.makedirs(workdir, exist_ok=True)
    return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  except OSError as error:
    raise storage_error(error, 'cannot create the workdir or its lock file', path) from error


@contextlib.contextmanager
def locked(workdir: str, *, enabled: bool = True, stream=None):
  """Holds an exclusive lock on ``workdir`` for the ``with`` block.

  Raises :class:`WorkdirBusyError` at once when another process holds it.
  On a filesystem without ``flock`` the run goes ahead unlocked, saying so on
  ``stream`` (stderr). ``enabled=False`` is a no-op (the other processes of a
  multi-process run), and so is an object-store ``workdir`` (module docstring).
  """
  if not enabled or not storage.is_local(workdir):
    yield
    return
  fd = _open(workdir)
  path = os.path.join(workdir, LOCK_NAME)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    holder = _read_holder(fd) or 'holder unknown'
    os.close(fd)
    raise WorkdirBusyError(
        f"{workdir} is in use by another run ({holder}; lock {path}); wait for it to finish "
        "or choose another --workdir") from None
  except OSError as error:
    if error.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
      os.close(fd)
      raise StorageError(error.errno, f"cannot lock the workdir: {os.strerror(error.errno)}", path) from error
    print(f"warning: cannot lock {path} ({os.strerror(error.errno)}); a second run into this workdir "
          "would not be detected", file=stream or sys.stderr, flush=True)
  try:
    try:
      os.ftruncate(fd, 0)
      os.pwrite(fd, (_holder() + '\n').encode(), 0)
    except OSError:
      pass  # the holder's name is only for the other run's message; the lock is what counts
    yield
  finally:
    os.close(fd)  # releases the lock


# --------------------------------------------------------------------------- reuse


def read_json(path: str, *, fix: str):
  """The JSON in ``path``; a one-line ``ValueError`` naming the file (and ``fix``) when it
  does not parse, a :class:`StorageError` when it cannot be read."""
  try:
    return json.loads(storage.read_text(path))
  except (json.JSONDecodeError, UnicodeDecodeError) as error:
    raise ValueError(f"{path} is not valid JSON ({str(error).splitlines()[0]}); {fix}") from None
  except OSError as error:
    raise storage_error(error, 'cannot read', path) from error


def check_config(path: str, expected: dict, *, ignore: Sequence[str] = ()) -> None:
  """Refuses to go on when ``path`` (a ``config.json``) exists and holds another
  config; top-level keys in ``ignore`` may differ."""
  if not storage.exists(path):
    return
  fix = 'resume with the same config or choose a new --workdir'
  drop = lambda config: {k: v for k, v in config.items() if k not in ignore}
  if drop(read_json(path, fix=fix)) != drop(expected):
    raise FileExistsError(f"{os.path.dirname(path)} was started with a different config ({path}); {fix}")


def read_figure(path: str, keys: Sequence[str], *, fix: str) -> dict:
  """The arrays of a ``figure.npz``; one line naming the file when it is unreadable or incomplete."""
  try:
    with np.load(io.BytesIO(storage.read_bytes(path))) as saved:
      figure = {k: saved[k] for k in saved.files}
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
    raise ValueError(f"{path} cannot be read ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}); "
                     f"{fix}") from None
  missing = [k for k in keys if k not in figure]
  if missing:
    raise ValueError(f"{path} lacks the arrays {missing}; {fix}")
  return figure


def finished_point(row_path: str, figure_path: str, *, config_hash: str, figure_keys: Sequence[str],
                   expect: Optional[Mapping] = None) -> Optional[tuple[dict, dict]]:
  """``(row, figure)`` of a finished point, or None when it has not finished (either file missing).

  The row must carry the point's ``config_hash`` (and the values in
  ``expect``, e.g. the attack of a GAN-experiment row, which the point's
  config hash does not tell apart); otherwise one line names the file.
  """
  if not (storage.exists(row_path) and storage.exists(figure_path)):
    return None
  fix = f"delete {os.path.dirname(row_path)}/row.json to recompute the point, or choose a new --workdir"
  row = read_json(row_path, fix=fix)
  if not isinstance(row, dict):
    raise ValueError(f"{row_path} does not hold a result row (a JSON object); {fix}")
  if row.get('config_hash') != config_hash:
    raise FileExistsError(f"{row_path} was computed with another config (config_hash {row.get('config_hash')!r}, "
                          f"this point's is {config_hash!r}); {fix}")
  for key, value in (expect or {}).items():
    if row.get(key) != value:
      raise FileExistsError(f"{row_path} holds {key}={row.get(key)!r}, this point's is {value!r}; {fix}")
  return row, read_figure(figure_path, figure_keys, fix=fix)


def write_final(path: str, obj) -> None:
  """Writes the JSON that marks the workdir finished, refusing to replace one (see
  :func:`mi_jax.utils.results.write_json_atomic`) with a message for the command line."""
  try:
    results_io.write_json_atomic(path, obj)
  except FileExistsError:
    raise FileExistsError(f"{path} was written by another process during this run; this run's rows are in "
                          f"{os.path.dirname(path)}/points; choose a new --workdir to gather them again") from None
