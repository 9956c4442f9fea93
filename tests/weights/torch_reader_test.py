"""Tests for the torch-free checkpoint reader, on files torch itself wrote.

The fixtures (tests/weights/fixtures/*.pt) were written by torch 2.13 with
``make_fixtures.py``; the expected arrays came out of torch as ``.npz``.
"""

from __future__ import annotations

import dataclasses
import pathlib
import pickle
import struct
import zipfile

import numpy as np
import pytest

from mi_jax.weights import torch_reader
from mi_jax.weights.torch_reader import UnsafePickleError, read_torch_file

FIXTURES = pathlib.Path(__file__).parent / 'fixtures'


def _expected(name):
  return dict(np.load(FIXTURES / name))


@pytest.mark.parametrize('file_name', ['state_zip.pt', 'state_legacy.pt'])
def test_state_dict_matches_torch(file_name):
  got = read_torch_file(FIXTURES / file_name)
  want = _expected('state_expected.npz')
  assert set(got) == set(want)
  for key, value in want.items():
    array = got[key]
    if key == 'bf16':  # numpy has no bfloat16; the npz holds it as float32
      assert str(array.dtype) == 'bfloat16'
      array = array.astype(np.float32)
    assert array.dtype == value.dtype, key
    assert array.shape == value.shape, key
    np.testing.assert_array_equal(array, value, err_msg=key)


def test_views_are_rebuilt_from_strides_and_offsets():
  got = read_torch_file(FIXTURES / 'state_legacy.pt')
  base = np.arange(24, dtype=np.float32).reshape(4, 6)
  np.testing.assert_array_equal(got['transposed'], base.T)
  np.testing.assert_array_equal(got['sliced'], base[1:3, 2:5])
  np.testing.assert_array_equal(got['shared_view'], base[2])
  assert got['transposed'].flags.c_contiguous  # copies, not views of the file


def test_nested_legacy_checkpoint_is_flattened():
  got = read_torch_file(FIXTURES / 'nested_legacy.pt')
  assert sorted(got) == ['state_dict.a', 'state_dict.b']
  assert got['state_dict.b'].dtype == np.int64


def test_torchscript_archive_gives_state_dict_names():
  got = read_torch_file(FIXTURES / 'tiny_script.pt')
  want = _expected('tiny_script_expected.npz')
  assert set(got) == set(want)
  for key, value in want.items():
    np.testing.assert_array_equal(got[key], value, err_msg=key)


class _RunsCode:
  def __reduce__(self):
    import os  # the classic payload: a shell command run at load time
    return (os.system, (f'touch {self.marker}',))


def _evil_pickle(marker: pathlib.Path) -> bytes:
  evil = _RunsCode()
  evil.marker = str(marker)
  return pickle.dumps({'weight': evil}, protocol=2)


def test_refuses_code_in_a_zip_checkpoint(tmp_path):
  marker = tmp_path / 'pwned'
  path = tmp_path / 'evil.pt'
  with zipfile.ZipFile(path, 'w') as archive:
    archive.writestr('evil/data.pkl', _evil_pickle(marker))
  with pytest.raises(UnsafePickleError, match=r'refusing to load global (posix|os)\.system'):
    read_torch_file(path)
  assert not marker.exists()


def test_refuses_code_in_a_legacy_checkpoint(tmp_path):
  marker = tmp_path / 'pwned'
  path = tmp_path / 'evil.pt'
  with open(path, 'wb') as file:
    for header in (torch_reader._LEGACY_MAGIC, torch_reader._LEGACY_PROTOCOL, {'little_endian': True}):
      pickle.dump(header, file, protocol=2)
    file.write(_evil_pickle(marker))
  with pytest.raises(UnsafePickleError, match='refusing to load global'):
    read_torch_file(path)
  assert not marker.exists()


def test_refuses_os_system_even_when_named_like_torch(tmp_path):
  # GLOBAL opcode naming torch._utils.something_else must not resolve.
  payload = b'\x80\x02ctorch._utils\n_load_from_bytes\nq\x00.'
  path = tmp_path / 'evil.pt'
  with zipfile.ZipFile(path, 'w') as archive:
    archive.writestr('evil/data.pkl', payload)
  with pytest.raises(UnsafePickleError, match='torch._utils._load_from_bytes'):
    read_torch_file(path)


def test_tensor_reading_past_its_storage_is_rejected():
  storage = np.arange(6, dtype=np.float32)
  with pytest.raises(ValueError, match='reads past its storage'):
    torch_reader._rebuild_tensor(storage, 2, (2, 3), (3, 1))
  np.testing.assert_array_equal(
      torch_reader._rebuild_tensor(storage, 1, (2, 2), (1, 2)), [[1, 3], [2, 4]]
  )


def test_legacy_truncated_storage_is_an_error(tmp_path):
  data = (FIXTURES / 'state_legacy.pt').read_bytes()
  path = tmp_path / 'cut.pt'
  path.write_bytes(data[:-10])
  with pytest.raises(ValueError, match='truncated'):
    read_torch_file(path)


def test_legacy_bad_magic_is_an_error(tmp_path):
  path = tmp_path / 'junk.pt'
  path.write_bytes(pickle.dumps(1234, protocol=2))
  with pytest.raises(ValueError, match='magic number'):
    read_torch_file(path)


