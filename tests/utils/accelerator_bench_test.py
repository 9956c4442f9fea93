"""benchmarks/accelerator_bench.py at tiny sizes: its rows, its JSON and tables, its budget and roofline.

Tiny LCA problems (20 steps of τ = 20, batch 2, layer 1) and a paper-config train step of batch 2 with
4 LCA steps keep this file under a minute on 2 CPU cores.
"""

import importlib.util
import json
import math
import os
import time

import jax
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = ['--quick', '--steps=20', '--batches=2', '--layers=1', '--reps=1', '--train-batch=2']


@pytest.fixture(scope='module')
def script():
  path = os.path.join(ROOT, 'benchmarks', 'accelerator_bench.py')
  spec = importlib.util.spec_from_file_location('accelerator_bench', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _lca_rows(script, *flags, budget_seconds=1e9):
  args = script.parse_args(TINY + list(flags))
  return script.section_lca(args, script.Budget(budget_seconds), peaks=None)


def test_the_precisions_are_compared_with_the_float32_codes(script):
  rows = _lca_rows(script, '--laterals=recon')
  assert [r['precision'] for r in rows] == ['float32', 'tensorfloat32', 'bfloat16']
  assert all(r['status'] == 'ok' and r['codes_finite'] for r in rows)
  f32, tf32, bf16 = rows
  assert f32['relative_code_error_vs_f32'] == 0.0
  assert math.isfinite(tf32['relative_code_error_vs_f32']) and math.isfinite(bf16['relative_code_error_vs_f32'])
  assert 0 < f32['nonzero_fraction'] < 1  # the quick schedule (τ = 20) gives nonzero codes
  # Each setting reaches the LCA's convolutions: three different programs.
  assert [r['hlo_precisions'] for r in rows] == [['HIGHEST'], ['HIGH'], ['DEFAULT']]
  assert not tf32['same_program_as_f32'] and not bf16['same_program_as_f32']
  for r in rows:
    assert r['images_per_s'] > 0 and r['median_s'] > 0 and r['compile_s'] > 0
    # One update of layer 1 (28x28x1 -> 16, 5x5) through 'recon': two convolutions of 2·28·28·16·25 FLOPs.
    assert 1.0e6 < r['flops_per_image_step'] < 2.0e6 and r['bytes_per_image_step'] > 0
    assert r['roofline_fraction'] is None  # no peaks given


def test_auto_is_resolved_and_duplicates_dropped(script):
  forms = script.resolve_laterals('2', ['auto', 'fft', 'recon', 'fft'])
  names = [form for form, _ in forms]
  assert len(names) == len(set(names)) and {'fft', 'recon'} <= set(names)
  assert sum(is_auto for _, is_auto in forms) == 1 and 'auto' not in names


def test_a_spent_budget_skips_every_combination(script):
  rows = _lca_rows(script, '--layers=1,2', '--batches=2,4', budget_seconds=0.0)
  assert rows and all(r['status'] == 'skipped' and 'budget' in r['reason'] for r in rows)
  # batch, layer, lateral form, precision: 2 batches x (2 forms for layer 1 + 2 or 3 for layer 2) x 3.
  assert len(rows) >= 2 * 4 * 3


def test_a_combination_predicted_to_pass_the_budget_is_skipped(script):
  done = {'status': 'ok', 'layer': '2', 'lateral': 'fft', 'precision': 'float32', 'batch': 256,
          'compile_s': 2.0, 'median_s': 1.0}
  base = {'layer': '2', 'lateral': 'fft', 'precision': 'float32', 'batch': 1024}
  # Compile, then a warm-up and 3 timed runs at 4x the measured batch's time.
  assert script.predicted_seconds([done], base, reps=3) == pytest.approx(2.0 + 4 * 4.0)
  assert script.predicted_seconds([done], {**base, 'precision': 'bfloat16'}, reps=3) is None
  budget = script.Budget(100.0, start=time.perf_counter() - 90.0)  # 10 s left
  assert 'predicted' in script.skip_reason([done], base, budget, 3, have_reference=True)
  assert script.skip_reason([done], {**base, 'batch': 128}, budget, 3, have_reference=True) is None
  assert script.skip_reason([], {**base, 'precision': 'bfloat16'}, budget, 3, have_reference=False) == (
      'no float32 reference')


def test_peaks_are_matched_in_the_device_kind(script):
  h200 = script.device_peaks('NVIDIA H200')
  assert h200['bandwidth'] == 4.8e12 and h200['tensorfloat32'] == 495e12
  assert script.device_peaks('NVIDIA H100 80GB HBM3')['bandwidth'] == 3.35e12
  assert script.device_peaks('TPU v5 lite')['bfloat16'] == 197e12
  assert script.device_peaks('cpu') is None
  assert script.device_peaks('cpu', peak_flops=1e12, peak_bandwidth=1e11) == {
      'float32': 1e12, 'tensorfloat32': 1e12, 'bfloat16': 1e12, 'bandwidth': 1e11}
  # 100 FLOPs and 20 bytes per image-step at 1e3 FLOP/s and 10 B/s: 0.1 s compute, 2 s memory; measured 4 s.
  r = script.roofline({'flops': 400.0, 'bytes': 80.0}, 4, 4.0, 'float32',
                      {'float32': 1e3, 'bandwidth': 10.0})
  assert r['roofline_fraction'] == pytest.approx(0.5) and r['bound'] == 'memory'
  assert r['achieved_flops_per_s'] == pytest.approx(25.0)
  assert script.roofline({'flops': 400.0, 'bytes': 80.0}, 4, 4.0, 'float32', None)['roofline_fraction'] is None


def test_the_run_writes_json_and_prints_markdown_tables(script, tmp_path, capsys):
  out = tmp_path / 'bench.json'
  result = script.main(TINY + ['--steps=4', '--laterals=recon', '--precisions=float32,bfloat16',
                               '--peak-flops=1e12', '--peak-bandwidth=1e11', f'--json-out={out}'])
  text = capsys.readouterr().out
  assert '| layer | batch | lateral | precision |' in text and '|---|' in text
  assert 'Paper-config Sparse-Guard train step' in text and 'roofline column is blank' not in text
  written = json.loads(out.read_text())
  assert written == json.loads(json.dumps(result))
  env = written['environment']
  assert env['backend'] == 'cpu' and env['jax'] == jax.__version__ and env['device_kind']

  step = written['train_step']
  assert step['status'] == 'ok', step
  assert step['config'].endswith('sparse_guard_mnist.py:paper') and step['defense'] == 'sparse-guard'
  assert step['overrides'] == {'train.batch_size': 2, 'defense.n_steps': 4, 'defense.tau': 20.0}
  assert step['lca_grad'] == 'checkpoint' and step['optimizer'] == 'sgd'
  assert step['median_s'] > 0 and math.isfinite(step['loss']) and 'SYNTHETIC' in step['inputs']
  assert step['memory_analysis_bytes'] > 0  # CPU devices have no memory_stats: XLA's analysis instead

  rows = written['lca']
  assert [(r['layer'], r['lateral'], r['precision']) for r in rows] == [('1', 'recon', 'float32'),
                                                                        ('1', 'recon', 'bfloat16')]
  assert all(r['status'] == 'ok' and 0 < r['roofline_fraction'] for r in rows)
  assert rows[0]['relative_code_error_vs_f32'] == 0.0 and written['lca_skipped'] == 0
