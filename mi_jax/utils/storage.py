"""Where files go: a local path or an object-store URL (``gs://bucket/run``, ``s3://…``).

Every writer of the experiments (rows, results, tables, figures, configs,
metrics, the judge's record) and every existence check or read of a workdir
goes through this module, so ``--workdir=gs://bucket/run`` works wherever a
local ``--workdir`` does. Local paths keep plain ``os`` calls (their
behaviour is what it was); a path with a scheme (``<scheme>://``) goes
through :mod:`etils.epath`. Orbax checkpoints take the same path string
unchanged: orbax reaches gs:// itself (epath and TensorStore's GCS driver).

The rule for a file written whole (:func:`write_bytes_atomic`):

* Local filesystem: a temporary file in the same folder, fsynced, then moved
  in place (``os.replace``; ``os.link`` when an existing file must not be
  clobbered). Readers see the old file or the new one, never half of one,
  and the refusal to overwrite is atomic.
* Object store: there is no rename, so the object is written directly. An
  object store makes an object visible only once its upload completes,
  which gives the same all-or-nothing guarantee per file. The refusal to
  overwrite is an ``exists()`` check before the upload and is not atomic:
  two writers racing for one new name may both succeed, the later one
  winning. Hence one run per object-store workdir is the user's
  responsibility (no lock is taken there, see :mod:`mi_jax.utils.workdir`)
  and process 0 is its only writer; ``results.json`` is still written last,
  so its presence still marks a finished run.
* Object stores cannot append either: ``metrics.jsonl`` is rewritten whole
  at each record there (:class:`mi_jax.utils.metric_writer.MetricWriter`).

gs:// needs ``pip install -e .[gcs]``: ``gcsfs`` (fsspec's GCS filesystem,
which epath uses when TensorFlow is absent) and ``google-cloud-storage``
(orbax asks it about the bucket); s3:// needs ``s3fs``.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path
from typing import Union

from etils import epath

PathLike = Union[str, os.PathLike]
StoredPath = Union[Path, epath.Path]  # what the writers return: pathlib locally, epath on an object store

_SCHEME = re.compile(r'[A-Za-z][A-Za-z0-9+.-]*://')
OBJECT_STORES = ('gs', 's3', 'az')  # the schemes epath writes to


def is_local(p: PathLike) -> bool:
  """Whether ``p`` is on a local (POSIX) filesystem, i.e. has no ``<scheme>://`` prefix."""
  return _SCHEME.match(os.fspath(p)) is None


def path(p: PathLike) -> StoredPath:
  """``p`` as a path object: a ``pathlib.Path`` when local, an ``epath.Path`` otherwise
  (``pathlib`` would fold ``gs://`` into ``gs:/``)."""
  return Path(p) if is_local(p) else epath.Path(p)


@contextlib.contextmanager
def _object_store(p: PathLike):
  """``p`` as an ``epath.Path``, for the ``with`` block; an unknown scheme, and a missing
  backend package (gcsfs, s3fs), as one-line errors naming the path, not tracebacks."""
  scheme = os.fspath(p).split('://', 1)[0]
  if scheme not in OBJECT_STORES:
    raise ValueError(f"{os.fspath(p)!r}: a path must be local or start with one of "
                     f"{tuple(f'{s}://' for s in OBJECT_STORES)}")
  try:
    yield epath.Path(p)
  except ImportError as error:
    from mi_jax.utils.metric_writer import StorageError  # imports JAX; only on this path
    raise StorageError(f"cannot reach the object store: {str(error).splitlines()[0]}: {os.fspath(p)!r}") from error


def exists(p: PathLike) -> bool:
  if is_local(p):
    return os.path.exists(p)
  with _object_store(p) as target:
    return target.exists()


def isfile(p: PathLike) -> bool:
  if is_local(p):
    return os.path.isfile(p)
  with _object_store(p) as target:
    return target.is_file()


