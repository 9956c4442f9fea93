"""CelebA aligned faces with identity labels, in the GMI / KEDMI private / public split.

The split is the one GMI (Zhang et al. 2020), KEDMI (Chen et al. 2021) and
PLG-MI use, as the KEDMI repository (github.com/SCccc21/Knowledge-Enriched-DMI,
``data/``) publishes it: three lists of ``img_align_celeba`` file names,

* ``trainset.txt``: 27,018 ``<file> <label>`` lines, labels 0..999: the
  1,000 private identities (the target classifier's training set) → split ``train``;
* ``testset.txt``: 3,009 lines, the same 1,000 identities → split ``test``;
* ``ganset.txt``: 30,000 file names of other identities, the attacker's
  public data → split ``public``, labelled with their CelebA identity
  number (``identity_CelebA.txt``, 1..10177; not a class of the 1,000).

The lists are pinned by the sha256 of their text with LF line ends
(:func:`mi_jax.data.archives.normalize_lines`: the repository's files have
CRLF ends and a fork's copy has LF; both match), computed from the files at
the commits below. ``identity_CelebA.txt`` is pinned by the MD5 torchvision
pins (``32bd1bd6…``), and ``img_align_celeba.zip``, when the images come
as the zip, by torchvision's MD5 ``00d2c5bc…``. A folder of extracted
images has no published per-file checksums: each image is only checked to
decode to 178×218 RGB. The final arrays are **not** pinned (no CelebA copy
offline). Every private label must map to one CelebA identity and back
(checked against ``identity_CelebA.txt``).

Preprocessing, as the KEDMI / GMI loaders do: the 108×108 centre crop of
the 178×218 aligned image (rows 55..162, columns 35..142), resized to
``resolution`` × ``resolution`` with PIL's bilinear filter (64 by default,
what the GAN attacks use). The loaders' crop round-trips through float
tensors, which can lower a pixel by one; we crop the uint8 image directly.

Getting the data: CelebA's images and annotations are on Google Drive
(mmlab.ie.cuhk.edu.hk/projects/CelebA.html), which cannot be downloaded
reliably by a script; put ``img_align_celeba/`` (or ``img_align_celeba.zip``)
and ``identity_CelebA.txt`` into ``<data dir>/celeba/raw``. The three lists
are downloaded from raw.githubusercontent.com if they are not there.
TensorFlow Datasets' ``celeb_a`` has no identity labels, so it is no route here.

Other resolutions: :func:`register_celeba` (``celeba_128`` …) share the raw
folder.
"""

from __future__ import annotations

import dataclasses
import pathlib
import urllib.error
import zipfile
from typing import Optional

import numpy as np

from mi_jax.data import archives
from mi_jax.data.archives import PinnedFile
from mi_jax.data.idx import ChecksumError
from mi_jax.data.registry import DATASETS, DatasetSpec, SplitSpec, register
from mi_jax.data.sources import (
    FetchContext, NetworkUnreachable, SourceUnavailable, _first_line, _is_network_error,
)

RAW_NAME = 'celeba'
DEFAULT_RESOLUTION = 64
ALIGNED_SIZE = (218, 178)  # (H, W) of img_align_celeba
CROP_SIZE = 108
CROP_TOP = (ALIGNED_SIZE[0] - CROP_SIZE) // 2  # 55
CROP_LEFT = (ALIGNED_SIZE[1] - CROP_SIZE) // 2  # 35
NUM_PRIVATE = 1000
SPLIT_SIZES = {'train': 27018, 'test': 3009, 'public': 30000}

_KEDMI = 'https://raw.githubusercontent.com/SCccc21/Knowledge-Enriched-DMI/{commit}/data/{file}'
LISTS = {
    'train': PinnedFile(
        name='trainset.txt', kind='lines',
        digest='fd758026dab640c7217797f12e713436b23278087ffd2a70e88a7255259eabf7',
        url=_KEDMI.format(commit='8b81c9605bf86cb16bb1853220b40240afbc63f1', file='trainset.txt'),
        note='KEDMI data/trainset.txt, LF-normalized'),
    'test': PinnedFile(
        name='testset.txt', kind='lines',
        digest='b67ef7f4770fa3606817392f01ae185f1534c38243987928ab881464cb09c434',
        url=_KEDMI.format(commit='107b47253ecfc376043940105c82a2ea906fb5b1', file='testset.txt'),
        note='KEDMI data/testset.txt, LF-normalized'),
    'public': PinnedFile(
        name='ganset.txt', kind='lines',
        digest='1c2173015bfb2951b117eeb766b4da310be9b82bddf8801b8b531bf80e6b8f49',
        url=_KEDMI.format(commit='39989d128ff4228c62455c94c6b4be7b340d05a4', file='ganset.txt'),
        note='KEDMI data/ganset.txt, LF-normalized'),
}
IDENTITY = PinnedFile(
    name='identity_CelebA.txt', digest='32bd1bd63d3c78cd57e08160ec5ed1e2', algorithm='md5',
    published=True, note="the MD5 torchvision's CelebA pins")
