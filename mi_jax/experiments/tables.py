"""The results tables in Markdown: SG Table 1's layout (a column group per
setting, a row per defense and knob value), cells as mean ± sd over seeds,
† where a defense is distinguishable from no-defense, and the trade-off
table (what a defense removes per point of accuracy it costs, Pareto front).
"""

from __future__ import annotations

import collections
import math
import statistics
from typing import Any, Iterable, Mapping, Optional, Sequence

from mi_jax.utils.results import SETTINGS, _is_number, validate_rows

SETTING_TITLES = {'end_to_end': 'End-to-end', 'split': 'Split'}
PROTOCOL_NOTES = {
    'corrected': (
        'Protocol `corrected`: attacker trained on its own parameters, images de-normalised to '
        '[0, 1] in float32, per-image PSNR (capped at 100 dB) and SSIM averaged over every '
        'reconstructed private image.'),
    'sg_legacy': (
        'Protocol `sg_legacy`: **reproduces the Sparse-Guard reference code, bugs included** '
        '(among them: the attacker is never trained; PSNR takes its range from each batch and '
        'SSIM assumes range 1.0 on normalised float16 tensors; means are over batches). Not '
        'comparable with `corrected` numbers.'),
}


# --------------------------------------------------------------------------- Markdown table

METRIC_COLUMNS = (  # (row key, header, decimals, scale)
    ('accuracy', 'Acc ↑ (%)', 2, 100.0),
    ('psnr', 'PSNR ↓', 2, 1.0),
    ('ssim', 'SSIM ↓', 3, 1.0),
)
# Shown only when some row of the table has them.
OPTIONAL_METRIC_COLUMNS = (
    ('fid', 'FID ↑', 1, 1.0),
    ('attack_top1', 'AttAcc ↓ (%)', 1, 100.0),
    ('knn_distance', 'KNN ↑', 1, 1.0),
)


def defense_label(defense: str, lam, knob: str = 'λ') -> str:
  """'sparse-guard (λ=0.25)', 'laplace-noise (b=0.5)', or the bare name when the value is None."""
  return defense if lam is None else f"{defense} ({knob}={lam:g})"


def _format_number(value: float, decimals: int) -> str:
  if math.isnan(value):
    return 'NaN'
  if math.isinf(value):
    return 'inf' if value > 0 else '-inf'
  return f"{value:.{decimals}f}"


def seed_stats(group: Sequence[Mapping[str, Any]], key: str, *,
               scale: float = 1.0) -> Optional[tuple[float, Optional[float]]]:
  """(mean, sd) of ``scale`` · ``key`` over the rows of one cell (its seeds); None when no row has it.

  Several rows: their mean and sample standard deviation (n − 1), the sd
  only when every value is finite. One row: its value, with its
  ``<key>_sd`` field as the sd when it carries a finite one (a row already
  aggregated over seeds); no sd otherwise. Non-finite values average as
  IEEE says (sg_legacy rows can carry −inf).
  """
  values = [scale * r[key] for r in group if _is_number(r.get(key))]
  if not values:
    return None
  finite = all(math.isfinite(v) for v in values)
  mean = statistics.fmean(values) if finite else sum(values) / len(values)
  if len(values) > 1:
    return mean, (statistics.stdev(values) if finite else None)
  carried = next(r.get(f'{key}_sd') for r in group if _is_number(r.get(key)))
  sd = scale * carried if _is_number(carried) and math.isfinite(carried) else None
  return mean, sd


def _format_cell(mean: float, sd: Optional[float], decimals: int) -> str:
  return _format_number(mean, decimals) + ('' if sd is None else f" ± {_format_number(sd, decimals)}")


# Metrics whose gap to no-defense is tested against the noise floor.
DISTINGUISHED = ('psnr', 'ssim', 'attack_top1', 'knn_distance')
DISTINGUISHABLE_MARK = '†'


def distinguishable(stats, baseline) -> bool:
  """Whether two (mean, sd) cells differ by more than 2 combined sd,
  |m − m₀| > 2·√(sd² + sd₀²); False when either sd is unknown."""
  if stats is None or baseline is None or stats[1] is None or baseline[1] is None:
    return False
  (mean, sd), (mean0, sd0) = stats, baseline
  if not (math.isfinite(mean) and math.isfinite(mean0)):
    return False
  return abs(mean - mean0) > 2.0 * math.sqrt(sd ** 2 + sd0 ** 2)


def _attacker_seeds(rows) -> str:
  counts = sorted({r['attack_seeds'] for r in rows if _is_number(r.get('attack_seeds'))})
  if not counts:
    return "the attacker's seeds"
  return f"the attacker's {'/'.join(str(c) for c in counts)} seeds"


