"""Issue 10: every error a user can cause from the command line (unknown field,
bad config argument, missing config file, a value of the wrong type) or meet
during a run (disk, corrupt checkpoint, diverged training, busy workdir,
missing data) ends as one line ``error: …`` and exit code 2, not a traceback."""

import errno
import os
import subprocess
import sys

import pytest
from absl import flags
from ml_collections import config_flags

from mi_jax.utils import cli
from tests.helpers import ROOT

SG = 'configs/sparse_guard_mnist.py'


def _flag_error(*args) -> str:
  """The one line for the error absl/ml_collections raise on ``args`` (as the command parses them)."""
  argv = ['prog', *args]
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, 'config', flag_values=flag_values, lock_config=True, sys_argv=argv)
  with pytest.raises(Exception) as error:
    flag_values(argv)
  return cli._flag_error_message(error.value, argv)


@pytest.mark.parametrize('args,message', [
    ((f'--config={SG}:tiny', '--config.train.lerning_rate=1'),
     'unknown config field --config.train.lerning_rate; did you mean --config.train.learning_rate?'),
    ((f'--config={SG}:tiny', '--config.trian.epochs=1'),
     'unknown config field --config.trian.epochs; did you mean --config.train.epochs?'),
    ((f'--config={SG}:tiny', '--config.defense.mid.betta=0.1'),
     'unknown config field --config.defense.mid.betta; did you mean --config.defense.mid.beta?'),
    ((f'--config={SG}:huge',),
     f"--config={SG}:huge: config argument scale must be one of ('tiny', 'small', 'paper'), got 'huge'"),
    ((f'--config={SG}:tiny,cifar',),
     f"--config={SG}:tiny,cifar: config argument dataset must be one of ('mnist', 'fashion_mnist', 'cifar10', 'medical_mnist', "
     "'pathmnist', 'organamnist', 'bloodmnist', 'dermamnist', 'celeba'), got 'cifar'"),
    ((f'--config={SG}:tiny', '--config.train.learning_rate=abc'),
     "flag --config.train.learning_rate=abc: could not convert string to float: 'abc'"),
])
def test_command_line_errors_are_one_line_naming_the_argument(args, message):
  assert _flag_error(*args) == message


def test_a_missing_config_file_is_one_line(capsys):
  with pytest.raises(SystemExit) as exit_:
    cli.parse_flags(['prog', '--config=configs/nope.py:tiny', '--workdir=/tmp/x'])
  assert exit_.value.code == 2
  assert capsys.readouterr().err == "error: --config=configs/nope.py:tiny: no such config file 'configs/nope.py'\n"


def _errors():
  from mi_jax.data import DataUnavailableError
  from mi_jax.experiments.surrogate import ConfigError
  from mi_jax.train.checkpoint import CheckpointRestoreError
  from mi_jax.train.loop import NonFiniteLossError
  from mi_jax.utils.metric_writer import StorageError
  from mi_jax.utils.workdir import WorkdirBusyError
  return [
      CheckpointRestoreError('no usable checkpoint in /w/points/p/checkpoints/target (step 4: ValueError: bad)'),
      StorageError(errno.ENOSPC, 'cannot write: No space left on device', '/w/results.md'),
      StorageError(errno.EROFS, 'cannot save checkpoint step 5: Read-only file system', '/w/ckpt'),
      NonFiniteLossError('[target] non-finite measurements at step 3 (loss=nan); last checkpoint: step 2 (finite)'),
      WorkdirBusyError('/w is in use by another run (pid 1 on h, started x; lock /w/.lock); wait for it'),
      DataUnavailableError('mnist is not available: cache: missing'),
      ConfigError('defense.lam must be a finite number >= 0, got inf'),
      FileExistsError('/w/results.json exists: this workdir holds a finished run; choose a new --workdir'),
      NotADirectoryError(errno.ENOTDIR, 'Not a directory', '/w/file/run'),
  ]


