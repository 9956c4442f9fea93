"""The strict IDX parser: valid files parse; every kind of bad file is a one-line ValueError."""

import gzip
import struct

import numpy as np
import pytest

from mi_jax.data import idx
from tests.data.fixtures import idx_bytes

IMAGES = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
GOOD = idx_bytes(IMAGES)


@pytest.mark.parametrize('dtype', ['uint8', 'int8', 'int16', 'int32', 'float32', 'float64'])
def test_every_idx_dtype_round_trips_in_native_byte_order(dtype):
  array = (np.arange(12).reshape(3, 4) - 5).astype(dtype)
  parsed = idx.parse_idx(idx_bytes(array), 'x.idx')
  assert parsed.dtype == np.dtype(dtype) and parsed.dtype.isnative
  np.testing.assert_array_equal(parsed, array)
  assert parsed.flags.writeable and parsed.flags.c_contiguous


def test_expected_dtype_and_shape_with_wildcards_are_accepted():
  parsed = idx.parse_idx(GOOD, 'f', dtype=np.uint8, shape=(None, 3, 4))
  np.testing.assert_array_equal(parsed, IMAGES)


def _header(code=0x08, dims=(2, 3, 4)):
  return bytes([0, 0, code, len(dims)]) + struct.pack(f'>{len(dims)}I', *dims)


@pytest.mark.parametrize('data,kwargs,pattern', [
    (b'\x00\x00\x08', {}, r'truncated IDX file: 3 bytes, the magic number alone needs 4'),
    (gzip.compress(GOOD, mtime=0), {}, r'is gzip-compressed'),
    (b'PK\x03\x04' + GOOD[4:], {}, r'not an IDX file: magic number 504b0304 must start with 0000'),
    (_header(code=0x07) + IMAGES.tobytes(), {}, r'unknown IDX dtype code 0x07; allowed: 0x08, 0x09'),
    (b'\x00\x00\x08\x00', {}, r'ndim 0'),
    (_header()[:10], {}, r'truncated IDX header: ndim 3 needs 16 bytes, file has 10'),
    (GOOD[:-5], {}, r'truncated: header says shape \(2, 3, 4\) uint8 = 40 bytes with the header, file has 35'),
    (GOOD + b'\x00', {}, r'has trailing bytes: .* file has 41'),
    (_header(dims=(2**31, 2**31, 2**31)) + b'\x00' * 8, {}, r'truncated: header says shape \(2147483648,'),
    (idx_bytes(IMAGES.astype(np.int16)), {'dtype': np.uint8}, r'IDX dtype is int16, expected uint8'),
    (GOOD, {'shape': (None, 28, 28)}, r'IDX shape is \(2, 3, 4\), expected \(\'any\', 28, 28\)'),
    (GOOD, {'shape': (24,)}, r'IDX shape is \(2, 3, 4\), expected \(24,\)'),
])
def test_bad_files_raise_one_line_value_error_naming_the_file(data, kwargs, pattern):
  with pytest.raises(ValueError, match=pattern) as error:
    idx.parse_idx(data, 'some/dir/train-images-idx3-ubyte', **kwargs)
  message = str(error.value)
  assert message.startswith('some/dir/train-images-idx3-ubyte: ')
  assert '\n' not in message


def test_read_idx_reads_plain_and_gzip_files_by_content(tmp_path):
  plain = tmp_path / 'a-idx3-ubyte'
  plain.write_bytes(GOOD)
  # A gzip file is recognised by its magic, whatever its name.
  zipped = tmp_path / 'b-idx3-ubyte'
  zipped.write_bytes(gzip.compress(GOOD))
  for path in (plain, zipped):
    np.testing.assert_array_equal(idx.read_idx(path, sha256=idx.sha256_hex(GOOD)), IMAGES)


@pytest.mark.parametrize('mangle,pattern', [
    (lambda z: z[:-12], r'corrupt or truncated gzip file'),
    (lambda z: z[:10] + bytes(b ^ 0xFF for b in z[10:30]) + z[30:], r'corrupt or truncated gzip file'),
])
def test_corrupt_or_truncated_gzip_is_a_one_line_value_error(tmp_path, mangle, pattern):
  path = tmp_path / 'train-images-idx3-ubyte.gz'
  path.write_bytes(mangle(gzip.compress(GOOD)))
  with pytest.raises(ValueError, match=pattern) as error:
    idx.read_idx(path)
  assert str(error.value).startswith(str(path)) and '\n' not in str(error.value)


def test_sha256_mismatch_is_a_checksum_error_before_parsing(tmp_path):
  path = tmp_path / 'train-labels-idx1-ubyte.gz'
  path.write_bytes(gzip.compress(GOOD))
  wrong = '0' * 64
  with pytest.raises(idx.ChecksumError, match=r'sha256 mismatch: expected 0{64}, got [0-9a-f]{64} \(40 bytes\)') as error:
    idx.read_idx(path, sha256=wrong)
  assert isinstance(error.value, ValueError) and '\n' not in str(error.value)
  assert str(error.value).startswith(str(path))


def test_sha256_pins_the_decompressed_bytes_not_the_gzip_header(tmp_path):
  # Debian rewrote the gzip headers of Fashion-MNIST; the pin must not care.
  a, b = tmp_path / 'a.gz', tmp_path / 'b.gz'
  a.write_bytes(gzip.compress(GOOD, mtime=0))
  b.write_bytes(gzip.compress(GOOD, mtime=1504176606))
  assert a.read_bytes() != b.read_bytes()
  for path in (a, b):
    idx.read_idx(path, sha256=idx.sha256_hex(GOOD))
