"""Result rows, atomic writes, provenance hashes and the SG Table 1 Markdown."""

import json
import math
import os
import re
import subprocess

import pytest

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
    ({'lam': -0.1}, r"lam must be None or a finite number >= 0, got -0.1"),
    ({'lam': 'high'}, r"lam must be None or a finite number >= 0"),
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
Seeds: 0, 1; a cell with several shows mean ± sample std.

| Defense | End-to-end Acc ↑ (%) | End-to-end PSNR ↓ | End-to-end SSIM ↓ | Split Acc ↑ (%) | Split PSNR ↓ | Split SSIM ↓ |
| :--- | ---: | ---: | ---: | ---: | ---: | ---: |
| no-defense | 98.71 | 18.46 | 0.712 | 99.02 | 21.00 | 0.801 |
| sparse-guard (λ=0.25) | 97.50 ± 0.71 | 10.00 ± 0.71 | 0.150 ± 0.071 | 96.55 | -1.25 | -0.031 |
| gaussian-noise | — | — | — | 50.00 | 12.00 | 0.300 |

Trade-off against no-defense (same setting; ΔAcc in points, ΔPSNR in dB; ΔPSNR/ΔAcc = dB removed per accuracy point lost, larger is better):

| Defense | Setting | ΔAcc (pp) | ΔPSNR (dB) | ΔSSIM | ΔPSNR/ΔAcc | Notes |
| :--- | :--- | ---: | ---: | ---: | ---: | :--- |
| sparse-guard (λ=0.25) | End-to-end | -1.21 | -8.46 | -0.562 | 6.988 |  |
| sparse-guard (λ=0.25) | Split | -2.47 | -22.25 | -0.833 | 9.008 |  |
| gaussian-noise | Split | -49.02 | -9.00 | -0.501 | 0.184 |  |

### mnist — protocol `sg_legacy`

Protocol `sg_legacy`: **reproduces the Sparse-Guard reference code, bugs included** (among them: the attacker is never trained; PSNR takes its range from each batch and SSIM assumes range 1.0 on normalised float16 tensors; means are over batches). Not comparable with `corrected` numbers.
Seeds: 0.

| Defense | End-to-end Acc ↑ (%) | End-to-end PSNR ↓ | End-to-end SSIM ↓ |
| :--- | ---: | ---: | ---: |
| no-defense | 90.00 | -inf | 0.050 |
"""


def test_markdown_golden():
  assert results.results_markdown(GOLDEN_ROWS) == GOLDEN


def test_markdown_one_table_per_dataset_and_protocol_in_order_of_appearance():
  rows = [_row(dataset='fmnist'), _row(dataset='mnist'), _row(dataset='fmnist', protocol='sg_legacy')]
  titles = re.findall(r'^### (.*)$', results.results_markdown(rows), flags=re.M)
  assert titles == ['fmnist — protocol `corrected`', 'mnist — protocol `corrected`',
                    'fmnist — protocol `sg_legacy`']


def test_tradeoff_rows_against_no_defense_with_notes_and_knobs():
  rows = [_row(accuracy=0.9, psnr=20.0, ssim=0.5),
          _row(defense='dp-sgd', lam=1.1, knob='z', accuracy=0.8, psnr=15.0, ssim=0.25,
               dp_epsilon=3.25, dp_delta=1e-5),
          _row(defense='mid', setting='split', accuracy=0.5, psnr=1.0, ssim=0.0)]  # no split baseline
  [entry] = results.tradeoff_rows(results.validate_rows(rows))
  assert entry['defense'] == 'dp-sgd' and entry['knob'] == 'z'
  assert entry['delta_accuracy_pp'] == pytest.approx(-10.0)
  assert entry['delta_psnr'] == pytest.approx(-5.0) and entry['delta_ssim'] == pytest.approx(-0.25)
  assert entry['psnr_per_accuracy'] == pytest.approx(0.5)
  text = results.results_markdown(rows)
  assert '| dp-sgd (z=1.1) | End-to-end | -10.00 | -5.00 | -0.250 | 0.500 | ε=3.25, δ=1e-05 |' in text
  assert 'mid | Split' not in text
  tl = results.results_markdown([_row(), _row(defense='transfer-learning', theta_c=2570, theta_t=269322)])
  assert r'| \|θ_C\|=2,570, \|θ_T\|=269,322 |' in tl  # pipes escaped: the table keeps its columns


def test_markdown_labels_and_rejects():
  assert results.defense_label('sparse-guard', 1.0) == 'sparse-guard (λ=1)'
  assert results.defense_label('laplace-noise', 0.5, 'b') == 'laplace-noise (b=0.5)'
  assert results.defense_label('bido', None) == 'bido'
  with pytest.raises(ValueError, match=r"needs at least one row"):
    results.results_markdown([])
  with pytest.raises(ValueError, match=r"row 0: setting must be one of"):
    results.results_markdown([_row(setting='both')])


def test_optional_metric_columns_appear_only_when_present():
  plain = results.results_markdown([_row()])
  assert 'FID' not in plain and 'KNN' not in plain
  text = results.results_markdown([_row(fid=41.25, attack_top1=0.5), _row(defense='mid', lam=0.01)])
  assert '| End-to-end FID ↑ | End-to-end AttAcc ↓ (%) |' in text
  assert '| no-defense | 98.71 | 18.46 | 0.712 | 41.2 | 50.0 |' in text
  assert '| mid (λ=0.01) | 98.71 | 18.46 | 0.712 | — | — |' in text
