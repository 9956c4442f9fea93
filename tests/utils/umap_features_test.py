"""SG Fig. 4's experiment, run() on SYNTHETIC digits (unit test only): probes,
features, figure and summary, refusal before anything is written. UMAP itself
is tests/utils/umap_figure_test.py's; here a projection stands in for it."""

import json

import numpy as np
import pytest

from mi_jax.experiments import umap_features as command
from mi_jax.utils import umap_figure
from tests.helpers import load_config, mesh_of, synthetic_digits

N_POINTS = 40


@pytest.fixture
def synthetic_data(monkeypatch):
  """Synthetic official splits, and the first two feature coordinates in place of UMAP (seconds, not minutes)."""
  splits = {'train': synthetic_digits(256, seed=5), 'test': synthetic_digits(64, seed=6)}
  monkeypatch.setattr(command.mi_data, 'load', lambda name, which, **k: splits[which])
  embedded = []

  def projection(features, *, seed, **kwargs):
    embedded.append(np.asarray(features).shape)
    return np.asarray(features, np.float64).reshape(len(features), -1)[:, :2]

  monkeypatch.setattr(umap_figure, 'umap_embedding', projection)
  return embedded


def tiny_config(**umap):
  config = load_config('tiny', 'configs/umap_features.py')
  config.umap.datasets = ('mnist',)
  config.umap.n_points = N_POINTS
  config.umap.train_limit = 256
  for key, value in umap.items():
    config.umap[key] = value
  return config


def test_run_writes_the_figure_and_the_summary_once(tmp_path, synthetic_data):
  config = tiny_config()
  summary = command.run(config, str(tmp_path), mesh=mesh_of(8))
  saved = json.loads((tmp_path / command.SUMMARY).read_text())
  assert saved == json.loads(json.dumps(summary))
  assert saved['datasets'] == ['mnist'] and saved['models'] == list(command.MODELS)
  assert (saved['n_points'], saved['train_limit'], saved['epochs'], saved['seed']) == (N_POINTS, 256, 1, 0)
  assert set(saved['probe_test_accuracy']['mnist']) == {'linear', 'conv'}
  assert all(0 <= a <= 1 for a in saved['probe_test_accuracy']['mnist'].values())
  assert saved['sparse_front']['features'] == list(config.defense.features)
  assert (tmp_path / command.FIGURE).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  # One panel per model: the linear probe's second hidden layer, the conv
  # probe's pooled maps, the Sparse-Guard front's codes.
  _, second_layer_atoms = config.defense.features
  assert synthetic_data == [(N_POINTS, command.LINEAR_WIDTH), (N_POINTS, 7, 7, 64),
                            (N_POINTS, 28, 28, second_layer_atoms)]
  before = (tmp_path / command.FIGURE).read_bytes()
  with pytest.raises(FileExistsError, match='umap_fig4.png already exists'):
    command.run(config, str(tmp_path), mesh=mesh_of(8))
  assert (tmp_path / command.FIGURE).read_bytes() == before


def test_run_refuses_before_it_writes_anything(tmp_path, synthetic_data):
  (tmp_path / command.SUMMARY).write_text('{}')
  with pytest.raises(FileExistsError, match='umap_fig4.json already exists'):
    command.run(tiny_config(), str(tmp_path), mesh=mesh_of(8))
  with pytest.raises(ValueError, match=r'umap.n_points must be an integer >= 16'):
    command.run(tiny_config(n_points=15), str(tmp_path / 'new'), mesh=mesh_of(8))
  with pytest.raises(ValueError, match=r'umap.datasets must be a non-empty tuple of datasets'):
    command.run(tiny_config(datasets=('imagenet',)), str(tmp_path / 'new'), mesh=mesh_of(8))
  assert [p.name for p in tmp_path.iterdir()] == [command.SUMMARY] and not synthetic_data
