"""CPU benchmark of ``mi_jax.lca.solve`` (and of lcapt, when it is importable).

Run (from the repository root):

    python benchmarks/lca_bench.py                    # full run, several minutes
    python benchmarks/lca_bench.py --quick            # smoke run, < 1 minute
    python benchmarks/lca_bench.py --shapes a,c --json-out /tmp/lca.json
    python benchmarks/lca_bench.py --quick --shapes b,c --sections forward,lateral_grad \
        --laterals gemm,fft                           # SG's layers, a few minutes

It prints tables and writes JSON (default ``benchmarks/out/lca_bench.json``).
Measured, all float32, stride 1, 'same' padding, 5x5 atoms, τ = 100,
λ = 0.5 (``--lam``), ``normalize_input=True`` (lcapt's input_zero_mean /
input_unit_var defaults), random uniform images and random unit-norm atoms:

1. forward: ``--steps`` (500) LCA iterations on shapes
   (a) N=64, 28x28x1 -> F=64; (b) Sparse-Guard layer 1, N=32, 28x28x1 -> F=16;
   (c) Sparse-Guard layer 2, N=32, 28x28x16 -> F=28.
   Compile time (lower + compile) apart from run time; run time is the median
   of ``--reps`` (>= 5) runs after one warm-up run. The ``lateral`` forms
   of ``--laterals`` ('recon', 'gram', 'gemm', 'fft') are timed, and the
   table says which one ``lateral='auto'`` picks (by comparing jaxprs).
2. grad: forward + backward of ``sum(codes * probe)`` w.r.t. the images and
   the dictionary through the solve, shape (a) at N=8: LCA with
   ``grad='unroll'`` and ``'checkpoint'``, FISTA with ``grad='implicit'``
   (same step budget). Peak memory two ways: XLA's ``memory_analysis()`` of
   the compiled program (argument + output + temp bytes) and the peak RSS
   increase of one run in a fresh subprocess (VmHWM after the run minus
   VmRSS before it, with the compile done before the baseline; Linux /proc).
3. fista: shape (a); E* from a long FISTA run (energy from ``return_info``,
   summed over the batch); the fewest iterations with (E − E*)/E* <= 1e-3
   (doubling, then bisection over ``n_steps``) and the median seconds of that
   solve. LCA's gap after ``--steps`` iterations is shown for context.
4. lateral_grad (only when named in ``--sections``): forward + backward of
   ``sum(codes * probe)`` w.r.t. the images and the dictionary through
   ``--lateral-grad-steps`` (40) LCA steps at N=32 on each of ``--shapes``,
   for every form of ``--laterals`` and ``grad='unroll'`` / ``'checkpoint'``
   (what a dictionary trained by backprop through the loop costs), with
   XLA's memory_analysis() bytes. Slow: XLA:CPU takes seconds per image for
   the 'gram' form's backward pass (its kernel-gradient convolutions), so a
   gram run on shape (c) lasts minutes.
5. lcapt: ``lcapt.lca.LCAConv2D`` with the same τ, λ, iterations, dictionary
   (HWIO -> (F, C, kh, kw)) and images. Its codes are compared with
   mi_jax's (max abs diff, printed) before anything is timed; then its
   forward (``torch.no_grad``) and forward + backward (``req_grad=True``,
   autograd through every step; peak RSS by the same subprocess method, no
   torch memory API) are timed with ``torch.set_num_threads(2)`` and speedup
   columns are printed. Without torch/lcapt this part is skipped with a
   message.

Timings on a shared machine are noisy: the load average is recorded around
every section (``load`` in the JSON) so contended runs can be spotted.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

# name: (N, H, W, C, F); kernel 5x5 for all.
SHAPES = {
    'a': (64, 28, 28, 1, 64),
    'b': (32, 28, 28, 1, 16),
    'c': (32, 28, 28, 16, 28),
}
SHAPE_NOTES = {
    'a': 'N=64 28x28x1 -> F=64',
    'b': 'SG layer 1: N=32 28x28x1 -> F=16',
    'c': 'SG layer 2: N=32 28x28x16 -> F=28',
}
KERNEL = 5
TAU = 100.0
TORCH_THREADS = 2
GRAD_BATCH = 8
LATERAL_GRAD_BATCH = 32
LATERALS = ('recon', 'gram', 'gemm', 'fft')
GAP_TARGET = 1e-3
DEFAULT_JSON = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'out', 'lca_bench.json')


# ------------------------------------------------------------------ helpers


def problem(shape: str, n: int | None = None, seed: int = 0):
  """Random images in [0, 1) (NHWC) and random unit-norm atoms (HWIO), numpy."""
  n_default, h, w, c, f = SHAPES[shape]
  rng = np.random.default_rng(seed)
  x = rng.uniform(0.0, 1.0, (n or n_default, h, w, c)).astype(np.float32)
  d = rng.normal(size=(KERNEL, KERNEL, c, f)).astype(np.float32)
  d /= np.sqrt(np.sum(d**2, axis=(0, 1, 2), keepdims=True)) + 1e-12
  return x, d


def probe_like(shape, seed=1):
  """A fixed random cotangent for the loss sum(codes * probe)."""
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def timed_runs(fn, reps: int, warmup: int = 1) -> dict:
  """Runs fn() warmup times untimed, then reps times; fn must block."""
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(reps):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return {'median_s': statistics.median(times), 'min_s': min(times), 'times_s': times}


def interleaved_runs(cases: list[dict], reps: int, label: str) -> list[dict]:
  """Times the cases round-robin (one warm-up each, then `reps` rounds).

  Interleaving makes the speed ratios robust to load that comes and goes on
  a shared machine. Returns each case's record with the timings added.
  """
  for case in cases:
    case['run']()
  times = [[] for _ in cases]
  for rep in range(reps):
    log(f'{label}: round {rep + 1}/{reps}')
    for case, case_times in zip(cases, times):
      start = time.perf_counter()
      case['run']()
      case_times.append(time.perf_counter() - start)
  return [{**case['record'], 'median_s': statistics.median(t), 'min_s': min(t), 'times_s': t}
          for case, t in zip(cases, times)]


def load_average() -> list[float] | None:
  try:
    return [round(v, 2) for v in os.getloadavg()]
  except OSError:
    return None


def _proc_status_kib(field: str) -> int | None:
  try:
    with open('/proc/self/status') as f:
      for line in f:
        if line.startswith(field + ':'):
          return int(line.split()[1])
  except OSError:
    pass
  return None


def reset_peak_rss() -> bool:
  """Resets VmHWM to the current RSS (Linux >= 4.0); False where unsupported."""
  try:
    with open('/proc/self/clear_refs', 'w') as f:
      f.write('5')
    return True
  except OSError:
    return False


def measure_peak_rss(run) -> dict:
  """Peak RSS increase (MiB) while run() executes once, from /proc."""
  reset_peak_rss()
  before = _proc_status_kib('VmRSS')
  run()
  peak = _proc_status_kib('VmHWM')
  if before is None or peak is None:
    return {'peak_rss_delta_mib': None}
  return {'peak_rss_delta_mib': (peak - before) / 1024, 'rss_before_mib': before / 1024}


def run_child(config: dict) -> dict:
  """Runs this script with --_child in a fresh process; returns its JSON line."""
  cmd = [sys.executable, os.path.abspath(__file__), '--_child', json.dumps(config)]
  proc = subprocess.run(cmd, capture_output=True, text=True)
  for line in reversed(proc.stdout.splitlines()):
    if line.startswith('{'):
      return json.loads(line)
  return {'error': (proc.stderr or proc.stdout)[-500:]}


def log(message: str):
  """Progress line on stderr (the tables go to stdout)."""
  print(f'[{time.strftime("%H:%M:%S")}] {message}', file=sys.stderr, flush=True)


def fmt(value, spec='.3f', missing='-'):
  return missing if value is None else format(value, spec)


def print_table(title: str, header: list[str], rows: list[list]):
  widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
  line = lambda r: '  '.join(str(v).rjust(w) for v, w in zip(r, widths))
  print(f'\n{title}')
  print(line(header))
  print(line(['-' * w for w in widths]))
  for r in rows:
    print(line(r))


# ------------------------------------------------------------------ mi_jax


def mijax_forward_fn(lam, steps, **kwargs):
  from mi_jax import lca
  return functools.partial(
      lca.solve, lam=lam, n_steps=steps, tau=TAU, normalize_input=True, **kwargs)


def compile_timed(fn, *args):
  """(compiled executable, seconds to lower + compile)."""
  import jax
  start = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  return compiled, time.perf_counter() - start


def memory_bytes(compiled) -> int | None:
  stats = compiled.memory_analysis()
  if stats is None:
    return None
  return stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes


def auto_lateral(x, d, lam, steps) -> str:
  """What lateral='auto' resolves to: the mode whose jaxpr it equals."""
  import jax
  jaxpr = lambda lateral: str(jax.make_jaxpr(mijax_forward_fn(lam, steps, lateral=lateral))(x, d))
  auto = jaxpr('auto')
  for lateral in LATERALS:
    if auto == jaxpr(lateral):
      return lateral
  return 'unknown'


def mijax_forward_case(shape, lateral, args) -> dict:
  """A timing case: its record (compile time, XLA memory) and its run()."""
  import jax
  log(f'forward: compiling mi_jax lateral={lateral} shape {shape}')
  x, d = problem(shape)
  compiled, compile_s = compile_timed(mijax_forward_fn(args.lam, args.steps, lateral=lateral), x, d)
  record = {'shape': shape, 'impl': 'mi_jax', 'lateral': lateral, 'compile_s': compile_s,
            'memory_analysis_bytes': memory_bytes(compiled)}
  return {'record': record, 'run': lambda: jax.block_until_ready(compiled(x, d))}


GRAD_CONFIGS = (('lca', 'unroll'), ('lca', 'checkpoint'), ('fista', 'implicit'))


def mijax_grad_fn(solver, grad, lam, steps):
  """(x, d, probe) -> (d/dx, d/dd) of sum(codes * probe)."""
  import jax
  import jax.numpy as jnp
  solve = mijax_forward_fn(lam, steps, solver=solver, grad=grad)
  loss = lambda x, d, probe: jnp.sum(solve(x, d) * probe)
  return jax.grad(loss, argnums=(0, 1))


def grad_inputs():
  x, d = problem('a', n=GRAD_BATCH)
  n, h, w, _, f = x.shape[0], *x.shape[1:], d.shape[-1]
  return x, d, probe_like((n, h, w, f))


def mijax_grad_case(solver, grad, args) -> dict:
  import jax
  log(f'grad: compiling mi_jax {solver}/{grad}')
  x, d, probe = grad_inputs()
  compiled, compile_s = compile_timed(mijax_grad_fn(solver, grad, args.lam, args.steps), x, d, probe)
  record = {'impl': 'mi_jax', 'solver': solver, 'grad': grad, 'compile_s': compile_s,
            'memory_analysis_bytes': memory_bytes(compiled),
            'child': {'impl': 'mi_jax', 'solver': solver, 'grad': grad, 'lam': args.lam,
                      'steps': args.steps}}
  return {'record': record, 'run': lambda: jax.block_until_ready(compiled(x, d, probe))}


def child_mijax_grad(config) -> dict:
  import jax
  x, d, probe = grad_inputs()
  compiled, _ = compile_timed(mijax_grad_fn(config['solver'], config['grad'], config['lam'],
                                            config['steps']), x, d, probe)
  x, d, probe = (jax.device_put(v) for v in (x, d, probe))
  jax.block_until_ready((x, d, probe))
  return measure_peak_rss(lambda: jax.block_until_ready(compiled(x, d, probe)))


def mijax_lateral_grad_case(shape, lateral, grad, args) -> dict:
  """(d/dx, d/dd) of sum(codes * probe) through the LCA with one lateral form."""
  import jax
  import jax.numpy as jnp
  log(f'lateral_grad: compiling mi_jax {lateral}/{grad} shape {shape}')
  x, d = problem(shape, n=LATERAL_GRAD_BATCH)
  probe = probe_like((*x.shape[:3], d.shape[-1]))
  solve = mijax_forward_fn(args.lam, args.lateral_grad_steps, lateral=lateral, grad=grad)
  fn = jax.grad(lambda x, d, probe: jnp.sum(solve(x, d) * probe), argnums=(0, 1))
  compiled, compile_s = compile_timed(fn, x, d, probe)
  record = {'shape': shape, 'lateral': lateral, 'grad': grad, 'compile_s': compile_s,
            'memory_analysis_bytes': memory_bytes(compiled)}
  return {'record': record, 'run': lambda: jax.block_until_ready(compiled(x, d, probe))}


def energies(shape, lam, steps, solver):
  """Summed energy of the codes after `steps` iterations, and the compiled solve."""
  import jax
  x, d = problem(shape)
  fn = mijax_forward_fn(lam, steps, solver=solver, return_info=True)
  compiled, _ = compile_timed(fn, x, d)
  _, info = compiled(x, d)
  return float(jax.device_get(info.energy).astype(np.float64).sum()), compiled, (x, d)


def bench_fista_gap(args) -> dict:
  """Fewest FISTA iterations to (E − E*)/E* <= GAP_TARGET on shape (a)."""
  import jax
  log(f'fista: reference run of {args.fista_reference_steps} iterations')
  e_star, _, _ = energies('a', args.lam, args.fista_reference_steps, 'fista')
  cache = {}

  def gap(n):
    if n not in cache:
      energy, compiled, inputs = energies('a', args.lam, n, 'fista')
      cache[n] = ((energy - e_star) / abs(e_star), compiled, inputs)
    return cache[n][0]

  low, high = 0, 8
  while gap(high) > GAP_TARGET and high < args.fista_reference_steps:
    low, high = high, min(2 * high, args.fista_reference_steps)
  while high - low > 1:  # invariant: gap(high) <= target, low failed or is 0
    mid = (low + high) // 2
    low, high = (low, mid) if gap(mid) <= GAP_TARGET else (mid, high)
  _, compiled, (x, d) = cache[high]
  timing = timed_runs(lambda: jax.block_until_ready(compiled(x, d)), args.reps)
  lca_energy, _, _ = energies('a', args.lam, args.steps, 'lca')
  return {'shape': 'a', 'e_star': e_star, 'reference_steps': args.fista_reference_steps,
          'target_gap': GAP_TARGET, 'iterations': high, 'gap_at_iterations': gap(high),
          'lca_steps': args.steps, 'lca_gap': (lca_energy - e_star) / abs(e_star), **timing}


# ------------------------------------------------------------------ lcapt


def import_lcapt():
  """(torch, LCAConv2D) or None when either is missing."""
  try:
    import torch
    from lcapt.lca import LCAConv2D
  except ImportError:
    return None
  torch.set_num_threads(TORCH_THREADS)
  return torch, LCAConv2D


def lcapt_layer(d, lam, steps, req_grad, result_dir):
  """LCAConv2D with mi_jax's dictionary d (HWIO -> (F, C, kh, kw))."""
  torch, LCAConv2D = import_lcapt()
  _, _, c, f = d.shape
  layer = LCAConv2D(
      out_neurons=f, in_neurons=c, result_dir=result_dir, kernel_size=KERNEL, stride=1,
      lambda_=lam, tau=TAU, lca_iters=steps, pad='same', req_grad=req_grad,
  )
  layer.assign_weight_values(torch.from_numpy(np.ascontiguousarray(d.transpose(3, 2, 0, 1))),
                             normalize=False)
  return layer


