"""Array-pinned vs raw-pinned-only splits, and the pinned-file checks of mi_jax.data.archives."""

import dataclasses

import numpy as np
import pytest

import mi_jax.data
from mi_jax.data import archives, registry
from mi_jax.data.idx import ChecksumError
from tests.data import fixtures


def _unpinned(spec, counts=True):
  return dataclasses.replace(spec, splits={
      s: registry.SplitSpec(v.num_examples, v.class_counts if counts else None) for s, v in spec.splits.items()})


def test_a_raw_pinned_split_is_checked_by_shape_dtype_and_counts_not_by_hash():
  arrays = fixtures.make_arrays()
  spec = _unpinned(fixtures.make_spec(arrays))
  assert not spec.arrays_pinned and fixtures.make_spec(arrays).arrays_pinned
  images, labels = arrays['train']
  registry.verify_arrays(spec, 'train', images ^ 1, labels, origin='r')  # other pixels: no array pin
  moved = labels.copy()
  moved[0] = 1  # a class-0 example relabelled
  with pytest.raises(ValueError, match=r'^r: train class counts \(3, 5, 4\) are not the official \(4, 4, 4\)$'):
    registry.verify_arrays(spec, 'train', images, moved, origin='r')
  with pytest.raises(ValueError, match=r'train images are uint8\(11, 4, 4, 1\), expected uint8\(12, 4, 4, 1\)'):
    registry.verify_arrays(spec, 'train', images[1:], labels[1:], origin='r')
  registry.verify_arrays(_unpinned(spec, counts=False), 'train', images, moved, origin='r')


def test_raw_pinned_data_are_cached_and_reloaded_by_the_manifest(monkeypatch, tmp_path):
  arrays = fixtures.make_arrays()
  route = fixtures.FakeRoute('good', arrays)
  spec = dataclasses.replace(_unpinned(fixtures.make_spec(arrays)), routes=(route,))
  monkeypatch.setitem(registry.DATASETS, spec.name, spec)
  for _ in range(2):
    images, _ = mi_jax.data.load('tiny', 'test', data_dir=tmp_path)
    np.testing.assert_array_equal(images, arrays['test'][0])
  assert route.calls == 1
  npz = tmp_path / 'tiny' / 'test.npz'
  np.savez(npz, images=arrays['test'][0] ^ 1, labels=arrays['test'][1])  # tampered: the manifest catches it
  with pytest.raises(ChecksumError, match='does not match the manifest'):
    mi_jax.data.cache.read_split(tmp_path, 'tiny', 'test')


def test_pinned_file_size_and_digest_errors_say_whose_pin_it_is(tmp_path):
  path = tmp_path / 'f.bin'
  path.write_bytes(b'hello')
  ours = archives.PinnedFile('f.bin', archives.file_digest(path, 'sha256'), size=5)
  archives.verify_file(path, ours)
  with pytest.raises(ChecksumError, match=r'f\.bin: 5 bytes, the pinned f\.bin has 6; '):
    archives.verify_file(path, dataclasses.replace(ours, size=6))
  published = archives.PinnedFile('f.bin', '0' * 32, algorithm='md5', published=True)
  with pytest.raises(ChecksumError, match=r'f\.bin: md5 5d41402abc4b2a76b9719d911017c592 is not the md5 published '
                                          r'by the source \(0{32}\)'):
    archives.verify_file(path, published)
