"""benchmarks/perf_model.py: its FLOP counts against XLA's cost analysis, its roofline arithmetic."""

import importlib.util
import os
import sys

import jax
import jax.numpy as jnp
import pytest

from mi_jax.lca import operators

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _model():
  spec = importlib.util.spec_from_file_location('perf_model', os.path.join(ROOT, 'benchmarks', 'perf_model.py'))
  module = importlib.util.module_from_spec(spec)
  sys.modules['perf_model'] = module  # its dataclasses look their module up there
  spec.loader.exec_module(module)
  return module


def _xla_flops(function, *args) -> float:
  analysis = jax.jit(function).lower(*args).compile().cost_analysis()
  return (analysis[0] if isinstance(analysis, list) else analysis)['flops']


@pytest.mark.parametrize('layer_index', [0, 1])
def test_recon_and_gram_flops_match_xlas_count(layer_index):
  model = _model()
  layer = model.SG_LAYERS[layer_index]
  geom, n = layer.geometry, 2
  codes = jnp.ones((n, *geom.code_hw, layer.features))
  atoms = jnp.ones((*geom.kernel_hw, layer.channels, layer.features))
  macs = operators.lateral_flops(geom, layer.channels, layer.features)
  # The lateral products alone (the update's elementwise FLOPs are the model's small extra term).
  recon = _xla_flops(lambda a, d: operators.gram(a, d, geom), codes, atoms) / n
  assert recon == pytest.approx(2 * macs['recon'], rel=0.02)
  kernel = operators.gram_kernel(atoms, geom)
  gram = _xla_flops(operators.lateral_with_kernel, codes, kernel) / n
  # XLA counts only the taps inside the 'same'-padded grid: the border
  # makes its count up to 20 % lower than the model's full-window count.
  assert 0.8 * 2 * macs['gram'] <= gram <= 2 * macs['gram']


def test_roofline_is_the_slower_of_compute_and_memory():
  model = _model()
  machine = model.Machine('m', {'float32': 1e12}, 1e11)
  assert model.roofline_seconds(2e12, 1e10, machine) == pytest.approx(2.0)
  assert model.roofline_seconds(1e9, 1e12, machine) == pytest.approx(10.0)


def test_table1_scales_with_the_work_and_the_latency_floor_with_the_iterations():
  model = _model()
  h200 = next(m for m in model.MACHINES if m.name == 'NVIDIA H200')
  base = model.table1_seconds(h200, 'tf32', 'recon')
  double = model.table1_seconds(h200, 'tf32', 'recon', model.PaperScale(epochs=50))
  assert 1.9 < double / base < 2.0  # the evaluation passes do not double
  scale = model.PaperScale()
  iterations = (scale.epochs * scale.private / scale.batch * scale.n_steps
                * (scale.guard_points * 4 + scale.standard_points * 3))
  assert model.latency_floor_seconds(1.0) > iterations
