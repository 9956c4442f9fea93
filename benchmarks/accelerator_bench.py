"""Accelerator benchmark for a short slot on one chip: the LCA at Sparse-Guard's layers in three matmul
precisions, one paper-configuration Sparse-Guard train step, and the LCA's fraction of the roofline.

Run (from the repository root):

    python benchmarks/accelerator_bench.py              # one H100/H200: < 5 minutes (--budget-seconds 270)
    python benchmarks/accelerator_bench.py --quick      # CPU smoke run, about a minute
    python benchmarks/accelerator_bench.py --batches 256 --laterals auto --json-out /tmp/acc.json

Everything runs on device 0. Tables are printed as Markdown; the JSON (default
``benchmarks/out/accelerator_bench.json``) has the backend, the device kind, the JAX version and every
measurement. Compile time (lower + compile) is timed apart from run time; run time is the median of ``--reps``
runs (3; quick: 2) after one warm-up run. Inputs are SYNTHETIC timing inputs (fixed seed ``--seed``).

1. train_step (runs first, so that the allocator's peak is the step's): the experiment's target train step
   for ``configs/sparse_guard_mnist.py:paper`` (defense sparse-guard, SGD, 500 LCA steps, backprop through both
   LCA loops with grad='checkpoint', the Hebbian update inside the step) with only ``train.batch_size`` set
   (``--train-batch``: 256; quick: 8, and the LCA schedule cut to ``--steps`` of ``--tau``; also with
   ``--train-lca-steps``). Built as ``train_target`` builds it:
   ``defenses.build_target``, ``make_optimizer``, ``init_train_state`` (state replicated),
   ``defenses.classifier_step_for(config)``, and ``jax.jit`` with the arguments of
   ``mi_jax.train.step.jit_step`` (repeated here: ``jit_step`` returns a wrapper, and the compiled executable
   is needed to time the compile apart and for its memory analysis); run under ``jax.set_mesh`` on a one-device
   'data' mesh. Inputs: random uint8 images of MNIST's shape and random labels (synthetic, timing only).
   Reports seconds per step and the peak device memory: ``memory_stats()['peak_bytes_in_use']`` (the
   process's allocator peak so far) where the device has it, and always XLA's ``memory_analysis()`` of the
   compiled step (argument + output + temp bytes; the only figure on CPU).
2. lca: ``lca.solve`` forward, λ = 0.5, τ = ``--tau`` (100), dt = 1, ``--steps`` (500: the paper schedule;
   quick: 20 steps of τ = 20, the CPU configs' η = 0.05, since 20 steps of τ = 100 leave every code at 0),
   5x5 atoms, stride 1, 'same' padding, on Sparse-Guard's layer 1 (28x28x1 -> 16 atoms) and layer 2
   (28x28x16 -> 28 atoms), random uniform images in [0, 1] and random unit-norm atoms
   (``lca.normalize_dictionary``), at ``--batches`` (256, 512, 1024; quick: 8), for the lateral form 'auto'
   resolves to on this backend plus 'fft' and 'recon' (``--laterals``, duplicates dropped), in three
   precisions: float32 (``jax.default_matmul_precision('float32')``, i.e. 'highest'), TF32
   ('tensorfloat32') and bf16 ('bfloat16'). Reports images/s, seconds per solve and the relative code error
   ‖codes − codes_f32‖ / ‖codes_f32‖ against the float32 run of the same lateral form on the same inputs.
   Loop order: batch, layer, lateral, precision (the smallest batch complete first).

   The solve is lowered inside the context (``mi_jax.lca.operators.matmul_precision`` reads it at trace
   time; without one the LCA runs HIGHEST). Every row records the operand precisions of its lowered
   StableHLO (``hlo_precisions``: HIGHEST, HIGH, DEFAULT) and whether its program differs from the float32
   one (``same_program_as_f32``). The labels are the settings; the arithmetic XLA picks for them is the
   backend's (on NVIDIA GPUs both reduced settings may run TF32 for float32 operands), which the error
   column shows.
3. roofline: XLA's cost analysis of a compiled solve counts a while loop's body once (on CPU the 2-, 3- and
   4-step solves report the same flops), so the solve's figures cannot be divided by the step count. The
   per-image-step FLOPs and bytes come from ``cost_analysis()`` ('flops', 'bytes accessed') of one compiled
   LCA update (``mi_jax.lca.dynamics.euler_step`` with the solve's lateral operator, its kernels built
   outside) at the row's batch and precision, divided by the batch; the solve's own figures are kept in the
   JSON (``solve_cost``). Measured seconds per image-step = seconds per solve / (batch · (n_steps − 1)):
   ``solve(n_steps=T)`` makes T − 1 updates. fraction = max(flops / peak FLOP/s, bytes / peak bandwidth) /
   measured seconds per image-step. Peaks come from :data:`PEAKS`, matched in ``device_kind``; on other
   devices (CPU) the column is blank unless ``--peak-flops`` and ``--peak-bandwidth`` are given.

Budget: once ``--budget-seconds`` (270) have passed since the start, the remaining (batch, layer, lateral,
precision) combinations are skipped and recorded as skipped; so is one whose time, predicted from the same
layer, form and precision at a smaller batch, would pass the budget. A run therefore ends about at the budget
(past it by at most one first-batch combination). A combination that fails (e.g. out of memory) is recorded with
its error and the run goes on.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import os
import platform
import re
import statistics
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from mi_jax import lca  # noqa: E402
from mi_jax.lca import dynamics  # noqa: E402

# name: (H, W, C, F), 5x5 atoms.
LAYERS = {'1': (28, 28, 1, 16), '2': (28, 28, 16, 28)}
KERNEL = 5
LAM, TAU, DT = 0.5, 100.0, 1.0  # TAU: the default of --tau
PRECISIONS = ('float32', 'tensorfloat32', 'bfloat16')  # jax.default_matmul_precision names
PRECISION_LABELS = {'float32': 'f32', 'tensorfloat32': 'tf32', 'bfloat16': 'bf16'}
LATERAL_CHOICES = ('auto', 'recon', 'gram', 'gemm', 'fft')
IMAGE_SHAPE = (28, 28, 1)
NUM_CLASSES = 10
DEFAULT_JSON = os.path.join(ROOT, 'benchmarks', 'out', 'accelerator_bench.json')

# Dense peak FLOP/s per precision setting and memory bandwidth (B/s), matched as a substring of
# jax.devices()[0].device_kind (case-insensitive, first match). NVIDIA H100/H200 SXM data sheets (an H100 PCIe
# or NVL, also matched by 'H100', has lower peaks: give --peak-flops/--peak-bandwidth); TPU v5e ('TPU v5 lite')
# has a bf16 figure only. None: unknown, the roofline column stays blank.
PEAKS = (
    ('H200', {'float32': 67e12, 'tensorfloat32': 495e12, 'bfloat16': 989e12, 'bandwidth': 4.8e12}),
    ('H100', {'float32': 67e12, 'tensorfloat32': 495e12, 'bfloat16': 989e12, 'bandwidth': 3.35e12}),
    ('TPU v5 lite', {'float32': None, 'tensorfloat32': None, 'bfloat16': 197e12, 'bandwidth': 819e9}),
    ('TPU v5e', {'float32': None, 'tensorfloat32': None, 'bfloat16': 197e12, 'bandwidth': 819e9}),
)


# ------------------------------------------------------------------ helpers


def log(message: str):
  """Progress line on stderr (the tables go to stdout)."""
  print(f'[{time.strftime("%H:%M:%S")}] {message}', file=sys.stderr, flush=True)


def timed_runs(run, reps: int, warmup: int = 1):
  """(last output, timings): ``run()`` warmup times untimed, then reps times, each blocked on."""
  out = None
  for _ in range(warmup):
    out = jax.block_until_ready(run())
  times = []
  for _ in range(reps):
    start = time.perf_counter()
    out = jax.block_until_ready(run())
    times.append(time.perf_counter() - start)
  return out, {'median_s': statistics.median(times), 'min_s': min(times), 'times_s': times}


def cost_figures(compiled) -> dict:
  """'flops' and 'bytes accessed' of XLA's cost analysis (a dict in JAX 0.10, a list of dicts before)."""
  try:
    cost = compiled.cost_analysis()
  except Exception:  # not every backend implements it
    cost = None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  cost = cost or {}
  return {'flops': cost.get('flops'), 'bytes': cost.get('bytes accessed')}


