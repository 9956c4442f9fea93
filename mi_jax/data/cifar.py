"""CIFAR-10: the official python-pickle tarball (cs.toronto.edu) or TFDS 'cifar10'.

Raw pin: ``cifar-10-python.tar.gz``, 170,498,071 bytes, sha256
``6d958be0…5c001ce`` (the hash Keras' ``cifar10.load_data`` pins for this
URL; the page publishes md5 ``c58f3010…e74349a``, which torchvision pins).
The final arrays are **not** pinned (no copy of CIFAR-10 is reachable where
this spec was written): a route's arrays are checked by shape, dtype and the
official 5,000 / 1,000 images per class, and their integrity rests on the
tarball's sha256, verified before a byte of it is unpickled.

Arrays: images uint8 (N, 32, 32, 3), the row order of ``data_batch_1`` …
``data_batch_5`` (train) and ``test_batch`` (test); labels int64. The
batches are pickles: they are read with an unpickler that can build only
dicts, lists, strings, numbers and numpy arrays, after the checksum.
"""

from __future__ import annotations

import dataclasses
import io
import pickle
import tarfile

import numpy as np

from mi_jax.data.archives import DownloadRoute, PinnedFile, RawFilesRoute
from mi_jax.data.registry import DatasetSpec, SplitSpec, register
from mi_jax.data.sources import TfdsRoute, restore_source_order

TARBALL = PinnedFile(
    name='cifar-10-python.tar.gz',
    digest='6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce',
    algorithm='sha256',
    url='https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz',
    size=170498071,
    published=False,
    note='the sha256 Keras pins for this URL; the official page publishes md5 '
         'c58f30108f718f92721af3b95e74349a',
)
TRAIN_BATCHES = tuple(f'data_batch_{i}' for i in range(1, 6))
TEST_BATCHES = ('test_batch',)
CLASS_NAMES = ('airplane', 'automobile', 'bird', 'cat', 'deer',
               'dog', 'frog', 'horse', 'ship', 'truck')


class _BatchUnpickler(pickle.Unpickler):
  """Builds only what a CIFAR batch holds: containers, numbers, bytes and numpy arrays."""

  _ALLOWED = {
      ('numpy.core.multiarray', '_reconstruct'), ('numpy._core.multiarray', '_reconstruct'),
      ('numpy', 'ndarray'), ('numpy', 'dtype'),
      # Python 3's protocol-2 pickles of bytes (a re-pickled batch); harmless.
      ('_codecs', 'encode'),
  }

  def find_class(self, module, name):
    if (module, name) in self._ALLOWED:
      return super().find_class(module, name)
    raise pickle.UnpicklingError(f'refusing to load {module}.{name} from a CIFAR batch')


def parse_batch(data: bytes, origin: str) -> tuple[np.ndarray, np.ndarray]:
  """One pickled batch → (uint8 (N, 32, 32, 3) images, int64 labels); one-line ValueError if not."""
  try:
    batch = _BatchUnpickler(io.BytesIO(data), encoding='bytes').load()
  except Exception as error:  # pylint: disable=broad-except
    raise ValueError(f'{origin}: not a CIFAR python batch ({type(error).__name__}: {error})') from None
  if not isinstance(batch, dict) or b'data' not in batch or b'labels' not in batch:
    keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
    raise ValueError(f"{origin}: a CIFAR batch needs b'data' and b'labels', found {keys}")
  flat = np.asarray(batch[b'data'])
  labels = np.asarray(batch[b'labels'], dtype=np.int64)
  if flat.dtype != np.uint8 or flat.ndim != 2 or flat.shape[1] != 3072 or len(flat) != len(labels):
    raise ValueError(f'{origin}: data {flat.dtype}{flat.shape} with {len(labels)} labels, '
                     f'expected uint8 (N, 3072) with N labels')
  # Each row is 1024 red, then 1024 green, then 1024 blue values, row-major.
  images = flat.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
  return np.ascontiguousarray(images), labels


def read_tarball(path, origin: str = None) -> dict:
  """``{'train': …, 'test': …}`` of an official-layout ``cifar-10-python.tar.gz``."""
  origin = origin or str(path)
  wanted = {f'cifar-10-batches-py/{b}': b for b in TRAIN_BATCHES + TEST_BATCHES}
  batches = {}
  try:
    with tarfile.open(path, 'r:gz') as tar:
      for member in tar:
        if member.name in wanted and member.isfile():
          batches[wanted[member.name]] = tar.extractfile(member).read()
  except (tarfile.TarError, OSError, EOFError) as error:
    raise ValueError(f'{origin}: unreadable tarball ({type(error).__name__}: {error})') from None
  missing = [f'cifar-10-batches-py/{b}' for b in TRAIN_BATCHES + TEST_BATCHES if b not in batches]
  if missing:
    raise ValueError(f'{origin}: no {missing[0]} in the tarball')
  out = {}
  for split, names in (('train', TRAIN_BATCHES), ('test', TEST_BATCHES)):
    parts = [parse_batch(batches[n], f'{origin}:{n}') for n in names]
    out[split] = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
  return out


def _reader(spec, paths, ctx):
  del spec, ctx
  return read_tarball(paths[TARBALL.name])


@dataclasses.dataclass(frozen=True)
class CifarTfdsRoute(TfdsRoute):
  """TFDS 'cifar10', put back into the official file order.

  TFDS's cifar10 records carry ``id`` = ``'<split>_<index>'`` (the index in
  the concatenated batch files, the same order as the python batches), so
  the order is restored from it; without it, from TFDS's key hash as for
  MNIST (:func:`~mi_jax.data.sources.restore_source_order`).
  """

  @staticmethod
  def _read(source, split: str):
    indices = list(range(len(source)))
    records = source.__getitems__(indices) if hasattr(source, '__getitems__') else [source[i] for i in indices]
    images = np.stack([np.asarray(r['image'], dtype=np.uint8) for r in records])
    labels = np.asarray([r['label'] for r in records], dtype=np.int64)
    ids = [r.get('id') if hasattr(r, 'get') else None for r in records]
    if all(ids):
      position = np.array([int(str(i.decode() if isinstance(i, bytes) else i).rsplit('_', 1)[1])
                           for i in ids])
      order = np.argsort(position, kind='stable')
      return images[order], labels[order]
    return restore_source_order(images, labels, split)


CIFAR10 = register(DatasetSpec(
    name='cifar10',
    image_shape=(32, 32, 3),
    class_names=CLASS_NAMES,
    # Raw-pinned only (module docstring): counts are official, arrays unpinned.
    splits={
        'train': SplitSpec(num_examples=50000, class_counts=(5000,) * 10),
        'test': SplitSpec(num_examples=10000, class_counts=(1000,) * 10),
    },
    raw_files=(),
    raw_pins=(TARBALL,),
    routes=(
        RawFilesRoute((TARBALL,), _reader, raw_name='cifar10', what='the python tarball'),
        DownloadRoute((TARBALL,), _reader, raw_name='cifar10', host='www.cs.toronto.edu'),
        CifarTfdsRoute('cifar10'),
    ),
))
