"""Batching: determinism, drop-remainder epochs, exact resume, per-process slices, 8-device arrays."""

import itertools

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from mi_jax.data import batching
from mi_jax.data.batching import Position

N, BATCH = 100, 16  # 6 full batches per epoch, 4 examples dropped


def _arrays(n=N):
  images = np.arange(n, dtype=np.uint8).reshape(n, 1, 1, 1)
  labels = np.arange(n, dtype=np.int64)
  return images, labels


def _take(iterator, k):
  return list(itertools.islice(iterator, k))


def _assert_same(a, b):
  assert [x.position for x in a] == [y.position for y in b]
  for x, y in zip(a, b):
    for u, v in zip(x.data, y.data):
      np.testing.assert_array_equal(u, v)


def test_same_seed_same_batches():
  a = _take(batching.batches(_arrays(), BATCH, seed=7, process_index=0, process_count=1), 15)
  b = _take(batching.batches(_arrays(), BATCH, seed=7, process_index=0, process_count=1), 15)
  _assert_same(a, b)
  c = _take(batching.batches(_arrays(), BATCH, seed=8, process_index=0, process_count=1), 1)
  assert not np.array_equal(a[0].data[1], c[0].data[1])


def test_epochs_are_fresh_permutations_with_the_remainder_dropped():
  got = _take(batching.batches(_arrays(), BATCH, seed=0, process_index=0, process_count=1), 12)
  assert [b.position for b in got[:7]] == [Position(0, s) for s in range(6)] + [Position(1, 0)]
  for epoch in (0, 1):
    seen = np.concatenate([b.data[1] for b in got if b.position.epoch == epoch])
    assert len(seen) == 96 and len(set(seen)) == 96  # no repeats; 4 dropped
    want = np.random.default_rng([0, epoch]).permutation(N)[:96]
    np.testing.assert_array_equal(seen, want)  # the documented order
  assert not np.array_equal(got[0].data[1], got[6].data[1])
  assert all(b.data[0].dtype == np.uint8 for b in got)  # images stay uint8


@pytest.mark.parametrize('stop_after', [3, 5, 6, 11])  # mid-epoch, last step, across epochs
def test_resume_from_a_saved_position_is_exact(stop_after):
  straight = _take(batching.batches(_arrays(), BATCH, seed=3, process_index=0, process_count=1), 14)
  saved = straight[stop_after - 1].next_position
  resumed = _take(batching.batches(_arrays(), BATCH, seed=3, start=saved, process_index=0, process_count=1),
                  14 - stop_after)
  _assert_same(resumed, straight[stop_after:])


def test_positions_survive_a_plain_tuple_round_trip():
  b = next(batching.batches(_arrays(), BATCH, seed=0, start=(2, 5), process_index=0, process_count=1))
  assert b.position == Position(2, 5) and b.next_position == (3, 0)
  assert tuple(b.next_position) == (3, 0)  # JSON-able as a list


def test_num_epochs_stops_the_iterator():
  got = list(batching.batches(_arrays(), BATCH, seed=0, num_epochs=2, process_index=0, process_count=1))
  assert len(got) == 12


def test_local_batch_agrees_with_the_iterator():
  it = _take(batching.batches(_arrays(), BATCH, seed=5, process_index=0, process_count=1), 9)
  for b in it:
    local = batching.local_batch(_arrays(), BATCH, seed=5, position=b.position, process_index=0, process_count=1)
    np.testing.assert_array_equal(local[1], b.data[1])


def test_processes_take_contiguous_disjoint_slices_of_the_global_batch():
  position = Position(1, 2)
  global_rows = batching.global_batch_indices(N, BATCH, seed=9, position=position)
  parts = [
      next(batching.batches(_arrays(), BATCH, seed=9, start=position, process_index=i, process_count=4)).data[1]
      for i in range(4)
  ]
  assert all(len(p) == 4 for p in parts)
  np.testing.assert_array_equal(np.concatenate(parts), global_rows)


