"""mi_jax.lca depends on jax and numpy only (no Flax, no torch)."""

import pathlib
import subprocess
import sys


def test_importing_lca_imports_no_flax():
  code = "import sys, mi_jax.lca; bad = [m for m in ('flax', 'torch', 'optax') if m in sys.modules]; assert not bad, bad"
  subprocess.run([sys.executable, '-c', code], check=True)


def test_lca_sources_name_no_flax():
  root = pathlib.Path(__file__).resolve().parents[2] / 'mi_jax' / 'lca'
  for path in root.glob('*.py'):
    text = path.read_text()
    assert 'import flax' not in text and 'from flax' not in text, path