def memory_analysis_bytes(compiled) -> int | None:
  """Argument + output + temp bytes of a compiled program (None where XLA has no analysis)."""
  try:
    stats = compiled.memory_analysis()
  except Exception:
    return None
  if stats is None:
    return None
  return int(stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes)


def device_memory_stats(device) -> dict:
  try:
    return device.memory_stats() or {}
  except Exception:  # CPU devices have none
    return {}


def hlo_precisions(lowered) -> list[str]:
  """The operand precisions named in a lowered program's StableHLO (e.g. ['HIGHEST'])."""
  return sorted(set(re.findall(r'#stablehlo<precision (\w+)>', lowered.as_text())))


def program_hash(lowered) -> str:
  return hashlib.sha256(lowered.as_text().encode()).hexdigest()[:16]


def fmt(value, spec='.3g', missing='-'):
  return missing if value is None else format(value, spec)


def scaled(value, factor):
  return None if value is None else value * factor


def markdown_table(title: str, header: list[str], rows: list[list]) -> str:
  lines = [f'\n### {title}\n', '| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  lines += ['| ' + ' | '.join(str(v) for v in row) + ' |' for row in rows]
  return '\n'.join(lines)


class Budget:
  """Seconds since the start against ``--budget-seconds``."""

  def __init__(self, seconds: float, start: float | None = None):
    self.seconds, self.start = seconds, time.perf_counter() if start is None else start

  def elapsed(self) -> float:
    return time.perf_counter() - self.start

  def spent(self) -> bool:
    return self.elapsed() > self.seconds


# ------------------------------------------------------------------ peaks


def device_peaks(device_kind: str, peak_flops=None, peak_bandwidth=None) -> dict | None:
  """{precision: FLOP/s, 'bandwidth': B/s} of the device, or None when unknown.

  ``peak_flops`` / ``peak_bandwidth`` (from the command line) replace the table's figures.
  """
  peaks = next((dict(p) for name, p in PEAKS if name.lower() in device_kind.lower()), None)
  if peak_flops is not None or peak_bandwidth is not None:
    peaks = peaks or {p: None for p in PRECISIONS} | {'bandwidth': None}
    if peak_flops is not None:
      peaks.update({p: peak_flops for p in PRECISIONS})
    if peak_bandwidth is not None:
      peaks['bandwidth'] = peak_bandwidth
  return peaks


def roofline(step_cost: dict, batch: int, seconds_per_image_step: float, precision: str, peaks) -> dict:
  """Per-image-step FLOPs and bytes, achieved FLOP/s, and the fraction of the roofline (None when unknown)."""
  flops = None if step_cost['flops'] is None else step_cost['flops'] / batch
  bytes_ = None if step_cost['bytes'] is None else step_cost['bytes'] / batch
  out = {'flops_per_image_step': flops, 'bytes_per_image_step': bytes_,
         'achieved_flops_per_s': None if flops is None else flops / seconds_per_image_step,
         'roofline_fraction': None, 'bound': None}
  peak_flops = None if peaks is None else peaks.get(precision)
  peak_bw = None if peaks is None else peaks.get('bandwidth')
  if None in (flops, bytes_, peak_flops, peak_bw):
    return out
  compute_s, memory_s = flops / peak_flops, bytes_ / peak_bw
  out['roofline_fraction'] = max(compute_s, memory_s) / seconds_per_image_step
  out['bound'] = 'compute' if compute_s >= memory_s else 'memory'
  return out


# ------------------------------------------------------------------ LCA


def lca_problem(layer: str, batch: int, seed: int):
  """Random uniform images in [0, 1] (NHWC) and random unit-norm atoms (HWIO), on device 0."""
  h, w, c, f = LAYERS[layer]
  rng = np.random.default_rng(seed)
  x = rng.uniform(0.0, 1.0, (batch, h, w, c)).astype(np.float32)
  d = rng.normal(size=(KERNEL, KERNEL, c, f)).astype(np.float32)
  return jax.device_put(x), lca.normalize_dictionary(jax.device_put(d))


def resolve_laterals(layer: str, laterals) -> list[tuple[str, bool]]:
  """[(form, is what 'auto' picks)] for a layer, 'auto' resolved on this backend, duplicates dropped."""
  h, w, c, f = LAYERS[layer]
  probe = jnp.zeros((1, h, w, c), jnp.float32)
  auto = lca.ConvDictionary(jnp.zeros((KERNEL, KERNEL, c, f), jnp.float32), 1, 'same',
                            lateral='auto').bind(probe).lateral_form
  forms = []
  for lateral in laterals:
    form = auto if lateral == 'auto' else lateral
    if form not in forms:
      forms.append(form)
  return [(form, form == auto) for form in forms]


def solve_fn(steps: int, lateral: str, tau: float):
  return lambda x, d: lca.solve(x, d, lam=LAM, n_steps=steps, tau=tau, dt=DT, lateral=lateral)


def compile_solve(x, d, steps: int, lateral: str, tau: float, precision: str):
  """(compiled solve, seconds to lower + compile, lowered program's facts), traced under ``precision``."""
  start = time.perf_counter()
  with jax.default_matmul_precision(precision):
    lowered = jax.jit(solve_fn(steps, lateral, tau)).lower(x, d)
  compiled = lowered.compile()
  seconds = time.perf_counter() - start
  return compiled, seconds, {'hlo_precisions': hlo_precisions(lowered), 'program_hash': program_hash(lowered)}


def step_cost(x, d, lateral: str, tau: float, precision: str) -> dict:
  """XLA's cost analysis of one compiled LCA update at these shapes (kernels and drive built outside)."""
  problem = lca.ConvDictionary(d, 1, 'same', lateral=lateral).bind(x)
  drive, apply_lateral = problem.drive(), problem.lateral()
  step = lambda u, b: dynamics.euler_step(u, b, apply_lateral, lam=LAM, eta=DT / tau, threshold='soft',
                                          nonneg=True)
  with jax.default_matmul_precision(precision):
    lowered = jax.jit(step).lower(drive, drive)
  return cost_figures(lowered.compile())


def relative_error(codes, reference) -> float:
  """‖codes − reference‖ / ‖reference‖ (0 for identical codes)."""
  difference = jnp.linalg.norm((codes - reference).ravel())
  return float(difference / jnp.maximum(jnp.linalg.norm(reference.ravel()), 1e-30))


def lca_case(x, d, *, layer, batch, lateral, precision, reference, args, peaks):
  """One timed (layer, batch, lateral, precision) combination; returns (record, codes)."""
  compiled, compile_s, facts = compile_solve(x, d, args.steps, lateral, args.tau, precision)
  codes, timing = timed_runs(lambda: compiled(x, d), args.reps)
  reference = codes if reference is None else reference
  seconds_per_image_step = timing['median_s'] / (batch * max(args.steps - 1, 1))
  record = {
      'layer': layer, 'batch': batch, 'lateral': lateral, 'precision': precision, 'status': 'ok',
      'steps': args.steps, 'compile_s': compile_s, **timing,
      'images_per_s': batch / timing['median_s'], 'seconds_per_image_step': seconds_per_image_step,
      'relative_code_error_vs_f32': relative_error(codes, reference),
      'codes_finite': bool(jnp.all(jnp.isfinite(codes))), 'nonzero_fraction': float(jnp.mean(codes != 0)),
      **facts, 'solve_cost': cost_figures(compiled),
  }
  cost = step_cost(x, d, lateral, args.tau, precision)
  record.update(roofline(cost, batch, seconds_per_image_step, precision, peaks))
  return record, codes


def predicted_seconds(rows: list[dict], base: dict, reps: int) -> float | None:
  """Seconds a combination should take (compile + warm-up + reps), scaled from the same layer, lateral form
  and precision at the largest smaller batch already measured; None before there is one."""
  same = [r for r in rows if r['status'] == 'ok' and r['batch'] < base['batch']
          and all(r[k] == base[k] for k in ('layer', 'lateral', 'precision'))]
  if not same:
    return None
  r = max(same, key=lambda r: r['batch'])
  return r['compile_s'] + (reps + 1) * r['median_s'] * base['batch'] / r['batch']


def skip_reason(rows, base: dict, budget: Budget, reps: int, have_reference: bool) -> str | None:
  if budget.spent():
    return f'budget of {budget.seconds:g} s spent'
  if base['precision'] != 'float32' and not have_reference:
    return 'no float32 reference'
  predicted = predicted_seconds(rows, base, reps)
  if predicted is not None and budget.elapsed() + predicted > budget.seconds:
    return f'predicted {predicted:.0f} s would pass the budget of {budget.seconds:g} s'
  return None


def section_lca(args, budget: Budget, peaks) -> list[dict]:
  """Every (batch, layer, lateral, precision) combination; 'skipped' records once the budget is spent (or
  would be, predicted from the same combination at a smaller batch)."""
  rows = []
  for batch in args.batches:
    for layer in args.layers:
      x = d = None
      for lateral, is_auto in resolve_laterals(layer, args.laterals):
        reference, reference_hash = None, None
        for precision in args.precisions:
          base = {'layer': layer, 'batch': batch, 'lateral': lateral, 'auto': is_auto, 'precision': precision}
          reason = skip_reason(rows, base, budget, args.reps, reference is not None)
          if reason:
            rows.append({**base, 'status': 'skipped', 'reason': reason})
            continue
          log(f'lca: layer {layer}, batch {batch}, {lateral}, {precision} ({budget.elapsed():.0f} s elapsed)')
          try:
            if x is None:
              x, d = lca_problem(layer, batch, args.seed)
            record, codes = lca_case(x, d, layer=layer, batch=batch, lateral=lateral, precision=precision,
                                     reference=reference, args=args, peaks=peaks)
          except Exception as error:  # e.g. out of memory: record it, go on
            rows.append({**base, 'status': 'error', 'error': f'{type(error).__name__}: {str(error)[:300]}'})
            continue
          if precision == 'float32':
            reference, reference_hash = codes, record['program_hash']
          record['same_program_as_f32'] = record['program_hash'] == reference_hash
          rows.append({**base, **record})
  return rows


def print_lca(rows: list[dict], args, peaks, device_kind: str):
  table = []
  for r in rows:
    lateral = r['lateral'] + (' (auto)' if r.get('auto') else '')
    head = [r['layer'], r['batch'], lateral, PRECISION_LABELS[r['precision']]]
    if r['status'] != 'ok':
      table.append(head + [r['status'] + ': ' + r.get('reason', r.get('error', ''))] + [''] * 8)
      continue
    fraction = r['roofline_fraction']
    table.append(head + [
        fmt(r['compile_s'], '.2f'), fmt(r['median_s'], '.4f'), fmt(r['images_per_s'], '.1f'),
        fmt(r['relative_code_error_vs_f32'], '.2e'), fmt(r['flops_per_image_step'], '.3g'),
        fmt(r['bytes_per_image_step'], '.3g'), fmt(scaled(r['achieved_flops_per_s'], 1e-9), '.1f'),
        '' if fraction is None else f"{100 * fraction:.1f}% ({r['bound']})",
        '/'.join(r['hlo_precisions'])])
  print(markdown_table(
      f'LCA forward, {args.steps} steps, λ={LAM}, τ={args.tau:g}, dt={DT:g} (median of {args.reps} runs after a '
      'warm-up; compile apart)',
      ['layer', 'batch', 'lateral', 'precision', 'compile s', 's/solve', 'images/s', 'rel. err vs f32',
       'FLOP/img-step', 'B/img-step', 'GFLOP/s', 'roofline', 'HLO precision'], table))
  print('\nlayer 1: 28x28x1 -> 16 atoms; layer 2: 28x28x16 -> 28 atoms; 5x5, stride 1, same padding.')
  print('FLOP and B per image-step: XLA cost analysis of one compiled LCA update / batch.')
  if peaks is None:
    print(f'roofline column is blank: no peak figures for device kind {device_kind!r} '
          '(give --peak-flops and --peak-bandwidth).')


# ------------------------------------------------------------------ train step


def paper_config(batch_size: int, lca_steps: int | None = None, tau: float | None = None):
  """``configs/sparse_guard_mnist.py:paper`` with train.batch_size set (and the LCA schedule, if given)."""
  from configs import sparse_guard_mnist
  config = sparse_guard_mnist.get_config('paper')
  config.unlock()
  config.train.batch_size = batch_size
  if lca_steps is not None:
    config.defense.n_steps = lca_steps
  if tau is not None:
    config.defense.tau = tau
  return config


def build_train_step(config, mesh):
  """(jitted step, initial replicated state), built as ``train_target`` / ``train_classifier`` build them."""
  from flax import nnx

  from mi_jax import defenses
  from mi_jax.train.state import init_train_state, make_optimizer, replicated

  model = defenses.build_target(config, IMAGE_SHAPE, NUM_CLASSES, rngs=nnx.Rngs(config.seed))
  tx = make_optimizer(config.train)
  graphdef, state = init_train_state(model, tx)
  shardings = replicated(mesh, state)
  state = jax.device_put(state, shardings)
  step_fn = defenses.classifier_step_for(config)(graphdef, tx)
  # mi_jax.train.step.jit_step's jit, repeated to reach the compiled executable.
  jitted = jax.jit(step_fn, in_shardings=(shardings, None, None), out_shardings=(shardings, None),
                   donate_argnums=0)
  return jitted, state


def synthetic_batch(batch_size: int, seed: int, mesh):
  """SYNTHETIC timing inputs: random uint8 images of MNIST's shape and random labels."""
  from mi_jax import data as mi_data
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (batch_size, *IMAGE_SHAPE), dtype=np.uint8)
  labels = rng.integers(0, NUM_CLASSES, batch_size).astype(np.int32)
  return mi_data.to_global_array({'image': images, 'label': labels}, mesh)


