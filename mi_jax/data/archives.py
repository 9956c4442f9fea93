"""Pinned raw archives and the two routes that reach them: a file in the data dir, or a download.

Datasets whose raw format is not IDX (CIFAR-10's pickle tarball, MedMNIST's
npz, Medical MNIST's JPEG tree, CelebA's images and lists) name their raw
files as :class:`PinnedFile` objects: a file name, where it is published,
and the checksum that pins it, either our own sha256 or the checksum the
official source publishes (``md5`` for MedMNIST and CelebA, whose sites
publish nothing else). A dataset's ``reader`` turns the verified files into
``{split: (images uint8 NHWC, labels int64)}``.

Two routes, tried in this order by every spec here:

* :class:`RawFilesRoute`: the files the user put in ``<data dir>/<raw>/raw``
  (``<raw>`` is the dataset's name unless several specs share one raw
  folder, as CelebA's resolutions do).
* :class:`DownloadRoute`: downloads the files with urllib into that same
  folder (saying so through ``ctx.log`` first), then reads them as above.
  An unreachable host raises :class:`~mi_jax.data.sources.NetworkUnreachable`
  naming the folder to put the files into.

Every file's checksum is verified (streaming, so a 1.4 GB archive is fine)
before a reader parses a byte of it; a mismatch is a one-line
:class:`~mi_jax.data.idx.ChecksumError` naming the file, the algorithm, both
digests and whether the checksum is the publisher's or ours.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
import shutil
import tempfile
import urllib.error
import urllib.request
from typing import Callable, Mapping, Optional

import numpy as np

from mi_jax.data.idx import ChecksumError
from mi_jax.data.sources import (
    FetchContext, NetworkUnreachable, SourceUnavailable, _first_line, _is_network_error,
)

Arrays = Mapping[str, tuple[np.ndarray, np.ndarray]]
# reader(spec, {file name: path}, ctx) -> arrays
Reader = Callable[..., Arrays]


@dataclasses.dataclass(frozen=True)
class PinnedFile:
  """One raw file: its name, where it is published, and the checksum that pins it.

  ``algorithm`` is ``'sha256'`` or ``'md5'``; ``published`` says whether the
  digest is the one the official source publishes (else we computed it
  from a copy: ``note`` says which). ``kind`` is ``'file'`` (the file's
  bytes are hashed) or ``'lines'`` (a text list, hashed after
  :func:`normalize_lines`, so CRLF / LF copies of one list agree).
  """

  name: str
  digest: str
  algorithm: str = 'sha256'
  url: Optional[str] = None
  size: Optional[int] = None  # bytes, when known: a wrong size fails before hashing
  published: bool = False
  note: str = ''
  kind: str = 'file'
  aliases: tuple[str, ...] = ()  # other names the same file has (e.g. a browser download)

  @property
  def names(self) -> tuple[str, ...]:
    return (self.name, *self.aliases)

  def describe(self) -> str:
    who = 'published by the source' if self.published else 'pinned by mi_jax'
    return f'{self.algorithm} {who}'


def normalize_lines(data: bytes) -> bytes:
  """A text list's canonical bytes: LF line ends, no blank lines, one trailing LF."""
  lines = [line.strip() for line in data.decode('utf-8').splitlines()]
  return ''.join(f'{line}\n' for line in lines if line).encode()


def file_digest(path: pathlib.Path, algorithm: str, kind: str = 'file') -> str:
  """The hex digest of a file (``kind='lines'``: of its :func:`normalize_lines` bytes)."""
  h = hashlib.new(algorithm)
  if kind == 'lines':
    h.update(normalize_lines(path.read_bytes()))
    return h.hexdigest()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      h.update(block)
  return h.hexdigest()


def verify_file(path: pathlib.Path, pin: PinnedFile) -> None:
  """Raises a one-line :class:`ChecksumError` unless ``path`` is the pinned file."""
  if pin.size is not None and pin.kind == 'file':
    size = path.stat().st_size
    if size != pin.size:
      raise ChecksumError(
          f'{path}: {size} bytes, the pinned {pin.name} has {pin.size}; the file is truncated, '
          f'corrupt or another version (delete it and retry)'
      )
  actual = file_digest(path, pin.algorithm, pin.kind)
  if actual != pin.digest:
    raise ChecksumError(
        f'{path}: {pin.algorithm} {actual} is not the {pin.describe()} ({pin.digest}); '
        f'the file is truncated, corrupt or another version (delete it and retry)'
    )


def raw_dir(ctx: FetchContext, raw_name: str) -> pathlib.Path:
  return ctx.data_dir / raw_name / 'raw'


def find_files(directory: pathlib.Path, files) -> tuple[dict, list]:
  """``({pin name: path}, [missing names])`` of the pinned files in ``directory``."""
  found, missing = {}, []
  for pin in files:
    path = next((directory / n for n in pin.names if (directory / n).is_file()), None)
    if path is None:
      missing.append(pin.name)
    else:
      found[pin.name] = path
  return found, missing


def _read_verified(spec, files, paths: dict, reader: Reader, ctx: FetchContext) -> Arrays:
  for pin in files:
    verify_file(paths[pin.name], pin)
  return reader(spec, paths, ctx)


