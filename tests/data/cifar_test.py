"""CIFAR-10: the python-pickle tarball parser (on real CIFAR-10 test images where
foolbox's wheel provides them), its checksum, the download route and the
route-failure error. Nothing here downloads: routes that would are stubbed."""

import dataclasses
import importlib.util
import io
import pathlib
import pickle
import re
import sys
import tarfile

import numpy as np
import pytest

import mi_jax.data
from mi_jax.data import archives, cifar, prepare, registry
from mi_jax.data.idx import ChecksumError
from tests.data import fixtures

# The first 20 labels of CIFAR-10's test_batch (the official file).
FIRST_TEST_LABELS = [3, 8, 8, 0, 6, 6, 1, 6, 3, 1, 0, 9, 5, 7, 9, 8, 5, 7, 8, 6]


def _foolbox_cifar_images():
  """The 20 real CIFAR-10 test images foolbox ships (uint8 (20, 32, 32, 3), labels), or skip."""
  spec = importlib.util.find_spec('foolbox')  # locates the package; imports nothing
  if spec is None or not spec.submodule_search_locations:
    pytest.skip('foolbox (the test extra) is not installed: pip install "foolbox>=3.3.4,<4"')
  folder = pathlib.Path(list(spec.submodule_search_locations)[0]) / 'data'
  files = sorted(folder.glob('cifar10_*_*.png'))
  if len(files) != 20:
    pytest.skip(f'{folder} does not hold the 20 cifar10_<i>_<label>.png samples')
  from PIL import Image
  images = np.stack([np.asarray(Image.open(f).convert('RGB'), np.uint8) for f in files])
  labels = np.array([int(re.match(r'cifar10_(\d+)_(\d+)\.png', f.name).group(2)) for f in files])
  return images, labels


def _batch(images: np.ndarray, labels, name: str) -> bytes:
  """A batch pickled the way the official files are: bytes keys, (N, 3072) channel-planar rows."""
  flat = images.transpose(0, 3, 1, 2).reshape(len(images), 3072)
  return pickle.dumps({
      b'batch_label': name.encode(), b'labels': [int(l) for l in labels],
      b'data': np.ascontiguousarray(flat), b'filenames': [f'{i}.png'.encode() for i in range(len(labels))],
  }, protocol=2)


def make_tarball(path: pathlib.Path, arrays: dict) -> pathlib.Path:
  """A tiny ``cifar-10-python.tar.gz`` with the official layout (5 train batches, test_batch, meta)."""
  train_images, train_labels = arrays['train']
  members = {}
  for i, part in enumerate(np.array_split(np.arange(len(train_labels)), 5), 1):
    members[f'data_batch_{i}'] = _batch(train_images[part], train_labels[part], f'training batch {i} of 5')
  members['test_batch'] = _batch(*arrays['test'], 'testing batch 1 of 1')
  members['batches.meta'] = pickle.dumps(
      {b'label_names': [n.encode() for n in cifar.CLASS_NAMES], b'num_cases_per_batch': 10000,
       b'num_vis': 3072}, protocol=2)
  members['readme.html'] = b'<html></html>'
  with tarfile.open(path, 'w:gz') as tar:
    for name, data in members.items():
      info = tarfile.TarInfo(f'cifar-10-batches-py/{name}')
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))
  return path


def make_arrays(seed=0, test=None):
  rng = np.random.default_rng(seed)
  train = (rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8), np.arange(20, dtype=np.int64) % 10)
  test = test or (rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8), np.arange(10, dtype=np.int64))
  return {'train': train, 'test': test}


def tiny_spec(monkeypatch, tarball: pathlib.Path, arrays: dict, **route_kwargs):
  """cifar10's spec with sizes, counts and the tarball pin of a tiny generated tarball."""
  pin = dataclasses.replace(cifar.TARBALL, digest=archives.file_digest(tarball, 'sha256'),
                            size=tarball.stat().st_size)
  splits = {s: registry.SplitSpec(num_examples=len(l), class_counts=tuple(np.bincount(l, minlength=10)))
            for s, (_, l) in arrays.items()}
  routes = (archives.RawFilesRoute((pin,), cifar._reader, raw_name='tiny_cifar', what='the python tarball'),
            archives.DownloadRoute((pin,), cifar._reader, raw_name='tiny_cifar', host='example.org'))
  spec = dataclasses.replace(cifar.CIFAR10, name='tiny_cifar', splits=splits, raw_pins=(pin,), routes=routes)
  monkeypatch.setitem(registry.DATASETS, spec.name, spec)
  return spec


def test_spec_pins_the_official_tarball_and_not_the_arrays():
  spec = registry.get_spec('cifar10')
  assert spec.image_shape == (32, 32, 3) and spec.num_classes == 10
  assert {s: v.num_examples for s, v in spec.splits.items()} == {'train': 50000, 'test': 10000}
  assert not spec.arrays_pinned and 'not pinned' in spec.pin_summary()
  (pin,) = spec.raw_pins
  assert pin.url == 'https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz'
  assert pin.digest.startswith('6d958be0') and pin.size == 170498071 and pin.algorithm == 'sha256'
  assert [type(r).__name__ for r in spec.routes] == ['RawFilesRoute', 'DownloadRoute', 'CifarTfdsRoute']


def test_real_cifar10_test_images_survive_the_official_pickle_layout(tmp_path):
  images, labels = _foolbox_cifar_images()
  assert labels.tolist() == FIRST_TEST_LABELS  # they are the first 20 images of test_batch
  arrays = make_arrays(test=(images, labels.astype(np.int64)))
  got = cifar.read_tarball(make_tarball(tmp_path / 'cifar-10-python.tar.gz', arrays))
  np.testing.assert_array_equal(got['test'][0], images)
  np.testing.assert_array_equal(got['test'][1], labels)
  np.testing.assert_array_equal(got['train'][0], arrays['train'][0])
  assert got['train'][0].dtype == np.uint8 and got['train'][1].dtype == np.int64


