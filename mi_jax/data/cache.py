"""The prepared cache: one .npz per dataset split plus a sha256 manifest.

Layout under a data dir ``D``::

    D/<dataset>/.mi_jax_cache     marker: mi_jax wrote this folder (written first)
    D/<dataset>/<split>.npz       arrays 'images' (uint8 NHWC), 'labels' (int64)
    D/<dataset>/manifest.json     per split: file, shapes, sha256 of each array
    D/<dataset>/raw/              optional raw files the user puts there (read only)

The data dir may be one the user named and holds other things: mi_jax
replaces a file there only when it can tell it wrote it (the marker, or a
valid mi_jax manifest from before the marker existed). Otherwise
:func:`check_writable` refuses with a one-line :class:`DataDirError`
rather than overwrite it. The checksum pins would make the results right
either way; the refusal is about not destroying the user's files.

Every file is written to a temporary name in the same directory and then
``os.replace``-d, so a reader (another process, a crashed run) sees either
the old file or the new one, never half of one. The manifest is written
last, so it only ever points at complete array files.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import pathlib
import tempfile
import zipfile
from typing import Iterable, Mapping, Optional

import numpy as np

from mi_jax.data.idx import ChecksumError

FORMAT_VERSION = 1
DATA_DIR_ENV = 'MI_JAX_DATA_DIR'
DEFAULT_DATA_DIR = '~/.cache/mi_jax/data'
MANIFEST = 'manifest.json'
OWNER_MARK = '.mi_jax_cache'
_OWNER_TEXT = b'Written by mi_jax.data.cache: mi_jax may replace the files of this folder.\n'


class CacheMiss(Exception):
  """The cache does not hold this dataset split (not an error in the data)."""


class DataDirError(ValueError):
  """The data dir cannot take the cache without replacing files mi_jax did not write."""


def resolve_data_dir(data_dir: Optional[str | os.PathLike] = None) -> pathlib.Path:
  """``data_dir``, else ``$MI_JAX_DATA_DIR``, else ``~/.cache/mi_jax/data``."""
  chosen = data_dir if data_dir is not None else os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR
  return pathlib.Path(chosen).expanduser()


def array_sha256(array: np.ndarray) -> str:
  """sha256 of an array's elements, row-major and little-endian (shape not included)."""
  array = np.ascontiguousarray(array)
  if array.dtype.byteorder == '>':
    array = array.astype(array.dtype.newbyteorder('<'))
  return hashlib.sha256(array.reshape(-1).view(np.uint8)).hexdigest()


def dataset_dir(root: pathlib.Path, name: str) -> pathlib.Path:
  return root / name


def manifest_path(root: pathlib.Path, name: str) -> pathlib.Path:
  return dataset_dir(root, name) / MANIFEST


def read_manifest(root: pathlib.Path, name: str) -> dict:
  """The dataset's manifest; :class:`CacheMiss` if absent, ValueError if unreadable."""
  path = manifest_path(root, name)
  try:
    text = path.read_text()
  except (FileNotFoundError, NotADirectoryError):
    raise CacheMiss(f'no cached copy (no {path})') from None
  except OSError as error:
    raise ValueError(f'{path}: unreadable manifest ({error.strerror or error})') from None
  try:
    manifest = json.loads(text)
  except json.JSONDecodeError as error:
    raise ValueError(f'{path}: corrupt manifest: {error}') from None
  if not isinstance(manifest, dict) or manifest.get('format_version') != FORMAT_VERSION:
    version = manifest.get('format_version') if isinstance(manifest, dict) else None
    raise ValueError(f'{path}: format_version must be {FORMAT_VERSION}, got {version!r}')
  return manifest


def read_split(
    root: pathlib.Path,
    name: str,
    split: str,
    *,
    expected: Optional[Mapping[str, str]] = None,
) -> tuple[np.ndarray, np.ndarray]:
  """Reads and verifies one cached split.

  Args:
    root: the data dir.
    name: the dataset name.
    split: the split name.
    expected: optional pinned ``{'images_sha256': ..., 'labels_sha256': ...}``;
      a cache whose arrays differ from the pins (stale, foreign) is rejected
      even when it agrees with its own manifest.

  Raises:
    CacheMiss: the split is not cached.
    ValueError: the cache is there but corrupt (ChecksumError on hashes).
  """
  manifest = read_manifest(root, name)
  entry = manifest.get('splits', {}).get(split)
  if entry is None:
    raise CacheMiss(f'split {split!r} not in {manifest_path(root, name)}')
  path = dataset_dir(root, name) / entry['file']
  images, labels = _load_npz(path)
  for field, array in (('images', images), ('labels', labels)):
    actual = array_sha256(array)
    wanted = entry[f'{field}_sha256']
    if actual != wanted:
      raise ChecksumError(
          f'{path}: {field} sha256 {actual} does not match the manifest ({wanted}); '
          f'the cache is corrupt, re-run prepare'
      )
    pinned = (expected or {}).get(f'{field}_sha256')
    if pinned is not None and actual != pinned:
      raise ChecksumError(
          f'{path}: {field} sha256 {actual} is not the pinned {pinned}; '
          f'the cache is stale or foreign, re-run prepare'
      )
  return images, labels


