"""The reproduction report's verdict rules, on rows whose answer is known."""

import pytest

from mi_jax.experiments import reproduction as rep


def _row(defense, value=None, *, psnr, sd=0.05, acc=0.9, se=0.005, ssim=None, setting='split', dataset='mnist',
         protocol='corrected', seconds=10.0, symbol='λ', **extra):
  return {'dataset': dataset, 'protocol': protocol, 'setting': setting, 'defense': defense, 'knob_value': value,
          'lam': value,
          'knob': symbol, 'accuracy': acc, 'accuracy_se': se, 'psnr': psnr, 'psnr_sd': sd,
          'ssim': psnr / 25 if ssim is None else ssim, 'ssim_sd': sd / 25, 'target_seconds': seconds, **extra}


def _table(**changes):
  """One cell of the SG table where Sparse-Guard wins clearly, with ``changes`` ({label: {field: value}})."""
  rows = [_row('no-defense', psnr=20.0), _row('gaussian-noise', 0.1, psnr=19.0, symbol='σ'),
          _row('gan-augmentation', psnr=19.5), _row('laplace-noise', 0.5, psnr=18.5, symbol='b'),
          _row('laplace-noise', 1.0, psnr=18.0, acc=0.8, symbol='b'), _row('nopeek', 1.0, psnr=19.2, symbol='w'),
          _row('gan-opt', psnr=19.1), _row('gan-opt', psnr=19.3, plus_plus=True),
          _row('sparse-standard', 0.25, psnr=17.0),
          _row('sparse-guard', 0.1, psnr=16.5), _row('sparse-guard', 0.25, psnr=16.0),
          _row('sparse-guard', 0.5, psnr=15.0, seconds=15.0)]
  by_label = {rep.label(r): r for r in rows}
  for name, fields in changes.items():
    by_label[name] = {**by_label[name], **fields}
  return rep.Cell('mnist', 'corrected', 'split', by_label)


def test_labels_name_the_knob_and_the_plus_plus_variant():
  assert rep.label(_row('sparse-guard', 0.5, psnr=1)) == 'sparse-guard (λ=0.5)'
  assert rep.label(_row('gan-opt', psnr=1, plus_plus=True)) == 'gan-opt++'
  assert rep.label(_row('no-defense', psnr=1)) == 'no-defense'


def test_claim_1_supported_refuted_or_unclear():
  assert rep.claim_lowest_reconstruction(_table())[0] == rep.SUPPORTED
  outcome, text = rep.claim_lowest_reconstruction(_table(**{'gaussian-noise (σ=0.1)': {'psnr': 14.0,
                                                                                     'ssim': 0.5}}))
  assert outcome == rep.REFUTED and 'gaussian-noise' in text
  # Sparse-Standard 0.1 dB above Sparse-Guard with sd 0.05 each: not separated.
  assert rep.claim_lowest_reconstruction(_table(**{'sparse-standard (λ=0.25)': {'psnr': 15.1}}))[0] == rep.UNCLEAR


def test_claim_2_accuracy_within_two_points():
  assert rep.claim_accuracy_kept(_table())[0] == rep.SUPPORTED
  assert rep.claim_accuracy_kept(_table(**{'sparse-guard (λ=0.5)': {'accuracy': 0.85}}))[0] == rep.REFUTED
  # A 2.5-point drop with 1-point standard errors: cannot be told from 2 points.
  noisy = _table(**{'sparse-guard (λ=0.5)': {'accuracy': 0.875, 'accuracy_se': 0.01},
                    'no-defense': {'accuracy_se': 0.01}})
  assert rep.claim_accuracy_kept(noisy)[0] == rep.UNCLEAR


def test_claim_3_monotone_in_lambda():
  assert rep.claim_monotone_in_lam(_table())[0] == rep.SUPPORTED
  assert rep.claim_monotone_in_lam(_table(**{'sparse-guard (λ=0.25)': {'psnr': 16.45}}))[0] == rep.UNCLEAR
  assert rep.claim_monotone_in_lam(_table(**{'sparse-guard (λ=0.5)': {'psnr': 17.0}}))[0] == rep.REFUTED


def test_claims_4_5_and_7():
  assert rep.claim_sparse_standard_and_guard(_table())[0] == rep.SUPPORTED
  assert rep.claim_sparse_standard_and_guard(_table(**{'nopeek (w=1)': {'psnr': 16.0}}))[0] == rep.REFUTED
  assert rep.claim_laplace(_table())[0] == rep.SUPPORTED
  assert rep.claim_laplace(_table(**{'laplace-noise (b=1)': {'accuracy': 0.9}}))[0] == rep.UNCLEAR
  assert rep.claim_training_cost(_table())[0] == rep.SUPPORTED  # 15 s vs 10 s
  assert rep.claim_training_cost(_table(**{'sparse-guard (λ=0.5)': {'target_seconds': 25.0}}))[0] == rep.REFUTED