def _table(dataset: str, protocol: str, rows: list[dict]) -> str:
  settings = [s for s in SETTINGS if any(r['setting'] == s for r in rows)]
  cells = collections.defaultdict(list)  # (defense, lam, setting) -> rows over seeds
  order = []  # (defense, lam) by first appearance
  for r in rows:
    if (r['defense'], r['lam']) not in order:
      order.append((r['defense'], r['lam']))
    cells[(r['defense'], r['lam'], r['setting'])].append(r)
  seeds = sorted({r['seed'] for r in rows})
  columns = METRIC_COLUMNS + tuple(
      c for c in OPTIONAL_METRIC_COLUMNS if any(_is_number(r.get(c[0])) for r in rows))
  carries_sd = any(_is_number(r.get(f'{key}_sd')) for r in rows for key, _, _, _ in columns)
  header = ['Defense'] + [
      f"{SETTING_TITLES[s]} {title}" for s in settings for _, title, _, _ in columns]
  lines = [
      f"### {dataset} — protocol `{protocol}`",
      '',
      PROTOCOL_NOTES[protocol],
      f"Target seeds: {', '.join(str(s) for s in seeds)}"
      + ('; a cell with several shows mean ± sample std over them.' if len(seeds) > 1 else '.')
      + (f" For one target, ± is the sd over {_attacker_seeds(rows)} (decoder initialisation and batch "
         "order; the row's `<metric>_sd`)." if carries_sd else ''),
      '',
      '| ' + ' | '.join(header) + ' |',
      '| ' + ' | '.join([':---'] + ['---:'] * (len(header) - 1)) + ' |',
  ]
  marked = False
  for defense, lam in order:
    knob = cells[next(k for k in cells if k[:2] == (defense, lam))][0].get('knob', 'λ')
    row_cells = [defense_label(defense, lam, knob).replace('|', r'\|')]
    for s in settings:
      group = cells.get((defense, lam, s), [])
      baseline = cells.get(('no-defense', None, s), []) if defense != 'no-defense' else []
      for key, _, decimals, scale in columns:
        stats = seed_stats(group, key, scale=scale)
        cell = '—' if stats is None else _format_cell(*stats, decimals)
        if key in DISTINGUISHED and distinguishable(stats, seed_stats(baseline, key, scale=scale)):
          cell += ' ' + DISTINGUISHABLE_MARK
          marked = True
        row_cells.append(cell)
    lines.append('| ' + ' | '.join(row_cells) + ' |')
  if marked or carries_sd:
    lines += ['', f"{DISTINGUISHABLE_MARK}: differs from no-defense (same setting) by more than two combined "
                  "standard deviations, |m − m₀| > 2·√(sd² + sd₀²); cells without the mark are not "
                  "distinguishable from no-defense at this noise floor."]
  return '\n'.join(lines)


def results_markdown(rows: Iterable[Mapping[str, Any]]) -> str:
  """Markdown tables in the layout of SG Table 1, one per (dataset, protocol).

  Rows are defenses (with λ when not None) in order of first appearance;
  column groups are the settings present (end-to-end, split), each with
  Acc ↑ (%), PSNR ↓, SSIM ↓ — the arrows say which way a better defense
  moves. Several seeds of one cell show mean ± sample std; a missing cell
  shows '—'. Tables follow the first appearance of (dataset, protocol).
  """
  checked = validate_rows(rows)
  if not checked:
    raise ValueError("results_markdown needs at least one row, got 0")
  groups = collections.OrderedDict()
  for r in checked:
    groups.setdefault((r['dataset'], r['protocol']), []).append(r)
  tables = []
  for (dataset, protocol), group in groups.items():
    tables.append(_table(dataset, protocol, group))
    tradeoff = _tradeoff_table(group)
    if tradeoff:
      tables.append(tradeoff)
  return '\n\n'.join(tables) + '\n'


# --------------------------------------------------------------------------- trade-off

# Extra row keys shown in the trade-off table's notes, with their labels.
NOTE_KEYS = (  # (row key, label, format)
    ('dp_epsilon', 'ε', '{:.2f}'),
    ('dp_delta', 'δ', '{:.0e}'),
    ('theta_c', '|θ_C|', '{:,}'),
    ('theta_t', '|θ_T|', '{:,}'),
)


def _mean(values):
  finite = [v for v in values if _is_number(v) and math.isfinite(v)]
  return statistics.fmean(finite) if finite else math.nan