def test_prepare_from_the_raw_folder_then_load(monkeypatch, tmp_path):
  arrays = make_arrays()
  raw = tmp_path / 'tiny_cifar' / 'raw'
  raw.mkdir(parents=True)
  tiny_spec(monkeypatch, make_tarball(raw / 'cifar-10-python.tar.gz', arrays), arrays)
  images, labels = mi_jax.data.load('tiny_cifar', 'test', data_dir=tmp_path)
  np.testing.assert_array_equal(images, arrays['test'][0])
  np.testing.assert_array_equal(labels, arrays['test'][1])


def test_download_route_fetches_verifies_and_drops_a_corrupt_download(monkeypatch, tmp_path, capsys):
  arrays = make_arrays()
  good = make_tarball(tmp_path / 'upstream.tar.gz', arrays)
  tiny_spec(monkeypatch, good, arrays)
  served = {'bytes': good.read_bytes()[:-7] + b'garbage'}

  def fake_download(url, dest, timeout_s):
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(served['bytes'])

  monkeypatch.setattr(archives, 'download', fake_download)
  data = tmp_path / 'data'
  with pytest.raises(registry.DataUnavailableError) as error:
    registry.prepare_dataset('tiny_cifar', data_dir=data)
  message = str(error.value)
  assert '\n' not in message
  assert re.search(r'\[download from example\.org\] .*cifar-10-python\.tar\.gz: sha256 [0-9a-f]{64} is not '
                   r'the sha256 pinned by mi_jax \([0-9a-f]{64}\)', message)
  assert not (data / 'tiny_cifar' / 'raw' / 'cifar-10-python.tar.gz').exists()  # deleted for the retry
  served['bytes'] = good.read_bytes()
  capsys.readouterr()
  result = registry.prepare_dataset('tiny_cifar', data_dir=data, log=print)
  assert result.source == 'download from example.org'
  out = capsys.readouterr().out
  assert 'downloading https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz (uses the network)' in out
  assert 'tiny_cifar from download from example.org: final arrays not pinned: only the raw files are, by their checksums' in out


def test_a_corrupt_tarball_in_the_raw_folder_is_rejected_in_one_line(monkeypatch, tmp_path):
  arrays = make_arrays()
  raw = tmp_path / 'tiny_cifar' / 'raw'
  raw.mkdir(parents=True)
  tarball = make_tarball(raw / 'cifar-10-python.tar.gz', arrays)
  tiny_spec(monkeypatch, tarball, arrays)
  data = bytearray(tarball.read_bytes())
  data[len(data) // 2] ^= 0xFF  # same size, one byte flipped
  tarball.write_bytes(bytes(data))
  route = registry.get_spec('tiny_cifar').routes[0]
  with pytest.raises(ChecksumError) as error:
    route.fetch(registry.get_spec('tiny_cifar'), mi_jax.data.sources.FetchContext(tmp_path))
  assert '\n' not in str(error.value)
  assert str(error.value).startswith(f'{tarball}: sha256 ')
  assert str(error.value).endswith('the file is truncated, corrupt or another version (delete it and retry)')


def test_real_cifar10_spec_lists_every_route_when_all_fail(monkeypatch, tmp_path, capsys):
  raw = tmp_path / 'cifar10' / 'raw'
  raw.mkdir(parents=True)
  (raw / 'cifar-10-python.tar.gz').write_bytes(b'not the tarball')
  monkeypatch.setitem(sys.modules, 'tensorflow_datasets', fixtures.tfds_without_network())
  assert prepare.main(['cifar10', '--data-dir', str(tmp_path)]) == 1
  err = capsys.readouterr().err
  assert err.count('\n') == 1 and err.startswith('error: cifar10: no source could provide the data (the network '
                                                 "is unreachable for: TensorFlow Datasets 'cifar10'): ")
  assert (f'[the python tarball in <data dir>/cifar10/raw] {raw / "cifar-10-python.tar.gz"}: 15 bytes, the '
          'pinned cifar-10-python.tar.gz has 170498071; ') in err
  # The download route finds the same bad file and verifies it too (no network use).
  assert '[download from www.cs.toronto.edu] ' in err
  assert "[TensorFlow Datasets 'cifar10'] TFDS cannot download 'cifar10': the network is unreachable" in err
  assert err.rstrip().endswith('Make any one of these sources work and retry '
                               '(cifar10: final arrays not pinned: only the raw files are, by their checksums)')


def test_non_batch_pickles_are_refused_before_anything_runs():
  evil = pickle.dumps({b'data': __import__('os').system}, protocol=2)
  with pytest.raises(ValueError, match=r"^x: not a CIFAR python batch \(UnpicklingError: refusing to load "):
    cifar.parse_batch(evil, 'x')
  with pytest.raises(ValueError, match=r"x: a CIFAR batch needs b'data' and b'labels'"):
    cifar.parse_batch(pickle.dumps({b'labels': [1]}), 'x')


def test_tfds_records_are_put_back_in_file_order_by_their_id():
  rng = np.random.default_rng(1)
  images = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
  order = [4, 0, 5, 2, 1, 3]
  records = [{'image': images[i], 'label': i, 'id': f'train_{i:05d}'.encode()} for i in order]
  got_images, got_labels = cifar.CifarTfdsRoute._read(records, 'train')
  np.testing.assert_array_equal(got_images, images)
  assert got_labels.tolist() == list(range(6))
