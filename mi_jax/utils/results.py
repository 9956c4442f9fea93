"""Result rows (their schema), atomic writes and provenance.

The tables rendered from rows live in :mod:`mi_jax.experiments.tables`.

A result row is one (dataset, setting, defense, λ, protocol, seed) run:

    {'dataset': 'mnist', 'setting': 'split', 'defense': 'sparse-guard',
     'lam': 0.25, 'protocol': 'corrected', 'seed': 0,
     'accuracy': 0.9873,            # fraction of the target's test split
     'psnr': 11.42, 'ssim': 0.213,  # mean over the reconstructed private images
     'config_hash': '3f2a9c0d1b7e', 'code_version': '0e85fbf…+dirty'}

``lam`` is the value of the defense's swept hyperparameter (its knob: λ
for the sparse-coding defenses, the noise scale b or σ, a regulariser weight
…) and ``knob`` its symbol (default 'λ'); None for defenses without one.
Any further keys (fid, knn_distance, dp_epsilon, theta_c, …) are kept.
accuracy is a fraction; the table shows percent.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import subprocess
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence, Union

from mi_jax.utils.storage import StoredPath, write_bytes_atomic  # write_bytes_atomic: re-exported

SETTINGS = ('end_to_end', 'split')
PROTOCOLS = ('corrected', 'sg_legacy')
REQUIRED_KEYS = (
    'dataset', 'setting', 'defense', 'lam', 'protocol', 'seed',
    'accuracy', 'psnr', 'ssim', 'config_hash', 'code_version',
)
CONFIG_HASH_LENGTH = 12

PathLike = Union[str, os.PathLike]


# --------------------------------------------------------------------------- rows


def _is_number(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_choice(row, key: str, allowed: Sequence[str]) -> None:
  if row[key] not in allowed:
    raise ValueError(f"{key} must be one of {tuple(allowed)}, got {row[key]!r}")


def _check_text(row, key: str) -> None:
  if not isinstance(row[key], str) or not row[key].strip():
    raise ValueError(f"{key} must be a non-empty string, got {row[key]!r}")


def validate_row(row: Mapping[str, Any]) -> dict:
  """Checks one result row; returns a plain-dict copy with lam and metrics as floats.

  Raises a one-line ValueError naming the first bad field.
  """
  if not isinstance(row, Mapping):
    raise ValueError(f"a result row must be a mapping, got {type(row).__name__}")
  missing = [k for k in REQUIRED_KEYS if k not in row]
  if missing:
    raise ValueError(f"result row is missing keys {missing}; required: {list(REQUIRED_KEYS)}")
  bad_keys = [k for k in row if not isinstance(k, str)]
  if bad_keys:
    raise ValueError(f"result row keys must be strings, got {bad_keys!r}")
  out = dict(row)
  for key in ('dataset', 'defense', 'code_version'):
    _check_text(out, key)
  _check_choice(out, 'setting', SETTINGS)
  _check_choice(out, 'protocol', PROTOCOLS)
  lam = out['lam']
  # The knob's value (λ, σ, b, …; label smoothing's α may be negative).
  if lam is not None and not (_is_number(lam) and math.isfinite(lam)):
    raise ValueError(f"lam must be None or a finite number, got {lam!r}")
  out['lam'] = None if lam is None else float(lam)
  if isinstance(out['seed'], bool) or not isinstance(out['seed'], int):
    raise ValueError(f"seed must be an integer, got {out['seed']!r}")
  acc = out['accuracy']
  if not (_is_number(acc) and 0.0 <= acc <= 1.0):
    raise ValueError(
        f"accuracy must be a fraction in [0, 1], got {acc!r} (store fractions; tables show percent)")
  # PSNR/SSIM may be ±inf or NaN under sg_legacy (the SG code's averages carry them).
  for key in ('psnr', 'ssim'):
    if not _is_number(out[key]):
      raise ValueError(f"{key} must be a number, got {out[key]!r}")
    if out['protocol'] == 'corrected' and math.isnan(out[key]):
      raise ValueError(f"{key} is NaN in a protocol='corrected' row")
    out[key] = float(out[key])
  h = out['config_hash']
  if not (isinstance(h, str) and re.fullmatch(f'[0-9a-f]{{{CONFIG_HASH_LENGTH}}}', h)):
    raise ValueError(
        f"config_hash must be {CONFIG_HASH_LENGTH} lowercase hex characters (see config_hash()), "
        f"got {h!r}")
  return out


def _row_key(row: Mapping) -> tuple:
  return (row['dataset'], row['protocol'], row['defense'], row['lam'], row['setting'], row['seed'])


def validate_rows(rows: Iterable[Mapping[str, Any]]) -> list[dict]:
  """validate_row on each row, and no two rows for the same run (all key fields and seed)."""
  out, seen = [], set()
  for i, row in enumerate(rows):
    try:
      checked = validate_row(row)
    except ValueError as error:
      raise ValueError(f"row {i}: {error}") from None
    key = _row_key(checked)
    if key in seen:
      raise ValueError(
          f"row {i} duplicates dataset/protocol/defense/lam/setting/seed {key!r}")
    seen.add(key)
    out.append(checked)
  return out


# --------------------------------------------------------------------------- atomic writes
# All through mi_jax.utils.storage.write_bytes_atomic: a local path or an
# object store (gs://…), each with its own rule (that module's docstring).


def write_text_atomic(path: PathLike, text: str, *, overwrite: bool = False) -> StoredPath:
  """UTF-8 ``text`` to ``path`` atomically (see :func:`write_bytes_atomic`)."""
  if not isinstance(text, str):
    raise ValueError(f"text must be a str, got {type(text).__name__}")
  return write_bytes_atomic(path, text.encode('utf-8'), overwrite=overwrite)


def write_json_atomic(path: PathLike, obj: Any, *, overwrite: bool = False) -> StoredPath:
  """``obj`` as indented JSON (with a final newline) to ``path`` atomically.

  NaN and ±inf are written as NaN/Infinity, which Python's json reads back
  (sg_legacy averages can be −inf); strict JSON parsers reject them.
  """
  try:
    text = json.dumps(obj, indent=2, ensure_ascii=False) + '\n'
  except TypeError as error:
    raise ValueError(f"obj must be JSON-serialisable: {error}") from None
  return write_text_atomic(path, text, overwrite=overwrite)


# --------------------------------------------------------------------------- provenance


def canonical_json(obj: Any) -> str:
  """Sorted keys, no whitespace, UTF-8 as is: equal configs give equal text."""
  return json.dumps(obj, sort_keys=True, separators=(',', ':'), ensure_ascii=False, allow_nan=False)


def config_hash(config: Any) -> str:
  """First 12 hex characters of sha256(canonical JSON of the config).

  ``config`` is a mapping, a JSON string (parsed first, so key order and
  whitespace do not matter) or anything with ``to_dict()`` (ml_collections
  ConfigDict). Tuples hash like lists; 1 and 1.0 differ.
  """
  if isinstance(config, (str, bytes)):
    try:
      config = json.loads(config)
    except json.JSONDecodeError as error:
      raise ValueError(f"config string is not valid JSON: {error}") from None
  elif hasattr(config, 'to_dict'):
    config = config.to_dict()
  try:
    text = canonical_json(config)
  except (TypeError, ValueError) as error:
    raise ValueError(f"config must be JSON-serialisable without NaN/inf: {error}") from None
  return hashlib.sha256(text.encode('utf-8')).hexdigest()[:CONFIG_HASH_LENGTH]


def _package_root() -> Path:
  return Path(__file__).resolve().parents[1]  # …/mi_jax


def _git(args: Sequence[str], cwd: Path) -> str:
  return subprocess.run(
      ['git', *args], cwd=cwd, capture_output=True, text=True, check=True, timeout=30,
  ).stdout.strip()


def _package_version() -> str:
  try:
    from importlib.metadata import version
    return version('mi_jax')
  except Exception:  # Not installed (e.g. run from a source tree copy).
    import mi_jax
    return mi_jax.__version__


def code_version() -> str:
  """The git commit of the mi_jax checkout, '+dirty' when it has changes; else the package version.

  "Changes" are what ``git status --porcelain`` lists: modified, staged and
  untracked files that .gitignore does not exclude (new code counts; the
  ignored results/ and workdirs/ do not).
  """
  package = _package_root()
  try:
    top = Path(_git(['rev-parse', '--show-toplevel'], package))
    # Only our own checkout counts, not a repository that merely contains an installed copy.
    if (top / 'mi_jax').resolve() != package:
      return _package_version()
    commit = _git(['rev-parse', 'HEAD'], top)
    dirty = bool(_git(['status', '--porcelain'], top))
  except (OSError, subprocess.SubprocessError):
    return _package_version()
  return commit + ('+dirty' if dirty else '')