# ---------------------------------------------------------------------------
# Crafted pickles that try to change the reader's shared allow-list (BUILD).
# Written opcode by opcode (protocol 2), as an attacker would.


def _global(module: str, name: str) -> bytes:
  return b'c' + module.encode() + b'\n' + name.encode() + b'\n'


def _str(text: str) -> bytes:
  data = text.encode()
  return b'X' + struct.pack('<I', len(data)) + data


def _dict(items: dict) -> bytes:
  return b'}(' + b''.join(_str(key) + value for key, value in items.items()) + b'u'


_NONE, _TRUE, _MARK, _TUPLE, _TUPLE2 = b'N', b'\x88', b'(', b't', b'\x86'
_BUILD, _REDUCE, _BINPERSID, _STOP = b'b', b'R', b'Q', b'.'


def _then_run_code(marker: pathlib.Path) -> bytes:
  """What a payload would do next if the BUILD went through: call os.system."""
  return _global('os', 'system') + _MARK + _str(f'touch {marker}') + _TUPLE + _REDUCE + _STOP


_CRAFTED = {
    # The reported attack: FloatStorage's dtype becomes a string for every later load.
    'storage class': lambda: _global('torch', 'FloatStorage') + _dict({'dtype': _str('evil')}) + _BUILD,
    # Slot state: setattr on the shared rebuild function itself.
    'rebuild function': lambda: (_global('torch._utils', '_rebuild_tensor_v2')
                                 + _NONE + _dict({'__defaults__': _MARK + _TRUE + _TUPLE}) + _TUPLE2 + _BUILD),
    'OrderedDict class': lambda: _global('collections', 'OrderedDict') + _dict({'x': _TRUE}) + _BUILD,
    # A storage is shared by every tensor that views it.
    'storage': lambda: (_MARK + _str('storage') + _global('torch', 'FloatStorage') + _str('0') + _str('cpu')
                        + b'K\x02' + _TUPLE + _BINPERSID + _dict({'x': _TRUE}) + _BUILD),
}


def _write_crafted(path: pathlib.Path, payload: bytes, layout: str) -> None:
  if layout == 'zip':
    with zipfile.ZipFile(path, 'w') as archive:
      archive.writestr('evil/data.pkl', payload)
      archive.writestr('evil/data/0', struct.pack('<2f', 1.0, 2.0))
  else:
    with open(path, 'wb') as file:
      for header in (torch_reader._LEGACY_MAGIC, torch_reader._LEGACY_PROTOCOL, {'little_endian': True}):
        pickle.dump(header, file, protocol=2)
      file.write(payload)


# Legacy storages are plain keys (strings) while the pickle runs: no storage case there.
@pytest.mark.parametrize('target,layout', [
    (target, layout) for target in sorted(_CRAFTED) for layout in ('zip', 'legacy')
    if (target, layout) != ('storage', 'legacy')
])
def test_build_on_an_allowed_object_is_refused_and_changes_nothing(tmp_path, target, layout):
  marker = tmp_path / 'pwned'
  path = tmp_path / 'evil.pt'
  _write_crafted(path, b'\x80\x02' + _CRAFTED[target]() + _then_run_code(marker), layout)
  with pytest.raises(UnsafePickleError, match=r'^refusing BUILD on .+: checkpoint classes are read-only') as error:
    read_torch_file(path)
  shown = {'storage class': 'torch.FloatStorage', 'rebuild function': 'torch._utils._rebuild_tensor',
           'OrderedDict class': 'collections.OrderedDict', 'storage': 'a storage of 2 float32'}[target]
  assert str(error.value).startswith(f'refusing BUILD on {shown}')
  assert '\n' not in str(error.value)
  assert not marker.exists()
  # The shared objects are as they were, and the next valid load in this process works.
  assert torch_reader._ALLOWED[('torch', 'FloatStorage')].dtype == np.float32
  assert torch_reader._rebuild_tensor_v2.__defaults__ == (False, None, None)
  for file_name in ('state_zip.pt', 'state_legacy.pt'):
    got = read_torch_file(FIXTURES / file_name)
    want = _expected('state_expected.npz')
    np.testing.assert_array_equal(got['transposed'], want['transposed'])
    assert got['transposed'].dtype == np.float32


def test_the_allow_list_cannot_be_changed_in_place():
  with pytest.raises(TypeError):
    torch_reader._ALLOWED[('os', 'system')] = print
  with pytest.raises(dataclasses.FrozenInstanceError):
    torch_reader._ALLOWED[('torch', 'FloatStorage')].dtype = np.dtype(np.float64)


def test_build_on_a_checkpoints_own_ordered_dict_still_works(tmp_path):
  # torch pickles a state_dict's ``_metadata`` with BUILD on the OrderedDict it made.
  payload = (b'\x80\x02' + _global('collections', 'OrderedDict') + b')' + _REDUCE
             + _dict({'_metadata': _dict({'': _TRUE})}) + _BUILD + _STOP)
  path = tmp_path / 'ok.pt'
  _write_crafted(path, payload, 'zip')
  assert read_torch_file(path) == {}