def makedirs(p: PathLike) -> None:
  """Creates the folder ``p`` and its parents if missing (on an object store, where
  folders are only name prefixes, whatever the backend does for them)."""
  if is_local(p):
    os.makedirs(p, exist_ok=True)
    return
  with _object_store(p) as target:
    target.mkdir(parents=True, exist_ok=True)


def listdir(p: PathLike) -> list[str]:
  """The names in the folder ``p``."""
  if is_local(p):
    return os.listdir(p)
  with _object_store(p) as target:
    return [child.name for child in target.iterdir()]


def read_bytes(p: PathLike) -> bytes:
  if is_local(p):
    with open(p, 'rb') as f:
      return f.read()
  with _object_store(p) as target:
    return target.read_bytes()


def read_text(p: PathLike) -> str:
  """The UTF-8 text of ``p`` (a ``UnicodeDecodeError`` when it is not UTF-8)."""
  return read_bytes(p).decode('utf-8')


# --------------------------------------------------------------------------- whole-file writes


def _refuse(p: PathLike) -> FileExistsError:
  return FileExistsError(f"{os.fspath(p)} already exists; pass overwrite=True to replace it")


def refuse_existing(p: PathLike, *, overwrite: bool) -> None:
  """``FileExistsError`` when ``p`` exists and not ``overwrite``: a writer that computes
  its content first (a figure, a UMAP) fails before that work, not after it."""
  if not overwrite and exists(p):
    raise _refuse(p)


def write_bytes_atomic(p: PathLike, data: bytes, *, overwrite: bool = False) -> StoredPath:
  """Writes ``data`` to ``p`` all at once or not at all (the module's rule); returns the path.

  Refuses an existing ``p`` unless ``overwrite`` (``FileExistsError``). A
  disk that is full or read-only raises
  :class:`mi_jax.utils.metric_writer.StorageError` (an ``OSError``; one line
  with the cause and the path) and leaves ``p`` as it was; a crash leaves at
  most a stray ``.<name>.*.tmp`` next to a local ``p``.
  """
  if not is_local(p):
    return _write_object(p, data, overwrite=overwrite)
  target = Path(p)
  if not overwrite and target.exists():
    raise _refuse(target)
  if not target.parent.is_dir():
    raise FileNotFoundError(f"directory {target.parent} does not exist; create it first")
  try:
    _write_and_move(target, data, overwrite=overwrite)
  except FileExistsError:
    raise
  except OSError as error:
    raise _cannot_write(error, p) from error
  _fsync_dir(target.parent)
  return target


def _cannot_write(error: OSError, p: PathLike) -> OSError:
  """A full or read-only disk as one line with the cause and the path (the bare
  OSError of a failed write names neither the file nor, often, the path)."""
  from mi_jax.utils.metric_writer import storage_error  # imports JAX; only on this path
  return storage_error(error, 'cannot write', os.fspath(p))


def _write_object(p: PathLike, data: bytes, *, overwrite: bool) -> epath.Path:
  """Uploads ``data`` as one object under its own name: an object store has no rename."""
  with _object_store(p) as target:
    if not overwrite and target.exists():  # not atomic here; see the module docstring
      raise _refuse(p)
    try:
      target.write_bytes(data)
    except OSError as error:
      raise _cannot_write(error, p) from error
  return target


def _write_and_move(target: Path, data: bytes, *, overwrite: bool) -> None:
  tmp = None
  try:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f'.{target.name}.', suffix='.tmp')
    with os.fdopen(fd, 'wb') as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.chmod(tmp, 0o644)  # mkstemp makes 0600; results are meant to be read.
    if overwrite:
      os.replace(tmp, target)
    else:
      try:
        os.link(tmp, target)  # Atomic create-if-absent.
      except FileExistsError:
        raise _refuse(target) from None
      except OSError:
        # Filesystems without hard links: re-check, then rename.
        if target.exists():
          raise _refuse(target) from None
        os.replace(tmp, target)
  finally:
    if tmp is not None and os.path.exists(tmp):
      os.unlink(tmp)


def _fsync_dir(directory: Path) -> None:
  # Makes the rename itself durable; not every platform can open a directory.
  try:
    fd = os.open(directory, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)