def _seed_mean(group, key: str) -> Optional[float]:
  stats = seed_stats(group, key)
  return None if stats is None else stats[0]


# Below a 1-point accuracy cost a ratio is mostly noise (one test image of
# 10,000 is 0.01 pp) and it explodes as the cost goes to 0; such defenses get
# a label instead of a number.
MIN_ACCURACY_COST_PP = 1.0
# Seed means of equal accuracies may differ in the last bits.
_ZERO_PP = 1e-9

# (row key, trade-off entry key, scale): Δ = scale · (defense − no-defense), seed means.
DELTA_KEYS = (
    ('accuracy', 'delta_accuracy_pp', 100.0),
    ('psnr', 'delta_psnr', 1.0),
    ('ssim', 'delta_ssim', 1.0),
    ('attack_top1', 'delta_attack_top1_pp', 100.0),
    ('knn_distance', 'delta_knn_distance', 1.0),
)


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
  """Whether point ``a`` = (accuracy, attack quality) Pareto-dominates ``b``.

  Higher accuracy and lower attack quality (PSNR: lower is a better defense)
  are better: a_acc ≥ b_acc and a_att ≤ b_att, with at least one strict.
  False whenever a coordinate is NaN.
  """
  return a[0] >= b[0] and a[1] <= b[1] and (a[0] > b[0] or a[1] < b[1])


def pareto_front(points: Sequence[Sequence[float]]) -> list[bool]:
  """For each (accuracy, attack quality) point, whether no other point dominates it.

  Equal points do not dominate each other, so both stay on the front. A point
  with a NaN coordinate is not on the front (and dominates nothing).
  """
  return [not any(map(math.isnan, p)) and not any(dominates(q, p) for q in points)
          for p in points]


def removed_per_point(delta_attack: float, delta_accuracy_pp: float) -> Optional[float]:
  """Attack quality removed per accuracy point lost: −Δattack / −ΔAcc.

  Larger is better; negative when the attack got better. None (undefined)
  unless the accuracy cost −ΔAcc is at least MIN_ACCURACY_COST_PP points.
  """
  cost = -delta_accuracy_pp
  return -delta_attack / cost if cost >= MIN_ACCURACY_COST_PP - _ZERO_PP else None


def tradeoff_rows(rows: Sequence[Mapping[str, Any]]) -> list[dict]:
  """Each defense against no-defense in the same (dataset, protocol, setting), over seed means.

  Entry keys: the row's dataset, protocol, setting, defense, lam, knob; the
  differences defense − no-defense ``delta_accuracy_pp`` (ΔAcc, percentage
  points), ``delta_psnr`` (ΔPSNR, dB), ``delta_ssim``, and, when both sides
  have them, ``delta_attack_top1_pp`` (ΔAttAcc, points) and
  ``delta_knn_distance``; ``psnr_removed_per_pp`` = −ΔPSNR / −ΔAcc and (with
  ΔAttAcc) ``attack_top1_removed_per_pp`` = −ΔAttAcc / −ΔAcc, None when the
  accuracy cost is below MIN_ACCURACY_COST_PP (:func:`removed_per_point`);
  ``pareto_front`` (no point of the setting, no-defense included, has
  accuracy ≥ and PSNR ≤ with one strict: :func:`pareto_front`) and
  ``dominated_by``, the label of a front point that dominates it (None on
  the front). Notes (ε, δ, |θ_C|, …) are copied when the rows carry them.
  Defenses whose setting has no no-defense row are skipped.
  """
  groups = collections.defaultdict(list)  # (dataset, protocol, setting, defense, lam) -> seeds
  for r in rows:
    groups[(r['dataset'], r['protocol'], r['setting'], r['defense'], r['lam'])].append(r)
  points = {key: (_seed_mean(m, 'accuracy'), _seed_mean(m, 'psnr')) for key, m in groups.items()}
  by_setting = collections.defaultdict(list)
  for key in groups:
    by_setting[key[:3]].append(key)
  on_front = {}
  for keys in by_setting.values():
    on_front.update(zip(keys, pareto_front([points[k] for k in keys])))

  def label(key):
    return defense_label(key[3], key[4], groups[key][0].get('knob', 'λ'))

  out = []
  for key, members in groups.items():
    dataset, protocol, setting, defense, lam = key
    baseline = groups.get((dataset, protocol, setting, 'no-defense', None))
    if defense == 'no-defense' or not baseline:
      continue
    dominators = [k for k in by_setting[key[:3]] if on_front[k] and dominates(points[k], points[key])]
    entry = {'dataset': dataset, 'protocol': protocol, 'setting': setting, 'defense': defense,
             'lam': lam, 'knob': members[0].get('knob', 'λ'), 'pareto_front': on_front[key],
             'dominated_by': label(dominators[0]) if dominators else None}
    for row_key, name, scale in DELTA_KEYS:
      mine, base = _seed_mean(members, row_key), _seed_mean(baseline, row_key)
      if mine is not None and base is not None:
        entry[name] = scale * (mine - base)
    d_acc = entry['delta_accuracy_pp']
    entry['psnr_removed_per_pp'] = removed_per_point(entry['delta_psnr'], d_acc)
    if 'delta_attack_top1_pp' in entry:
      entry['attack_top1_removed_per_pp'] = removed_per_point(entry['delta_attack_top1_pp'], d_acc)
    for note_key, _, _ in NOTE_KEYS:
      values = [m[note_key] for m in members if _is_number(m.get(note_key))]
      if values:
        entry[note_key] = values[0] if isinstance(values[0], int) else _mean(values)
    out.append(entry)
  return out


