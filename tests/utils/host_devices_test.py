"""One host device per core: set before jax starts, never over a user's choice."""

import subprocess
import sys

import pytest

from mi_jax.utils import host_devices
from tests.helpers import ROOT


@pytest.mark.parametrize('cores,devices', [(1, 1), (2, 2), (3, 2), (6, 4), (16, 16), (96, 64)])
def test_device_count_is_the_largest_power_of_two_not_above_the_cores(cores, devices):
  assert host_devices.device_count_for(cores) == devices


def test_an_existing_count_wins_and_other_flags_are_kept():
  env = {'XLA_FLAGS': '--xla_cpu_foo=1 --xla_force_host_platform_device_count=8'}
  assert host_devices.use_all_cpu_cores(env) == 8
  assert env['XLA_FLAGS'] == '--xla_cpu_foo=1 --xla_force_host_platform_device_count=8'
  env = {'XLA_FLAGS': '--xla_cpu_foo=1'}
  count = host_devices.use_all_cpu_cores(env)
  assert count == host_devices.device_count_for(host_devices.cpu_cores())
  single = ' --xla_cpu_multi_thread_eigen=false' if count > 1 else ''
  assert env['XLA_FLAGS'] == f'--xla_cpu_foo=1 --xla_force_host_platform_device_count={count}{single}'


def test_a_fresh_process_gets_one_cpu_device_per_core():
  code = ('from mi_jax.utils import host_devices; n = host_devices.use_all_cpu_cores(); '
          'import jax; print(n, jax.device_count())')
  env = {'PATH': '/usr/bin:/bin', 'JAX_PLATFORMS': 'cpu'}
  out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=120, check=True).stdout.split()
  assert out[0] == out[1] == str(host_devices.device_count_for(host_devices.cpu_cores()))
