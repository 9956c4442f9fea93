"""The reproduction report: the SG paper's claims tested under both protocols.

``python -m mi_jax.experiments.reproduction run --root=DIR [--scale=small]``
runs every experiment of :func:`plan` (each in its own process, each in its
own workdir under ``DIR``, so a killed run resumes where it stopped and a
finished one is skipped), then writes the report;
``... report --root=DIR --out=docs/reproduction.md`` writes it from whatever
has finished (runs not yet finished are listed as such).
``scripts/reproduce.sh`` sets up the machine and calls ``run``.

The report holds one table per (dataset, protocol, setting), the figures,
two ablations (converged vs truncated codes; the attacker's budget), the
TL-DMI |θ_C| curve under the GAN-prior attacks, and a verdict per claim of
the Sparse-Guard paper (:data:`CLAIMS`) per protocol: *supported*, *not
supported*, or *not distinguishable at this scale*.

The rule behind every verdict: two cells differ when their means differ by
more than 2·√(sd₁² + sd₂²) (the sd over attacker seeds; for accuracy the
binomial standard error), the † rule of the results tables
(:func:`mi_jax.experiments.tables.distinguishable`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
import time
from typing import Callable, Optional, Sequence

from mi_jax.experiments.figures import tradeoff_figure
from mi_jax.experiments.tables import SETTING_TITLES, distinguishable
from mi_jax.utils.results import write_json_atomic, write_text_atomic

SG_CONFIG = 'configs/sparse_guard_mnist.py'
GAN_CONFIG = 'configs/gan_attacks_mnist.py'
SG_MODULE = 'experiments.sparse_guard'
GAN_MODULE = 'experiments.gan_attacks'
DATASETS = ('mnist', 'fashion_mnist')
PROTOCOLS = ('corrected', 'sg_legacy')
SG_TABLE = ('no-defense', 'gaussian-noise', 'gan-augmentation', 'laplace-noise', 'nopeek', 'gan-opt',
            'sparse-standard', 'sparse-guard')
NON_SPARSE_SG_TABLE = tuple(d for d in SG_TABLE if not d.startswith('sparse'))
SG_LAMS = (0.1, 0.25, 0.5)
SG_DEFAULT_LAM = 0.5  # SG Table 5's default λ: the Sparse-Guard row the claims are tested on
ATTACKER_BUDGETS = (500, 1000, 4000, 8000)  # auxiliary images; the main run has 2000
FROZEN_DEPTHS = (1, 2, 3)  # TL-DMI: hidden layers frozen after public pre-training
TIMING_FILE = 'timing.json'
# The experiment mains and configs live beside the package, in the checkout.
CHECKOUT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@dataclasses.dataclass(frozen=True)
class Run:
  """One experiment command: ``python -m <module> --config=<config> --workdir=<root>/<name> <overrides>``."""
  name: str
  module: str
  config: str
  overrides: tuple[str, ...] = ()
  what: str = ''

  def command(self, root: str, python: str = sys.executable) -> list[str]:
    return [python, '-m', self.module, f'--config={self.config}', f'--workdir={os.path.join(root, self.name)}',
            *self.overrides]


def _tuple(values) -> str:
  return '(' + ''.join(f"{v!r}," for v in values) + ')'


def plan(scale: str = 'small') -> list[Run]:
  """Every run of the report, most informative first (at the small scale
  the whole plan takes longer than a working day's session, and a run
  stopped early should have answered the most): the corrected grids of
  both datasets (every corrected verdict needs both), the MNIST ablations,
  then GAN-opt++ and the sg_legacy runs (the sg_legacy verdicts need all
  of them), and the TL-DMI curve."""
  runs = []
  for dataset in DATASETS:
    grid = f'{SG_CONFIG}:{scale},{dataset},reproduction'
    runs += [
        Run(f'{dataset}/corrected', SG_MODULE, grid, (),
            'every defense, both settings, corrected protocol'),
        Run(f'{dataset}/gan_opt_plus_plus', SG_MODULE, grid,
            (f'--config.sweep.defenses={_tuple(["gan-opt"])}', '--config.defense.gan_opt.plus_plus=True',
             f'--config.sweep.protocols={_tuple(PROTOCOLS)}'),
            "GAN-opt++ (EWC recovery), both settings, both protocols"),
        Run(f'{dataset}/legacy_split', SG_MODULE, grid,
            (f'--config.sweep.defenses={_tuple(SG_TABLE)}', f'--config.sweep.protocols={_tuple(["sg_legacy"])}',
             f'--config.sweep.settings={_tuple(["split"])}'),
            'the SG tables\' rows, split, sg_legacy protocol'),
        # The SG code's end-to-end attacker behind a sparse front runs its row
        # decoder on a 28x28xF map: ~35 min per attacker seed on 2 CPU cores.
        Run(f'{dataset}/legacy_end_to_end', SG_MODULE, grid,
            (f'--config.sweep.defenses={_tuple(NON_SPARSE_SG_TABLE)}',
             f'--config.sweep.protocols={_tuple(["sg_legacy"])}', f'--config.sweep.settings={_tuple(["end_to_end"])}'),
            'the non-sparse rows, end to end, sg_legacy protocol'),
    ]
  runs.sort(key=lambda run: ('corrected', 'gan_opt_plus_plus', 'legacy_split',
                             'legacy_end_to_end').index(run.name.split('/')[1]))  # stable: MNIST first
  corrected, legacy = runs[:len(DATASETS)], runs[len(DATASETS):]
  runs = corrected
  grid = f'{SG_CONFIG}:{scale},mnist,reproduction'
  one_guard = (f'--config.sweep.defenses={_tuple(["sparse-guard"])}',
               f'--config.sweep.knob_values.sparse_guard={_tuple([SG_DEFAULT_LAM])}')
  runs += [
      Run('ablations/converged_codes', SG_MODULE, grid,
          one_guard + ('--config.defense.solver=fista', '--config.defense.tol=1e-4', '--config.defense.n_steps=1000',
                       f'--config.sweep.settings={_tuple(["split"])}'),
          'Sparse-Guard with FISTA codes converged to a relative change of 1e-4, split'),
  ]
  for budget in ATTACKER_BUDGETS:
    runs.append(Run(f'ablations/attacker_budget_{budget}', SG_MODULE, grid,
                    (f'--config.sweep.defenses={_tuple(["no-defense", "sparse-guard"])}',
                     f'--config.sweep.knob_values.sparse_guard={_tuple([SG_DEFAULT_LAM])}',
                     f'--config.sweep.settings={_tuple(["split"])}', f'--config.data.heldout_limit={budget}'),
                    f'no-defense and Sparse-Guard, split, {budget} auxiliary images'))
  # 500 steps of the SG code's schedule: 12.5x the LCA work of ours, the dearest ablation.
  runs.append(Run('ablations/paper_schedule', SG_MODULE, grid,
                  one_guard + ('--config.defense.tau=100.0', '--config.defense.n_steps=500',
                               f'--config.sweep.settings={_tuple(["split"])}'),
                  "Sparse-Guard with the SG code's LCA schedule (500 steps of 0.01: 5 time constants)"))
  runs += legacy
  gan = f'{GAN_CONFIG}:{scale},mnist'
  runs.append(Run('transfer/no_defense', GAN_MODULE, gan, (f'--config.defenses={_tuple(["no-defense"])}',),
                  'GMI, KEDMI, PPA against the no-defense target'))
  for depth in FROZEN_DEPTHS:
    runs.append(Run(f'transfer/frozen_{depth}', GAN_MODULE, gan,
                    (f'--config.defenses={_tuple(["transfer-learning"])}',
                     f'--config.defense.transfer.freeze_depth={depth}'),
                    f'GMI, KEDMI, PPA against TL-DMI with {depth} frozen layer(s)'))
  return runs


def results_path(root: str, run: Run) -> str:
  return os.path.join(root, run.name, 'results.json')


def run_all(root: str, runs: Sequence[Run], *, python: str = sys.executable) -> None:
  """Runs each unfinished run in its own process (a finished one, with its
  results.json, is skipped; an interrupted one resumes); records the wall
  time of each in ``<root>/timing.json``. Stops at the first failure."""
  os.makedirs(root, exist_ok=True)
  timing_path = os.path.join(root, TIMING_FILE)
  timing = _read_json(timing_path) or {}
  for index, run in enumerate(runs):
    if os.path.exists(results_path(root, run)):
      print(f"--- {index + 1}/{len(runs)} {run.name}: done", flush=True)
      continue
    print(f"--- {index + 1}/{len(runs)} {run.name}: {run.what}", flush=True)
    started = time.perf_counter()
    code = subprocess.call(run.command(os.path.abspath(root), python), cwd=CHECKOUT)
    # Accumulate over resumptions: the report states the total compute.
    timing[run.name] = round(timing.get(run.name, 0.0) + time.perf_counter() - started, 1)
    write_json_atomic(timing_path, timing, overwrite=True)
    if code != 0:
      raise SystemExit(f"reproduction: {run.name} failed with exit code {code}; rerun to resume it")


def _read_json(path: str):
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def load(root: str, runs: Sequence[Run]) -> dict:
  """{run name: its rows}: a finished run's results.json, else the rows of
  the points it has finished so far (``points/*/row.json``), else None."""
  return {run.name: _read_json(results_path(root, run)) or _finished_points(root, run) for run in runs}


def _finished_points(root: str, run: Run) -> Optional[list]:
  points = os.path.join(root, run.name, 'points')
  if not os.path.isdir(points):
    return None
  rows = [_read_json(os.path.join(points, name, 'row.json')) for name in sorted(os.listdir(points))]
  return [row for row in rows if row is not None] or None


def partial_runs(root: str, runs: Sequence[Run]) -> list[Run]:
  """The runs with some points finished and no results.json yet."""
  return [run for run in runs if not os.path.exists(results_path(root, run)) and _finished_points(root, run)]


def label(row: dict) -> str:
  """'sparse-guard (λ=0.5)', 'laplace-noise (b=1)', 'gan-opt++', 'no-defense'."""
  name = row['defense'] + ('++' if row.get('plus_plus') else '')
  value = row.get('knob_value', row.get('lam'))
  return name if value is None else f"{name} ({row.get('knob', 'λ')}={value:g})"


def guard_label(lam: float) -> str:
  return f'sparse-guard (λ={lam:g})'


# ---------------------------------------------------------------------------
# Cells and comparisons.


@dataclasses.dataclass(frozen=True)
class Cell:
  """One (dataset, protocol, setting) table: {label: row}."""
  dataset: str
  protocol: str
  setting: str
  rows: dict

  def stat(self, name: str, key: str) -> Optional[tuple[float, float]]:
    """(mean, sd) of a metric of one defense; accuracy's sd is its standard error."""
    row = self.rows.get(name)
    if row is None or row.get(key) is None:
      return None
    spread = row.get('accuracy_se' if key == 'accuracy' else f'{key}_sd', 0.0)
    return float(row[key]), float(spread or 0.0)

  @property
  def title(self) -> str:
    return f"{self.dataset}, {self.protocol}, {SETTING_TITLES[self.setting].lower()}"


def cells(loaded: dict) -> list[Cell]:
  """The surrogate-attack rows of every finished run, one Cell per (dataset, protocol, setting)."""
  grouped = {}
  for name, rows in loaded.items():
    if rows is None or name.startswith(('ablations/', 'transfer/')):
      continue
    for row in rows:
      key = (row['dataset'], row['protocol'], row['setting'])
      grouped.setdefault(key, {})[label(row)] = row
  return [Cell(*key, rows) for key, rows in sorted(grouped.items())]


def compare(cell: Cell, a: str, b: str, key: str) -> Optional[int]:
  """-1 when a's ``key`` is distinguishably below b's, +1 above, 0 neither; None when either is missing."""
  sa, sb = cell.stat(a, key), cell.stat(b, key)
  if sa is None or sb is None:
    return None
  if not distinguishable(sa, sb):
    return 0
  return -1 if sa[0] < sb[0] else 1


@dataclasses.dataclass(frozen=True)
class Verdict:
  claim: str
  protocol: str
  outcome: str  # 'supported' | 'not supported' | 'not distinguishable at this scale' | 'not measured'
  evidence: str


SUPPORTED, REFUTED, UNCLEAR, MISSING = ('supported', 'not supported', 'not distinguishable at this scale',
                                        'not measured')


def _combine(outcomes: Sequence[Optional[str]]) -> str:
  """Every claim holds for every cell: one refuting piece → not supported
  (whatever is still missing); else a missing piece → not measured; else
  supported when every piece supports it."""
  if any(o == REFUTED for o in outcomes):
    return REFUTED
  if not outcomes or any(o is None for o in outcomes):
    return MISSING
  return SUPPORTED if all(o == SUPPORTED for o in outcomes) else UNCLEAR


def _psnr(cell: Cell, name: str) -> str:
  s = cell.stat(name, 'psnr')
  return 'n/a' if s is None else f"{s[0]:.2f} ± {s[1]:.2f}"


def _acc(cell: Cell, name: str) -> str:
  s = cell.stat(name, 'accuracy')
  return 'n/a' if s is None else f"{100 * s[0]:.1f} ± {100 * s[1]:.1f}%"


def claim_lowest_reconstruction(cell: Cell) -> tuple[Optional[str], str]:
  """Claim 1 in one cell: SG (λ=0.5) below every other SG-table defense in PSNR and SSIM."""
  sg = guard_label(SG_DEFAULT_LAM)
  others = [name for name in cell.rows if not name.startswith('sparse-guard') and
            cell.rows[name]['defense'] in SG_TABLE]
  if sg not in cell.rows or not others:
    return None, f"{cell.title}: missing rows"
  results = {name: (compare(cell, sg, name, 'psnr'), compare(cell, sg, name, 'ssim')) for name in others}
  worse = [name for name, (p, s) in results.items() if p == 1 or s == 1]
  unclear = [name for name, (p, s) in results.items() if p != -1 or s != -1]
  outcome = REFUTED if worse else (UNCLEAR if unclear else SUPPORTED)
  best_other = min(others, key=lambda n: cell.stat(n, 'psnr')[0])
  text = (f"{cell.title}: SG {_psnr(cell, sg)} dB vs the lowest other, {best_other}, {_psnr(cell, best_other)} dB"
          + (f"; below SG: {', '.join(worse)}" if worse else '')
          + (f"; not separated: {', '.join(n for n in unclear if n not in worse)}"
             if set(unclear) - set(worse) else ''))
  return outcome, text


def claim_accuracy_kept(cell: Cell, tolerance_pp: float = 2.0) -> tuple[Optional[str], str]:
  """Claim 2 in one cell: SG's accuracy within ``tolerance_pp`` points of no-defense."""
  sg, base = guard_label(SG_DEFAULT_LAM), 'no-defense'
  a, b = cell.stat(sg, 'accuracy'), cell.stat(base, 'accuracy')
  if a is None or b is None:
    return None, f"{cell.title}: missing rows"
  drop = 100 * (b[0] - a[0])
  margin = 200 * math.hypot(a[1], b[1])
  outcome = REFUTED if drop - margin > tolerance_pp else (SUPPORTED if drop + margin <= tolerance_pp or drop <= 0
                                                           else UNCLEAR)
  return outcome, f"{cell.title}: no-defense {_acc(cell, base)}, SG {_acc(cell, sg)} (drop {drop:+.1f} points)"


def claim_monotone_in_lam(cell: Cell) -> tuple[Optional[str], str]:
  """Claim 3 in one cell: PSNR falls from λ=0.1 to 0.25 to 0.5."""
  names = [guard_label(lam) for lam in SG_LAMS]
  if any(name not in cell.rows for name in names):
    return None, f"{cell.title}: missing rows"
  steps = [compare(cell, names[i + 1], names[i], 'psnr') for i in range(len(names) - 1)]
  outcome = REFUTED if 1 in steps else (SUPPORTED if all(s == -1 for s in steps) else UNCLEAR)
  return outcome, f"{cell.title}: PSNR " + ' → '.join(_psnr(cell, n) for n in names)


def claim_sparse_standard_and_guard(cell: Cell) -> tuple[Optional[str], str]:
  """Claim 4 in one cell: SS below every noise/GAN/NoPeek row; SG (λ=0.5) below SS."""
  ss = next((n for n in cell.rows if n.startswith('sparse-standard')), None)
  sg = guard_label(SG_DEFAULT_LAM)
  others = [n for n in cell.rows if cell.rows[n]['defense'] in SG_TABLE and not n.startswith(('sparse', 'no-'))]
  if ss is None or sg not in cell.rows or not others:
    return None, f"{cell.title}: missing rows"
  vs_others = [compare(cell, ss, n, 'psnr') for n in others]
  vs_guard = compare(cell, sg, ss, 'psnr')
  parts = [REFUTED if 1 in vs_others else (SUPPORTED if all(c == -1 for c in vs_others) else UNCLEAR),
           {-1: SUPPORTED, 1: REFUTED}.get(vs_guard, UNCLEAR)]
  lowest = min(others, key=lambda n: cell.stat(n, 'psnr')[0])
  return _combine(parts), (f"{cell.title}: SS {_psnr(cell, ss)} dB, lowest noise/GAN/NoPeek row {lowest} "
                           f"{_psnr(cell, lowest)} dB, SG {_psnr(cell, sg)} dB")


def claim_laplace(cell: Cell) -> tuple[Optional[str], str]:
  """Claim 5 in one cell: Laplace b=1 loses clearly more accuracy than SG and still has higher PSNR."""
  lap, sg, base = 'laplace-noise (b=1)', guard_label(SG_DEFAULT_LAM), 'no-defense'
  if any(cell.stat(n, 'accuracy') is None for n in (lap, sg, base)):
    return None, f"{cell.title}: missing rows"
  acc = compare(cell, lap, sg, 'accuracy')  # -1: Laplace's accuracy distinguishably lower
  psnr = compare(cell, lap, sg, 'psnr')  # +1: Laplace's reconstructions distinguishably better
  parts = [{-1: SUPPORTED, 1: REFUTED}.get(acc, UNCLEAR), {1: SUPPORTED, -1: REFUTED}.get(psnr, UNCLEAR)]
  return _combine(parts), (f"{cell.title}: Laplace b=1 {_acc(cell, lap)}, {_psnr(cell, lap)} dB; "
                           f"SG {_acc(cell, sg)}, {_psnr(cell, sg)} dB; no-defense {_acc(cell, base)}")


def gap(cell: Cell, key: str = 'psnr') -> Optional[tuple[float, float]]:
  """(no-defense − SG, its combined sd)."""
  a, b = cell.stat('no-defense', key), cell.stat(guard_label(SG_DEFAULT_LAM), key)
  if a is None or b is None:
    return None
  return a[0] - b[0], math.hypot(a[1], b[1])


def claim_both_settings(split: Cell, end_to_end: Cell) -> tuple[Optional[str], str]:
  """Claim 6 for one (dataset, protocol): SG's PSNR gap to no-defense is there in both
  settings *and equal* (the two gaps not distinguishable); a gap in both settings
  of different sizes refutes the "equally" of the claim, and the text says so."""
  gaps = [gap(split), gap(end_to_end)]
  if None in gaps:
    return None, f"{split.dataset}, {split.protocol}: missing rows"
  present = [g > 2 * sd for g, sd in gaps]
  (g1, s1), (g2, s2) = gaps
  equal = abs(g1 - g2) <= 2 * math.hypot(s1, s2)
  if all(present):
    outcome = SUPPORTED if equal else REFUTED
  else:
    outcome = REFUTED if any(present) else UNCLEAR
  text = (f"{split.dataset}, {split.protocol}: PSNR gap no-defense − SG {g1:.2f} ± {s1:.2f} dB split, "
          f"{g2:.2f} ± {s2:.2f} dB end to end")
  if all(present) and not equal and min(g1, g2) > 0:
    text += f" (present in both, {max(g1, g2) / min(g1, g2):.1f}× larger {'split' if g1 > g2 else 'end to end'})"
  return outcome, text


def claim_training_cost(cell: Cell) -> tuple[Optional[str], str]:
  """Claim 7 in one cell: SG's target training under twice no-defense's wall time."""
  sg, base = cell.rows.get(guard_label(SG_DEFAULT_LAM)), cell.rows.get('no-defense')
  if sg is None or base is None or 'target_seconds' not in sg or 'target_seconds' not in base:
    return None, f"{cell.title}: missing rows or training times"
  ratio = sg['target_seconds'] / max(base['target_seconds'], 1e-9)
  return (SUPPORTED if ratio < 2 else REFUTED), (
      f"{cell.title}: {sg['target_seconds']:.0f} s vs {base['target_seconds']:.0f} s ({ratio:.1f}×)")


CLAIMS = (
    ('1', 'Sparse-Guard degrades reconstructions (PSNR and SSIM lower) more than every other defense of '
          'the SG tables, in both settings, on both datasets.', claim_lowest_reconstruction),
    ('2', 'It does so at accuracy comparable to no-defense (within 2 points).', claim_accuracy_kept),
    ('3', 'Larger λ (sparser codes) gives more protection (PSNR falls from λ = 0.1 to 0.25 to 0.5).',
     claim_monotone_in_lam),
    ('4', 'Sparse-Standard already protects more than the noise, GAN and NoPeek defenses; Sparse-Guard '
          'protects more than Sparse-Standard.', claim_sparse_standard_and_guard),
    ('5', 'Laplace noise at b = 1.0 costs clearly more accuracy than Sparse-Guard and still does not reach '
          "its reconstruction metrics.", claim_laplace),
    ('6', 'The protection holds equally whether the attacker reads an early layer (split) or the last hidden '
          'layer (end-to-end).', None),
    ('7', "Sparse-Guard's training costs under twice no-defense's time.", claim_training_cost),
)


def verdicts(all_cells: Sequence[Cell]) -> list[Verdict]:
  """One verdict per claim and protocol, each from every (dataset, setting) cell of the protocol."""
  out = []
  for protocol in PROTOCOLS:
    mine = [c for c in all_cells if c.protocol == protocol]
    for number, text, per_cell in CLAIMS:
      if per_cell is None:  # claim 6 pairs the settings of one dataset
        by_dataset = {}
        for c in mine:
          by_dataset.setdefault(c.dataset, {})[c.setting] = c
        pieces = [claim_both_settings(pair['split'], pair['end_to_end']) if len(pair) == 2
                  else (None, f"{dataset}, {protocol}: one setting only")
                  for dataset, pair in sorted(by_dataset.items())]
        expected = len(DATASETS)
      else:
        pieces = [per_cell(c) for c in mine]
        expected = len(DATASETS) * len(SETTING_TITLES)
      outcomes = [o for o, _ in pieces] + [None] * max(0, expected - len(pieces))
      out.append(Verdict(number, protocol, _combine(outcomes), '; '.join(e for _, e in pieces) or 'no rows'))
  return out


# ---------------------------------------------------------------------------
# The report.

COLUMNS = (('accuracy', 'Acc (%)', 1, 100.0), ('psnr', 'PSNR ↓', 2, 1.0), ('ssim', 'SSIM ↓', 3, 1.0),
           ('attack_top1', 'AttAcc ↓ (%)', 1, 100.0), ('knn_distance', 'KNN ↑', 1, 1.0))


def _cell_text(row: dict, key: str, decimals: int, scale: float) -> str:
  if row.get(key) is None:
    return '–'
  spread = row.get('accuracy_se' if key == 'accuracy' else f'{key}_sd')
  text = f"{scale * row[key]:.{decimals}f}"
  return text if spread is None else f"{text} ± {scale * spread:.{decimals}f}"


def cell_table(cell: Cell) -> str:
  head = '| Defense | ' + ' | '.join(h for _, h, _, _ in COLUMNS) + ' | train s |'
  lines = [head, '| :--- |' + ' ---: |' * (len(COLUMNS) + 1)]
  order = sorted(cell.rows, key=lambda n: (_defense_rank(cell.rows[n]['defense']), n))
  for name in order:
    row = cell.rows[name]
    mark = ' †' if name != 'no-defense' and compare(cell, name, 'no-defense', 'psnr') not in (0, None) else ''
    values = [_cell_text(row, key, d, s) for key, _, d, s in COLUMNS]
    values[1] += mark
    lines.append(f"| {name} | " + ' | '.join(values) + f" | {row.get('target_seconds', '–')} |")
  return '\n'.join(lines)


def _defense_rank(defense: str) -> int:
  order = SG_TABLE + ('mid', 'bido', 'dp-sgd', 'transfer-learning')
  return order.index(defense) if defense in order else len(order)


def _ablation_table(loaded: dict, names: Sequence[str], caption: Callable[[str], str]) -> str:
  lines = ['| run | defense | Acc (%) | PSNR ↓ | SSIM ↓ | AttAcc ↓ (%) | train s |', '| :--- | :--- |' + ' ---: |' * 5]
  for name in names:
    rows = loaded.get(name)
    if rows is None:
      lines.append(f"| {caption(name)} | not run yet | | | | | |")
      continue
    for row in rows:
      lines.append(f"| {caption(name)} ({SETTING_TITLES[row['setting']].lower()}) | {label(row)} | "
                   + ' | '.join(_cell_text(row, k, d, s) for k, _, d, s in COLUMNS[:4])
                   + f" | {row.get('target_seconds', '–')} |")
  return '\n'.join(lines)


def _transfer_table(loaded: dict) -> str:
  lines = ['| target | θ_C (trained on private data) | Acc (%) | attack | AttAcc top-1 ↓ (%) | top-5 ↓ (%) | KNN ↑ |',
           '| :--- | ---: | ---: | :--- | ---: | ---: | ---: |']
  for name in ['transfer/no_defense'] + [f'transfer/frozen_{d}' for d in FROZEN_DEPTHS]:
    rows = loaded.get(name)
    if rows is None:
      lines.append(f"| {name} | not run yet | | | | | |")
      continue
    for row in rows:
      theta = row.get('theta_c', 'all')
      lines.append(f"| {name.split('/')[1]} | {theta} | {100 * row['accuracy']:.1f} | {row['attack']} | "
                   f"{100 * row['attack_top1']:.1f} | {100 * row['attack_top5']:.1f} | "
                   f"{row.get('knn_distance', float('nan')):.1f} |")
  return '\n'.join(lines)


def _figures(root: str, runs: Sequence[Run], loaded: dict, figure_dir: str) -> list[str]:
  """Copies each finished run's reconstruction grids into ``figure_dir`` and
  draws one accuracy–PSNR trade-off figure per (dataset, protocol); returns
  the Markdown lines that show them."""
  os.makedirs(figure_dir, exist_ok=True)
  lines = []
  for run in runs:
    if loaded.get(run.name) is None or run.name.startswith(('ablations/', 'transfer/')):
      continue
    for file in sorted(os.listdir(os.path.join(root, run.name))):
      if file.startswith('reconstructions_') and file.endswith('.png'):
        target = f"{run.name.replace('/', '_')}_{file}"
        shutil.copyfile(os.path.join(root, run.name, file), os.path.join(figure_dir, target))
        lines.append(f"![{run.name}: {file}]({os.path.basename(figure_dir)}/{target})")
  by_pair = {}
  for rows in loaded.values():
    for row in rows or ():
      if 'psnr' in row:
        by_pair.setdefault((row['dataset'], row['protocol']), []).append(row)
  for (dataset, protocol), rows in sorted(by_pair.items()):
    if len({label(r) for r in rows}) > 1:
      target = f"tradeoff_{dataset}_{protocol}.png"
      tradeoff_figure(rows, os.path.join(figure_dir, target), overwrite=True)
      lines.append(f"![trade-off, {dataset}, {protocol}]({os.path.basename(figure_dir)}/{target})")
  return lines


def report(root: str, runs: Sequence[Run], out: str) -> str:
  """Writes the Markdown report (and its figures beside it, in ``<out stem>/``); returns its text."""
  loaded = load(root, runs)
  all_cells = cells(loaded)
  timing = _read_json(os.path.join(root, TIMING_FILE)) or {}
  finished = [r.name for r in runs if os.path.exists(results_path(root, r))]
  figure_dir = os.path.splitext(out)[0]
  parts = ['# Reproduction report: the Sparse-Guard claims under both protocols', '',
           f"Written by `scripts/reproduce.sh` from {len(finished)} of {len(runs)} runs "
           f"({sum(timing.get(n, 0.0) for n in finished) / 3600:.2f} h of wall time for the finished ones).", '']
  missing = [r for r in runs if loaded[r.name] is None]
  if missing:
    parts += ['Not run yet: ' + ', '.join(f"`{r.name}`" for r in missing) + '.', '']
  partial = partial_runs(root, runs)
  if partial:
    parts += ['Still running (their finished points are included): '
              + ', '.join(f"`{r.name}` ({len(loaded[r.name])} points)" for r in partial) + '.', '']
  parts += ['## Verdicts', '',
            'Two numbers differ when their means are more than 2·√(sd₁² + sd₂²) apart (sd over attacker '
            'seeds; for accuracy, the binomial standard error). Sparse-Guard is the λ = 0.5 row.', '',
            '| claim | protocol | verdict | the numbers that decide it |', '| :--- | :--- | :--- | :--- |']
  texts = {number: text for number, text, _ in CLAIMS}
  for v in verdicts(all_cells):
    parts.append(f"| {v.claim}. {texts[v.claim]} | {v.protocol} | **{v.outcome}** | {v.evidence} |")
  parts += ['', '## Tables', '']
  for cell in all_cells:
    parts += [f"### {cell.title}", '', cell_table(cell), '']
  parts += ['## Ablation: converged vs truncated codes', '',
            _ablation_table(loaded, ['mnist/corrected', 'ablations/converged_codes', 'ablations/paper_schedule'],
                            lambda n: n.split('/')[-1]), '',
            '## Ablation: the attacker\'s budget', '',
            _ablation_table(loaded, [f'ablations/attacker_budget_{b}' for b in ATTACKER_BUDGETS],
                            lambda n: n.split('_')[-1] + ' images'), '',
            '## TL-DMI: fewer parameters trained on private data (GAN-prior attacks)', '',
            _transfer_table(loaded), '', '## Figures', '']
  parts += _figures(root, runs, loaded, figure_dir) + ['', '## Runs and their wall time', '',
                                                       '| run | what | wall s |', '| :--- | :--- | ---: |']
  parts += [f"| `{r.name}` | {r.what} | {timing.get(r.name, '–')} |" for r in runs]
  text = '\n'.join(parts) + '\n'
  write_text_atomic(out, text, overwrite=True)
  return text


def main(argv: Optional[Sequence[str]] = None) -> None:
  parser = argparse.ArgumentParser(prog='python -m mi_jax.experiments.reproduction', description=__doc__.split('\n')[0])
  parser.add_argument('command', choices=('run', 'report', 'list'))
  parser.add_argument('--root', required=True, help='the folder that holds every run')
  parser.add_argument('--scale', default='small', choices=('tiny', 'small', 'paper'))
  parser.add_argument('--out', default='docs/reproduction.md')
  parser.add_argument('--only', default=None, help='run only the runs whose name contains this text')
  args = parser.parse_args(argv)
  runs = plan(args.scale)
  chosen = [r for r in runs if args.only is None or args.only in r.name]
  if args.command == 'list':
    for r in chosen:
      print(' '.join(r.command(args.root)))
    return
  if args.command == 'run':
    run_all(args.root, chosen)
  report(args.root, runs, args.out)
  print(f"reproduction: wrote {args.out}", flush=True)


if __name__ == '__main__':
  main()