def section_train_step(args) -> dict:
  """Seconds per paper-configuration Sparse-Guard train step and the peak device memory."""
  from mi_jax import data as mi_data
  from mi_jax.experiments import surrogate as experiment

  overrides = {'train.batch_size': args.train_batch}
  if args.train_lca_steps is not None:
    overrides.update({'defense.n_steps': args.train_lca_steps, 'defense.tau': args.tau})
  config = paper_config(args.train_batch, overrides.get('defense.n_steps'), overrides.get('defense.tau'))
  mesh = mi_data.make_data_mesh(1)
  experiment.validate_config(config, num_devices=1, sizes={'private': args.train_batch})
  device = mesh.devices.flat[0]
  record = {'config': 'configs/sparse_guard_mnist.py:paper', 'defense': config.defense.name,
            'setting': config.setting, 'optimizer': config.train.optimizer, 'batch_size': args.train_batch,
            'lca_steps': config.defense.n_steps, 'lca_grad': config.defense.grad,
            'lca_tau': config.defense.tau, 'overrides': overrides,
            'inputs': 'SYNTHETIC: random uint8 28x28x1 images and random labels (timing only)',
            'bytes_in_use_before': device_memory_stats(device).get('bytes_in_use')}
  log(f'train step: building and compiling (batch {args.train_batch}, {config.defense.n_steps} LCA steps)')
  jitted, state = build_train_step(config, mesh)
  batch, rng = synthetic_batch(args.train_batch, args.seed, mesh), jax.random.key(config.seed)
  with jax.set_mesh(mesh):
    start = time.perf_counter()
    compiled = jitted.lower(state, batch, rng).compile()
    record['compile_s'] = time.perf_counter() - start
    holder = {'state': state}

    def run():
      holder['state'], measurements = compiled(holder['state'], batch, rng)
      return holder['state'], measurements

    log('train step: timing')
    (_, measurements), timing = timed_runs(run, args.reps)
  record.update(timing)
  record['images_per_s'] = args.train_batch / timing['median_s']
  record['loss'] = float(measurements['loss'])
  record['peak_bytes_in_use'] = device_memory_stats(device).get('peak_bytes_in_use')
  record['memory_analysis_bytes'] = memory_analysis_bytes(compiled)
  record['memory_note'] = (
      'peak_bytes_in_use: the device allocator\'s peak in this process so far (this section runs first); '
      'memory_analysis_bytes: XLA argument + output + temp bytes of the compiled step'
      + ('' if record['peak_bytes_in_use'] is not None else '; this device reports no memory_stats'))
  return record


