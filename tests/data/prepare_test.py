"""The prepare command: caches, is idempotent, fails with one line and a non-zero status."""

import subprocess
import sys

from mi_jax.data import prepare, registry
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