@dataclasses.dataclass(frozen=True)
class RawFilesRoute:
  """The pinned files placed by hand in ``<data dir>/<raw_name>/raw`` (verified, then read)."""

  files: tuple[PinnedFile, ...]
  reader: Reader
  raw_name: str
  what: str = 'raw files'

  @property
  def name(self) -> str:
    return f'{self.what} in <data dir>/{self.raw_name}/raw'

  def fetch(self, spec, ctx: FetchContext) -> Arrays:
    directory = raw_dir(ctx, self.raw_name)
    paths, missing = find_files(directory, self.files)
    if missing:
      where = {p.name: p.url for p in self.files}
      hint = f' (from {where[missing[0]]})' if where.get(missing[0]) else ''
      raise SourceUnavailable(f'{directory} has no {missing[0]}{hint}')
    ctx.log(f'reading {", ".join(p.name for p in self.files)} from {directory}')
    return _read_verified(spec, self.files, paths, self.reader, ctx)


def download(url: str, dest: pathlib.Path, *, timeout_s: float = 60.0) -> None:
  """Downloads ``url`` to ``dest`` through a temporary file (never a half file at ``dest``)."""
  dest.parent.mkdir(parents=True, exist_ok=True)
  fd, temp = tempfile.mkstemp(dir=dest.parent, prefix=f'.{dest.name}.', suffix='.part')
  try:
    request = urllib.request.Request(url, headers={'User-Agent': 'mi_jax.data'})
    with os.fdopen(fd, 'wb') as out, urllib.request.urlopen(request, timeout=timeout_s) as response:
      shutil.copyfileobj(response, out, 1 << 20)
    os.replace(temp, dest)
  except BaseException:
    if os.path.exists(temp):
      os.unlink(temp)
    raise


@dataclasses.dataclass(frozen=True)
class DownloadRoute:
  """Downloads the pinned files from their published URLs into the raw folder, then reads them.

  Files already in the raw folder are reused (and verified); a file that
  fails its checksum is deleted so that a retry downloads it again.
  """

  files: tuple[PinnedFile, ...]
  reader: Reader
  raw_name: str
  host: str  # for the route's name: 'www.cs.toronto.edu'
  timeout_s: float = 60.0

  @property
  def name(self) -> str:
    return f'download from {self.host}'

  def fetch(self, spec, ctx: FetchContext) -> Arrays:
    directory = raw_dir(ctx, self.raw_name)
    paths, missing = find_files(directory, self.files)
    for pin in self.files:
      if pin.name not in missing:
        continue
      if pin.url is None:
        raise SourceUnavailable(f'{pin.name} has no download URL; put it into {directory}')
      dest = directory / pin.name
      ctx.log(f'downloading {pin.url} (uses the network) to {dest}')
      try:
        download(pin.url, dest, timeout_s=self.timeout_s)
      except Exception as error:  # pylint: disable=broad-except
        if _is_network_error(error) and not isinstance(error, urllib.error.HTTPError):
          raise NetworkUnreachable(
              f'{self.host} is unreachable ({_first_line(error)}); offline: put '
              f'{", ".join(p.name for p in self.files)} into {directory}, or copy in a data dir '
              f'prepared elsewhere with `python -m mi_jax.data.prepare {spec.name}`'
          ) from None
        raise SourceUnavailable(f'could not download {pin.url}: {_first_line(error)}') from None
      paths[pin.name] = dest
      try:
        verify_file(dest, pin)
      except ChecksumError:
        dest.unlink()  # a bad download must not poison the next try
        raise
    return _read_verified(spec, self.files, paths, self.reader, ctx)


def resize_uint8(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """``image`` (H, W) or (H, W, C) uint8 resized to ``size`` = (H, W) with PIL's bilinear filter.

  PIL's BILINEAR widens its kernel when it shrinks (antialiased), which is
  what ``torchvision.transforms.Resize`` does on PIL images, the way the
  model-inversion codes resize; identical inputs give identical outputs.
  """
  from PIL import Image  # matplotlib's dependency
  if tuple(image.shape[:2]) == tuple(size):
    return image
  resized = Image.fromarray(image).resize((size[1], size[0]), Image.Resampling.BILINEAR)
  return np.asarray(resized, dtype=np.uint8)


def decode_image(data: bytes, origin: str, *, mode: str, size: tuple[int, int], expected: str) -> np.ndarray:
  """One encoded image (JPEG, PNG) → uint8 in PIL ``mode`` ('L' or 'RGB'), which must be ``size`` = (H, W).

  A file PIL cannot read, or of another size, is a one-line ``ValueError``
  naming ``origin`` (``expected`` says what the dataset's images are)."""
  import io
  from PIL import Image
  try:
    with Image.open(io.BytesIO(data)) as image:
      array = np.asarray(image.convert(mode) if image.mode != mode else image, dtype=np.uint8)
  except Exception as error:  # pylint: disable=broad-except
    raise ValueError(f'{origin}: not a readable image ({type(error).__name__}: {error})') from None
  if array.shape[:2] != tuple(size):
    raise ValueError(f'{origin}: {array.shape[1]}×{array.shape[0]} pixels, {expected}')
  return array