def _per_point_cell(entry: Mapping, key: str) -> str:
  if key not in entry:
    return '—'
  if entry[key] is not None:
    return _format_number(entry[key], 2)
  if entry['delta_accuracy_pp'] >= -_ZERO_PP:
    return 'no accuracy cost'
  return f"cost < {MIN_ACCURACY_COST_PP:g} pp"


def _pareto_cell(entry: Mapping) -> str:
  if entry['pareto_front']:
    return 'front'
  return f"dominated by {entry['dominated_by']}" if entry['dominated_by'] else '—'


def _delta_cell(key: str, decimals: int):
  return lambda e: _format_number(e[key], decimals) if key in e else '—'


TRADEOFF_NOTE = (
    f"How to read: Δ = defense − no-defense in the same setting (seed means). "
    f"*removed / pp lost* is the attack quality a defense takes away (−ΔPSNR in dB, −ΔAttAcc "
    f"in points) per accuracy point it costs (larger is better, negative if the attack "
    f"improved), given only for a cost of at least {MIN_ACCURACY_COST_PP:g} pp: 'no accuracy "
    f"cost' means ΔAcc ≥ 0, 'cost < {MIN_ACCURACY_COST_PP:g} pp' a cost too small for a stable "
    f"ratio. *Pareto* 'front': no other point of the setting, no-defense included, has accuracy "
    f"≥ and PSNR ≤ (one strictly); otherwise a front point that dominates it is named.")


def _tradeoff_table(rows: list[dict]) -> str:
  entries = tradeoff_rows(rows)
  if not entries:
    return ''
  has = lambda key: any(key in e for e in entries)
  columns = [  # (header, alignment, cell)
      ('Defense', ':---', lambda e: defense_label(e['defense'], e['lam'], e['knob'])),
      ('Setting', ':---', lambda e: SETTING_TITLES[e['setting']]),
      ('Pareto', ':---', _pareto_cell),
      ('ΔAcc (pp)', '---:', _delta_cell('delta_accuracy_pp', 2)),
      ('ΔPSNR (dB)', '---:', _delta_cell('delta_psnr', 2)),
      ('ΔSSIM', '---:', _delta_cell('delta_ssim', 3)),
  ]
  if has('delta_attack_top1_pp'):
    columns.append(('ΔAttAcc (pp)', '---:', _delta_cell('delta_attack_top1_pp', 1)))
  if has('delta_knn_distance'):
    columns.append(('ΔKNN', '---:', _delta_cell('delta_knn_distance', 1)))
  columns.append(('dB removed / pp lost', '---:', lambda e: _per_point_cell(e, 'psnr_removed_per_pp')))
  if has('attack_top1_removed_per_pp'):
    columns.append(('AttAcc pp removed / pp lost', '---:',
                    lambda e: _per_point_cell(e, 'attack_top1_removed_per_pp')))
  columns.append(('Notes', ':---', lambda e: ', '.join(
      f"{label}={fmt.format(e[key])}" for key, label, fmt in NOTE_KEYS if key in e)))
  lines = [
      'Trade-off against no-defense (same setting, seed means; accuracy Δs in percentage points, '
      'ΔPSNR in dB):',
      '',
      '| ' + ' | '.join(header for header, _, _ in columns) + ' |',
      '| ' + ' | '.join(align for _, align, _ in columns) + ' |',
  ]
  for e in entries:
    lines.append('| ' + ' | '.join(cell(e).replace('|', r'\|') for _, _, cell in columns) + ' |')
  lines += ['', TRADEOFF_NOTE]
  return '\n'.join(lines)
