"""Medical MNIST as Sparse-Guard uses it: 6 classes of 64×64 grey JPEGs, resized to 28×28.

Not MedMNIST (:mod:`mi_jax.data.medmnist`). The source is the ``resized/``
folder of github.com/apolanco3225/Medical-MNIST-Classification (commit
``a8942eef``, 2019; the same set is on Kaggle as andrewmvd/medical-mnist):
58,954 JPEGs in ``AbdomenCT`` (10,000), ``BreastMRI`` (8,954), ``CXR``,
``ChestCT``, ``Hand``, ``HeadCT`` (10,000 each). Classes are in sorted
folder-name order (``CXR`` before ``ChestCT``), as torchvision's
``ImageFolder`` orders them.

**Resizing** (ours; Sparse-Guard says only "resized to 28×28"): each JPEG is
decoded by Pillow as 8-bit grey (``L``) and resized 64×64 → 28×28 with
``PIL.Image.Resampling.BILINEAR`` (antialiased when shrinking; what
``torchvision.transforms.Resize((28, 28))`` does on a PIL image).

**Split** (ours; the source has none): per class, files in sorted name
order, a permutation from ``numpy.random.default_rng([SPLIT_SEED, k])``
(class index ``k``) puts the first ``round(0.2 * n_k)`` files in ``test``
and the rest in ``train``; each split lists class 0's files (in name order)
then class 1's, and so on: train 47,163, test 11,791. The Sparse-Guard
protocol pools both and splits 70/30 itself (:mod:`mi_jax.data.splits`).

**Pins**: both kinds. The raw files by a tree digest (sha256 over the
sorted lines ``<class>/<file name> <sha256 of the JPEG bytes>``, so any
faithful copy, folder or zip, matches) and the final arrays by sha256, all
computed from the repository's files with Pillow 13.0 (libjpeg-turbo 3).
A JPEG decoder that rounds differently would fail the array pin with a
one-line checksum error even though the raw files verify.
"""

from __future__ import annotations

import dataclasses
import hashlib
import pathlib
import zipfile

import numpy as np

from mi_jax.data import archives
from mi_jax.data.idx import ChecksumError
from mi_jax.data.registry import DatasetSpec, SplitSpec, register
from mi_jax.data.sources import FetchContext, NetworkUnreachable, SourceUnavailable, _first_line, _is_network_error

CLASS_NAMES = ('AbdomenCT', 'BreastMRI', 'CXR', 'ChestCT', 'Hand', 'HeadCT')
CLASS_SIZES = (10000, 8954, 10000, 10000, 10000, 10000)
SOURCE_SIZE = (64, 64)
IMAGE_SIZE = (28, 28)
SPLIT_SEED = 0
TEST_FRACTION = 0.2
SUFFIXES = ('.jpeg', '.jpg')
COMMIT = 'a8942eefd6e75f8c34e88fcf2c41faa279aad346'
ARCHIVE_URL = f'https://github.com/apolanco3225/Medical-MNIST-Classification/archive/{COMMIT}.zip'
ARCHIVE_NAME = f'Medical-MNIST-Classification-{COMMIT}.zip'
# sha256 of the sorted '<class>/<file> <sha256>\n' lines of the 58,954 JPEGs
# (tree_digest), computed from the repository at COMMIT.
TREE_SHA256 = '3e532706b04fac7782e817fad99993424546386205346e816ed88332a01f84a6'


def tree_digest(files: dict) -> str:
  """sha256 over sorted ``'<class>/<name> <sha256 of bytes>\\n'`` lines of ``{class: {name: bytes}}``."""
  h = hashlib.sha256()
  for cls in sorted(files):
    for name in sorted(files[cls]):
      h.update(f'{cls}/{name} {hashlib.sha256(files[cls][name]).hexdigest()}\n'.encode())
  return h.hexdigest()


def _class_root(root: pathlib.Path) -> pathlib.Path | None:
  """The folder under ``root`` (itself, ``resized/`` or up to two levels down) holding the 6 class folders."""
  candidates = [root, *sorted(p for p in root.glob('*') if p.is_dir()),
                *sorted(p for p in root.glob('*/*') if p.is_dir())]
  for folder in candidates:
    if all((folder / c).is_dir() for c in CLASS_NAMES):
      return folder
  return None


def collect_folder(root: pathlib.Path) -> dict:
  """``{class: {file name: bytes}}`` of a Medical-MNIST class-folder tree."""
  folder = _class_root(root)
  if folder is None:
    raise SourceUnavailable(f'{root} has no folder with the class folders {", ".join(CLASS_NAMES)}')
  return {
      c: {p.name: p.read_bytes() for p in sorted((folder / c).iterdir())
          if p.suffix.lower() in SUFFIXES and not p.name.startswith('._')}
      for c in CLASS_NAMES
  }


def collect_zip(path: pathlib.Path) -> dict:
  """``{class: {file name: bytes}}`` of a zip holding the tree (GitHub archive, Kaggle download)."""
  files = {c: {} for c in CLASS_NAMES}
  try:
    with zipfile.ZipFile(path) as zf:
      for info in zf.infolist():
        parts = pathlib.PurePosixPath(info.filename).parts
        if (info.is_dir() or len(parts) < 2 or parts[-2] not in files or '__MACOSX' in parts
            or parts[-1].startswith('._') or pathlib.PurePosixPath(parts[-1]).suffix.lower() not in SUFFIXES):
          continue
        files[parts[-2]][parts[-1]] = zf.read(info)
  except (zipfile.BadZipFile, OSError, EOFError) as error:
    raise ValueError(f'{path}: unreadable zip ({type(error).__name__}: {error})') from None
  return files


