"""Does JAX work on this machine? One command, about 10-30 seconds.

    python scripts/check_device.py [--seconds=10] [--json-out=FILE]

Prints the backend, the JAX version, the processes and devices, each local
device's memory (the allocator's limit on GPU/TPU, the host's RAM on CPU),
then runs the LCA at Sparse-Guard's second layer (28x28x16 -> 28 atoms,
5x5, λ = 0.5, the SG code's 500 steps of η = 0.01 on an accelerator, 40 of
η = 0.05 on CPU) for ``--seconds`` and prints its throughput. The codes of
the first images are recomputed on the CPU backend and compared: on an
accelerator a relative difference above 1e-3 means its matmuls run in
reduced precision (TF32/bf16) or something is wrong; the script then exits
with status 1. Also exits 1 when the codes are not finite.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mi_jax.utils import host_devices  # noqa: E402  (sets the CPU device count before JAX starts)

host_devices.use_all_cpu_cores()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from mi_jax import lca  # noqa: E402

TOLERANCE = 1e-3  # relative code difference allowed against the CPU backend


def _host_ram_bytes() -> int | None:
  try:
    with open('/proc/meminfo') as f:
      for line in f:
        if line.startswith('MemTotal:'):
          return int(line.split()[1]) * 1024
  except OSError:
    return None
  return None


def device_table() -> list[dict]:
  rows = []
  for device in jax.local_devices():
    stats = {}
    try:
      stats = device.memory_stats() or {}
    except Exception:  # CPU devices have none on some versions
      stats = {}
    limit = stats.get('bytes_limit') or (_host_ram_bytes() if device.platform == 'cpu' else None)
    rows.append({'id': device.id, 'platform': device.platform, 'kind': device.device_kind,
                 'process': device.process_index, 'memory_bytes': limit,
                 'memory_in_use_bytes': stats.get('bytes_in_use')})
  return rows


def smoke_schedule(accelerator: bool) -> dict:
  """The SG code's schedule on an accelerator; the CPU configs' (same ODE, 5x coarser steps) here."""
  return dict(batch=256, n_steps=500, tau=100.0) if accelerator else dict(batch=32, n_steps=40, tau=20.0)


def lca_smoke(seconds: float, *, batch: int, n_steps: int, tau: float, compare_with_cpu: bool) -> dict:
  """Repeats one jitted LCA solve for about ``seconds``; with
  ``compare_with_cpu``, solves the first images again on the CPU backend and
  reports the relative difference of the codes."""
  rng = np.random.default_rng(0)
  images = rng.random((batch, 28, 28, 16), dtype=np.float32)
  atoms = lca.normalize_dictionary(jnp.asarray(rng.standard_normal((5, 5, 16, 28), dtype=np.float32)))
  solve = jax.jit(lambda x, d: lca.solve(x, d, lam=0.5, n_steps=n_steps, tau=tau))
  started = time.perf_counter()
  codes = solve(jnp.asarray(images), atoms).block_until_ready()
  compile_seconds = time.perf_counter() - started
  runs, started = 0, time.perf_counter()
  while runs == 0 or time.perf_counter() - started < seconds:
    codes = solve(jnp.asarray(images), atoms).block_until_ready()
    runs += 1
  run_seconds = (time.perf_counter() - started) / runs
  codes = np.asarray(codes)
  result = {'batch': batch, 'n_steps': n_steps, 'tau': tau, 'compile_seconds': round(compile_seconds, 2),
            'seconds_per_solve': round(run_seconds, 4), 'images_per_second': round(batch / run_seconds, 1),
            'finite': bool(np.isfinite(codes).all()), 'nonzero_fraction': float((codes > 0).mean())}
  if compare_with_cpu:
    cpu, few = jax.devices('cpu')[0], 8
    with jax.default_device(cpu):
      reference = np.asarray(solve(jax.device_put(images[:few], cpu), jax.device_put(atoms, cpu)))
    result['relative_difference_to_cpu'] = float(np.linalg.norm(codes[:few] - reference)
                                                 / max(np.linalg.norm(reference), 1e-30))
  return result


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--seconds', type=float, default=10.0, help='how long to repeat the LCA solve')
  parser.add_argument('--json-out', default=None, help='also write everything printed as JSON here')
  args = parser.parse_args(argv)
  if not args.seconds > 0:
    parser.error(f'--seconds must be > 0, got {args.seconds}')
  backend = jax.default_backend()
  report = {'backend': backend, 'jax': jax.__version__, 'process_index': jax.process_index(),
            'process_count': jax.process_count(), 'device_count': jax.device_count(), 'devices': device_table()}
  print(f"backend {backend}, jax {jax.__version__}, process {jax.process_index()} of {jax.process_count()}, "
        f"{jax.device_count()} devices ({jax.local_device_count()} local)")
  for row in report['devices']:
    memory = '?' if row['memory_bytes'] is None else f"{row['memory_bytes'] / 2**30:.1f} GiB"
    print(f"  device {row['id']}: {row['platform']} {row['kind']}, memory {memory}")
  accelerator = backend != 'cpu'
  smoke = lca_smoke(args.seconds, **smoke_schedule(accelerator), compare_with_cpu=accelerator)
  report['lca'] = smoke
  print(f"LCA, SG layer 2 (N={smoke['batch']}, 28x28x16 -> 28, {smoke['n_steps']} steps): "
        f"compile {smoke['compile_seconds']} s, {smoke['seconds_per_solve']} s per solve, "
        f"{smoke['images_per_second']} images/s, {100 * smoke['nonzero_fraction']:.1f}% nonzero codes")
  ok = smoke['finite']
  if 'relative_difference_to_cpu' in smoke:
    difference = smoke['relative_difference_to_cpu']
    print(f"codes vs the CPU backend: relative difference {difference:.2e} (allowed {TOLERANCE:g})")
    ok = ok and difference <= TOLERANCE
  print('OK' if ok else 'FAILED: ' + ('codes are not finite' if not smoke['finite'] else 'codes differ from CPU'))
  if args.json_out:
    from mi_jax.utils.results import write_json_atomic
    write_json_atomic(args.json_out, report, overwrite=True)
  return 0 if ok else 1


if __name__ == '__main__':
  sys.exit(main())
