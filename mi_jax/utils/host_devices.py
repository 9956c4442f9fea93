"""One XLA host device per CPU core, so that CPU runs use the whole machine.

XLA:CPU gives a jitted program about one core's worth of work in the LCA
loops (their per-step operations are too small to spread over threads),
while the batch is already sharded over the mesh's devices. Splitting the
CPU into one device per core (``--xla_force_host_platform_device_count``)
lets every core run its slice of the batch: measured on the small
Sparse-Guard split point, 2 devices on 2 cores cut 250 s to 146 s with the
same rows. Accelerator runs are unaffected (the flag only shapes the CPU
platform, and the mesh uses the default backend's devices).

With several CPU devices, each device's program also runs its operations on
its own thread (``--xla_cpu_multi_thread_eigen=false``) instead of the
shared intra-op pool: with the pool, a device's thunk blocked in a
collective's rendezvous can hold a pool thread that the other device's half
of the same collective waits for; we saw such runs abort ("Termination
timeout for all reduce") or hang on a busy 2-core machine, about one run in
twelve, and none in eighteen with the flag. It costs nothing measurable
here (one device per core already keeps every core busy).

The flags must be set before JAX initialises its backends, i.e. before the
first ``import jax`` of the process: the experiment commands call
:func:`use_all_cpu_cores` first thing. An ``XLA_FLAGS`` that already sets the
count (the tests' 8 fake devices, a user's choice) wins.
"""

from __future__ import annotations

import os

FLAG = '--xla_force_host_platform_device_count'
SINGLE_THREADED_DEVICES = '--xla_cpu_multi_thread_eigen=false'


def cpu_cores() -> int:
  """The cores this process may run on (its affinity mask, not the machine's total)."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not on Linux
    return os.cpu_count() or 1


def device_count_for(cores: int) -> int:
  """The largest power of two ≤ ``cores``: every power-of-two batch size of
  the configs (16, 32, 64, …) then divides over the devices."""
  if cores < 1:
    raise ValueError(f"cores must be >= 1, got {cores!r}")
  return 1 << (cores.bit_length() - 1)


def use_all_cpu_cores(environ=os.environ) -> int:
  """Sets ``XLA_FLAGS`` to one host device per core (rounded down to a power
  of two) unless it already sets a count; returns the count in effect."""
  flags = environ.get('XLA_FLAGS', '')
  for token in flags.split():
    if token.startswith(FLAG + '='):
      return int(token.split('=', 1)[1])
  count = device_count_for(cpu_cores())
  extra = f" {SINGLE_THREADED_DEVICES}" if count > 1 and 'xla_cpu_multi_thread_eigen' not in flags else ''
  environ['XLA_FLAGS'] = f"{flags} {FLAG}={count}{extra}".strip()
  return count
