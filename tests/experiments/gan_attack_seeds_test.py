"""The seeds table of GAN-prior attack runs: statistics, the no-defense mark, refusals."""

import json
import statistics

import pytest

from mi_jax.experiments import gan_attack_seeds as seeds


def _row(seed, defense='no-defense', attack='gmi', top1=0.5, knob_value=None, **extra):
  row = dict(seed=seed, defense=defense, attack=attack, knob_value=knob_value, knob='α', lam=knob_value,
             dataset='mnist', judge='evaluation_cnn_mnist_small', n_reconstructions=50, accuracy=0.97,
             attack_top1=top1, attack_top5=0.9, attack_top1_unoptimized=0.05, knn_distance=100.0 + seed)
  row.update(extra)
  return row


def _line(table, start):
  return next(line for line in table.splitlines() if line.startswith(start))


def test_cells_report_the_mean_and_sample_sd_over_seeds_and_each_seed():
  rows = [_row(s, top1=t) for s, t in zip((0, 1, 2), (0.56, 0.42, 0.38))]
  line = _line(seeds.seed_table(rows), '| no-defense | GMI |')
  mean, sd = statistics.mean([56, 42, 38]), statistics.stdev([56, 42, 38])
  assert f"{mean:.1f} ± {sd:.1f}" in line
  assert line.endswith('| 56, 42, 38 |')
  assert '| 3 |' in line


def test_a_defense_is_marked_only_when_its_top1_is_two_combined_sd_from_no_defense():
  base = [_row(s, top1=t) for s, t in zip((0, 1, 2), (0.50, 0.52, 0.48))]
  far = [_row(s, defense='label-smoothing', knob_value=-0.05, top1=t) for s, t in zip((0, 1, 2), (0.20, 0.22, 0.18))]
  near = [_row(s, defense='label-smoothing', knob_value=0.1, top1=t) for s, t in zip((0, 1, 2), (0.51, 0.49, 0.53))]
  table = seeds.seed_table(base + far + near)
  assert '†' in _line(table, '| label-smoothing (α=-0.05) | GMI |')
  assert '†' not in _line(table, '| label-smoothing (α=0.1) | GMI |')
  assert '†' not in _line(table, '| no-defense | GMI |')


def test_paired_differences_remove_the_spread_the_seeds_share():
  # Seeds differ a lot, but the defense lowers each seed's top-1 by ~16 points:
  # the unpaired test cannot tell, the paired one can.
  base = [_row(s, top1=t) for s, t in zip((0, 1, 2), (0.56, 0.42, 0.38))]
  defended = [_row(s, defense='label-smoothing', knob_value=-0.05, top1=t)
              for s, t in zip((0, 1, 2), (0.38, 0.26, 0.24))]
  line = _line(seeds.seed_table(base + defended), '| label-smoothing (α=-0.05) | GMI |')
  deltas = [-18, -16, -14]
  assert f"{statistics.mean(deltas):+.1f} ± {statistics.stdev(deltas):.1f} ‡" in line
  assert '†' not in line
  # A seed without a no-defense row is left out of the pairing.
  lonely = [_row(7, defense='label-smoothing', knob_value=-0.05, top1=0.3)]
  assert _line(seeds.seed_table(base + lonely), '| label-smoothing').endswith('| — | 30 |')
  assert seeds.paired_differences(lonely, 'gmi', {('gmi', 0): 0.5}) == []


def test_rows_that_differ_in_more_than_the_seed_are_refused():
  with pytest.raises(seeds.SeedTableError, match='n_reconstructions'):
    seeds.seed_table([_row(0), _row(1, n_reconstructions=25)])
  with pytest.raises(seeds.SeedTableError, match='seed 1 appears twice'):
    seeds.seed_table([_row(1), _row(1)])


def test_cli_reads_finished_runs_and_never_overwrites(tmp_path, capsys):
  for seed in (0, 1):
    run = tmp_path / f'seed{seed}'
    run.mkdir()
    (run / 'results.json').write_text(json.dumps([_row(seed)]))
  out = tmp_path / 'table.md'
  assert seeds.main([str(tmp_path / 'seed0'), str(tmp_path / 'seed1'), '--out', str(out)]) == 0
  assert '| no-defense | GMI | 2 |' in out.read_text()
  assert seeds.main([str(tmp_path / 'seed0'), '--out', str(out)]) == 2
  assert 'exists' in capsys.readouterr().err
  (tmp_path / 'unfinished').mkdir()
  assert seeds.main([str(tmp_path / 'unfinished')]) == 2
  assert 'no results.json' in capsys.readouterr().err
