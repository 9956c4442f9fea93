"""Reconstruction grids in the style of SG Fig. 3 (private images, then each
defense's reconstructions) and the accuracy / attack-quality Pareto plot.

Rendered with matplotlib's Agg canvas directly (no pyplot: no global figure
state, no display backend needed) and written atomically.
"""

from __future__ import annotations

import io
import math
from typing import Mapping, Optional

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from mi_jax.experiments.tables import SETTING_TITLES, defense_label, pareto_front, seed_stats
from mi_jax.utils import storage
from mi_jax.utils.results import SETTINGS, PathLike, write_bytes_atomic

# As in mi_jax.metrics.image_quality: float rounding may leave [0, 1] by this much.
RANGE_TOLERANCE = 1e-3


def _to_display(images, name: str) -> np.ndarray:
  """uint8 or float-in-[0, 1] images, (N, H, W) or (N, H, W, C∈{1, 3}) -> float32 (N, H, W, C)."""
  x = np.asarray(images)
  if x.ndim == 3:
    x = x[..., None]
  if x.ndim != 4 or x.shape[-1] not in (1, 3):
    raise ValueError(
        f"{name} must have shape (N, H, W) or (N, H, W, C) with C in (1, 3), got {x.shape}")
  if x.shape[0] == 0:
    raise ValueError(f"{name} must hold at least one image, got shape {x.shape}")
  if x.dtype == np.uint8:
    return x.astype(np.float32) / 255.0
  if not np.issubdtype(x.dtype, np.floating):
    raise ValueError(f"{name} must be uint8 or floating point in [0, 1], got {x.dtype}")
  if not np.all(np.isfinite(x)):
    raise ValueError(f"{name} contains NaN or inf values")
  lo, hi = float(x.min()), float(x.max())
  if lo < -RANGE_TOLERANCE or hi > 1.0 + RANGE_TOLERANCE:
    raise ValueError(
        f"{name} has values in [{lo:.4g}, {hi:.4g}], outside [0, 1]; "
        "de-normalise first (mi_jax.metrics.to_unit_range)")
  return np.clip(x.astype(np.float32), 0.0, 1.0)


def _check_px(value, name: str, minimum: int) -> None:
  if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
    raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


FONT_SIZE = 10  # points


def label_width_px(labels, *, dpi: int = 100, gap_px: int = 4) -> int:
  """Pixels the widest row label needs at FONT_SIZE and ``dpi``, with a gap each side."""
  fig = Figure(dpi=dpi)
  renderer = FigureCanvasAgg(fig).get_renderer()
  widths = [fig.text(0, 0, label, fontsize=FONT_SIZE).get_window_extent(renderer).width
            for label in labels]
  return int(np.ceil(max(widths, default=0.0))) + 2 * gap_px


def grid_size_px(n_images: int, n_rows: int, *, cell_px: int, label_px: int) -> tuple[int, int]:
  """(width, height) in pixels of a grid of ``n_rows`` rows (originals included) of ``n_images``."""
  return label_px + n_images * cell_px, n_rows * cell_px


