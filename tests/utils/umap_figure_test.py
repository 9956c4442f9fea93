"""SG Fig. 4 rendering: layout, atomic no-overwrite writes, and UMAP on tiny features."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from mi_jax.utils import umap_figure


def _png_size(path):
  with open(path, 'rb') as f:
    header = f.read(24)
  assert header[:8] == b'\x89PNG\r\n\x1a\n'
  return struct.unpack('>II', header[16:24])  # (width, height) from the IHDR chunk


def _panels(rows, cols, n=60, seed=0):
  rng = np.random.default_rng(seed)
  return {r: {c: (rng.normal(size=(n, 2)), rng.integers(0, 10, n)) for c in cols} for r in rows}


def test_figure_layout_and_no_overwrite(tmp_path):
  path = tmp_path / 'fig4.png'
  out = umap_figure.umap_figure(_panels(['mnist', 'fashion'], ['linear', 'conv', 'sparse']), path,
                                panel_px=200, dpi=100)
  assert out == path
  assert _png_size(path) == (3 * 200, 2 * 200 + umap_figure.LEGEND_PX)
  before = path.read_bytes()
  with pytest.raises(FileExistsError):
    umap_figure.umap_figure(_panels(['a'], ['b']), path)
  assert path.read_bytes() == before
  umap_figure.umap_figure(_panels(['a'], ['b']), path, panel_px=150, overwrite=True)
  assert _png_size(path) == (150, 150 + umap_figure.LEGEND_PX)


def test_figure_rejects_ragged_or_malformed_panels(tmp_path):
  panels = _panels(['mnist', 'fashion'], ['linear', 'conv'])
  del panels['fashion']['conv']
  with pytest.raises(ValueError, match='same non-empty columns'):
    umap_figure.umap_figure(panels, tmp_path / 'x.png')
  bad = {'mnist': {'linear': (np.zeros((5, 3)), np.zeros(5, int))}}
  with pytest.raises(ValueError, match=r"panels\['mnist'\]\['linear'\]"):
    umap_figure.umap_figure(bad, tmp_path / 'y.png')
  assert not (tmp_path / 'x.png').exists() and not (tmp_path / 'y.png').exists()


def test_umap_features_figure_end_to_end(tmp_path):
  pytest.importorskip('umap', reason='umap-learn is not installed (pip install umap-learn)')
  rng = np.random.default_rng(1)
  labels = np.repeat(np.arange(3), 60)
  # Three well separated clusters in 20-D stay separated in the 2-D embedding.
  features = rng.normal(size=(180, 20)) + 12.0 * np.eye(20)[labels]
  xy = umap_figure.umap_embedding(features, seed=0)
  assert xy.shape == (180, 2) and np.all(np.isfinite(xy))
  centres = np.stack([xy[labels == k].mean(0) for k in range(3)])
  spread = max(np.linalg.norm(xy[labels == k] - centres[k], axis=1).mean() for k in range(3))
  gaps = [np.linalg.norm(centres[a] - centres[b]) for a in range(3) for b in range(a + 1, 3)]
  assert min(gaps) > 2 * spread
  path = umap_figure.umap_features_figure(
      {'toy': {'dense': (features, labels), 'images': (features.reshape(180, 4, 5, 1), labels)}},
      tmp_path / 'fig.png', panel_px=160)
  assert _png_size(path) == (2 * 160, 160 + umap_figure.LEGEND_PX)


def test_umap_embedding_rejects_too_few_points():
  with pytest.raises(ValueError, match='n_neighbors'):
    umap_figure.umap_embedding(np.zeros((10, 3)))
