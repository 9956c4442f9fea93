"""Result rows, atomic writes, provenance hashes and the SG Table 1 Markdown."""

import json
import math
import os
import re
import subprocess

import pytest

from mi_jax.experiments import tables
from mi_jax.utils import results

HASH = '0123456789ab'


def _row(**changes):
  row = dict(dataset='mnist', setting='end_to_end', defense='no-defense', lam=None,
             protocol='corrected', seed=0, accuracy=0.9871, psnr=18.456, ssim=0.7123,
             config_hash=HASH, code_version='0e85fbf')
  row.update(changes)
  return row


# ------------------------------------------------------------------ rows


def test_valid_row_is_returned_as_a_copy_with_float_lam_and_extras_kept():
  row = _row(lam=1, fid=12.5, n_images=60000)
  checked = results.validate_row(row)
  assert checked == {**row, 'lam': 1.0}
  assert isinstance(checked['lam'], float) and checked is not row


def test_sg_legacy_rows_may_carry_inf_and_nan():
  results.validate_row(_row(protocol='sg_legacy', psnr=-math.inf, ssim=math.nan))


@pytest.mark.parametrize('changes,pattern', [
    ({'setting': 'e2e'}, r"setting must be one of \('end_to_end', 'split'\), got 'e2e'"),
    ({'protocol': 'legacy'}, r"protocol must be one of \('corrected', 'sg_legacy'\), got 'legacy'"),
    ({'lam': float('inf')}, r"lam must be None or a finite number, got inf"),
    ({'lam': 'high'}, r"lam must be None or a finite number"),
    ({'seed': 1.0}, r"seed must be an integer, got 1.0"),
    ({'seed': True}, r"seed must be an integer, got True"),
    ({'accuracy': 98.7}, r"accuracy must be a fraction in \[0, 1\], got 98.7 \(store fractions"),
    ({'psnr': '18'}, r"psnr must be a number, got '18'"),
    ({'ssim': math.nan}, r"ssim is NaN in a protocol='corrected' row"),
    ({'config_hash': 'ABC'}, r"config_hash must be 12 lowercase hex characters"),
    ({'dataset': ''}, r"dataset must be a non-empty string"),
    ({'code_version': None}, r"code_version must be a non-empty string"),
])
def test_bad_field_raises_one_line_value_error_naming_it(changes, pattern):
  with pytest.raises(ValueError, match=pattern) as error:
    results.validate_row(_row(**changes))
  assert '\n' not in str(error.value)


def test_missing_keys_are_listed():
  row = _row()
  del row['psnr'], row['seed']
  with pytest.raises(ValueError, match=r"missing keys \['seed', 'psnr'\]"):
    results.validate_row(row)


def test_duplicate_runs_are_rejected_with_the_row_index():
  with pytest.raises(ValueError, match=r"row 1 duplicates"):
    results.validate_rows([_row(), _row(psnr=1.0)])
  with pytest.raises(ValueError, match=r"row 1: accuracy must be"):
    results.validate_rows([_row(), _row(seed=1, accuracy=2)])
  results.validate_rows([_row(), _row(seed=1)])


# ------------------------------------------------------------------ atomic writes


def test_write_json_atomic_round_trips_and_leaves_no_temp_files(tmp_path):
  path = tmp_path / 'rows.json'
  obj = [_row(), _row(protocol='sg_legacy', psnr=-math.inf)]
  assert results.write_json_atomic(path, obj) == path
  assert json.loads(path.read_text()) == obj
  assert sorted(os.listdir(tmp_path)) == ['rows.json']
  assert oct(path.stat().st_mode & 0o777) == oct(0o644)


def test_write_refuses_to_overwrite_unless_asked(tmp_path):
  path = tmp_path / 'table.md'
  results.write_text_atomic(path, 'first\n')
  with pytest.raises(FileExistsError, match=re.escape(str(path))) as error:
    results.write_text_atomic(path, 'second\n')
  assert 'overwrite=True' in str(error.value)
  with pytest.raises(FileExistsError, match=re.escape(str(path))):
    results.write_json_atomic(path, {'a': 1})
  assert path.read_text() == 'first\n'
  results.write_text_atomic(path, 'second\n', overwrite=True)
  assert path.read_text() == 'second\n'
  assert sorted(os.listdir(tmp_path)) == ['table.md']


