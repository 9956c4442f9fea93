"""Issue 10, items 4-6: a finished point is reused only when its row carries the
point's config hash, a refused run writes nothing (config.json included), and
one run at a time holds a workdir. The points are stand-ins (the
``stand_in_points`` fixture, tests/hardening/conftest.py), so each run takes a
second; the real pipeline is tests/experiments/surrogate_test.py's."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from mi_jax.experiments import gan_attacks as gan_experiment, surrogate as experiment
from mi_jax.utils import results as results_io
from tests.hardening import POINTS, finished_but_not_gathered, run, tiny
from tests.helpers import ROOT, load_config

# ------------------------------------------------------------------ item 4


def test_a_row_copied_from_another_run_is_refused_naming_it(tmp_path, stand_in_points):
  finished_but_not_gathered(tiny(**{'attack.epochs': 3}), tmp_path / 'other')
  finished_but_not_gathered(tiny(), tmp_path / 'run')
  copied = tmp_path / 'run' / 'points' / POINTS[1] / 'row.json'
  shutil.copy(tmp_path / 'other' / 'points' / POINTS[1] / 'row.json', copied)
  with pytest.raises(FileExistsError) as error:
    run(tiny(), tmp_path / 'run')
  assert str(error.value).startswith(f"{copied} was computed with another config")
  assert '\n' not in str(error.value)
  assert not (tmp_path / 'run' / 'results.json').exists()


def test_rows_swapped_between_two_points_are_refused(tmp_path, stand_in_points):
  finished_but_not_gathered(tiny(), tmp_path)
  a, b = (tmp_path / 'points' / name / 'row.json' for name in POINTS)
  a_text, b_text = a.read_text(), b.read_text()
  a.write_text(b_text)
  b.write_text(a_text)
  with pytest.raises(FileExistsError, match='row.json was computed with another config'):
    run(tiny(), tmp_path)
  assert not (tmp_path / 'results.json').exists()


@pytest.mark.parametrize('name,content', [('row.json', '{"dataset": "mni'), ('figure.npz', 'not a zip')])
def test_an_unreadable_row_or_figure_is_refused_naming_it(tmp_path, stand_in_points, name, content):
  finished_but_not_gathered(tiny(), tmp_path)
  broken = tmp_path / 'points' / POINTS[0] / name
  broken.write_text(content)
  with pytest.raises(ValueError) as error:
    run(tiny(), tmp_path)
  assert str(error.value).startswith(str(broken)) and '\n' not in str(error.value)
  assert 'to recompute the point' in str(error.value)


def test_a_matching_row_is_reused_and_a_deleted_one_recomputed(tmp_path, stand_in_points):
  rows = finished_but_not_gathered(tiny(), tmp_path)
  os.remove(tmp_path / 'points' / POINTS[1] / 'row.json')
  stand_in_points.clear()
  assert run(tiny(), tmp_path) == rows
  assert stand_in_points == [POINTS[1]]


# ------------------------------------------------------------------ item 5


def test_a_refused_run_leaves_config_json_as_it_was(tmp_path, stand_in_points):
  finished_but_not_gathered(tiny(), tmp_path)
  before = (tmp_path / 'config.json').read_text()
  with pytest.raises(FileExistsError, match='was started with a different config'):
    run(tiny(**{'attack.epochs': 3}), tmp_path)
  assert (tmp_path / 'config.json').read_text() == before


def test_a_workdir_started_with_another_config_is_refused_before_any_point(tmp_path, stand_in_points):
  """Killed before its first point finished: only config.json tells the configs apart."""
  tmp_path.joinpath('config.json').write_text(json.dumps(experiment.common.config_json(tiny(**{'seed': 1}))))
  with pytest.raises(FileExistsError, match='was started with a different config'):
    run(tiny(), tmp_path)
  assert stand_in_points == [] and not (tmp_path / 'points').exists()


def test_results_json_written_meanwhile_is_never_replaced_and_the_hint_fits_the_command_line(
    tmp_path, stand_in_points, monkeypatch):
  """Outside the lock (another tool): the message must not offer overwrite=True,
  which the command line cannot give."""
  point = experiment.run_point

  def and_someone_finishes(config, split, **kwargs):
    (tmp_path / 'results.json').write_text('[]')
    return point(config, split, **kwargs)

  monkeypatch.setattr(experiment, 'run_point', and_someone_finishes)
  with pytest.raises(FileExistsError) as error:
    run(tiny(), tmp_path)
  assert 'overwrite=True' not in str(error.value) and '--workdir' in str(error.value)
  assert (tmp_path / 'results.json').read_text() == '[]'


# ------------------------------------------------------------------ item 6


def test_a_second_run_into_a_held_workdir_fails_at_once_naming_the_holder(tmp_path, stand_in_points):
  from mi_jax.utils import workdir
  with workdir.locked(str(tmp_path)):
    started = time.perf_counter()
    with pytest.raises(workdir.WorkdirBusyError) as error:
      run(tiny(), tmp_path)
    assert time.perf_counter() - started < 30
  assert f'pid {os.getpid()}' in str(error.value) and '\n' not in str(error.value)
  assert stand_in_points == [] and not (tmp_path / 'config.json').exists()
  run(tiny(), tmp_path)  # released: the next run goes ahead


HOLDER = '''
import sys, time
from mi_jax.utils import workdir
with workdir.locked(sys.argv[1]):
  print('locked', flush=True)
  time.sleep(600)
'''


def _hold(path):
  holder = subprocess.Popen([sys.executable, '-c', HOLDER, str(path)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
  assert holder.stdout.readline().strip() == 'locked'
  return holder


def test_the_lock_is_held_across_processes_and_freed_when_its_holder_dies(tmp_path, stand_in_points):
  from mi_jax.utils import workdir
  holder = _hold(tmp_path)
  try:
    with pytest.raises(workdir.WorkdirBusyError, match=f'in use by another run \\(pid {holder.pid} on '):
      run(tiny(), tmp_path)
  finally:
    holder.send_signal(signal.SIGKILL)  # no clean-up: the kernel releases the lock
    holder.wait()
  assert f'pid {holder.pid}' in (tmp_path / '.lock').read_text()  # a stale lock file stays behind
  assert len(run(tiny(), tmp_path)) == 2  # and does not block


def test_only_the_writing_process_takes_the_lock(tmp_path):
  from mi_jax.utils import workdir
  with workdir.locked(str(tmp_path)):
    with workdir.locked(str(tmp_path), enabled=False):  # the other processes of a multi-process run
      pass


# ------------------------------------------------------------------ the GAN experiment


def _gan_config(**changes):
  config = load_config('tiny', 'configs/gan_attacks_mnist.py')
  with config.unlocked():
    config.defenses = ('no-defense', 'mid')
    config.attacks = ('gmi', 'kedmi')
    for path, value in changes.items():
      config[path] = value
  return config


def _gan_rows(config, workdir):
  """Finished (defense, attack) folders as a killed GAN run leaves them."""
  for defense in config.defenses:
    config_hash = results_io.config_hash(gan_experiment.common.config_json(gan_experiment._point_config(config, defense)))
    for attack in config.attacks:
      folder = workdir / 'points' / defense / attack
      folder.mkdir(parents=True)
      (folder / 'row.json').write_text(json.dumps({'defense': defense, 'attack': attack, 'config_hash': config_hash}))
      np.savez(folder / 'figure.npz', reconstructions=np.zeros((2, 28, 28, 1), np.float32))


def test_gan_experiment_reuses_only_its_own_rows(tmp_path):
  config = _gan_config()
  _gan_rows(config, tmp_path)
  assert set(gan_experiment._check_workdir(config, str(tmp_path))) == {
      (d, a) for d in config.defenses for a in config.attacks}
  # Swapped between two attacks of one defense (same point config, so the same hash).
  a, b = (tmp_path / 'points' / 'mid' / attack / 'row.json' for attack in ('gmi', 'kedmi'))
  a_text, b_text = a.read_text(), b.read_text()
  a.write_text(b_text)
  b.write_text(a_text)
  with pytest.raises(FileExistsError, match=f"^{a} holds attack='kedmi', this point's is 'gmi'"):
    gan_experiment._check_workdir(config, str(tmp_path))
  # Copied from a run with another config.
  a.write_text(a_text)
  b.write_text(b_text)
  other = tmp_path / 'other'
  _gan_rows(_gan_config(seed=1), other)
  shutil.copy(other / 'points' / 'no-defense' / 'gmi' / 'row.json', tmp_path / 'points' / 'no-defense' / 'gmi')
  with pytest.raises(FileExistsError, match='was computed with another config'):
    gan_experiment._check_workdir(config, str(tmp_path))