IMAGES_ZIP = PinnedFile(
    name='img_align_celeba.zip', digest='00d2c5bc6d35e252742224ab0c1e8fcb', algorithm='md5',
    published=True, note="the MD5 torchvision's CelebA pins")
IMAGES_DIR = 'img_align_celeba'
_GET = ('from the CelebA site (mmlab.ie.cuhk.edu.hk/projects/CelebA.html, '
        '"Align&Cropped Images" and Anno/identity_CelebA.txt)')


def parse_list(text: str, *, labelled: bool, origin: str) -> tuple[list, Optional[np.ndarray]]:
  """``(file names, int64 labels or None)`` of a KEDMI list (``<file> <label>`` or ``<file>`` lines)."""
  names, labels = [], []
  for number, line in enumerate(text.splitlines(), 1):
    fields = line.split()
    if not fields:
      continue
    if len(fields) != (2 if labelled else 1) or (labelled and not fields[1].isdigit()):
      raise ValueError(f'{origin}:{number}: expected "<file>{" <label>" if labelled else ""}", got {line!r}')
    names.append(fields[0])
    if labelled:
      labels.append(int(fields[1]))
  return names, (np.asarray(labels, np.int64) if labelled else None)


def parse_identities(text: str, origin: str) -> dict:
  """``{file name: CelebA identity}`` of ``identity_CelebA.txt``."""
  out = {}
  for number, line in enumerate(text.splitlines(), 1):
    fields = line.split()
    if not fields:
      continue
    if len(fields) != 2 or not fields[1].isdigit():
      raise ValueError(f'{origin}:{number}: expected "<file> <identity>", got {line!r}')
    out[fields[0]] = int(fields[1])
  return out


def preprocess(image: np.ndarray, resolution: int) -> np.ndarray:
  """An aligned uint8 (218, 178, 3) face → the centre 108×108 crop at ``resolution``²."""
  crop = image[CROP_TOP:CROP_TOP + CROP_SIZE, CROP_LEFT:CROP_LEFT + CROP_SIZE]
  return archives.resize_uint8(np.ascontiguousarray(crop), (resolution, resolution))


def _decode(data: bytes, origin: str) -> np.ndarray:
  return archives.decode_image(data, origin, mode='RGB', size=ALIGNED_SIZE,
                               expected='an aligned CelebA image is 178×218')


class _ImageSource:
  """Reads aligned images by file name from ``img_align_celeba/`` or ``img_align_celeba.zip``."""

  def __init__(self, path: pathlib.Path):
    self.path = path
    self.zip = None
    if path.suffix == '.zip':
      try:
        self.zip = zipfile.ZipFile(path)
      except (zipfile.BadZipFile, OSError) as error:
        raise ValueError(f'{path}: unreadable zip ({type(error).__name__}: {error})') from None
      self.members = {pathlib.PurePosixPath(n).name: n for n in self.zip.namelist()
                      if not n.endswith('/') and '__MACOSX' not in n}

  def read(self, name: str) -> bytes:
    stem = pathlib.PurePosixPath(name).stem
    candidates = (name, f'{stem}.jpg', f'{stem}.png')
    if self.zip is not None:
      member = next((self.members[c] for c in candidates if c in self.members), None)
      if member is None:
        raise ValueError(f'{self.path}: no {name}')
      return self.zip.read(member)
    path = next((self.path / c for c in candidates if (self.path / c).is_file()), None)
    if path is None:
      raise ValueError(f'{self.path}: no {name}')
    return path.read_bytes()

  def close(self):
    if self.zip is not None:
      self.zip.close()


def build_arrays(lists: dict, identities: dict, images: _ImageSource, resolution: int) -> dict:
  """``{split: (uint8 (N, r, r, 3), int64 labels)}`` from the parsed lists (module docstring)."""
  out = {}
  label_to_identity = {}
  for split, (names, labels) in lists.items():
    missing = [n for n in names if n not in identities]
    if missing:
      raise ValueError(f'identity_CelebA.txt has no {missing[0]} (listed in {LISTS[split].name})')
    if labels is None:  # the public set: labelled with the CelebA identity
      labels = np.asarray([identities[n] for n in names], np.int64)
    else:
      for name, label in zip(names, labels.tolist()):
        identity = label_to_identity.setdefault(label, identities[name])
        if identity != identities[name]:
          raise ValueError(f'{LISTS[split].name}: label {label} holds CelebA identities {identity} and '
                           f'{identities[name]} ({name}); the list does not match identity_CelebA.txt')
    # Filled in place: 60k faces at 64² are 0.74 GB; a list then np.stack would double that.
    stack = np.empty((len(names), resolution, resolution, 3), np.uint8)
    for i, name in enumerate(names):
      stack[i] = preprocess(_decode(images.read(name), f'{images.path}/{name}'), resolution)
    out[split] = (stack, labels)
  if len(set(label_to_identity.values())) != len(label_to_identity):
    raise ValueError('two private labels share one CelebA identity; the lists do not match identity_CelebA.txt')
  return out


