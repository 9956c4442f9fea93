"""``config.json`` + ``metrics.jsonl`` in the workdir, written by process 0."""

from __future__ import annotations

import json
import math
import os

import jax
import numpy as np


def _plain(value):
  value = np.asarray(value)
  return value.item() if value.ndim == 0 else value.tolist()


class MetricWriter:
  """Appends one JSON line per record: ``{"phase": …, "step": …, …}``."""

  def __init__(self, workdir: str, filename: str = 'metrics.jsonl'):
    self.path = os.path.join(workdir, filename)
    self.enabled = jax.process_index() == 0
    if self.enabled:
      os.makedirs(workdir, exist_ok=True)

  def write(self, phase: str, step: int, measurements: dict) -> None:
    if not self.enabled:
      return
    record = {'phase': phase, 'step': int(step)}
    for key, value in measurements.items():
      value = _plain(value)
      record[key] = None if isinstance(value, float) and not math.isfinite(value) else value
    with open(self.path, 'a') as f:
      f.write(json.dumps(record) + '\n')