def to_nchw(a):
  return np.ascontiguousarray(np.transpose(a, (0, 3, 1, 2)))


def lcapt_forward(shape, lam, steps, result_dir):
  """(run() -> NCHW numpy codes) for lcapt under no_grad."""
  torch, _ = import_lcapt()
  x, d = problem(shape)
  layer = lcapt_layer(d, lam, steps, False, result_dir)
  inputs = torch.from_numpy(to_nchw(x))

  def run():
    with torch.no_grad():
      return layer(inputs).numpy()
  return run


def lcapt_grad(lam, steps, result_dir):
  """run() -> (dL/dx NHWC, dL/dd HWIO) through lcapt's autograd."""
  torch, _ = import_lcapt()
  x, d, probe = grad_inputs()
  layer = lcapt_layer(d, lam, steps, True, result_dir)
  inputs = torch.from_numpy(to_nchw(x)).requires_grad_(True)
  probe_t = torch.from_numpy(to_nchw(probe))

  def run():
    inputs.grad = None
    layer.weights.grad = None
    loss = (layer(inputs) * probe_t).sum()
    loss.backward()
    return (inputs.grad.numpy().transpose(0, 2, 3, 1),
            layer.weights.grad.numpy().transpose(2, 3, 1, 0))
  return run


def lcapt_forward_case(shape, args, mijax_codes, result_dir) -> dict:
  """lcapt's timing case, after checking its codes against mi_jax's."""
  log(f'forward: lcapt agreement check, shape {shape}')
  run = lcapt_forward(shape, args.lam, args.steps, result_dir)
  codes = run()
  diff = float(np.max(np.abs(codes - to_nchw(mijax_codes))))
  print(f'  lcapt agreement, shape {shape}: max |lcapt - mi_jax| = {diff:.2e} '
        f'(max |code| = {np.max(np.abs(codes)):.3f}, {args.steps} steps)', flush=True)
  record = {'shape': shape, 'impl': 'lcapt', 'lateral': 'gram (lcapt)', 'compile_s': None,
            'max_abs_diff_vs_mijax': diff}
  return {'record': record, 'run': run}


