"""`python -m mi_jax.launch`: N JAX processes on one machine.

The fast tests pin the launcher's contract (environment, errors, a failing
process stops the rest). The slow one runs the tiny Sparse-Guard grid as
2 processes × 2 devices and as 1 process × 4 devices and compares the rows,
then kills one process mid-run and checks that rerunning resumes to the
same rows, with only process 0 writing results.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from mi_jax import launch
from mi_jax.utils import cli, host_devices

CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_each_process_gets_the_contract_and_its_own_device_count():
  base = {'XLA_FLAGS': f'--foo {host_devices.FLAG}=8', 'PATH': '/bin'}
  env = launch.process_environment(base, process_id=1, processes=2, devices_per_process=2, coordinator='127.0.0.1:9')
  assert env['XLA_FLAGS'].split() == ['--foo', f'{host_devices.FLAG}=2', host_devices.SINGLE_THREADED_DEVICES]
  assert (env['MI_JAX_DISTRIBUTED'], env[launch.COORDINATOR], env[launch.NUM_PROCESSES],
          env[launch.PROCESS_ID]) == ('1', '127.0.0.1:9', '2', '1')
  assert env['JAX_PLATFORMS'] == 'cpu' and env['PATH'] == '/bin'
  assert base['XLA_FLAGS'] == f'--foo {host_devices.FLAG}=8'  # the caller's environment is not touched


def test_without_the_switch_nothing_is_initialised():
  assert cli.initialize_distributed({}) is False


def test_a_bad_process_id_is_one_line(capsys):
  with pytest.raises(SystemExit) as exit_info:
    cli.initialize_distributed({'MI_JAX_DISTRIBUTED': '1', launch.COORDINATOR: '127.0.0.1:1',
                                launch.NUM_PROCESSES: '2', launch.PROCESS_ID: 'x'})
  assert exit_info.value.code == 2
  assert 'MI_JAX_PROCESS_ID' in capsys.readouterr().err


@pytest.mark.parametrize('argv, message', [
    (['--processes=2', 'x.py'], 'usage'),
    (['--processes=0', '--', 'x.py'], '--processes must be an integer >= 1'),
    (['--processes=2', '--devices_per_process=0', '--', 'x.py'], '--devices_per_process must be'),
    (['--processes=2', '--'], 'nothing to run'),
])
def test_bad_arguments_are_one_line_errors(argv, message, capsys):
  with pytest.raises(SystemExit) as exit_info:
    launch.main(argv)
  assert exit_info.value.code != 0
  text = str(exit_info.value.code) + capsys.readouterr().err
  assert message in text


def test_a_failing_process_stops_the_others_and_sets_the_exit_code(capsys):
  # Process 1 fails at once; process 0 would wait a minute (as it would in a
  # collective whose peer died): the launcher must not wait for it.
  program = ("import os, sys, time\n"
             "print('process', os.environ['MI_JAX_PROCESS_ID'], os.environ['MI_JAX_NUM_PROCESSES'], flush=True)\n"
             "sys.exit(3) if os.environ['MI_JAX_PROCESS_ID'] == '1' else time.sleep(60)\n")
  started = time.monotonic()
  code = launch.launch(['-c', program], processes=2, devices_per_process=1, out=sys.stdout)
  assert code == 3
  assert time.monotonic() - started < 30
  out = capsys.readouterr().out
  assert '[p0] process 0 2' in out and '[p1] process 1 2' in out


def _grid(workdir, *, processes, devices, extra=()):
  """The tiny Sparse-Guard grid under the launcher; returns the completed process."""
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  command = [sys.executable, '-m', 'mi_jax.launch', f'--processes={processes}', f'--devices_per_process={devices}',
             '--', '-m', 'experiments.sparse_guard', '--config=configs/sparse_guard_mnist.py:tiny',
             f'--workdir={workdir}', *extra]
  return command, env


def _rows(workdir):
  with open(os.path.join(workdir, 'results.json')) as f:
    return json.load(f)


_TIMING = ('seconds', 'target_seconds', 'code_version', 'num_processes')


def _assert_same_rows(got, want):
  assert len(got) == len(want)
  for g, w in zip(got, want):
    assert set(g) == set(w)
    for key in g:
      if key in _TIMING:
        continue
      if isinstance(w[key], float) or (isinstance(w[key], list) and w[key] and isinstance(w[key][0], float)):
        assert g[key] == pytest.approx(w[key], rel=1e-4, abs=1e-4), key
      else:
        assert g[key] == w[key], key


def _children(pid):
  with open(f'/proc/{pid}/task/{pid}/children') as f:
    return [int(p) for p in f.read().split()]


@pytest.mark.slow
@pytest.mark.real_data
def test_two_processes_give_the_rows_of_one_and_resume_after_a_kill(tmp_path):
  one, env = _grid(tmp_path / 'one', processes=1, devices=4)
  subprocess.run(one, cwd=CHECKOUT, env=env, check=True, capture_output=True)
  two, env = _grid(tmp_path / 'two', processes=2, devices=2)
  subprocess.run(two, cwd=CHECKOUT, env=env, check=True, capture_output=True)
  want = _rows(tmp_path / 'one')
  got = _rows(tmp_path / 'two')
  _assert_same_rows(got, want)
  assert {r['num_processes'] for r in got} == {2} and {r['num_devices'] for r in got} == {4}

  # Kill process 1 once the second point has started: the launcher stops
  # process 0 and fails; the same command then resumes and finishes.
  killed = tmp_path / 'killed'
  command, env = _grid(killed, processes=2, devices=2)
  launcher = subprocess.Popen(command, cwd=CHECKOUT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  deadline = time.monotonic() + 600
  points = killed / 'points'
  while time.monotonic() < deadline and len(list(points.glob('*/row.json')) if points.exists() else []) < 1:
    time.sleep(0.5)
  os.kill(_children(launcher.pid)[1], signal.SIGKILL)
  launcher.communicate(timeout=120)
  assert launcher.returncode != 0
  assert not (killed / 'results.json').exists()
  subprocess.run(command, cwd=CHECKOUT, env=env, check=True, capture_output=True)
  _assert_same_rows(_rows(killed), want)
  # Process 0 writes results; no second results file or table appears.
  assert sorted(p.name for p in killed.glob('results*')) == ['results.json', 'results.md']
