"""Shared helpers of the hardening tests (issue 10): a tiny config and runs of it."""

import os

from mi_jax.experiments import surrogate as experiment
from tests.helpers import load_config, mesh_of

POINTS = ('no-defense_split_corrected', 'sparse-guard_lam0.25_split_corrected')  # the tiny sweep


def tiny(**changes):
  """The tiny config (no evaluation classifier) with ``changes`` (dotted path → value)."""
  config = load_config('tiny')
  with config.unlocked():
    config.metrics.judge_scale = None  # no evaluation classifier to train
    for path, value in changes.items():
      *parents, leaf = path.split('.')
      node = config
      for part in parents:
        node = node[part]
      node[leaf] = value
  return config


def run(config, workdir):
  return experiment.run(config, str(workdir), mesh=mesh_of(8))


def finished_but_not_gathered(config, workdir):
  """A run whose points finished, as a killed run leaves it (no results.json)."""
  rows = run(config, workdir)
  os.remove(workdir / 'results.json')
  return rows
