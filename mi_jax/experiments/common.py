"""What every experiment does around its science: config errors, the
workdir (refuse a finished run or another config, reuse finished rows) and
atomic writes of rows, figures and the final results.

A run's workdir holds ``config.json`` (the whole config), one folder per
point with its own ``config.json``, ``row.json`` and ``figure.npz``, and
at the end ``results.json`` (written last: its presence marks the run
finished, and it is never overwritten). The workdir may be a local path or
an object store (``gs://bucket/run``): every file goes through
:mod:`mi_jax.utils.storage`.
"""

from __future__ import annotations

import io
import json
import os
from typing import Iterable, Mapping, NamedTuple, Optional, Sequence

import numpy as np

from mi_jax.utils import config_rules as rules
from mi_jax.utils import results as results_io
from mi_jax.utils import storage
from mi_jax.utils import workdir as workdir_lib


class ConfigError(ValueError):
  """A config value that cannot run; the message (one line) names the field."""


def check(ok: bool, message: str) -> None:
  if not ok:
    raise ConfigError(message)


def check_fields(config, table) -> None:
  """:func:`mi_jax.utils.config_rules.check_fields` with a :class:`ConfigError`."""
  try:
    rules.check_fields(config, table)
  except ValueError as error:
    raise ConfigError(str(error)) from None


def config_json(config) -> dict:
  """The config as plain JSON (what ``config.json`` holds and ``config_hash`` hashes)."""
  return json.loads(config.to_json_best_effort())


def write_npz(path: str, arrays: Mapping[str, np.ndarray]) -> None:
  """A compressed ``.npz``, written atomically (it replaces a stale one)."""
  buffer = io.BytesIO()
  np.savez_compressed(buffer, **arrays)
  results_io.write_bytes_atomic(path, buffer.getvalue(), overwrite=True)


class Point(NamedTuple):
  """One unit of work with its own row: ``key`` (how the run addresses it),
  ``directory``, ``config_json`` (the JSON its row's ``config_hash`` was
  taken of) and ``expect`` (row fields a reused row must have)."""

  key: object
  directory: str
  config_json: dict
  expect: Optional[Mapping] = None


def check_workdir(config, workdir: str, points: Iterable[Point], *, figure_keys: Sequence[str],
                  point_configs: bool, may_differ: Sequence[str] = ()) -> dict:
  """Refuses a workdir that holds a finished run or another config, before
  anything is written; returns {key: (row, figure)} of the points finished
  earlier (a row whose config hash matches and whose figure is whole).

  ``point_configs``: each point folder also holds its own ``config.json``,
  which must match the point's config. ``may_differ``: top-level config
  blocks a resumed run may change (the surrogate experiment's ``sweep``: a
  grown grid reuses the points it shares with the old one).
  """
  results_path = os.path.join(workdir, 'results.json')
  if storage.exists(results_path):
    raise FileExistsError(f"{results_path} exists: this workdir holds a finished run; choose a new --workdir")
  workdir_lib.check_config(os.path.join(workdir, 'config.json'), config_json(config), ignore=may_differ)
  finished = {}
  for point in points:
    expected = point.config_json
    if point_configs:
      workdir_lib.check_config(os.path.join(point.directory, 'config.json'), expected)
    row_path = os.path.join(point.directory, 'row.json')
    done = workdir_lib.finished_point(
        row_path, os.path.join(point.directory, 'figure.npz'), config_hash=results_io.config_hash(expected),
        figure_keys=tuple(figure_keys), **({} if point.expect is None else {'expect': dict(point.expect)}))
    if done is not None:
      finished[point.key] = done
  return finished


def start_run(config, workdir: str, *, writes: bool) -> None:
  """Creates the workdir and records the run's config (process 0 only writes)."""
  storage.makedirs(workdir)
  if writes:
    results_io.write_json_atomic(os.path.join(workdir, 'config.json'), config_json(config), overwrite=True)


def save_point(directory: str, row: dict, figure: Mapping[str, np.ndarray], *, writes: bool) -> None:
  """The point's figure, then its row: a row without its figure is never reused."""
  if writes:
    write_npz(os.path.join(directory, 'figure.npz'), figure)
    results_io.write_json_atomic(os.path.join(directory, 'row.json'), row, overwrite=True)


def finish_run(workdir: str, rows: list, *, markdown: str, figures: Sequence[str] = ()) -> None:
  """``results.md``, then ``results.json`` last (its presence marks the run finished)."""
  results_io.write_text_atomic(os.path.join(workdir, 'results.md'), markdown, overwrite=True)
  workdir_lib.write_final(os.path.join(workdir, 'results.json'), rows)
  print(f"results table: {os.path.join(workdir, 'results.md')}")
  for path in figures:
    print(f"figure: {path}")
