"""MedMNIST v2 (PathMNIST, OrganAMNIST, BloodMNIST, DermaMNIST): the published
MD5 pins, the npz parser on tiny files in the official layout, and the errors."""

import dataclasses
import re

import numpy as np
import pytest

import mi_jax.data
from mi_jax.data import archives, medmnist, prepare, registry
from mi_jax.data.idx import ChecksumError
from mi_jax.data.sources import FetchContext

FLAGS = ('pathmnist', 'organamnist', 'bloodmnist', 'dermamnist')


def write_npz(path, channels, sizes, num_classes, seed=0):
  """A tiny npz with the official keys: <split>_images (N, 28, 28[, 3]) uint8, <split>_labels (N, 1) uint8."""
  rng = np.random.default_rng(seed)
  arrays = {}
  for split, n in sizes.items():
    shape = (n, 28, 28) if channels == 1 else (n, 28, 28, 3)
    arrays[f'{split}_images'] = rng.integers(0, 256, shape, dtype=np.uint8)
    arrays[f'{split}_labels'] = (np.arange(n) % num_classes).astype(np.uint8)[:, None]
  path.parent.mkdir(parents=True, exist_ok=True)
  np.savez_compressed(path, **arrays)
  return arrays


def tiny(monkeypatch, tmp_path, flag, sizes=None):
  """``flag``'s spec with tiny sizes and the MD5 of a tiny npz written into its raw folder."""
  spec = registry.get_spec(flag)
  sizes = sizes or {'train': 7, 'val': 3, 'test': 5}
  path = tmp_path / flag / 'raw' / f'{flag}.npz'
  arrays = write_npz(path, spec.image_shape[-1], sizes, spec.num_classes)
  (pin,) = spec.raw_pins
  pin = dataclasses.replace(pin, digest=archives.file_digest(path, 'md5'))
  reader = spec.routes[0].reader
  spec = dataclasses.replace(
      spec, splits={s: registry.SplitSpec(num_examples=n) for s, n in sizes.items()}, raw_pins=(pin,),
      routes=(archives.RawFilesRoute((pin,), reader, raw_name=flag),
              archives.DownloadRoute((pin,), reader, raw_name=flag, host='zenodo.org')))
  monkeypatch.setitem(registry.DATASETS, flag, spec)
  return spec, arrays, path


def test_specs_pin_the_published_md5_of_the_official_zenodo_files():
  sizes = {'pathmnist': (89996, 10004, 7180), 'organamnist': (34561, 6491, 17778),
           'bloodmnist': (11959, 1712, 3421), 'dermamnist': (7007, 1003, 2005)}
  classes = {'pathmnist': 9, 'organamnist': 11, 'bloodmnist': 8, 'dermamnist': 7}
  for flag in FLAGS:
    spec = registry.get_spec(flag)
    assert tuple(s.num_examples for s in spec.splits.values()) == sizes[flag]
    assert tuple(spec.splits) == ('train', 'val', 'test') and spec.num_classes == classes[flag]
    assert spec.image_shape == (28, 28, 1 if flag == 'organamnist' else 3)
    (pin,) = spec.raw_pins
    assert pin.algorithm == 'md5' and pin.published and re.fullmatch(r'[0-9a-f]{32}', pin.digest)
    assert pin.url == f'https://zenodo.org/records/10519652/files/{flag}.npz?download=1'
    assert not spec.arrays_pinned
  assert registry.get_spec('pathmnist').raw_pins[0].digest == 'a8b06965200029087d5bd730944a56c1'


@pytest.mark.parametrize('flag', ['organamnist', 'bloodmnist'])  # grey and RGB
def test_prepare_reads_the_official_npz_layout(monkeypatch, tmp_path, flag):
  spec, arrays, _ = tiny(monkeypatch, tmp_path, flag)
  assert prepare.main([flag, '--data-dir', str(tmp_path)]) == 0
  for split in ('train', 'val', 'test'):
    images, labels = mi_jax.data.load(flag, split, data_dir=tmp_path)
    assert images.shape == (len(labels), 28, 28, spec.image_shape[-1]) and images.dtype == np.uint8
    np.testing.assert_array_equal(images.reshape(arrays[f'{split}_images'].shape), arrays[f'{split}_images'])
    np.testing.assert_array_equal(labels, arrays[f'{split}_labels'][:, 0].astype(np.int64))
    assert labels.dtype == np.int64


def test_a_file_that_fails_the_published_md5_is_one_line(monkeypatch, tmp_path):
  spec, _, path = tiny(monkeypatch, tmp_path, 'dermamnist')
  data = bytearray(path.read_bytes())
  data[-1] ^= 0xFF
  path.write_bytes(bytes(data))
  with pytest.raises(ChecksumError) as error:
    spec.routes[0].fetch(spec, FetchContext(tmp_path))
  message = str(error.value)
  assert '\n' not in message
  assert re.match(rf'{re.escape(str(path))}: md5 [0-9a-f]{{32}} is not the md5 published by the source '
                  r'\([0-9a-f]{32}\); the file is truncated, corrupt', message)


def test_wrong_layout_is_named(tmp_path):
  path = tmp_path / 'x.npz'
  np.savez(path, train_images=np.zeros((2, 28, 28), np.uint8), train_labels=np.zeros((2, 1), np.uint8))
  with pytest.raises(ValueError, match=r"x\.npz: no test_images"):
    medmnist.read_npz(path, ('train', 'test'), 1, 2)
  with pytest.raises(ValueError, match=r'train_images are uint8\(2, 28, 28, 1\), expected uint8 \(N, H, W, 3\)'):
    medmnist.read_npz(path, ('train',), 3, 2)


def test_without_the_file_or_the_network_the_error_lists_both_routes(monkeypatch, tmp_path, capsys):
  def offline(url, dest, timeout_s):
    import socket, urllib.error
    raise urllib.error.URLError(socket.gaierror(-3, 'Temporary failure in name resolution'))

  monkeypatch.setattr(archives, 'download', offline)
  assert prepare.main(['pathmnist', '--data-dir', str(tmp_path)]) == 1
  err = capsys.readouterr().err
  assert err.count('\n') == 1
  assert err.startswith('error: pathmnist: no source could provide the data (the network is unreachable for: '
                        'download from zenodo.org): ')
  assert f'[the MedMNIST npz in <data dir>/pathmnist/raw] {tmp_path / "pathmnist" / "raw"} has no pathmnist.npz' in err
  assert ('[download from zenodo.org] zenodo.org is unreachable (URLError: <urlopen error [Errno -3] Temporary '
          f'failure in name resolution>); offline: put pathmnist.npz into {tmp_path / "pathmnist" / "raw"}') in err