def lcapt_grad_case(args, mijax_grads, result_dir) -> dict:
  """lcapt's autograd timing case, after checking its gradients against mi_jax's."""
  log('grad: lcapt agreement check')
  run = lcapt_grad(args.lam, args.steps, result_dir)
  gx, gd = run()
  diffs = {}
  for name, ours, theirs in (('x', mijax_grads[0], gx), ('dictionary', mijax_grads[1], gd)):
    diffs[f'grad_{name}_max_abs_diff'] = float(np.max(np.abs(np.asarray(ours) - theirs)))
    diffs[f'grad_{name}_max_abs'] = float(np.max(np.abs(theirs)))
  print(f"  lcapt gradient agreement (vs mi_jax LCA unroll): d/dx max diff "
        f"{diffs['grad_x_max_abs_diff']:.2e} (max |d/dx| {diffs['grad_x_max_abs']:.2e}), "
        f"d/dD max diff {diffs['grad_dictionary_max_abs_diff']:.2e} "
        f"(max |d/dD| {diffs['grad_dictionary_max_abs']:.2e})", flush=True)
  record = {'impl': 'lcapt', 'solver': 'lca', 'grad': 'torch autograd', 'compile_s': None,
            'memory_analysis_bytes': None, **diffs,
            'child': {'impl': 'lcapt', 'lam': args.lam, 'steps': args.steps}}
  return {'record': record, 'run': run}