def test_failed_write_leaves_neither_file_nor_temp(tmp_path, monkeypatch):
  path = tmp_path / 'rows.json'
  with pytest.raises(ValueError, match=r"obj must be JSON-serialisable"):
    results.write_json_atomic(path, {'a': object()})

  def crash(fd):
    raise OSError('disk full')

  monkeypatch.setattr(results.os, 'fsync', crash)
  with pytest.raises(OSError, match='disk full'):
    results.write_text_atomic(path, 'x')
  assert os.listdir(tmp_path) == []


def test_failed_overwrite_keeps_the_old_content(tmp_path, monkeypatch):
  path = tmp_path / 'rows.json'
  results.write_text_atomic(path, 'old')
  monkeypatch.setattr(results.os, 'fsync', lambda fd: (_ for _ in ()).throw(OSError('boom')))
  with pytest.raises(OSError):
    results.write_text_atomic(path, 'new', overwrite=True)
  assert path.read_text() == 'old' and os.listdir(tmp_path) == ['rows.json']


def test_write_into_missing_directory_says_so(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"directory .*nope does not exist"):
    results.write_text_atomic(tmp_path / 'nope' / 'a.txt', 'x')


# ------------------------------------------------------------------ provenance


CONFIG = {'dataset': 'mnist', 'lca': {'lam': 0.25, 'tau': 100.0, 'n_steps': 500}, 'seed': 0}


def test_config_hash_is_pinned_and_ignores_key_order_and_whitespace():
  h = results.config_hash(CONFIG)
  # Pinned: a change here silently re-keys every stored result. The value is
  # sha256 of '{"dataset":"mnist","lca":{"lam":0.25,"n_steps":500,"tau":100.0},"seed":0}'.
  assert h == '2d8eed161775'
  assert results.canonical_json(CONFIG) == (
      '{"dataset":"mnist","lca":{"lam":0.25,"n_steps":500,"tau":100.0},"seed":0}')
  reordered = {'seed': 0, 'lca': {'n_steps': 500, 'tau': 100.0, 'lam': 0.25}, 'dataset': 'mnist'}
  assert results.config_hash(reordered) == h
  assert results.config_hash(json.dumps(CONFIG, indent=4)) == h


def test_config_hash_sees_every_value_and_accepts_config_dicts():
  assert results.config_hash({**CONFIG, 'seed': 1}) != results.config_hash(CONFIG)
  assert results.config_hash({**CONFIG, 'seed': 0.0}) != results.config_hash(CONFIG)  # 0 vs 0.0

  class FakeConfigDict:
    def to_dict(self):
      return dict(CONFIG)

  assert results.config_hash(FakeConfigDict()) == results.config_hash(CONFIG)


@pytest.mark.parametrize('config,pattern', [
    ('{not json', r"config string is not valid JSON"),
    ({'lam': math.nan}, r"config must be JSON-serialisable without NaN/inf"),
    ({'f': print}, r"config must be JSON-serialisable"),
])
def test_config_hash_bad_input(config, pattern):
  with pytest.raises(ValueError, match=pattern):
    results.config_hash(config)


def test_code_version_is_this_checkout_commit():
  root = results._package_root().parent
  head = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=root, capture_output=True, text=True)
  if head.returncode != 0:
    pytest.skip('not a git checkout')
  version = results.code_version()
  assert re.fullmatch(r'[0-9a-f]{40}(\+dirty)?', version)
  assert version.split('+')[0] == head.stdout.strip()


def test_code_version_falls_back_to_the_package_version(monkeypatch):
  def no_git(args, cwd):
    raise FileNotFoundError('git')

  monkeypatch.setattr(results, '_git', no_git)
  assert results.code_version() == results._package_version() == '0.1.0'


