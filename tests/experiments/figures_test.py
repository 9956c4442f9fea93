"""SG Fig. 3-style reconstruction grids: a valid PNG of the promised size, drawn where promised."""

import os

import numpy as np
import pytest
from matplotlib import image as mpimg

from mi_jax.experiments import figures

PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'


def _cell_center(png, row, col, *, label_px, cell_px=64):
  return png[row * cell_px + cell_px // 2, label_px + col * cell_px + cell_px // 2, :3]


def test_grayscale_grid_is_a_png_of_the_expected_size(tmp_path):
  originals = np.full((5, 28, 28), 255, np.uint8)  # White uint8 (N, H, W).
  recons = {'no-defense': np.full((5, 28, 28, 1), 0.5, np.float32),
            'sparse-guard (λ=0.25)': np.zeros((5, 28, 28, 1), np.float32)}
  path = figures.reconstruction_grid(originals, recons, tmp_path / 'fig3.png', label_px=100)
  assert path.read_bytes()[:8] == PNG_SIGNATURE
  png = mpimg.imread(path)
  assert png.shape[:2] == (3 * 64, 100 + 5 * 64)
  assert (png.shape[1], png.shape[0]) == figures.grid_size_px(5, 3, cell_px=64, label_px=100)
  for col in range(5):  # Rows in order: originals, then the defenses as given.
    np.testing.assert_allclose(_cell_center(png, 0, col, label_px=100), 1.0, atol=0.01)
    np.testing.assert_allclose(_cell_center(png, 1, col, label_px=100), 0.5, atol=0.01)
    np.testing.assert_allclose(_cell_center(png, 2, col, label_px=100), 0.0, atol=0.01)
  # The label column is white except for the text.
  assert png[:, :100, :3].mean() > 0.9
  assert os.listdir(tmp_path) == ['fig3.png']


def test_rgb_grid_keeps_colours(tmp_path):
  red = np.zeros((2, 16, 16, 3), np.float32)
  red[..., 0] = 1.0
  blue = np.zeros_like(red)
  blue[..., 2] = 1.0
  path = figures.reconstruction_grid(red, {'swap': blue}, tmp_path / 'rgb.png', label_px=40,
                                     cell_px=32)
  png = mpimg.imread(path)
  assert png.shape[:2] == (2 * 32, 40 + 2 * 32)
  np.testing.assert_allclose(_cell_center(png, 0, 1, label_px=40, cell_px=32), [1, 0, 0], atol=0.01)
  np.testing.assert_allclose(_cell_center(png, 1, 0, label_px=40, cell_px=32), [0, 0, 1], atol=0.01)


def test_default_label_column_fits_the_longest_label(tmp_path):
  images = np.zeros((1, 12, 12), np.float32)
  short = figures.label_width_px(['original', 'a'])
  long = figures.label_width_px(['original', 'a much longer defense name (λ=0.25)'])
  assert long > short + 100
  path = figures.reconstruction_grid(images, {'a much longer defense name (λ=0.25)': images},
                                     tmp_path / 'g.png')
  assert mpimg.imread(path).shape[:2] == (128, long + 64)


def test_refuses_to_overwrite(tmp_path):
  images = np.zeros((1, 12, 12), np.float32)
  path = tmp_path / 'g.png'
  path.write_bytes(b'keep')
  with pytest.raises(FileExistsError, match=r"g.png already exists; pass overwrite=True"):
    figures.reconstruction_grid(images, {'a': images}, path)
  assert path.read_bytes() == b'keep'
  figures.reconstruction_grid(images, {'a': images}, path, overwrite=True)
  assert path.read_bytes()[:8] == PNG_SIGNATURE


IMG = np.zeros((2, 12, 12), np.float32)


@pytest.mark.parametrize('originals,recons,pattern', [
    (IMG, {'a': IMG[:1]}, r"reconstructions_by_defense\['a'\] has shape \(1, 12, 12, 1\) but originals"),
    (IMG - 0.5, {'a': IMG}, r"originals has values in \[-0.5, -0.5\], outside \[0, 1\]; de-normalise"),
    (IMG.astype(np.int64), {'a': IMG}, r"originals must be uint8 or floating point"),
    (np.zeros((2, 12, 12, 2), np.float32), {}, r"originals must have shape \(N, H, W\) or \(N, H, W, C\) with C in \(1, 3\)"),
    (IMG, {'': IMG}, r"defense names must be non-empty strings"),
    (IMG, [IMG], r"reconstructions_by_defense must be a dict"),
])
def test_bad_input_raises_one_line_value_error(tmp_path, originals, recons, pattern):
  with pytest.raises(ValueError, match=pattern) as error:
    figures.reconstruction_grid(originals, recons, tmp_path / 'bad.png')
  assert '\n' not in str(error.value)
  assert os.listdir(tmp_path) == []


def _trow(defense, lam, setting, accuracy, psnr, **extra):
  return {'defense': defense, 'lam': lam, 'setting': setting, 'accuracy': accuracy, 'psnr': psnr,
          **extra}


def test_tradeoff_points_average_seeds_and_mark_the_pareto_front():
  rows = [_trow('sparse-guard', 0.5, 'split', 0.6, 14.0),
          _trow('no-defense', None, 'split', 0.9, 20.0),
          _trow('sparse-guard', 0.1, 'split', 0.8, 17.0),
          _trow('sparse-guard', 0.1, 'split', 0.7, 15.0),   # second seed of λ=0.1
          _trow('noise', 1.0, 'split', 0.5, 16.0),          # dominated by sparse-guard λ=0.5
          _trow('sparse-guard', 0.1, 'end_to_end', 0.1, 1.0)]
  points = figures.tradeoff_points(rows, setting='split')
  assert [p['label'] for p in points] == [
      'no-defense', 'noise (λ=1)', 'sparse-guard (λ=0.1)', 'sparse-guard (λ=0.5)']
  by_label = {p['label']: p for p in points}
  sg = by_label['sparse-guard (λ=0.1)']
  assert sg['accuracy'] == pytest.approx(75.0) and sg['value'] == pytest.approx(16.0)
  # Sample std (n − 1) over the two seeds: |0.8 − 0.7| / √2 in percent, |17 − 15| / √2.
  assert sg['accuracy_sd'] == pytest.approx(10.0 / np.sqrt(2)) and sg['value_sd'] == pytest.approx(np.sqrt(2))
  assert by_label['no-defense']['accuracy_sd'] is None
  assert {p['label']: p['front'] for p in points} == {
      'no-defense': True, 'noise (λ=1)': False, 'sparse-guard (λ=0.1)': True, 'sparse-guard (λ=0.5)': True}


def test_tradeoff_points_use_carried_sd_fields():
  rows = [_trow('no-defense', None, 'split', 0.9, 20.0, accuracy_sd=0.01, psnr_sd=0.5)]
  [point] = figures.tradeoff_points(rows, setting='split')
  assert point['accuracy_sd'] == pytest.approx(1.0) and point['value_sd'] == 0.5


def test_tradeoff_plot_draws_points_error_bars_and_front_per_setting():
  rows = [_trow('no-defense', None, 'split', 0.9, 20.0),
          _trow('sparse-guard', 0.25, 'split', 0.85, 10.0, accuracy_sd=0.01, psnr_sd=1.5),
          _trow('noise', 1.0, 'split', 0.8, 12.0),
          _trow('no-defense', None, 'end_to_end', 0.9, 18.0),
          _trow('noise', 1.0, 'end_to_end', 0.95, 17.0)]   # better on both axes than no-defense
  fig = figures.tradeoff_plot(rows)
  end_to_end, split = fig.axes
  assert (end_to_end.get_title(), split.get_title()) == ('End-to-end', 'Split')
  bars = {tuple(c.lines[0].get_xydata()[0]): c for c in split.containers}
  assert set(bars) == {(90.0, 20.0), (85.0, 10.0), (80.0, 12.0)}
  assert bars[(85.0, 10.0)].has_xerr and bars[(85.0, 10.0)].has_yerr
  assert not bars[(90.0, 20.0)].has_xerr and bars[(90.0, 20.0)].lines[0].get_marker() == '*'
  [front] = [line for line in split.get_lines() if line.get_label() == 'Pareto front']
  # Front points by accuracy: (85, 10) then (90, 20), as a staircase.
  np.testing.assert_allclose(front.get_xydata(), [[85.0, 10.0], [90.0, 20.0]])
  assert front.get_drawstyle() == 'steps-pre'
  [front] = [line for line in end_to_end.get_lines() if line.get_label() == 'Pareto front']
  np.testing.assert_allclose(front.get_xydata(), [[95.0, 17.0]])  # no-defense is dominated


def test_tradeoff_plot_skips_points_it_cannot_place():
  rows = [_trow('no-defense', None, 'split', 0.9, -np.inf), _trow('mid', 0.01, 'split', 0.8, 15.0)]
  [ax] = figures.tradeoff_plot(rows).axes
  assert [tuple(c.lines[0].get_xydata()[0]) for c in ax.containers] == [(80.0, 15.0)]


def test_tradeoff_figure_writes_a_png_once(tmp_path):
  rows = [_trow('no-defense', None, 'split', 0.9, 20.0), _trow('mid', 0.01, 'split', 0.8, 15.0),
          _trow('no-defense', None, 'end_to_end', 0.9, 18.0)]
  path = figures.tradeoff_figure(rows, tmp_path / 'tradeoff.png')
  assert path.read_bytes()[:8] == PNG_SIGNATURE
  assert mpimg.imread(path).shape[1] > mpimg.imread(path).shape[0]  # two panels side by side
  with pytest.raises(FileExistsError):
    figures.tradeoff_figure(rows, path)
  figures.tradeoff_figure(rows, path, overwrite=True)  # as mi_jax.experiments.surrogate calls it
  with pytest.raises(ValueError, match=r"tradeoff_figure needs rows with a setting in"):
    figures.tradeoff_figure([], tmp_path / 'none.png')