@dataclasses.dataclass(frozen=True)
class CelebaRoute:
  """CelebA from ``<data dir>/celeba/raw``; with ``download_lists``, the three split lists are
  downloaded there from the KEDMI repository when missing (the images never are)."""

  resolution: int = DEFAULT_RESOLUTION
  download_lists: bool = False
  lists: tuple = tuple(LISTS.items())
  identity: PinnedFile = IDENTITY
  images_zip: PinnedFile = IMAGES_ZIP
  raw_name: str = RAW_NAME
  timeout_s: float = 60.0

  @property
  def name(self) -> str:
    if self.download_lists:
      return f'images in <data dir>/{self.raw_name}/raw + split lists from raw.githubusercontent.com'
    return f'images, identities and split lists in <data dir>/{self.raw_name}/raw'

  def fetch(self, spec, ctx: FetchContext):
    directory = archives.raw_dir(ctx, self.raw_name)
    if not (directory / self.identity.name).is_file():
      raise SourceUnavailable(f'{directory} has no {self.identity.name} ({_GET})')
    folder, zipped = directory / IMAGES_DIR, directory / self.images_zip.name
    if not folder.is_dir() and not zipped.is_file():
      raise SourceUnavailable(f'{directory} has neither {IMAGES_DIR}/ nor {self.images_zip.name} ({_GET})')
    pins = dict(self.lists)
    paths, missing = archives.find_files(directory, pins.values())
    if missing and not self.download_lists:
      raise SourceUnavailable(f'{directory} has no {missing[0]} (KEDMI split list: {pins[_split_of(pins, missing[0])].url})')
    for split, pin in pins.items():
      if pin.name in missing:
        paths[pin.name] = self._download(pin, directory, spec, ctx)
      archives.verify_file(paths[pin.name], pin)
    archives.verify_file(directory / self.identity.name, self.identity)
    if folder.is_dir():
      source = _ImageSource(folder)
      ctx.log(f'reading CelebA images from {folder} (no per-image checksums exist; decoded and size-checked)')
    else:
      ctx.log(f'verifying {zipped} ({self.images_zip.describe()})')
      archives.verify_file(zipped, self.images_zip)
      source = _ImageSource(zipped)
    try:
      identities = parse_identities((directory / self.identity.name).read_text(), self.identity.name)
      lists = {split: parse_list(paths[pin.name].read_text(), labelled=split != 'public', origin=pin.name)
               for split, pin in pins.items()}
      return build_arrays(lists, identities, source, self.resolution)
    finally:
      source.close()

  def _download(self, pin: PinnedFile, directory: pathlib.Path, spec, ctx) -> pathlib.Path:
    dest = directory / pin.name
    ctx.log(f'downloading {pin.url} (uses the network) to {dest}')
    try:
      archives.download(pin.url, dest, timeout_s=self.timeout_s)
    except Exception as error:  # pylint: disable=broad-except
      if _is_network_error(error) and not isinstance(error, urllib.error.HTTPError):
        raise NetworkUnreachable(
            f'raw.githubusercontent.com is unreachable ({_first_line(error)}); offline: put '
            f'{", ".join(p.name for _, p in self.lists)} (KEDMI data/) into {directory}') from None
      raise SourceUnavailable(f'could not download {pin.url}: {_first_line(error)}') from None
    try:
      archives.verify_file(dest, pin)
    except ChecksumError:
      dest.unlink()
      raise
    return dest


def _split_of(pins: dict, name: str) -> str:
  return next(split for split, pin in pins.items() if pin.name == name)


def celeba_spec(resolution: int = DEFAULT_RESOLUTION, name: Optional[str] = None) -> DatasetSpec:
  """The CelebA spec at ``resolution`` (default name ``celeba`` at 64, else ``celeba_<r>``)."""
  if not isinstance(resolution, int) or isinstance(resolution, bool) or not 8 <= resolution <= CROP_SIZE * 2:
    raise ValueError(f'resolution must be an integer in [8, {CROP_SIZE * 2}], got {resolution!r}')
  if name is None:
    name = 'celeba' if resolution == DEFAULT_RESOLUTION else f'celeba_{resolution}'
  return DatasetSpec(
      name=name,
      image_shape=(resolution, resolution, 3),
      class_names=tuple(f'identity {k}' for k in range(NUM_PRIVATE)),
      # Raw-pinned only (module docstring): sizes from the pinned lists.
      splits={split: SplitSpec(num_examples=n) for split, n in SPLIT_SIZES.items()},
      raw_files=(),
      raw_pins=(*LISTS.values(), IDENTITY, IMAGES_ZIP),
      routes=(CelebaRoute(resolution), CelebaRoute(resolution, download_lists=True)),
  )


def register_celeba(resolution: int) -> DatasetSpec:
  """Registers (once) and returns CelebA at another resolution, e.g. ``celeba_128``."""
  spec = celeba_spec(resolution)
  existing = DATASETS.get(spec.name)
  return existing if existing is not None else register(spec)


CELEBA = register(celeba_spec())