# ------------------------------------------------------------------ Markdown


GOLDEN_ROWS = [
    _row(),
    _row(setting='split', accuracy=0.9902, psnr=21.0, ssim=0.80149),
    _row(defense='sparse-guard', lam=0.25, accuracy=0.97, psnr=9.5, ssim=0.1),
    _row(defense='sparse-guard', lam=0.25, seed=1, accuracy=0.98, psnr=10.5, ssim=0.2),
    _row(defense='sparse-guard', lam=0.25, setting='split', accuracy=0.9655, psnr=-1.25, ssim=-0.0314),
    _row(defense='gaussian-noise', lam=None, setting='split', accuracy=0.5, psnr=12.0, ssim=0.3),
    _row(protocol='sg_legacy', psnr=-math.inf, ssim=0.05, accuracy=0.9),
]

GOLDEN = """\
### mnist — protocol `corrected`

Protocol `corrected`: attacker trained on its own parameters, images de-normalised to [0, 1] in float32, per-image PSNR (capped at 100 dB) and SSIM averaged over every reconstructed private image.
Target seeds: 0, 1; a cell with several shows mean ± sample std over them.

| Defense | End-to-end Acc ↑ (%) | End-to-end PSNR ↓ | End-to-end SSIM ↓ | Split Acc ↑ (%) | Split PSNR ↓ | Split SSIM ↓ |
| :--- | ---: | ---: | ---: | ---: | ---: | ---: |
| no-defense | 98.71 | 18.46 | 0.712 | 99.02 | 21.00 | 0.801 |
| sparse-guard (λ=0.25) | 97.50 ± 0.71 | 10.00 ± 0.71 | 0.150 ± 0.071 | 96.55 | -1.25 | -0.031 |
| gaussian-noise | — | — | — | 50.00 | 12.00 | 0.300 |

Trade-off against no-defense (same setting, seed means; accuracy Δs in percentage points, ΔPSNR in dB):

| Defense | Setting | Pareto | ΔAcc (pp) | ΔPSNR (dB) | ΔSSIM | dB removed / pp lost | Notes |
| :--- | :--- | :--- | ---: | ---: | ---: | ---: | :--- |
| sparse-guard (λ=0.25) | End-to-end | front | -1.21 | -8.46 | -0.562 | 6.99 |  |
| sparse-guard (λ=0.25) | Split | front | -2.47 | -22.25 | -0.833 | 9.01 |  |
| gaussian-noise | Split | dominated by sparse-guard (λ=0.25) | -49.02 | -9.00 | -0.501 | 0.18 |  |

{note}

### mnist — protocol `sg_legacy`

Protocol `sg_legacy`: **reproduces the Sparse-Guard reference code, bugs included** (among them: the attacker is never trained; PSNR takes its range from each batch and SSIM assumes range 1.0 on normalised float16 tensors; means are over batches). Not comparable with `corrected` numbers.
Target seeds: 0.

| Defense | End-to-end Acc ↑ (%) | End-to-end PSNR ↓ | End-to-end SSIM ↓ |
| :--- | ---: | ---: | ---: |
| no-defense | 90.00 | -inf | 0.050 |
"""


def test_markdown_golden():
  # By hand: end-to-end ΔAcc = 97.50 − 98.71, ΔPSNR = 10.00 − 18.456, 8.456 / 1.21 = 6.99;
  # split 22.25 / 2.47 = 9.01 and 9 / 49.02 = 0.18; gaussian-noise has lower accuracy
  # and higher PSNR than sparse-guard in the split setting.
  assert tables.results_markdown(GOLDEN_ROWS) == GOLDEN.replace('{note}', tables.TRADEOFF_NOTE)


def test_markdown_one_table_per_dataset_and_protocol_in_order_of_appearance():
  rows = [_row(dataset='fmnist'), _row(dataset='mnist'), _row(dataset='fmnist', protocol='sg_legacy')]
  titles = re.findall(r'^### (.*)$', tables.results_markdown(rows), flags=re.M)
  assert titles == ['fmnist — protocol `corrected`', 'mnist — protocol `corrected`',
                    'fmnist — protocol `sg_legacy`']


