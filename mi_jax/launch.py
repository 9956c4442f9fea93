"""Run any mi_jax command as N cooperating JAX processes on this machine.

``python -m mi_jax.launch --processes=2 [--devices_per_process=2] -- -m experiments.sparse_guard --config=... --workdir=...``

starts ``python <args after -->`` N times. Process ``i`` gets
``MI_JAX_DISTRIBUTED=1`` and the coordinator's address (a free port on
127.0.0.1), the process count and its own id in the environment; the
experiment commands read them in :func:`mi_jax.utils.cli.initialize_distributed`,
which calls ``jax.distributed.initialize`` before the first JAX computation
and, on CPU, chooses the gloo collectives (XLA:CPU's cross-process
all-reduce). Each process gets ``devices_per_process`` fake CPU devices, so
2 processes × 2 devices is the same 4-device mesh as 1 process × 4 devices:
the multi-host code paths (per-process batch slices, ``process_allgather``,
process-0 writers, every process's checkpoint shards) run here exactly as on
a pod slice, where the same environment variables come from
``tpu_scripts/launch.sh`` (or JAX's own cluster detection).

Every line a process prints is prefixed with ``[p<i>]``. When one process
fails, the others are stopped (a collective would otherwise wait for it
forever) and the launcher exits with the failed process's code; Ctrl-C
stops all of them. Rerunning the same command resumes a killed run from its
checkpoints, as the single-process commands do.
"""

from __future__ import annotations

import argparse
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from typing import Optional, Sequence

from mi_jax.utils import host_devices

# The environment contract between the launcher and the experiment commands.
COORDINATOR = 'MI_JAX_COORDINATOR_ADDRESS'
NUM_PROCESSES = 'MI_JAX_NUM_PROCESSES'
PROCESS_ID = 'MI_JAX_PROCESS_ID'


def free_port() -> int:
  """A TCP port nothing listens on now (the OS picks it)."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def process_environment(base: dict, *, process_id: int, processes: int, devices_per_process: int,
                        coordinator: str) -> dict:
  """The environment of process ``process_id``: the distributed contract and
  ``devices_per_process`` CPU devices (replacing any device count in
  ``XLA_FLAGS``: the launcher owns the shape of the mesh)."""
  env = dict(base)
  flags = [t for t in env.get('XLA_FLAGS', '').split() if not t.startswith(host_devices.FLAG + '=')]
  flags.append(f'{host_devices.FLAG}={devices_per_process}')
  if devices_per_process > 1 and not any('xla_cpu_multi_thread_eigen' in t for t in flags):
    flags.append(host_devices.SINGLE_THREADED_DEVICES)
  env.update({
      'XLA_FLAGS': ' '.join(flags),
      'JAX_PLATFORMS': env.get('JAX_PLATFORMS', 'cpu'),
      'MI_JAX_DISTRIBUTED': '1',
      COORDINATOR: coordinator,
      NUM_PROCESSES: str(processes),
      PROCESS_ID: str(process_id),
  })
  return env


def _stop(children: Sequence[subprocess.Popen], grace_seconds: float = 10.0) -> None:
  for child in children:
    if child.poll() is None:
      child.send_signal(signal.SIGTERM)
  deadline = time.monotonic() + grace_seconds
  for child in children:
    try:
      child.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
      child.kill()
      child.wait()


def launch(command: Sequence[str], *, processes: int, devices_per_process: int, python: str = sys.executable,
           out=sys.stdout) -> int:
  """Runs ``python *command`` as ``processes`` JAX processes; returns the
  exit code (0, or the first failing process's code)."""
  coordinator = f'127.0.0.1:{free_port()}'
  children = [
      subprocess.Popen([python, *command], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       env=process_environment(os.environ, process_id=i, processes=processes,
                                               devices_per_process=devices_per_process,
                                               coordinator=coordinator))
      for i in range(processes)
  ]
  selector = selectors.DefaultSelector()
  for i, child in enumerate(children):
    selector.register(child.stdout, selectors.EVENT_READ, i)
  open_streams, code = processes, 0
  try:
    while open_streams:
      for key, _ in selector.select(timeout=1.0):
        line = key.fileobj.readline()
        if not line:
          selector.unregister(key.fileobj)
          open_streams -= 1
          continue
        out.write(f'[p{key.data}] {line.decode(errors="replace")}')
        out.flush()
      failed = [c.returncode for c in children if c.poll() is not None and c.returncode != 0]
      if failed:
        code = failed[0]
        _stop(children)
        break
  except KeyboardInterrupt:
    _stop(children)
    return 130
  for child in children:
    child.wait()
  return code or next((c.returncode for c in children if c.returncode), 0)


def main(argv: Optional[Sequence[str]] = None) -> None:
  argv = list(sys.argv[1:] if argv is None else argv)
  if '--' not in argv:
    raise SystemExit("error: usage: python -m mi_jax.launch --processes=N [--devices_per_process=K] -- "
                     "<python arguments, e.g. -m experiments.sparse_guard --config=... --workdir=...>")
  split = argv.index('--')
  parser = argparse.ArgumentParser(prog='python -m mi_jax.launch', description=__doc__.split('\n')[0])
  parser.add_argument('--processes', type=int, required=True, help='JAX processes to start (>= 1)')
  parser.add_argument('--devices_per_process', type=int, default=None,
                      help='fake CPU devices per process (default: this machine\'s cores / processes, at least 1)')
  args = parser.parse_args(argv[:split])
  command = argv[split + 1:]
  if args.processes < 1:
    parser.exit(2, f"error: --processes must be an integer >= 1, got {args.processes}\n")
  devices = args.devices_per_process
  if devices is None:
    devices = host_devices.device_count_for(max(1, host_devices.cpu_cores() // args.processes))
  if devices < 1:
    parser.exit(2, f"error: --devices_per_process must be an integer >= 1, got {devices}\n")
  if not command:
    parser.exit(2, "error: nothing to run after --\n")
  sys.exit(launch(command, processes=args.processes, devices_per_process=devices))


if __name__ == '__main__':
  main()