def child_lcapt_grad(config) -> dict:
  with tempfile.TemporaryDirectory() as result_dir:
    run = lcapt_grad(config['lam'], config['steps'], result_dir)
    return measure_peak_rss(run)


# ------------------------------------------------------------------ sections


def speedup(reference, record, key):
  return None if reference is None else reference[key] / record[key]


def section_forward(args, have_lcapt) -> list[dict]:
  rows, results = [], []
  for shape in args.shapes:
    x, d = problem(shape)
    auto = auto_lateral(x, d, args.lam, args.steps)
    cases = [mijax_forward_case(shape, lateral, args) for lateral in args.laterals]
    with tempfile.TemporaryDirectory() as result_dir:
      if have_lcapt:
        codes = np.asarray(mijax_forward_fn(args.lam, args.steps, lateral=auto)(x, d))
        cases.append(lcapt_forward_case(shape, args, codes, result_dir))
      shape_results = interleaved_runs(cases, args.reps, f'forward {shape}')
    lcapt = next((r for r in shape_results if r['impl'] == 'lcapt'), None)
    for r in shape_results:
      r['auto_picks'] = auto
      r['speedup_vs_lcapt'] = speedup(lcapt, r, 'median_s')
      r['speedup_vs_lcapt_min'] = speedup(lcapt, r, 'min_s')
      mark = ' (auto)' if r['lateral'] == auto else ''
      rows.append([shape, r['impl'], r['lateral'] + mark, fmt(r['compile_s'], '.2f'),
                   fmt(r['median_s']), fmt(r['min_s']),
                   fmt(1e3 * r['median_s'] / args.steps, '.2f'),
                   fmt(r['speedup_vs_lcapt'], '.2f'), fmt(r['speedup_vs_lcapt_min'], '.2f')])
    results += shape_results
  print_table(f'1. Forward, {args.steps} LCA steps, float32 (median of {args.reps} interleaved '
              'runs after a warm-up; compile separate)',
              ['shape', 'impl', 'lateral', 'compile s', 'median s', 'min s', 'ms/step',
               'speedup (median)', 'speedup (min)'], rows)
  for shape in args.shapes:
    print(f'   {shape}: {SHAPE_NOTES[shape]}')
  print('   speedup = lcapt time / this time; (min) uses the fastest run of each, which is '
        'less sensitive to other load on the machine.')
  return results