def _is_ours(root: pathlib.Path, name: str) -> bool:
  """Whether ``root/name`` carries the marker or a valid manifest of ``name`` (mi_jax wrote it)."""
  if (dataset_dir(root, name) / OWNER_MARK).is_file():
    return True
  try:
    return read_manifest(root, name).get('dataset') == name
  except (CacheMiss, ValueError):
    return False


def check_writable(root: pathlib.Path, name: str, splits: Iterable[str]) -> None:
  """Raises :class:`DataDirError` unless caching ``name`` replaces only mi_jax's own files.

  The cache writes ``root/name/{manifest.json, <split>.npz}``. In a folder
  mi_jax did not write (:func:`_is_ours` false) any of those that exists
  belongs to someone else: refused, with the file named. Other files are
  never touched, so they do not matter.
  """
  where = f'data dir {root} (--config.data.dir / --data-dir / ${DATA_DIR_ENV})'
  if root.exists() and not root.is_dir():
    raise DataDirError(f'{where} is not a directory')
  directory = dataset_dir(root, name)
  if directory.exists() and not directory.is_dir():
    raise DataDirError(f'{where}: {directory} is not a directory; move it away or use another data dir')
  if not directory.exists() or _is_ours(root, name):
    return
  for file in (MANIFEST, *(f'{split}.npz' for split in splits)):
    if (directory / file).exists():
      raise DataDirError(
          f'{where}: {directory / file} was not written by mi_jax (no {OWNER_MARK} marker and no '
          f'valid mi_jax manifest in {directory}), so it is left alone; move it away or use '
          f'another data dir'
      )


def write_dataset(
    root: pathlib.Path,
    name: str,
    splits: Mapping[str, tuple[np.ndarray, np.ndarray]],
    *,
    source: str,
) -> pathlib.Path:
  """Caches every split of a dataset atomically; returns the manifest's path.

  Raises :class:`DataDirError` (nothing written) if that would replace a
  file mi_jax did not write. The marker goes first, so a run that dies
  half-way leaves a folder that is still known to be ours.
  """
  check_writable(root, name, splits)
  directory = dataset_dir(root, name)
  directory.mkdir(parents=True, exist_ok=True)
  if not (directory / OWNER_MARK).is_file():
    _atomic_write(directory / OWNER_MARK, lambda f: f.write(_OWNER_TEXT))
  entries = {}
  for split, (images, labels) in splits.items():
    file = f'{split}.npz'
    _atomic_write(
        directory / file,
        lambda f, images=images, labels=labels: np.savez(f, images=images, labels=labels),
    )
    entries[split] = {
        'file': file,
        'num_examples': int(images.shape[0]),
        'images_shape': list(images.shape),
        'images_dtype': images.dtype.name,
        'labels_dtype': labels.dtype.name,
        'images_sha256': array_sha256(images),
        'labels_sha256': array_sha256(labels),
    }
  manifest = {
      'format_version': FORMAT_VERSION,
      'dataset': name,
      'source': source,
      'created_utc': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
      'splits': entries,
  }
  path = manifest_path(root, name)
  text = json.dumps(manifest, indent=2, sort_keys=True) + '\n'
  _atomic_write(path, lambda f: f.write(text.encode()))
  return path


def _load_npz(path: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
  """The images and labels of a cache file; a one-line ValueError if unreadable."""
  try:
    # allow_pickle=False: a cache file must never be able to run code.
    with np.load(path, allow_pickle=False) as npz:
      return npz['images'], npz['labels']
  except FileNotFoundError:
    raise ValueError(f'{path}: listed in the manifest but missing; re-run prepare') from None
  except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
    reason = str(error).splitlines()[0] if str(error) else type(error).__name__
    raise ValueError(f'{path}: unreadable cache file ({reason}); re-run prepare') from None


def _atomic_write(path: pathlib.Path, write) -> None:
  """Calls ``write(binary_file)`` on a temp file, fsyncs it, then renames it onto ``path``."""
  fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.', suffix='.tmp')
  try:
    with os.fdopen(fd, 'wb') as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
    # mkstemp makes 0600 files; a shared data dir needs them world-readable.
    os.chmod(temp, 0o644)
    os.replace(temp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.unlink(temp)
    raise