def test_tradeoff_rows_against_no_defense_with_notes_and_knobs():
  rows = [_row(accuracy=0.9, psnr=20.0, ssim=0.5),
          _row(defense='dp-sgd', lam=1.1, knob='z', accuracy=0.8, psnr=15.0, ssim=0.25,
               dp_epsilon=3.25, dp_delta=1e-5),
          _row(defense='mid', setting='split', accuracy=0.5, psnr=1.0, ssim=0.0)]  # no split baseline
  [entry] = tables.tradeoff_rows(results.validate_rows(rows))
  assert entry['defense'] == 'dp-sgd' and entry['knob'] == 'z'
  assert entry['delta_accuracy_pp'] == pytest.approx(-10.0)
  assert entry['delta_psnr'] == pytest.approx(-5.0) and entry['delta_ssim'] == pytest.approx(-0.25)
  assert entry['psnr_removed_per_pp'] == pytest.approx(0.5)
  assert entry['pareto_front'] and entry['dominated_by'] is None
  text = tables.results_markdown(rows)
  assert '| dp-sgd (z=1.1) | End-to-end | front | -10.00 | -5.00 | -0.250 | 0.50 | ε=3.25, δ=1e-05 |' in text
  assert 'mid | Split' not in text
  tl = tables.results_markdown([_row(), _row(defense='transfer-learning', theta_c=2570, theta_t=269322)])
  assert r'| \|θ_C\|=2,570, \|θ_T\|=269,322 |' in tl  # pipes escaped: the table keeps its columns


def test_markdown_labels_and_rejects():
  assert tables.defense_label('sparse-guard', 1.0) == 'sparse-guard (λ=1)'
  assert tables.defense_label('laplace-noise', 0.5, 'b') == 'laplace-noise (b=0.5)'
  assert tables.defense_label('bido', None) == 'bido'
  with pytest.raises(ValueError, match=r"needs at least one row"):
    tables.results_markdown([])
  with pytest.raises(ValueError, match=r"row 0: setting must be one of"):
    tables.results_markdown([_row(setting='both')])


def test_optional_metric_columns_appear_only_when_present():
  plain = tables.results_markdown([_row()])
  assert 'FID' not in plain and 'KNN' not in plain
  text = tables.results_markdown([_row(fid=41.25, attack_top1=0.5), _row(defense='mid', lam=0.01)])
  assert '| End-to-end FID ↑ | End-to-end AttAcc ↓ (%) |' in text
  assert '| no-defense | 98.71 | 18.46 | 0.712 | 41.2 | 50.0 |' in text
  assert '| mid (λ=0.01) | 98.71 | 18.46 | 0.712 | — | — |' in text


def _tradeoff_line(text, label):
  [line] = [l for l in text.splitlines() if l.startswith(f'| {label} | End-to-end | ')]
  return line


def test_defense_better_on_both_axes_is_free_not_a_negative_ratio():
  # +2 accuracy points and −5 dB: the old ΔPSNR/ΔAcc gave −2.5 under "larger is better".
  rows = [_row(accuracy=0.90, psnr=20.0, ssim=0.5), _row(defense='good', accuracy=0.92, psnr=15.0, ssim=0.4)]
  line = _tradeoff_line(tables.results_markdown(rows), 'good')
  assert line == '| good | End-to-end | front | 2.00 | -5.00 | -0.100 | no accuracy cost |  |'
  [entry] = tables.tradeoff_rows(results.validate_rows(rows))
  assert entry['delta_accuracy_pp'] == pytest.approx(2.0) and entry['delta_psnr'] == pytest.approx(-5.0)
  assert entry['psnr_removed_per_pp'] is None
  assert entry['pareto_front'] and entry['dominated_by'] is None