def section_grad(args, have_lcapt) -> list[dict]:
  import jax
  cases = [mijax_grad_case(solver, grad, args) for solver, grad in GRAD_CONFIGS]
  with tempfile.TemporaryDirectory() as result_dir:
    if have_lcapt:
      x, d, probe = grad_inputs()
      ours = jax.jit(mijax_grad_fn('lca', 'unroll', args.lam, args.steps))(x, d, probe)
      cases.append(lcapt_grad_case(args, ours, result_dir))
    results = interleaved_runs(cases, args.reps, 'grad')
  for r in results:  # peak RSS, one fresh subprocess per configuration
    log(f"grad: peak RSS subprocess for {r['impl']} {r['grad']}")
    r.update(run_child(r.pop('child')))
  lcapt = next((r for r in results if r['impl'] == 'lcapt'), None)
  rows = []
  for r in results:
    mem = r['memory_analysis_bytes']
    rss = r.get('peak_rss_delta_mib')
    r['speedup_vs_lcapt'] = speedup(lcapt, r, 'median_s')
    r['speedup_vs_lcapt_min'] = speedup(lcapt, r, 'min_s')
    r['rss_ratio_lcapt_over_this'] = (
        lcapt['peak_rss_delta_mib'] / rss if lcapt and rss and lcapt.get('peak_rss_delta_mib')
        else None)
    rows.append([r['impl'], r['solver'], r['grad'], fmt(r['compile_s'], '.2f'),
                 fmt(r['median_s']), fmt(r['min_s']),
                 fmt(None if mem is None else mem / 2**20, '.1f'), fmt(rss, '.1f'),
                 fmt(r['speedup_vs_lcapt'], '.2f'), fmt(r['speedup_vs_lcapt_min'], '.2f'),
                 fmt(r['rss_ratio_lcapt_over_this'], '.1f')])
  print_table(f'2. Forward + backward through {args.steps} steps, shape (a) at N={GRAD_BATCH}, '
              'd/d(images, dictionary) of sum(codes * probe)',
              ['impl', 'solver', 'grad', 'compile s', 'median s', 'min s', 'XLA mem MiB',
               'peak RSS +MiB', 'speedup (median)', 'speedup (min)', 'lcapt RSS / this'], rows)
  print('   XLA mem = memory_analysis() argument + output + temp bytes of the compiled program; '
        'peak RSS = VmHWM - VmRSS around one run in a fresh subprocess.')
  print("   lateral='auto' inside the solves; FISTA runs the same number of iterations as LCA.")
  return results