def test_default_process_is_jaxs():
  a = next(batching.batches(_arrays(), BATCH, seed=1))
  b = next(batching.batches(_arrays(), BATCH, seed=1, process_index=jax.process_index(),
                            process_count=jax.process_count()))
  np.testing.assert_array_equal(a.data[1], b.data[1])


@pytest.mark.parametrize('kwargs,pattern', [
    ({'batch_size': 0}, r'batch_size must be an integer in \[1, 100\] \(the number of examples\), got 0'),
    ({'batch_size': 101}, r'batch_size must be an integer in \[1, 100\]'),
    ({'batch_size': 16.0}, r'batch_size must be an integer'),
    ({'process_count': 3}, r'batch_size 16 must be divisible by the process count 3'),
    ({'process_index': 4, 'process_count': 4}, r'process_index must be an integer in \[0, 4\), got 4'),
    ({'start': (0, 6)}, r'position must be \(epoch >= 0, step in \[0, 6\)\) for 6 steps per epoch, got \(0, 6\)'),
    ({'start': (-1, 0)}, r'position must be'),
    ({'seed': -2}, r'seed must be an integer >= 0, got -2'),
])
def test_bad_arguments_are_one_line_value_errors(kwargs, pattern):
  options = {'batch_size': BATCH, 'seed': 0, 'process_index': 0, 'process_count': 1, **kwargs}
  batch_size = options.pop('batch_size')
  with pytest.raises(ValueError, match=pattern) as error:
    next(batching.batches(_arrays(), batch_size, **options))
  assert '\n' not in str(error.value)


def test_arrays_of_different_lengths_are_refused():
  with pytest.raises(ValueError, match=r'arrays must be one or more arrays of one length, got lengths \[100, 99\]'):
    next(batching.batches((np.zeros(100), np.zeros(99)), BATCH, seed=0))


# ------------------------------------------------------------- global arrays


def test_eight_fake_devices_are_there():
  assert jax.device_count() == 8, 'tests/conftest.py should force 8 CPU devices'


def test_global_batch_is_sharded_over_the_data_axis():
  mesh = batching.make_data_mesh()
  assert mesh.shape == {'data': 8} and mesh.axis_types == (jax.sharding.AxisType.Auto,)
  images = np.random.default_rng(0).integers(0, 256, size=(N, 28, 28, 1), dtype=np.uint8)
  b = next(batching.batches((images, np.arange(N, dtype=np.int64)), BATCH, seed=0))
  x, y = batching.to_global_array(b.data, mesh)
  assert x.shape == (BATCH, 28, 28, 1) and x.dtype == np.uint8
  assert x.sharding.spec == P('data') and len(x.addressable_shards) == 8
  assert all(s.data.shape == (2, 28, 28, 1) for s in x.addressable_shards)
  np.testing.assert_array_equal(np.asarray(x), b.data[0])
  np.testing.assert_array_equal(np.asarray(y), b.data[1])
  shard_rows = sorted((s.index[0].start, np.asarray(s.data)[0, 0, 0, 0]) for s in x.addressable_shards)
  assert [v for _, v in shard_rows] == list(b.data[0][::2, 0, 0, 0])


def test_global_array_accepts_a_dict_pytree_on_a_smaller_mesh():
  mesh = batching.make_data_mesh(4)
  out = batching.to_global_array({'x': np.zeros((8, 3), np.uint8)}, mesh)
  assert out['x'].shape == (8, 3) and len(out['x'].sharding.device_set) == 4


def test_batch_size_not_divisible_by_the_devices_is_a_one_line_value_error():
  mesh = batching.make_data_mesh()
  with pytest.raises(ValueError, match=r"batch_size 12 must be divisible by the 8 devices on the 'data' mesh axis") as error:
    batching.to_global_array(np.zeros((12, 2), np.uint8), mesh)
  assert '\n' not in str(error.value)


@pytest.mark.parametrize('n', [0, 9, 2.0])
def test_make_data_mesh_validates_the_device_count(n):
  with pytest.raises(ValueError, match=r'num_devices must be an integer in \[1, 8\]'):
    batching.make_data_mesh(n)