def test_zero_and_small_accuracy_costs_get_labels_not_nan_or_inf():
  rows = [_row(accuracy=0.9000, psnr=20.0),
          _row(defense='same', accuracy=0.9000, psnr=19.0),        # ΔAcc = 0: old NaN
          _row(defense='tiny-cost', accuracy=0.8950, psnr=10.0),   # 0.5 pp < the 1 pp floor
          _row(defense='at-floor', accuracy=0.8900, psnr=18.0),    # exactly 1 pp: rated
          _row(defense='worse', accuracy=0.8000, psnr=21.0)]       # costs 10 pp and helps the attack
  text = tables.results_markdown(rows)
  assert 'NaN' not in text and 'inf' not in text
  entries = {e['defense']: e for e in tables.tradeoff_rows(results.validate_rows(rows))}
  assert entries['same']['delta_accuracy_pp'] == 0.0 and entries['same']['psnr_removed_per_pp'] is None
  assert entries['tiny-cost']['psnr_removed_per_pp'] is None
  assert entries['at-floor']['psnr_removed_per_pp'] == pytest.approx(2.0)
  assert entries['worse']['psnr_removed_per_pp'] == pytest.approx(-0.1)
  assert _tradeoff_line(text, 'same').endswith('| no accuracy cost |  |')
  assert _tradeoff_line(text, 'tiny-cost').endswith('| cost < 1 pp |  |')
  assert _tradeoff_line(text, 'at-floor').endswith('| 2.00 |  |')
  assert _tradeoff_line(text, 'worse').endswith('| -0.10 |  |')
  assert tables.removed_per_point(-3.0, -0.999) is None
  assert tables.removed_per_point(-3.0, 0.0) is None and tables.removed_per_point(3.0, 5.0) is None


def test_pareto_front_on_hand_made_points():
  nan = math.nan
  points = [(99.0, 20.0),   # 0 best accuracy: front
            (97.0, 10.0),   # 1 front
            (97.0, 12.0),   # 2 same accuracy, higher PSNR than 1: dominated
            (95.0, 10.0),   # 3 same PSNR, lower accuracy than 1: dominated
            (90.0, 5.0),    # 4 lowest PSNR: front
            (90.0, 5.0),    # 5 equal to 4: neither dominates, both front
            (80.0, 6.0),    # 6 dominated by 4
            (99.5, nan),    # 7 NaN: not front, dominates nothing
            (99.0, 20.0)]   # 8 equal to 0: front
  assert tables.pareto_front(points) == [True, True, False, False, True, True, False, False, True]
  # Brute-force reference on the same definition.
  for i, p in enumerate(points):
    dominated = any(q[0] >= p[0] and q[1] <= p[1] and q != p for q in points if not math.isnan(q[1]))
    assert tables.pareto_front(points)[i] == (not dominated and not math.isnan(p[1]))


def test_pareto_status_names_a_front_dominator_including_no_defense():
  rows = [_row(accuracy=0.95, psnr=20.0),
          _row(defense='bad', accuracy=0.94, psnr=21.0),                # dominated by no-defense, best
          _row(defense='sg', lam=0.5, accuracy=0.93, psnr=10.0),        # front
          _row(defense='noise', lam=1.0, knob='b', accuracy=0.91, psnr=12.0),  # dominated by sg
          _row(defense='best', accuracy=0.96, psnr=19.0)]               # dominates no-defense
  entries = {e['defense']: e for e in tables.tradeoff_rows(results.validate_rows(rows))}
  assert {d: e['pareto_front'] for d, e in entries.items()} == {
      'bad': False, 'sg': True, 'noise': False, 'best': True}
  # no-defense is off the front ('best' dominates it), so 'bad' names 'best', a front point.
  assert entries['bad']['dominated_by'] == 'best'
  assert entries['noise']['dominated_by'] == 'sg (λ=0.5)'
  text = tables.results_markdown(rows)
  assert _tradeoff_line(text, 'noise (b=1)').startswith(
      '| noise (b=1) | End-to-end | dominated by sg (λ=0.5) | -4.00 |')


