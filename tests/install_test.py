"""The accelerator extras pin the same JAX as the CPU build."""

import os
import re
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _project():
  with open(os.path.join(ROOT, 'pyproject.toml'), 'rb') as f:
    return tomllib.load(f)['project']


def _jax_range(requirement: str) -> str:
  match = re.fullmatch(r'jax(\[[a-z0-9]+\])?(.*)', requirement.replace(' ', ''))
  assert match, requirement
  return match.group(2)


def test_cuda12_and_tpu_extras_pin_the_cpu_builds_jax_minor():
  project = _project()
  cpu = next(_jax_range(r) for r in project['dependencies'] if r.startswith('jax') and not r.startswith('jax-'))
  extras = project['optional-dependencies']
  assert extras['cuda12'] == [f'jax[cuda12]{cpu}']
  assert extras['tpu'] == [f'jax[tpu]{cpu}']


def test_the_tpu_setup_script_installs_the_tpu_extra():
  with open(os.path.join(ROOT, 'tpu_scripts', 'setup.sh')) as f:
    text = f.read()
  assert ".[tpu]" in text and 'check_device.py' in text
