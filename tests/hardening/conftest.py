"""The ``stand_in_points`` fixture: the experiment's workdir logic without its training."""

import os

import numpy as np
import pytest

from mi_jax import data as mi_data
from mi_jax.experiments import surrogate as experiment
from mi_jax.utils import results as results_io
from mi_jax.experiments import sweep
from tests.helpers import synthetic_digits


@pytest.fixture
def stand_in_points(monkeypatch):
  """Synthetic data and a run_point that only makes a well-formed row (the names
  of the points it ran are returned): the workdir logic around the points is what
  these tests exercise."""
  images, labels = synthetic_digits(96, seed=0)  # SYNTHETIC (unit test only)
  split = mi_data.ProtocolSplit(images[:64], labels[:64], images[64:], labels[64:])
  monkeypatch.setattr(experiment.mi_data, 'load_sparse_guard', lambda *a, **k: split)
  calls = []

  def run_point(config, split, *, mesh, workdir, judge=None, judged_private=None, attacked=None):
    calls.append(os.path.basename(workdir))
    os.makedirs(workdir, exist_ok=True)
    lam = sweep.get_knob(config, config.defense.name)
    row = {'dataset': config.dataset, 'setting': config.setting, 'defense': config.defense.name, 'lam': lam,
           'knob': sweep.knob_symbol(config.defense.name), 'protocol': config.protocol, 'seed': config.seed,
           'accuracy': 0.5, 'psnr': 10.0 + (lam or 0), 'ssim': 0.1, 'psnr_untrained_decoder': 5.0,
           'ssim_untrained_decoder': 0.0, 'config_hash': results_io.config_hash(experiment.point_json(config)),
           'code_version': 'test'}
    figure = {'originals': np.zeros((4, 28, 28, 1), np.float32),
              'reconstructions': np.full((4, 28, 28, 1), 0.5, np.float32)}
    return row, figure

  monkeypatch.setattr(experiment, 'run_point', run_point)
  return calls
