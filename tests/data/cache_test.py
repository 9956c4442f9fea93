"""The prepared cache: round trip, manifest, atomic writes, corruption detection."""

import json
import os

import numpy as np
import pytest

from mi_jax.data import cache
from mi_jax.data.idx import ChecksumError
from tests.data import fixtures


@pytest.fixture
def arrays():
  return fixtures.make_arrays()


def test_round_trip_preserves_arrays_dtypes_and_records_sha256(tmp_path, arrays):
  manifest_path = cache.write_dataset(tmp_path, 'tiny', arrays, source='unit-test fixture')
  manifest = json.loads(manifest_path.read_text())
  assert manifest['source'] == 'unit-test fixture' and manifest['format_version'] == cache.FORMAT_VERSION
  for split, (images, labels) in arrays.items():
    got_images, got_labels = cache.read_split(tmp_path, 'tiny', split)
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)
    assert got_images.dtype == np.uint8 and got_labels.dtype == np.int64
    entry = manifest['splits'][split]
    assert entry['images_sha256'] == cache.array_sha256(images)
    assert entry['labels_sha256'] == cache.array_sha256(labels)
    assert entry['images_shape'] == list(images.shape)


def test_array_sha256_is_byte_order_independent():
  little = np.arange(5, dtype='<i8')
  assert cache.array_sha256(little) == cache.array_sha256(little.astype('>i8'))
  assert cache.array_sha256(little) != cache.array_sha256(little.astype('<i4'))


def test_writes_leave_no_temporary_files_and_readable_permissions(tmp_path, arrays):
  cache.write_dataset(tmp_path, 'tiny', arrays, source='s')
  files = sorted(p.name for p in (tmp_path / 'tiny').iterdir())
  assert files == [cache.OWNER_MARK, 'manifest.json', 'test.npz', 'train.npz']
  assert all(os.stat(tmp_path / 'tiny' / f).st_mode & 0o044 == 0o044 for f in files)


def test_a_failed_write_keeps_the_old_file_and_cleans_up(tmp_path, arrays):
  cache.write_dataset(tmp_path, 'tiny', arrays, source='s')
  target = tmp_path / 'tiny' / 'train.npz'
  before = target.read_bytes()

  def crash(f):
    f.write(b'half a file')
    raise KeyboardInterrupt

  with pytest.raises(KeyboardInterrupt):
    cache._atomic_write(target, crash)
  assert target.read_bytes() == before
  assert not [p for p in target.parent.iterdir() if p.name.endswith('.tmp')]


def test_missing_cache_is_a_cache_miss(tmp_path):
  with pytest.raises(cache.CacheMiss, match=r'no cached copy \(no .*tiny/manifest.json\)'):
    cache.read_split(tmp_path, 'tiny', 'train')


def test_split_missing_from_the_manifest_is_a_cache_miss(tmp_path, arrays):
  cache.write_dataset(tmp_path, 'tiny', {'train': arrays['train']}, source='s')
  with pytest.raises(cache.CacheMiss, match="split 'test' not in"):
    cache.read_split(tmp_path, 'tiny', 'test')


def test_truncated_cache_file_is_a_one_line_value_error(tmp_path, arrays):
  cache.write_dataset(tmp_path, 'tiny', arrays, source='s')
  path = tmp_path / 'tiny' / 'train.npz'
  path.write_bytes(path.read_bytes()[:100])
  with pytest.raises(ValueError, match=r'train.npz: unreadable cache file .*re-run prepare') as error:
    cache.read_split(tmp_path, 'tiny', 'train')
  assert '\n' not in str(error.value)


def test_changed_arrays_fail_the_manifest_sha256(tmp_path, arrays):
  cache.write_dataset(tmp_path, 'tiny', arrays, source='s')
  images, labels = arrays['train']
  np.savez(tmp_path / 'tiny' / 'train.npz', images=images, labels=(labels + 1) % 3)
  with pytest.raises(ChecksumError, match='labels sha256 .* does not match the manifest'):
    cache.read_split(tmp_path, 'tiny', 'train')


def test_arrays_that_differ_from_the_pins_are_rejected_as_stale(tmp_path, arrays):
  cache.write_dataset(tmp_path, 'tiny', arrays, source='s')
  expected = {'images_sha256': '0' * 64, 'labels_sha256': cache.array_sha256(arrays['train'][1])}
  with pytest.raises(ChecksumError, match='images sha256 .* is not the pinned 0{64}; the cache is stale'):
    cache.read_split(tmp_path, 'tiny', 'train', expected=expected)


@pytest.mark.parametrize('text,pattern', [
    ('{not json', 'corrupt manifest'),
    ('{"format_version": 99}', 'format_version must be 1, got 99'),
])
def test_bad_manifest_is_a_one_line_value_error(tmp_path, text, pattern):
  (tmp_path / 'tiny').mkdir()
  (tmp_path / 'tiny' / 'manifest.json').write_text(text)
  with pytest.raises(ValueError, match=pattern) as error:
    cache.read_split(tmp_path, 'tiny', 'train')
  assert '\n' not in str(error.value)


def test_data_dir_resolution_order(monkeypatch, tmp_path):
  monkeypatch.setenv('MI_JAX_DATA_DIR', str(tmp_path / 'env'))
  assert cache.resolve_data_dir(tmp_path / 'arg') == tmp_path / 'arg'
  assert cache.resolve_data_dir() == tmp_path / 'env'
  monkeypatch.delenv('MI_JAX_DATA_DIR')
  monkeypatch.setenv('HOME', str(tmp_path / 'home'))
  assert cache.resolve_data_dir() == tmp_path / 'home' / '.cache' / 'mi_jax' / 'data'
