"""The prepared cache: one .npz per dataset split plus a sha256 manifest.

Layout under a data dir ``D``::

    D/<dataset>/<split>.npz       arrays 'images' (uint8 NHWC), 'labels' (int64)
    D/<dataset>/manifest.json     per split: file, shapes, sha256 of each array

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
from typing import Mapping, Optional

import numpy as np

from mi_jax.data.idx import ChecksumError

FORMAT_VERSION = 1
DATA_DIR_ENV = 'MI_JAX_DATA_DIR'
DEFAULT_DATA_DIR = '~/.cache/mi_jax/data'
MANIFEST = 'manifest.json'


class CacheMiss(Exception):
  """The cache does not hold this dataset split (not an error in the data)."""


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
  except FileNotFoundError:
    raise CacheMiss(f'not prepared (no {path})') from None
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


def write_dataset(
    root: pathlib.Path,
    name: str,
    splits: Mapping[str, tuple[np.ndarray, np.ndarray]],
    *,
    source: str,
) -> pathlib.Path:
  """Caches every split of a dataset atomically; returns the manifest's path."""
  directory = dataset_dir(root, name)
  directory.mkdir(parents=True, exist_ok=True)
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