def render_reconstruction_grid(
    originals,
    reconstructions_by_defense: Mapping[str, object],
    *,
    cell_px: int = 64,
    label_px: Optional[int] = None,
    gap_px: int = 4,
    dpi: int = 100,
    original_label: str = 'original',
) -> bytes:
  """The PNG bytes of :func:`reconstruction_grid` (same arguments, no file)."""
  for value, name, minimum in ((cell_px, 'cell_px', 8), (gap_px, 'gap_px', 0), (dpi, 'dpi', 10)):
    _check_px(value, name, minimum)
  if label_px is not None:
    _check_px(label_px, 'label_px', 0)
  if gap_px >= cell_px:
    raise ValueError(f"gap_px must be smaller than cell_px ({cell_px}), got {gap_px}")
  if not isinstance(reconstructions_by_defense, Mapping):
    raise ValueError(
        f"reconstructions_by_defense must be a dict of defense name -> images, "
        f"got {type(reconstructions_by_defense).__name__}")
  rows = [(original_label, _to_display(originals, 'originals'))]
  for defense, images in reconstructions_by_defense.items():
    if not isinstance(defense, str) or not defense:
      raise ValueError(f"defense names must be non-empty strings, got {defense!r}")
    recon = _to_display(images, f"reconstructions_by_defense[{defense!r}]")
    if recon.shape != rows[0][1].shape:
      raise ValueError(
          f"reconstructions_by_defense[{defense!r}] has shape {recon.shape} but originals have "
          f"{rows[0][1].shape} (after adding a channel axis); they must match")
    rows.append((defense, recon))

  n = rows[0][1].shape[0]
  if label_px is None:
    label_px = label_width_px([label for label, _ in rows], dpi=dpi, gap_px=gap_px)
  width, height = grid_size_px(n, len(rows), cell_px=cell_px, label_px=label_px)
  # Agg truncates width·dpi to int; a quarter pixel keeps 663.999… from becoming 663.
  fig = Figure(figsize=((width + 0.25) / dpi, (height + 0.25) / dpi), dpi=dpi, facecolor='white')
  FigureCanvasAgg(fig)
  inner = cell_px - gap_px
  for i, (label, images) in enumerate(rows):
    bottom = height - (i + 1) * cell_px + gap_px / 2
    fig.text((label_px - gap_px) / width, (bottom + inner / 2) / height, label,
             ha='right', va='center', fontsize=FONT_SIZE)
    for j in range(n):
      left = label_px + j * cell_px + gap_px / 2
      ax = fig.add_axes((left / width, bottom / height, inner / width, inner / height))
      image = images[j]
      if image.shape[-1] == 1:
        # Fixed vmin/vmax: show true intensities (plt.imshow's default would
        # stretch each image, making a faint reconstruction look sharp).
        ax.imshow(image[..., 0], cmap='gray', vmin=0.0, vmax=1.0, interpolation='nearest')
      else:
        ax.imshow(image, interpolation='nearest')
      ax.set_axis_off()
  buffer = io.BytesIO()
  fig.savefig(buffer, format='png', dpi=dpi, facecolor='white')
  return buffer.getvalue()


def reconstruction_grid(
    originals,
    reconstructions_by_defense: Mapping[str, object],
    path: PathLike,
    *,
    overwrite: bool = False,
    cell_px: int = 64,
    label_px: Optional[int] = None,
    gap_px: int = 4,
    dpi: int = 100,
    original_label: str = 'original',
) -> storage.StoredPath:
  """Writes an SG Fig. 3-style PNG: row 0 the private images, then one row per defense.

  Args:
    originals: N private images, (N, H, W) or (N, H, W, C) with C ∈ {1, 3},
      uint8 or float in [0, 1] (de-normalise first).
    reconstructions_by_defense: defense label -> its reconstructions of the
      same N images, same shape; rows follow the dict's order.
    path: the .png to write; refused if it exists unless ``overwrite``.
    cell_px, label_px, gap_px, dpi: layout. The PNG is exactly
      (label_px + N·cell_px) × ((1 + D)·cell_px) pixels for D defenses
      (:func:`grid_size_px`), each image drawn in a (cell_px − gap_px)²
      square, nearest-neighbour, grayscale on a fixed [0, 1] scale.
      label_px=None fits the widest label (:func:`label_width_px`).

  Returns the path written.
  """
  storage.refuse_existing(path, overwrite=overwrite)
  png = render_reconstruction_grid(
      originals, reconstructions_by_defense, cell_px=cell_px, label_px=label_px,
      gap_px=gap_px, dpi=dpi, original_label=original_label)
  return write_bytes_atomic(path, png, overwrite=overwrite)


