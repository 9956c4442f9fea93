"""A strict reader for the IDX format of MNIST and Fashion-MNIST.

An IDX file is a 4-byte magic number ``00 00 <dtype code> <ndim>``, then
``ndim`` big-endian uint32 dimensions, then the row-major data, big-endian.
Every way a file can be wrong (not IDX, unknown dtype, truncated, trailing
bytes, a shape or dtype other than the one the caller expects) raises a
one-line :class:`ValueError` that names the file, so that a bad download
never surfaces as a numpy reshape error deep inside a loader.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import zlib
from typing import Optional, Sequence

import numpy as np

# dtype code -> big-endian numpy dtype (the IDX spec's full table).
IDX_DTYPES = {
    0x08: np.dtype('>u1'),
    0x09: np.dtype('>i1'),
    0x0B: np.dtype('>i2'),
    0x0C: np.dtype('>i4'),
    0x0D: np.dtype('>f4'),
    0x0E: np.dtype('>f8'),
}
_GZIP_MAGIC = b'\x1f\x8b'


class ChecksumError(ValueError):
  """A file's sha256 is not the pinned one (corrupt, truncated or another version)."""


def sha256_hex(data: bytes) -> str:
  """The sha256 of ``data`` as 64 lowercase hex digits."""
  return hashlib.sha256(data).hexdigest()


def verify_sha256(data: bytes, expected: str, name: str) -> None:
  """Raises :class:`ChecksumError` unless ``sha256(data) == expected``."""
  actual = sha256_hex(data)
  if actual != expected:
    raise ChecksumError(
        f'{name}: sha256 mismatch: expected {expected}, got {actual} '
        f'({len(data)} bytes); the file is corrupt, truncated or not the pinned version'
    )


def parse_idx(
    data: bytes,
    name: str,
    *,
    dtype: Optional[np.dtype] = None,
    shape: Optional[Sequence[Optional[int]]] = None,
) -> np.ndarray:
  """Parses IDX bytes into a native-endian array, checking everything first.

  Args:
    data: the whole (decompressed) file.
    name: the file's name or path, used in error messages.
    dtype: if given, the element dtype the caller requires (e.g. uint8).
    shape: if given, the dimensions the caller requires; ``None`` entries
      match any size (e.g. ``(None, 28, 28)`` for any number of images).

  Returns:
    A writeable C-contiguous array in native byte order.
  """
  size = len(data)
  if size < 4:
    raise ValueError(f'{name}: truncated IDX file: {size} bytes, the magic number alone needs 4')
  if data[:2] == _GZIP_MAGIC:
    raise ValueError(f'{name}: is gzip-compressed; decompress it first (or name it *.gz)')
  if data[0] != 0 or data[1] != 0:
    raise ValueError(
        f'{name}: not an IDX file: magic number {data[:4].hex()} must start with 0000'
    )
  code, ndim = data[2], data[3]
  if code not in IDX_DTYPES:
    allowed = ', '.join(f'0x{c:02x}' for c in IDX_DTYPES)
    raise ValueError(f'{name}: unknown IDX dtype code 0x{code:02x}; allowed: {allowed}')
  if ndim == 0:
    raise ValueError(f'{name}: IDX header has ndim 0; an IDX array needs ndim >= 1')
  header = 4 + 4 * ndim
  if size < header:
    raise ValueError(
        f'{name}: truncated IDX header: ndim {ndim} needs {header} bytes, file has {size}'
    )
  dims = tuple(int(d) for d in np.frombuffer(data, '>u4', count=ndim, offset=4))
  item_dtype = IDX_DTYPES[code]
  _check_expected(name, item_dtype, dims, dtype, shape)
  # Python ints: a hostile header can claim 2**96 bytes without overflowing.
  expected_bytes = header + item_dtype.itemsize * _product(dims)
  if size != expected_bytes:
    what = 'truncated' if size < expected_bytes else 'has trailing bytes'
    raise ValueError(
        f'{name}: {what}: header says shape {dims} {item_dtype.name} = {expected_bytes} bytes '
        f'with the header, file has {size}'
    )
  array = np.frombuffer(data, item_dtype, offset=header).reshape(dims)
  return array.astype(item_dtype.newbyteorder('='), copy=True)


def read_idx(
    path: str | os.PathLike,
    *,
    sha256: Optional[str] = None,
    dtype: Optional[np.dtype] = None,
    shape: Optional[Sequence[Optional[int]]] = None,
) -> np.ndarray:
  """Reads an IDX file (gzip-compressed when its name ends in .gz).

  ``sha256`` pins the *decompressed* bytes: distributors (Debian) rewrite
  gzip headers, so the IDX content is the one thing every copy shares.
  """
  name = os.fspath(path)
  data = read_maybe_gzip(name)
  if sha256 is not None:
    verify_sha256(data, sha256, name)
  return parse_idx(data, name, dtype=dtype, shape=shape)


def read_maybe_gzip(path: str | os.PathLike) -> bytes:
  """The bytes of ``path``, decompressed when it is a gzip file (by magic, not name)."""
  name = os.fspath(path)
  with open(name, 'rb') as f:
    data = f.read()
  if data[:2] != _GZIP_MAGIC:
    return data
  try:
    return gzip.decompress(data)
  except (EOFError, OSError, zlib.error) as error:
    # EOFError: truncated stream; BadGzipFile (an OSError) / zlib.error: corrupt.
    raise ValueError(f'{name}: corrupt or truncated gzip file: {error}') from None


def _check_expected(name, item_dtype, dims, dtype, shape) -> None:
  """Raises unless the header's dtype and dims are the ones the caller expects."""
  if dtype is not None and item_dtype.newbyteorder('=') != np.dtype(dtype).newbyteorder('='):
    raise ValueError(f'{name}: IDX dtype is {item_dtype.name}, expected {np.dtype(dtype).name}')
  if shape is None:
    return
  matches = len(shape) == len(dims) and all(s is None or s == d for s, d in zip(shape, dims))
  if not matches:
    wanted = tuple('any' if s is None else s for s in shape)
    raise ValueError(f'{name}: IDX shape is {dims}, expected {wanted}')


def _product(dims) -> int:
  total = 1
  for d in dims:
    total *= d
  return total