def print_train_step(r: dict):
  if r['status'] != 'ok':
    print(markdown_table('Paper-config Sparse-Guard train step', ['status'], [[f"{r['status']}: {r['error']}"]]))
    return
  print(markdown_table(
      f"Paper-config Sparse-Guard train step ({r['defense']}, {r['setting']}, {r['optimizer']}, "
      f"grad={r['lca_grad']}; synthetic inputs)",
      ['batch', 'LCA steps', 'compile s', 's/step (median)', 's/step (min)', 'images/s', 'loss',
       'peak MiB (allocator)', 'XLA memory MiB'],
      [[r['batch_size'], r['lca_steps'], fmt(r['compile_s'], '.1f'), fmt(r['median_s'], '.4f'),
        fmt(r['min_s'], '.4f'), fmt(r['images_per_s'], '.1f'), fmt(r['loss'], '.3f'),
        fmt(scaled(r['peak_bytes_in_use'], 2**-20), '.1f'), fmt(scaled(r['memory_analysis_bytes'], 2**-20), '.1f')]]))


# ------------------------------------------------------------------ main


def environment(args) -> dict:
  device = jax.devices()[0]
  return {
      'date': datetime.datetime.now().isoformat(timespec='seconds'), 'python': platform.python_version(),
      'platform': platform.platform(), 'backend': jax.default_backend(), 'device_kind': device.device_kind,
      'device_count': jax.device_count(), 'jax': jax.__version__,
      'xla_flags': os.environ.get('XLA_FLAGS', ''), 'quick': args.quick, 'steps': args.steps, 'reps': args.reps,
      'batches': args.batches, 'layers': args.layers, 'laterals': args.laterals,
      'precisions': args.precisions, 'budget_seconds': args.budget_seconds,
      'seed': args.seed, 'lam': LAM, 'tau': args.tau, 'dt': DT, 'kernel': KERNEL,
  }