def test_errors_during_a_run_are_one_line_with_exit_code_2(capsys):
  for error in _errors():
    def run(config, workdir):
      raise error
    with pytest.raises(SystemExit) as exit_:
      cli.run_and_report(run, None, '/w')
    assert exit_.value.code == 2, error
    err = capsys.readouterr().err
    assert err == f'error: {error}\n' and err.count('\n') == 1, err


def test_a_bug_keeps_its_traceback():
  def run(config, workdir):
    raise ZeroDivisionError('a bug, not a user error')
  with pytest.raises(ZeroDivisionError):
    cli.run_and_report(run, None, '/w')


# ------------------------------------------------------------------ end to end (a few: each starts Python)


def _command(tmp_path, *args, module='experiments.sparse_guard', env=None):
  return subprocess.run([sys.executable, '-m', module, f'--workdir={tmp_path / "run"}', *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=300, env=env)


@pytest.mark.parametrize('args,message', [
    ((f'--config={SG}:tiny', '--config.train.lerning_rate=1'), 'did you mean --config.train.learning_rate?'),
    ((f'--config={SG}:huge',), 'config argument scale must be one of'),
    (('--config=configs/nope.py',), "no such config file 'configs/nope.py'"),
    ((f'--config={SG}:tiny', '--config.train.learning_rate=abc'), "could not convert string to float: 'abc'"),
])
def test_the_command_exits_2_with_one_line_and_writes_nothing(tmp_path, args, message):
  done = _command(tmp_path, *args)
  assert done.returncode == 2, done.stderr[-2000:]
  assert done.stderr.count('\n') == 1 and done.stderr.startswith('error: ') and message in done.stderr, done.stderr
  assert not (tmp_path / 'run').exists()


CORRUPT = '''
from mi_jax.train.checkpoint import CheckpointRestoreError
def run(config, workdir):
  raise CheckpointRestoreError(f"no usable checkpoint in {workdir}/points/p/checkpoints/target (step 4: corrupt)")
'''


def test_a_corrupt_checkpoint_through_the_real_entry_point(tmp_path):
  (tmp_path / 'corrupt_run.py').write_text(CORRUPT)
  env = {**os.environ, 'PYTHONPATH': os.pathsep.join([str(tmp_path), str(ROOT)])}
  code = "from mi_jax.utils.cli import run_experiment; run_experiment('corrupt_run')"
  done = subprocess.run([sys.executable, '-c', code, f'--workdir={tmp_path}', f'--config={SG}:tiny'], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=300)
  assert done.returncode == 2
  assert done.stderr == f'error: no usable checkpoint in {tmp_path}/points/p/checkpoints/target (step 4: corrupt)\n'


def test_the_gan_command_exits_2_for_an_infinite_learning_rate(tmp_path):
  """Before: the NaN guard's traceback, exit 1, after the GAN had started training."""
  done = _command(tmp_path, '--config=configs/gan_attacks_mnist.py:tiny', '--config.gan.learning_rate=inf',
                  module='experiments.gan_attacks')
  assert done.returncode == 2, done.stderr[-2000:]
  assert done.stderr == 'error: gan.learning_rate must be a finite number > 0, got inf\n'
  assert not (tmp_path / 'run').exists()


def test_an_unwritable_workdir_through_the_command(tmp_path):
  (tmp_path / 'file').write_text('not a directory')
  workdir = tmp_path / 'file' / 'run'
  done = subprocess.run([sys.executable, '-m', 'experiments.sparse_guard', f'--config={SG}:tiny',
                         f'--workdir={workdir}'], cwd=ROOT, capture_output=True, text=True, timeout=300)
  if 'is not available' in done.stderr:
    pytest.skip(f'real MNIST not available: {done.stderr.strip()}')
  assert done.returncode == 2, done.stderr[-2000:]
  assert done.stderr.count('\n') == 1 and done.stderr.startswith('error: ')
  assert 'Not a directory' in done.stderr and str(workdir) in done.stderr
