"""Test setup: 8 fake CPU devices, set before anything imports jax."""

import os

# One thread per fake device (mi_jax.utils.host_devices explains why: shared
# intra-op threads can deadlock a collective when devices outnumber cores).
os.environ['XLA_FLAGS'] = (
    os.environ.get('XLA_FLAGS', '')
    + ' --xla_force_host_platform_device_count=8 --xla_cpu_multi_thread_eigen=false'
).strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