def split_indices(n: int, class_index: int) -> tuple[np.ndarray, np.ndarray]:
  """Sorted (train, test) positions among a class's ``n`` name-sorted files (module docstring)."""
  permutation = np.random.default_rng([SPLIT_SEED, class_index]).permutation(n)
  num_test = int(round(TEST_FRACTION * n))
  return np.sort(permutation[num_test:]), np.sort(permutation[:num_test])


def decode(data: bytes, origin: str) -> np.ndarray:
  """One JPEG → uint8 (28, 28) grey, through the documented resize."""
  grey = archives.decode_image(data, origin, mode='L', size=SOURCE_SIZE, expected='expected 64×64')
  return archives.resize_uint8(grey, IMAGE_SIZE)


def build_arrays(files: dict, image_size=IMAGE_SIZE) -> dict:
  """``{'train': …, 'test': …}`` from ``{class: {name: bytes}}`` (resize and split of the docstring)."""
  out = {'train': ([], []), 'test': ([], [])}
  for k, cls in enumerate(CLASS_NAMES):
    names = sorted(files.get(cls, {}))
    if not names:
      raise ValueError(f'no {"/".join(SUFFIXES)} files for class {cls}')
    images = np.stack([decode(files[cls][n], f'{cls}/{n}') for n in names])
    for split, idx in zip(('train', 'test'), split_indices(len(names), k)):
      out[split][0].append(images[idx])
      out[split][1].append(np.full(len(idx), k, np.int64))
  return {s: (np.concatenate(i)[..., None], np.concatenate(l)) for s, (i, l) in out.items()}


def _verify_tree(files: dict, origin: str) -> None:
  counts = tuple(len(files.get(c, {})) for c in CLASS_NAMES)
  if counts != CLASS_SIZES:
    raise ValueError(f'{origin}: {dict(zip(CLASS_NAMES, counts))} JPEGs per class, expected '
                     f'{dict(zip(CLASS_NAMES, CLASS_SIZES))}')
  actual = tree_digest(files)
  if actual != TREE_SHA256:
    raise ChecksumError(f'{origin}: tree digest {actual} of the JPEG files is not the pinned '
                        f'{TREE_SHA256} (mi_jax pin of commit {COMMIT[:8]}); a file differs')


@dataclasses.dataclass(frozen=True)
class MedicalMnistRoute:
  """The JPEG tree (folder or zip) in ``<data dir>/medical_mnist/raw``; downloads the GitHub archive there if ``download``."""

  download: bool = False
  raw_name: str = 'medical_mnist'
  timeout_s: float = 120.0

  @property
  def name(self) -> str:
    if self.download:
      return 'download from github.com (apolanco3225/Medical-MNIST-Classification)'
    return f'JPEG folders or zip in <data dir>/{self.raw_name}/raw'

  def fetch(self, spec, ctx: FetchContext):
    directory = archives.raw_dir(ctx, self.raw_name)
    zips = sorted(directory.glob('*.zip')) if directory.is_dir() else []
    if not self.download:
      if directory.is_dir() and _class_root(directory) is not None:
        ctx.log(f'reading the JPEG class folders under {directory}')
        files, origin = collect_folder(directory), str(directory)
      elif zips:
        ctx.log(f'reading {zips[0]}')
        files, origin = collect_zip(zips[0]), str(zips[0])
      else:
        raise SourceUnavailable(
            f'{directory} has neither the class folders {"/".join(CLASS_NAMES)} (e.g. the '
            f'resized/ folder of github.com/apolanco3225/Medical-MNIST-Classification) nor a zip of them')
    else:
      dest = directory / ARCHIVE_NAME
      ctx.log(f'downloading {ARCHIVE_URL} (uses the network) to {dest}')
      try:
        archives.download(ARCHIVE_URL, dest, timeout_s=self.timeout_s)
      except Exception as error:  # pylint: disable=broad-except
        import urllib.error
        if _is_network_error(error) and not isinstance(error, urllib.error.HTTPError):
          raise NetworkUnreachable(
              f'github.com is unreachable ({_first_line(error)}); offline: put the resized/ '
              f'class folders (or a zip of them) into {directory}') from None
        raise SourceUnavailable(f'could not download {ARCHIVE_URL}: {_first_line(error)}') from None
      files, origin = collect_zip(dest), str(dest)
    try:
      _verify_tree(files, origin)
    except ValueError:
      if self.download:
        (directory / ARCHIVE_NAME).unlink()  # a bad download must not poison the next try
      raise
    return build_arrays(files)


MEDICAL_MNIST = register(DatasetSpec(
    name='medical_mnist',
    image_shape=(*IMAGE_SIZE, 1),
    class_names=CLASS_NAMES,
    splits={
        'train': SplitSpec(
            num_examples=47163, class_counts=(8000, 7163, 8000, 8000, 8000, 8000),
            images_sha256='d943bd8096e954af58fbc5e474329c9fd889e2fff2f5f11e71c283503f4d796d',
            labels_sha256='8125521ab4e6ea7136670a2991bb687f028a7d168cd0547f4b15c8f2031ba152',
        ),
        'test': SplitSpec(
            num_examples=11791, class_counts=(2000, 1791, 2000, 2000, 2000, 2000),
            images_sha256='1cfe822fbd9511750088b1abbc8200f9d909ae03ef3c8ec73ef745e4307525ce',
            labels_sha256='b653dc901297d2feb61cbc3bc1d5c6e511f0178bddfd47609a7c274ca768e87c',
        ),
    },
    raw_files=(),
    raw_pins=(archives.PinnedFile(name='resized/ (58,954 JPEGs)', digest=TREE_SHA256, url=ARCHIVE_URL,
                                  note='tree digest (medical_mnist.tree_digest)'),),
    routes=(MedicalMnistRoute(download=False), MedicalMnistRoute(download=True)),
))