def test_claim_6_needs_the_gap_in_both_settings_and_of_equal_size():
  split = _table()  # SG 15.0 vs no-defense 20.0: a 5 dB gap
  same = rep.Cell('mnist', 'corrected', 'end_to_end', split.rows)
  assert rep.claim_both_settings(split, same)[0] == rep.SUPPORTED
  smaller = rep.Cell('mnist', 'corrected', 'end_to_end', _table(**{'sparse-guard (λ=0.5)': {'psnr': 18.0}}).rows)
  outcome, text = rep.claim_both_settings(split, smaller)
  assert outcome == rep.REFUTED and '2.5× larger split' in text
  gone = rep.Cell('mnist', 'corrected', 'end_to_end', _table(**{'sparse-guard (λ=0.5)': {'psnr': 20.0}}).rows)
  assert rep.claim_both_settings(split, gone)[0] == rep.REFUTED


def test_verdicts_combine_every_cell_and_say_when_cells_are_missing():
  split = _table()
  end_to_end = rep.Cell('mnist', 'corrected', 'end_to_end', split.rows)
  verdicts = {(v.claim, v.protocol): v for v in rep.verdicts([split, end_to_end])}
  # Fashion-MNIST has no cells yet: nothing can be claimed for both datasets.
  assert verdicts[('1', 'corrected')].outcome == rep.MISSING
  assert verdicts[('6', 'corrected')].outcome == rep.MISSING
  assert verdicts[('1', 'sg_legacy')].outcome == rep.MISSING
  cells = [rep.Cell(d, 'corrected', s, split.rows) for d in rep.DATASETS for s in ('split', 'end_to_end')]
  verdicts = {(v.claim, v.protocol): v for v in rep.verdicts(cells)}
  assert all(verdicts[(c, 'corrected')].outcome == rep.SUPPORTED for c in '1234567')
  refuted = [rep.Cell('mnist', 'corrected', 'split', _table(**{'nopeek (w=1)': {'psnr': 14.0}}).rows)] + cells[1:]
  assert {(v.claim, v.protocol): v for v in rep.verdicts(refuted)}[('1', 'corrected')].outcome == rep.REFUTED
  # One refuting cell decides a claim about every cell, even with others missing.
  assert {(v.claim, v.protocol): v for v in rep.verdicts(refuted[:1])}[('1', 'corrected')].outcome == rep.REFUTED


def test_plan_names_are_unique_and_every_run_writes_under_the_root():
  runs = rep.plan('small')
  assert len({r.name for r in runs}) == len(runs)
  for run in runs:
    command = run.command('/root')
    assert f'--workdir=/root/{run.name}' in command and command[2] in (rep.SG_MODULE, rep.GAN_MODULE)


def test_report_of_an_empty_root_lists_every_run_as_not_run(tmp_path):
  out = tmp_path / 'report.md'
  text = rep.report(str(tmp_path / 'root'), rep.plan('small'), str(out))
  assert out.read_text() == text
  assert 'Not run yet' in text and text.count('**not measured**') == 2 * len(rep.CLAIMS)


def test_the_command_line_refuses_an_unknown_scale(capsys):
  with pytest.raises(SystemExit):
    rep.main(['run', '--root=/tmp/x', '--scale=huge'])
  assert "invalid choice: 'huge'" in capsys.readouterr().err


@pytest.mark.slow
def test_the_tiny_reproduction_runs_every_experiment_and_writes_the_report(tmp_path, monkeypatch):
  """Every run of the plan at the tiny scale (real MNIST and Fashion-MNIST;
  the overrides parse, the experiments accept them), then the report: every
  run finished, every table and ablation filled in."""
  # The runs are processes of their own: as from the command line, they
  # split the CPU into one device per core, not the tests' 8 fake devices.
  monkeypatch.delenv('XLA_FLAGS', raising=False)
  out = tmp_path / 'reproduction.md'
  rep.main(['run', f'--root={tmp_path / "root"}', '--scale=tiny', f'--out={out}'])
  text = out.read_text()
  assert 'Not run yet' not in text and 'not run yet' not in text
  assert '### mnist, sg_legacy, split' in text and '### fashion_mnist, corrected, split' in text
  assert 'gan-opt++' in text and 'converged_codes' in text and '8000 images' in text and 'frozen_3' in text
  assert len(list((tmp_path / 'reproduction').glob('*.png'))) >= 4


def test_report_includes_the_finished_points_of_a_run_still_going(tmp_path):
  import json
  root = tmp_path / 'root'
  cell = _table()
  for name, row in cell.rows.items():
    folder = root / 'mnist' / 'corrected' / 'points' / name.replace(' ', '_')
    folder.mkdir(parents=True)
    (folder / 'row.json').write_text(json.dumps(row))
  (root / 'mnist' / 'corrected' / 'points' / 'unfinished').mkdir()  # a point still training: no row yet
  text = rep.report(str(root), rep.plan('small'), str(tmp_path / 'report.md'))
  assert f'`mnist/corrected` ({len(cell.rows)} points)' in text
  assert '### mnist, corrected, split' in text and '| sparse-guard (λ=0.5) | 90.0 ± 0.5 | 15.00 ± 0.05 †' in text