def section_lateral_grad(args) -> list[dict]:
  results, rows = [], []
  for shape in args.shapes:
    cases = [mijax_lateral_grad_case(shape, lateral, grad, args)
             for grad in ('unroll', 'checkpoint') for lateral in args.laterals]
    shape_results = interleaved_runs(cases, args.reps, f'lateral_grad {shape}')
    for r in shape_results:
      gram = next((g for g in shape_results if g['grad'] == r['grad'] and g['lateral'] == 'gram'),
                  None)
      r['speedup_vs_gram'] = speedup(gram, r, 'median_s')
      mem = r['memory_analysis_bytes']
      rows.append([shape, r['grad'], r['lateral'], fmt(r['compile_s'], '.2f'), fmt(r['median_s']),
                   fmt(r['min_s']), fmt(1e3 * r['median_s'] / LATERAL_GRAD_BATCH, '.1f'),
                   fmt(None if mem is None else mem / 2**20, '.1f'),
                   fmt(r['speedup_vs_gram'], '.2f')])
    results += shape_results
  print_table(f'4. Forward + backward through {args.lateral_grad_steps} LCA steps at '
              f'N={LATERAL_GRAD_BATCH}, d/d(images, dictionary) of sum(codes * probe), '
              f'median of {args.reps} interleaved runs',
              ['shape', 'grad', 'lateral', 'compile s', 'median s', 'min s', 'ms/image',
               'XLA mem MiB', 'speedup vs gram'], rows)
  for shape in args.shapes:
    print(f'   {shape}: {SHAPE_NOTES[shape]} (at N={LATERAL_GRAD_BATCH})')
  return results


def section_fista(args) -> dict:
  r = bench_fista_gap(args)
  print_table(f'3. FISTA time to (E - E*)/E* <= {GAP_TARGET:g}, shape (a), E* from '
              f'{r["reference_steps"]} FISTA iterations',
              ['E*', 'iterations', 'gap there', 'median s', 'min s', f'LCA gap @ {r["lca_steps"]}'],
              [[f'{r["e_star"]:.3f}', r['iterations'], f'{r["gap_at_iterations"]:.2e}',
                fmt(r['median_s']), fmt(r['min_s']), f'{r["lca_gap"]:.2e}']])
  print('   seconds include the 100 power iterations for the Lipschitz constant.')
  return r


