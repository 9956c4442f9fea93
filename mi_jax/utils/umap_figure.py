"""SG Fig. 4: 2-D UMAP projections of features after two layers, coloured by class.

Sparse-Guard (Fig. 4) argues that sparse-coded features scatter the class
structure an attacker could exploit, while two dense or two conv layers
already separate the classes. Each panel is a UMAP (McInnes et al. 2018)
embedding of one model's features on one dataset; rows are datasets,
columns are models, and colours are the true classes.

UMAP comes from PyPI ``umap-learn`` (an optional dependency, imported only
here). Rendering uses matplotlib's Agg canvas (no pyplot global state) and
the PNG is written atomically, never over an existing file unless asked.
"""

from __future__ import annotations

import io
from typing import Mapping, Sequence

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from mi_jax.utils import storage
from mi_jax.utils.results import PathLike, write_bytes_atomic

# UMAP's own defaults (n_neighbors 15, min_dist 0.1): the SG paper gives no
# settings, and these are what "a UMAP plot" means without qualification.
N_NEIGHBORS = 15
MIN_DIST = 0.1
LEGEND_PX = 40  # Height of the class-legend strip under the panels.


def _umap_module():
  try:
    import umap  # noqa: PLC0415 - optional dependency, imported on use
  except ImportError as error:
    raise ImportError("the UMAP figure needs PyPI umap-learn: pip install 'umap-learn>=0.5,<0.6' "
                      f"({error})") from None
  return umap


def umap_embedding(features, *, n_neighbors: int = N_NEIGHBORS, min_dist: float = MIN_DIST,
                   seed: int = 0) -> np.ndarray:
  """(n, 2) UMAP embedding of ``features`` (n, …), flattened per row, Euclidean.

  ``seed`` fixes UMAP's random state (which also makes it single-threaded,
  so figures are reproducible).
  """
  features = np.asarray(features, np.float32)
  if features.ndim < 2 or len(features) <= n_neighbors:
    raise ValueError(f"features must be (n, ...) with n > n_neighbors={n_neighbors}, got shape {features.shape}")
  flat = features.reshape(len(features), -1)
  if not np.all(np.isfinite(flat)):
    raise ValueError("features must be finite")
  reducer = _umap_module().UMAP(n_components=2, n_neighbors=n_neighbors, min_dist=min_dist,
                                random_state=seed, n_jobs=1)
  return np.asarray(reducer.fit_transform(flat), np.float64)


def umap_figure(
    panels: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray]]],
    path: PathLike,
    *,
    class_names: Sequence[str] | None = None,
    panel_px: int = 320,
    dpi: int = 100,
    point_size: float = 2.0,
    overwrite: bool = False,
) -> storage.StoredPath:
  """Draws precomputed 2-D embeddings: ``panels[row][column] = (xy (n, 2), labels (n,))``.

  Rows (e.g. datasets) top to bottom and columns (e.g. models) left to right
  in the mappings' order; every row must name the same columns. The PNG is
  exactly ``(columns·panel_px) × (rows·panel_px + LEGEND_PX)`` pixels.
  """
  storage.refuse_existing(path, overwrite=overwrite)
  rows = list(panels)
  if not rows:
    raise ValueError("panels must hold at least one row")
  columns = list(panels[rows[0]])
  if not columns or any(list(panels[r]) != columns for r in rows):
    raise ValueError(f"every row of panels must name the same non-empty columns, got "
                     f"{ {r: list(panels[r]) for r in rows} }")
  all_labels = []
  for r in rows:
    for c in columns:
      xy, labels = panels[r][c]
      xy, labels = np.asarray(xy), np.asarray(labels)
      if xy.ndim != 2 or xy.shape[1] != 2 or labels.shape != (len(xy),):
        raise ValueError(f"panels[{r!r}][{c!r}] must be (xy (n, 2), labels (n,)), got "
                         f"{xy.shape} and {labels.shape}")
      all_labels.append(labels)
  classes = np.unique(np.concatenate(all_labels))
  cmap = matplotlib.colormaps['tab10' if len(classes) <= 10 else 'tab20']
  colour = {label: cmap(i % cmap.N) for i, label in enumerate(classes)}

  width_in = len(columns) * panel_px / dpi
  height_in = (len(rows) * panel_px + LEGEND_PX) / dpi
  fig = Figure(figsize=(width_in, height_in), dpi=dpi)
  FigureCanvasAgg(fig)
  legend_frac = LEGEND_PX / (len(rows) * panel_px + LEGEND_PX)
  grid = fig.add_gridspec(len(rows), len(columns), left=0.01, right=0.99, top=0.94,
                          bottom=legend_frac + 0.01, wspace=0.05, hspace=0.15)
  for i, r in enumerate(rows):
    for j, c in enumerate(columns):
      xy, labels = (np.asarray(a) for a in panels[r][c])
      ax = fig.add_subplot(grid[i, j])
      ax.scatter(xy[:, 0], xy[:, 1], s=point_size, c=[colour[label] for label in labels],
                 linewidths=0, rasterized=True)
      ax.set_xticks([])
      ax.set_yticks([])
      ax.set_title(f"{r}: {c}", fontsize=8)
  names = class_names if class_names is not None else [str(label) for label in classes]
  if len(names) != len(classes):
    raise ValueError(f"class_names must name the {len(classes)} classes present, got {len(names)}")
  handles = [Line2D([], [], marker='o', linestyle='', color=colour[label], markersize=5)
             for label in classes]
  fig.legend(handles, names, loc='lower center', ncol=min(len(classes), 10), fontsize=7, frameon=False)
  buffer = io.BytesIO()
  # No bbox_inches='tight': the pixel size must stay what the docstring promises.
  fig.savefig(buffer, format='png', dpi=dpi, facecolor='white')
  return write_bytes_atomic(path, buffer.getvalue(), overwrite=overwrite)


def umap_features_figure(
    features: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray]]],
    path: PathLike,
    *,
    seed: int = 0,
    n_neighbors: int = N_NEIGHBORS,
    min_dist: float = MIN_DIST,
    **figure_kwargs,
) -> storage.StoredPath:
  """SG Fig. 4 from raw features: ``features[row][column] = (features (n, …), labels)``.

  Embeds each panel with :func:`umap_embedding` and draws them with
  :func:`umap_figure` (same layout and keyword arguments).
  """
  storage.refuse_existing(path, overwrite=figure_kwargs.get('overwrite', False))  # before minutes of UMAP
  panels = {
      row: {col: (umap_embedding(f, n_neighbors=n_neighbors, min_dist=min_dist, seed=seed), np.asarray(y))
            for col, (f, y) in cols.items()}
      for row, cols in features.items()
  }
  return umap_figure(panels, path, **figure_kwargs)