def _csv(kind):
  return lambda text: [kind(v) for v in text.split(',') if v]


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--quick', action='store_true', help='CPU smoke run: 20 steps, batch 8, 2 reps')
  p.add_argument('--sections', type=_csv(str), default=['train_step', 'lca'], help='train_step,lca')
  p.add_argument('--steps', type=int, default=None, help='LCA steps (default 500; quick 20)')
  p.add_argument('--batches', type=_csv(int), default=None, help='LCA batch sizes (default 256,512,1024; quick 8)')
  p.add_argument('--layers', type=_csv(str), default=['1', '2'], help='Sparse-Guard layers: 1,2')
  p.add_argument('--laterals', type=_csv(str), default=['auto', 'fft', 'recon'])
  p.add_argument('--precisions', type=_csv(str), default=list(PRECISIONS),
                 help='float32 (always run first: the reference), tensorfloat32, bfloat16')
  p.add_argument('--tau', type=float, default=None,
                 help='LCA time constant (default 100, the paper schedule; quick 20, the CPU configs\' η = 0.05)')
  p.add_argument('--reps', type=int, default=None, help='timed runs after one warm-up (default 3; quick 2)')
  p.add_argument('--train-batch', type=int, default=None, help='train step batch (default 256; quick 8)')
  p.add_argument('--train-lca-steps', type=int, default=None,
                 help="the train step's LCA steps instead of the paper config's 500, with --tau (quick: --steps)")
  p.add_argument('--budget-seconds', type=float, default=270.0,
                 help='skip the remaining LCA combinations after this many seconds')
  p.add_argument('--peak-flops', type=float, default=None, help='peak FLOP/s for every precision (overrides PEAKS)')
  p.add_argument('--peak-bandwidth', type=float, default=None, help='peak memory bandwidth, B/s (overrides PEAKS)')
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--json-out', default=DEFAULT_JSON)
  args = p.parse_args(argv)
  args.steps = args.steps or (20 if args.quick else 500)
  args.batches = args.batches or ([8] if args.quick else [256, 512, 1024])
  args.reps = args.reps or (2 if args.quick else 3)
  args.tau = args.tau or (20.0 if args.quick else TAU)
  args.train_batch = args.train_batch or (8 if args.quick else 256)
  if args.quick and args.train_lca_steps is None:
    args.train_lca_steps = args.steps
  checks = [('sections', args.sections, ('train_step', 'lca')), ('layers', args.layers, tuple(LAYERS)),
            ('laterals', args.laterals, LATERAL_CHOICES), ('precisions', args.precisions, PRECISIONS)]
  for name, values, allowed in checks:
    unknown = sorted(set(values) - set(allowed))
    if unknown:
      p.error(f'unknown {name} {unknown}; choose from {list(allowed)}')
  # float32 first: the other precisions' error is measured against it.
  args.precisions = ['float32'] + [v for v in dict.fromkeys(args.precisions) if v != 'float32']
  if args.steps < 2 or args.reps < 1 or min(args.batches) < 1 or args.train_batch < 1:
    p.error('--steps must be >= 2, --reps, --batches and --train-batch >= 1')
  return args