def tradeoff_points(rows, *, setting: str, metric: str = 'psnr') -> list[dict]:
  """One point per (defense, knob value) of ``setting``: its seed means, sds and Pareto status.

  Each point: defense, lam, label, accuracy (%), accuracy_sd, value (the
  attack ``metric``), value_sd and front. Means and sds come from
  :func:`mi_jax.experiments.tables.seed_stats` (sample std over several seeds, or
  a row's ``<key>_sd``; None when neither). ``front``: no other point of the
  setting has accuracy ≥ and ``metric`` ≤ with one strict
  (:func:`mi_jax.experiments.tables.pareto_front`). Order: no-defense first, then
  by defense name and knob value.
  """
  groups: dict[tuple[str, object], list] = {}
  for row in rows:
    if row['setting'] == setting:
      groups.setdefault((row['defense'], row['lam']), []).append(row)
  order = sorted(groups, key=lambda k: (k[0] != 'no-defense', k[0], k[1] is not None, k[1] or 0.0))
  points = []
  for defense, lam in order:
    members = groups[(defense, lam)]
    accuracy, accuracy_sd = seed_stats(members, 'accuracy', scale=100.0)
    value, value_sd = seed_stats(members, metric) or (math.nan, None)
    points.append({'defense': defense, 'lam': lam,
                   'label': defense_label(defense, lam, members[0].get('knob', 'λ')),
                   'accuracy': accuracy, 'accuracy_sd': accuracy_sd, 'value': value,
                   'value_sd': value_sd})
  for point, front in zip(points, pareto_front([(p['accuracy'], p['value']) for p in points])):
    point['front'] = front
  return points


def tradeoff_plot(rows, *, metric: str = 'psnr') -> Figure:
  """The Pareto plot of :func:`tradeoff_figure`, as a matplotlib Figure (Agg canvas)."""
  settings = [s for s in SETTINGS if any(r['setting'] == s for r in rows)]
  if not settings:
    raise ValueError(f"tradeoff_figure needs rows with a setting in {SETTINGS}, got none")
  fig = Figure(figsize=(5.5 * len(settings), 4.5))
  FigureCanvasAgg(fig)
  for index, setting in enumerate(settings):
    ax = fig.add_subplot(1, len(settings), index + 1)
    # ±inf (sg_legacy averages) or NaN cannot be placed on the axes.
    points = [p for p in tradeoff_points(rows, setting=setting, metric=metric)
              if math.isfinite(p['accuracy']) and math.isfinite(p['value'])]
    families = list(dict.fromkeys(p['defense'] for p in points if p['defense'] != 'no-defense'))
    colours = {d: f"C{i % 10}" for i, d in enumerate(families)}
    for point in points:
      baseline = point['defense'] == 'no-defense'
      ax.errorbar(point['accuracy'], point['value'], xerr=point['accuracy_sd'], yerr=point['value_sd'],
                  fmt='*' if baseline else 'o', markersize=16 if baseline else 7, capsize=3,
                  color='black' if baseline else colours[point['defense']], zorder=3,
                  label='no-defense' if baseline else None)
      ax.annotate(point['label'], (point['accuracy'], point['value']), textcoords='offset points',
                  xytext=(6, 4), fontsize=7)
    for defense in families:  # A faint line through each defense's knob values, in knob order.
      sweep = [p for p in points if p['defense'] == defense]
      ax.plot([p['accuracy'] for p in sweep], [p['value'] for p in sweep], '-',
              color=colours[defense], alpha=0.3, label=defense)
    front = sorted((p['accuracy'], p['value']) for p in points if p['front'])
    if front:
      # Staircase bounding the dominated region: between two front points of
      # increasing accuracy, the next point's (higher) value holds.
      xs, ys = zip(*front)
      ax.plot(xs, ys, '--', drawstyle='steps-pre', color='grey', zorder=2, label='Pareto front')
    ax.set_xlabel('natural accuracy (%) → better')
    ax.set_ylabel(f"attack {metric.upper()} (lower = better defense)")
    ax.set_title(SETTING_TITLES[setting])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.tight_layout()
  return fig


def tradeoff_figure(rows, path: PathLike, *, metric: str = 'psnr', overwrite: bool = False,
                    dpi: int = 100) -> storage.StoredPath:
  """Writes the accuracy / attack-quality Pareto plot, one panel per setting present.

  x = natural accuracy (%), y = the attack ``metric`` (PSNR by default;
  lower is a better defense), one point per (defense, knob value) at its
  seed means with ± sd error bars when known (:func:`tradeoff_points`),
  no-defense as a black star, each defense's knob values joined by a faint
  line, and the Pareto front as a dashed staircase: front points are those
  no other point beats on both axes. Better defenses sit to the bottom right.
  """
  storage.refuse_existing(path, overwrite=overwrite)
  buffer = io.BytesIO()
  tradeoff_plot(rows, metric=metric).savefig(buffer, format='png', dpi=dpi, facecolor='white')
  return write_bytes_atomic(path, buffer.getvalue(), overwrite=overwrite)
