"""GAN-prior attack rows aggregated over seeds: one markdown table from several runs.

``experiments.gan_attacks`` runs one seed per workdir (the seed picks the
private subset, the GANs, the target and the attack's latents). This
collects the ``results.json`` of several such runs, groups the rows by
(defense, knob value, attack) and reports mean ± sd (sample sd, n − 1) of
each metric over the seeds, the per-seed top-1, and whether the cell's
top-1 differs from the no-defense cell of the same attack by more than two
combined sd (†, :func:`mi_jax.experiments.tables.distinguishable`).

Runs of one seed share the private subset, the public-data GANs (GMI's,
PPA's) and the attack's starting latents whatever the defense, so a
defense's top-1 is also compared *paired*: Δ = top-1 − the no-defense
top-1 of the same attack and seed, mean ± sd over the seeds both have;
‡ marks |mean Δ| > 2·sd(Δ) (the same two-sd rule on the differences,
which removes the seed-to-seed spread the two cells share).

Rows of one cell must come from comparable runs: the same dataset, judge
and number of reconstructions, and distinct seeds; anything else is
refused with one line naming the field.

    python -m mi_jax.experiments.gan_attack_seeds results/a/seed0 results/a/seed1 ... [--out table.md]
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
from typing import Mapping, Sequence

from mi_jax.experiments import tables
from mi_jax.experiments.gan_attacks import ATTACK_TITLES
from mi_jax.utils import storage

# (row field, column title, decimals, scale); arrows: the direction a better *attack* moves it.
METRICS = (
    ('accuracy', 'Target acc (%)', 1, 100.0),
    ('attack_top1', 'AttAcc top-1 ↑ (%)', 1, 100.0),
    ('attack_top5', 'top-5 ↑ (%)', 1, 100.0),
    ('attack_top1_unoptimized', 'top-1 unoptimised (%)', 1, 100.0),
    ('knn_distance', 'KNN dist ↓', 1, 1.0),
)
# Fields that must agree between the rows averaged in one cell.
COMPARABLE = ('dataset', 'judge', 'n_reconstructions')


class SeedTableError(ValueError):
  """Rows that cannot be averaged together; the message names the field."""


def load_rows(directories: Sequence[str]) -> list[dict]:
  """The rows of ``<dir>/results.json`` for each directory (a finished run)."""
  rows = []
  for directory in directories:
    path = storage.path(directory) / 'results.json'
    if not storage.exists(path):
      raise SeedTableError(f"{directory}: no results.json (the run has not finished)")
    rows += json.loads(storage.read_text(path))
  return rows


def _cell_key(row) -> tuple:
  return row['defense'], row.get('knob_value', row.get('lam')), row['attack']


def group_cells(rows: Sequence[Mapping]) -> dict:
  """{(defense, knob value, attack): rows over seeds}, in order of first appearance; checks comparability."""
  cells = collections.OrderedDict()
  for row in rows:
    cells.setdefault(_cell_key(row), []).append(row)
  for key, group in cells.items():
    label = f"{key[0]} / {key[2]}"
    seeds = [r['seed'] for r in group]
    if len(set(seeds)) != len(seeds):
      raise SeedTableError(f"{label}: seed {sorted(s for s in seeds if seeds.count(s) > 1)[0]} appears twice")
    for field in COMPARABLE:
      values = {json.dumps(r.get(field)) for r in group}
      if len(values) > 1:
        raise SeedTableError(f"{label}: rows differ in {field} ({', '.join(sorted(values))}); "
                             "only runs that differ in their seed can be averaged")
  return cells


PAIRED_MARK = '‡'


def paired_differences(group: Sequence[Mapping], attack: str, baseline_by_seed: Mapping) -> list[float]:
  """Per seed, top-1 − the no-defense top-1 of ``attack`` at that seed (percentage points)."""
  return [100.0 * (r['attack_top1'] - baseline_by_seed[attack, r['seed']]) for r in group
          if (attack, r['seed']) in baseline_by_seed]


def _paired_cell(group, attack, baseline_by_seed) -> str:
  deltas = paired_differences(group, attack, baseline_by_seed)
  if not deltas:
    return '—'
  mean = statistics.fmean(deltas)
  if len(deltas) == 1:
    return f"{mean:+.1f} (1 seed)"
  sd = statistics.stdev(deltas)
  mark = f" {PAIRED_MARK}" if abs(mean) > 2.0 * sd else ''
  return f"{mean:+.1f} ± {sd:.1f}{mark}"


def seed_table(rows: Sequence[Mapping]) -> str:
  """The markdown table of the module docstring."""
  cells = group_cells(rows)
  baseline = {attack: tables.seed_stats(group, 'attack_top1')
              for (defense, _, attack), group in cells.items() if defense == 'no-defense'}
  baseline_by_seed = {(attack, r['seed']): r['attack_top1'] for (defense, _, attack), group in cells.items()
                      if defense == 'no-defense' for r in group}
  header = (['Defense', 'Attack', 'Seeds'] + [title for _, title, _, _ in METRICS]
            + ['Δ top-1 vs no-defense, paired (pp)', 'top-1 per seed (%)'])
  lines = ['| ' + ' | '.join(header) + ' |', '| :--- | :--- | ---: |' + ' ---: |' * (len(METRICS) + 1) + ' :--- |']
  for (defense, knob_value, attack), group in cells.items():
    group = sorted(group, key=lambda r: r['seed'])
    cells_text = []
    for field, _, decimals, scale in METRICS:
      stats = tables.seed_stats(group, field, scale=scale)
      text = '—' if stats is None else tables._format_cell(*stats, decimals)
      if field == 'attack_top1' and defense != 'no-defense' and tables.distinguishable(
          tables.seed_stats(group, field), baseline.get(attack)):
        text += ' ' + tables.DISTINGUISHABLE_MARK
      cells_text.append(text)
    cells_text.append(_paired_cell(group, attack, baseline_by_seed) if defense != 'no-defense' else '—')
    label = tables.defense_label(defense, knob_value, group[0].get('knob', 'λ')).replace('|', r'\|')
    per_seed = ', '.join(f"{100 * r['attack_top1']:.0f}" for r in group)
    lines.append('| ' + ' | '.join([label, ATTACK_TITLES.get(attack, attack), str(len(group))] + cells_text
                                   + [per_seed]) + ' |')
  n = sorted({r['n_reconstructions'] for r in rows})
  lines += ['', f"Mean ± sd over seeds (sample sd); {'/'.join(map(str, n))} reconstructions per row and seed. "
            f"{tables.DISTINGUISHABLE_MARK}: top-1 differs from the no-defense row of the same attack by more "
            f"than 2 combined sd. Paired Δ: per seed (same private subset, public GANs and starting latents), "
            f"then mean ± sd; {PAIRED_MARK}: |mean Δ| > 2 sd(Δ)."]
  return '\n'.join(lines) + '\n'


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog='python -m mi_jax.experiments.gan_attack_seeds', description=__doc__.split('\n')[0])
  parser.add_argument('directories', nargs='+', help='finished experiments.gan_attacks workdirs, one per seed')
  parser.add_argument('--out', help='also write the table here (refuses to overwrite)')
  args = parser.parse_args(argv)
  try:
    text = seed_table(load_rows(args.directories))
  except SeedTableError as error:
    print(f"error: {error}", file=sys.stderr)
    return 2
  if args.out:
    if storage.exists(args.out):
      print(f"error: --out {args.out} exists; choose another path", file=sys.stderr)
      return 2
    storage.write_bytes_atomic(args.out, text.encode())
  print(text, end='')
  return 0


if __name__ == '__main__':
  sys.exit(main())