# ------------------------------------------------------------------ main


def environment(args, have_lcapt) -> dict:
  import jax
  env = {
      'date': datetime.datetime.now().isoformat(timespec='seconds'),
      'python': platform.python_version(), 'platform': platform.platform(),
      'cpu_count': os.cpu_count(), 'jax': jax.__version__, 'devices': str(jax.devices()),
      'xla_flags': os.environ.get('XLA_FLAGS', ''), 'quick': args.quick, 'steps': args.steps,
      'reps': args.reps, 'lam': args.lam, 'tau': TAU, 'lcapt_importable': have_lcapt,
  }
  if have_lcapt:
    import torch
    env.update(torch=torch.__version__, torch_threads=torch.get_num_threads())
  return env


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--quick', action='store_true',
                 help='smoke run: 50 steps, 2 reps, shape b only unless --shapes')
  p.add_argument('--shapes', default=None, help='comma list of a,b,c (default all; quick: b)')
  p.add_argument('--json-out', default=DEFAULT_JSON)
  p.add_argument('--sections', default='forward,grad,fista',
                 help='comma list of forward,grad,fista,lateral_grad (opt-in: slow)')
  p.add_argument('--steps', type=int, default=None, help='LCA iterations (default 500)')
  p.add_argument('--reps', type=int, default=None, help='timed runs (default 5)')
  p.add_argument('--laterals', default='recon,gram,gemm,fft',
                 help='mi_jax lateral modes to time in the forward and lateral_grad sections')
  p.add_argument('--lateral-grad-steps', type=int, default=40,
                 help='LCA steps of the lateral_grad section')
  p.add_argument('--lam', type=float, default=0.5)
  p.add_argument('--fista-reference-steps', type=int, default=None,
                 help='FISTA iterations for E* (default 3000)')
  p.add_argument('--_child', default=None, help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  args.steps = args.steps or (50 if args.quick else 500)
  args.reps = args.reps or (2 if args.quick else 5)
  args.fista_reference_steps = args.fista_reference_steps or (400 if args.quick else 3000)
  args.shapes = (args.shapes or ('b' if args.quick else 'a,b,c')).split(',')
  args.sections = args.sections.split(',')
  args.laterals = args.laterals.split(',')
  unknown = set(args.shapes) - set(SHAPES)
  if unknown:
    p.error(f'unknown shapes {sorted(unknown)}; choose from {sorted(SHAPES)}')
  unknown = set(args.laterals) - set(LATERALS)
  if unknown:
    p.error(f'unknown laterals {sorted(unknown)}; choose from {LATERALS}')
  return args


def main(argv=None):
  args = parse_args(argv)
  if args._child:
    config = json.loads(args._child)
    if config['impl'] == 'lcapt':
      import_lcapt()
      print(json.dumps(child_lcapt_grad(config)))
    else:
      print(json.dumps(child_mijax_grad(config)))
    return

  have_lcapt = import_lcapt() is not None
  env = environment(args, have_lcapt)
  print('mi_jax.lca benchmark: ' + ', '.join(f'{k}={v}' for k, v in env.items()))
  if have_lcapt:
    print(f'lcapt is importable: comparing against it, torch.set_num_threads({TORCH_THREADS}).')
  else:
    print('lcapt (or torch) is NOT importable: skipping the lcapt comparison and speedup columns.')
  out = {'environment': env, 'load': {'start': load_average()}}
  if 'forward' in args.sections:
    out['forward'] = section_forward(args, have_lcapt)
    out['load']['after_forward'] = load_average()
  if 'grad' in args.sections:
    out['grad'] = section_grad(args, have_lcapt)
    out['load']['after_grad'] = load_average()
  if 'fista' in args.sections:
    out['fista'] = section_fista(args)
    out['load']['after_fista'] = load_average()
  if 'lateral_grad' in args.sections:
    out['lateral_grad'] = section_lateral_grad(args)
    out['load']['after_lateral_grad'] = load_average()
  print(f"\nload average (1, 5, 15 min): {json.dumps(out['load'])}")
  os.makedirs(os.path.dirname(os.path.abspath(args.json_out)), exist_ok=True)
  with open(args.json_out, 'w') as f:
    json.dump(out, f, indent=1)
  print(f'wrote {args.json_out}')


if __name__ == '__main__':
  main()