def main(argv=None) -> dict:
  args = parse_args(argv)
  budget = Budget(args.budget_seconds)
  env = environment(args)
  peaks = device_peaks(env['device_kind'], args.peak_flops, args.peak_bandwidth)
  print(f"accelerator benchmark: backend {env['backend']}, device {env['device_kind']!r}, jax {env['jax']}, "
        f"budget {args.budget_seconds:g} s; inputs are synthetic (random images, random labels)")
  out = {'environment': env, 'peaks': peaks}
  if 'train_step' in args.sections:
    try:
      out['train_step'] = {'status': 'ok', **section_train_step(args)}
    except Exception as error:
      out['train_step'] = {'status': 'error', 'error': f'{type(error).__name__}: {str(error)[:300]}'}
    print_train_step(out['train_step'])
  if 'lca' in args.sections:
    out['lca'] = section_lca(args, budget, peaks)
    print_lca(out['lca'], args, peaks, env['device_kind'])
    out['lca_skipped'] = sum(r['status'] == 'skipped' for r in out['lca'])
  out['elapsed_s'] = budget.elapsed()
  from mi_jax.utils.results import write_json_atomic
  os.makedirs(os.path.dirname(os.path.abspath(args.json_out)), exist_ok=True)
  write_json_atomic(args.json_out, out, overwrite=True)
  print(f"\n{out['elapsed_s']:.0f} s; wrote {args.json_out}")
  return out


if __name__ == '__main__':
  main()
