"""scripts/check_device.py: the report it prints and its CPU comparison."""

import importlib.util
import json
import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _script():
  spec = importlib.util.spec_from_file_location('check_device', os.path.join(ROOT, 'scripts', 'check_device.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_the_smoke_run_reports_finite_codes_and_matches_the_cpu_backend():
  script = _script()
  smoke = script.lca_smoke(0.01, batch=8, n_steps=20, tau=20.0, compare_with_cpu=True)
  assert smoke['finite'] and 0 < smoke['nonzero_fraction'] < 1
  # On CPU both solves are the same program: the accelerator path's check is exact here.
  assert smoke['relative_difference_to_cpu'] < 1e-6
  assert smoke['images_per_second'] > 0


def test_the_report_names_backend_devices_and_memory(tmp_path, capsys, monkeypatch):
  script = _script()
  monkeypatch.setattr(script, 'smoke_schedule', lambda accelerator: dict(batch=8, n_steps=20, tau=20.0))
  out = tmp_path / 'report.json'
  assert script.main(['--seconds=0.01', f'--json-out={out}']) == 0
  text = capsys.readouterr().out
  assert 'backend cpu' in text and 'GiB' in text and text.strip().endswith('OK')
  report = json.loads(out.read_text())
  assert report['device_count'] == len(report['devices']) and report['lca']['finite']