def test_attack_accuracy_and_knn_deltas_when_rows_have_them():
  rows = [_row(accuracy=0.95, psnr=20.0, attack_top1=0.80, knn_distance=30.0),
          _row(defense='mid', accuracy=0.93, psnr=18.0, attack_top1=0.50, knn_distance=45.0),
          _row(defense='plain', accuracy=0.94, psnr=19.0)]
  entries = {e['defense']: e for e in tables.tradeoff_rows(results.validate_rows(rows))}
  mid = entries['mid']
  assert mid['delta_attack_top1_pp'] == pytest.approx(-30.0)
  assert mid['delta_knn_distance'] == pytest.approx(15.0)
  assert mid['attack_top1_removed_per_pp'] == pytest.approx(15.0)  # TL's ΔAttAcc / ΔAcc
  assert mid['psnr_removed_per_pp'] == pytest.approx(1.0)
  assert 'delta_attack_top1_pp' not in entries['plain']
  text = tables.results_markdown(rows)
  assert ('| Defense | Setting | Pareto | ΔAcc (pp) | ΔPSNR (dB) | ΔSSIM | ΔAttAcc (pp) | ΔKNN '
          '| dB removed / pp lost | AttAcc pp removed / pp lost | Notes |') in text
  assert _tradeoff_line(text, 'mid') == (
      '| mid | End-to-end | front | -2.00 | -2.00 | 0.000 | -30.0 | 15.0 | 1.00 | 15.00 |  |')
  assert _tradeoff_line(text, 'plain') == (
      '| plain | End-to-end | front | -1.00 | -1.00 | 0.000 | — | — | 1.00 | — |  |')


def test_rows_carrying_sd_fields_render_mean_plus_minus_sd():
  rows = [_row(accuracy=0.975, accuracy_sd=0.005, psnr=10.0, psnr_sd=0.25, attack_top1=0.5,
               attack_top1_sd=0.125),
          _row(defense='mid', accuracy=0.9, psnr=9.0)]
  text = tables.results_markdown(rows)
  assert '| no-defense | 97.50 ± 0.50 | 10.00 ± 0.25 | 0.712 | 50.0 ± 12.5 |' in text
  assert '| mid | 90.00 | 9.00 | 0.712 | — |' in text
  assert ("For one target, ± is the sd over the attacker's seeds (decoder initialisation and batch order; "
          "the row's `<metric>_sd`).") in text
  rows[0]['attack_seeds'] = 3
  assert "± is the sd over the attacker's 3 seeds" in tables.results_markdown(rows)
  assert tables.seed_stats([rows[0]], 'accuracy', scale=100.0) == (97.5, 0.5)
  # Several seeds: their own sample std wins over any carried sd.
  two = [_row(psnr=10.0, psnr_sd=9.0), _row(seed=1, psnr=12.0, psnr_sd=9.0)]
  assert tables.seed_stats(two, 'psnr') == (11.0, pytest.approx(math.sqrt(2.0)))
  assert tables.seed_stats([_row()], 'fid') is None
  assert 'carries' not in tables.results_markdown([_row()])


def test_a_defense_is_marked_distinguishable_only_past_two_combined_sd():
  base = _row(psnr=18.0, psnr_sd=0.2, ssim=0.70, ssim_sd=0.01)
  far = _row(defense='sparse-guard', lam=0.5, psnr=16.0, psnr_sd=0.3, ssim=0.69, ssim_sd=0.01)
  table = tables.results_markdown([base, far])
  row_line = next(line for line in table.splitlines() if line.startswith('| sparse-guard'))
  # PSNR: |16 − 18| = 2 > 2·√(0.09 + 0.04) = 0.72 → marked; SSIM: 0.01 < 2·0.0141 → not.
  assert '16.00 ± 0.30 †' in row_line and '0.690 ± 0.010 |' in row_line
  assert 'more than two combined standard deviations' in table
  assert tables.distinguishable((1.0, 0.1), (1.5, 0.1)) and not tables.distinguishable((1.0, 0.2), (1.5, 0.2))
  assert not tables.distinguishable((1.0, None), (5.0, 0.1))  # no noise floor, no claim
