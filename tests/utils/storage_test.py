"""Where files go (mi_jax.utils.storage): every writer of the experiments against a
local path and against a fake gs:// filesystem.

The fake (``gcs`` fixture) is ``etils.epath.testing.mock_epath``: ``gs://bucket/…``
maps onto a tmp folder, with what an object store lacks made to fail (rename,
replace, append), and the test runs in an empty working directory that must stay
empty (an ``os`` call on a ``gs://`` string would create ``gs:/…`` there).
"""

import errno
import importlib.util
import json
import os
import pathlib

import numpy as np
import pytest
from etils import epath
from etils.epath import testing as epath_testing

from mi_jax.experiments import common
from mi_jax.experiments import figures
from mi_jax.utils import results as results_io
from mi_jax.utils import storage
from mi_jax.utils import workdir as workdir_lib
from mi_jax.utils.metric_writer import MetricWriter, StorageError, read_records

RUN = 'gs://bucket/run'


class FakeGcs:
  """``gs://<path>`` lives at ``<root>/<path>``; ``fail_writes`` (an errno) fails every upload."""

  def __init__(self, root: pathlib.Path):
    self.root = root
    self.fail_writes = None
    self.opened = []  # (gs:// path, mode) of every object opened

  def local(self, p) -> str:
    p = os.fspath(p)
    return str(self.root / p[len('gs://'):]) if p.startswith('gs://') else p

  def object(self, p) -> pathlib.Path:
    return pathlib.Path(self.local(p))


def _is_remote(p) -> bool:
  return os.fspath(p).startswith('gs://')


@pytest.fixture
def gcs(tmp_path, monkeypatch):
  fake = FakeGcs(tmp_path / 'objects')
  fake.root.mkdir()
  cwd = tmp_path / 'cwd'
  cwd.mkdir()
  monkeypatch.chdir(cwd)

  def mapped(original, p, *args, **kwargs):
    return original(fake.local(p), *args, **kwargs)

  def open_(original, p, mode):
    if _is_remote(p):
      fake.opened.append((os.fspath(p), mode))
      if 'a' in mode or '+' in mode:
        raise NotImplementedError(f"an object store cannot append ({p}, mode {mode!r})")
      if 'w' in mode:
        if fake.fail_writes:
          raise OSError(fake.fail_writes, os.strerror(fake.fail_writes))
        os.makedirs(os.path.dirname(fake.local(p)), exist_ok=True)  # no folders on an object store
    return original(fake.local(p), mode)

  def no_rename(original, p, dst):
    if _is_remote(p) or _is_remote(dst):
      raise NotImplementedError(f"an object store has no rename ({p} -> {dst})")
    return original(p, dst)

  def unused(original, p, *args, **kwargs):
    if _is_remote(p):
      raise NotImplementedError(f"not emulated by the fake: {p}")
    return original(p, *args, **kwargs)

  with epath_testing.mock_epath(open=open_, exists=mapped, isdir=mapped, listdir=mapped, makedirs=mapped,
                                mkdir=mapped, remove=mapped, rmtree=mapped, stat=mapped, rename=no_rename,
                                replace=no_rename, copy=unused, glob=unused, walk=unused):
    yield fake
  assert list(cwd.iterdir()) == [], 'a gs:// path reached the local filesystem'


# ------------------------------------------------------------------ the rule


def test_local_and_object_store_paths_are_told_apart():
  assert storage.is_local('results/run') and storage.is_local('/tmp/x') and storage.is_local(pathlib.Path('a'))
  assert not storage.is_local(RUN) and not storage.is_local('s3://bucket/run')
  assert isinstance(storage.path('/tmp/x'), pathlib.Path)
  assert str(storage.path(RUN + '/results.json')) == RUN + '/results.json'  # pathlib would give gs:/…
  with pytest.raises(ValueError, match=r"^'ftp://host/run': a path must be local or start with one of"):
    storage.exists('ftp://host/run')


def test_a_local_write_goes_through_a_temporary_file_and_refuses_to_overwrite(tmp_path, monkeypatch):
  path = tmp_path / 'results.json'
  moved = []
  replace = os.replace
  monkeypatch.setattr(storage.os, 'replace', lambda a, b: (moved.append(os.path.basename(a)), replace(a, b)))
  assert results_io.write_json_atomic(path, {'a': 1}) == path
  with pytest.raises(FileExistsError) as error:
    results_io.write_json_atomic(path, {'a': 2})
  assert str(error.value) == f"{path} already exists; pass overwrite=True to replace it"
  results_io.write_json_atomic(path, {'a': 2}, overwrite=True)
  assert json.loads(path.read_text()) == {'a': 2} and os.listdir(tmp_path) == ['results.json']
  assert len(moved) == 1 and moved[0].startswith('.results.json.') and moved[0].endswith('.tmp')
  with pytest.raises(FileNotFoundError, match='does not exist; create it first'):
    storage.write_bytes_atomic(tmp_path / 'missing' / 'x', b'')


# ------------------------------------------------------------------ writers on the fake gs://


def test_json_and_text_on_gs_are_the_local_bytes_written_once(gcs, tmp_path):
  obj = {'rows': [1.5, float('-inf')], 'name': 'λ'}
  written = results_io.write_json_atomic(RUN + '/results.json', obj)
  assert isinstance(written, epath.Path) and str(written) == RUN + '/results.json'
  results_io.write_json_atomic(tmp_path / 'local.json', obj)
  assert gcs.object(RUN + '/results.json').read_bytes() == (tmp_path / 'local.json').read_bytes()
  assert storage.exists(RUN + '/results.json') and storage.listdir(RUN) == ['results.json']
  with pytest.raises(FileExistsError) as error:
    results_io.write_json_atomic(RUN + '/results.json', {})
  assert str(error.value) == f"{RUN}/results.json already exists; pass overwrite=True to replace it"
  results_io.write_text_atomic(RUN + '/results.md', 'old')
  results_io.write_text_atomic(RUN + '/results.md', 'new table', overwrite=True)
  assert storage.read_text(RUN + '/results.md') == 'new table'
  assert [mode for _, mode in gcs.opened if mode.startswith('w')] == ['wb'] * 3  # one upload each


def test_a_failing_upload_is_one_line_naming_the_gs_path(gcs):
  gcs.fail_writes = errno.EACCES
  with pytest.raises(StorageError) as error:
    results_io.write_json_atomic(RUN + '/results.json', {})
  assert str(error.value) == f"[Errno {errno.EACCES}] cannot write: Permission denied: '{RUN}/results.json'"
  assert not gcs.object(RUN + '/results.json').exists()


def test_figures_on_gs_are_the_local_png(gcs, tmp_path):
  originals = np.full((3, 28, 28), 255, np.uint8)
  recons = {'no-defense': np.full((3, 28, 28, 1), 0.5, np.float32)}
  figures.reconstruction_grid(originals, recons, tmp_path / 'grid.png', label_px=60)
  written = figures.reconstruction_grid(originals, recons, RUN + '/grid.png', label_px=60)
  assert str(written) == RUN + '/grid.png'
  assert gcs.object(RUN + '/grid.png').read_bytes() == (tmp_path / 'grid.png').read_bytes()
  with pytest.raises(FileExistsError, match=f"^{RUN}/grid.png already exists"):
    figures.reconstruction_grid(originals, recons, RUN + '/grid.png', label_px=60)


def test_metrics_on_gs_rewrite_the_object_instead_of_appending(gcs):
  writer = MetricWriter(RUN)
  assert writer.path == RUN + '/metrics.jsonl'
  for phase, step in [('a', 1), ('b', 5), ('a', 2), ('a', 3)]:
    writer.write(phase, step, {'v': float(step), 'bad': float('nan')})
  writer.rewind('a', 1)
  again = MetricWriter(RUN)  # a resumed run adds to what the first one wrote
  again.write('a', 2, {'v': 2.0})
  records = read_records(RUN + '/metrics.jsonl')
  assert [(r['phase'], r['step']) for r in records] == [('a', 1), ('b', 5), ('a', 2)]
  assert records[0] == {'phase': 'a', 'step': 1, 'v': 1.0, 'bad': None}
  assert gcs.object(RUN + '/metrics.jsonl').read_text().endswith('{"phase": "a", "step": 2, "v": 2.0}\n')
  assert read_records(RUN + '/none.jsonl') == []


def test_a_finished_point_on_gs_is_found_and_checked(gcs):
  point = RUN + '/points/p'
  expected = {'seed': 0}
  workdir_lib.check_config(point + '/config.json', expected)  # nothing yet: fine
  results_io.write_json_atomic(point + '/config.json', expected)
  workdir_lib.check_config(point + '/config.json', expected)
  with pytest.raises(FileExistsError, match=f"^{point} was started with a different config"):
    workdir_lib.check_config(point + '/config.json', {'seed': 1})
  keys = dict(config_hash=results_io.config_hash(expected), figure_keys=('originals',))
  assert workdir_lib.finished_point(point + '/row.json', point + '/figure.npz', **keys) is None
  row = {'config_hash': keys['config_hash'], 'psnr': 12.5}
  common.save_point(point, row, {'originals': np.ones((2, 4, 4, 1), np.float32)}, writes=True)
  found_row, figure = workdir_lib.finished_point(point + '/row.json', point + '/figure.npz', **keys)
  assert found_row == row and figure['originals'].shape == (2, 4, 4, 1)


def test_a_gs_workdir_is_not_locked_and_says_nothing(gcs, capsys):
  with workdir_lib.locked(RUN):
    with workdir_lib.locked(RUN):  # no flock on an object store: one run per workdir is the user's rule
      pass
  assert capsys.readouterr() == ('', '') and not gcs.object(RUN + '/.lock').exists()


def test_a_checkpoint_directory_on_gs_reaches_orbax_unchanged(monkeypatch):
  """Orbax reaches gs:// itself (epath, TensorStore's GCS driver, google-cloud-storage),
  so only the path handed to it is checked here."""
  from mi_jax.train import checkpoint
  given = []
  monkeypatch.setattr(checkpoint.ocp, 'CheckpointManager', lambda directory, **kwargs: given.append(directory))
  assert checkpoint.Checkpointer(RUN + '/checkpoints/target').directory == RUN + '/checkpoints/target'
  checkpoint.Checkpointer('relative/checkpoints')
  assert given == [RUN + '/checkpoints/target', os.path.abspath('relative/checkpoints')]


def test_gs_without_its_filesystem_package_is_one_line():
  if importlib.util.find_spec('gcsfs') is not None:
    pytest.skip('gcsfs is installed: gs:// would reach the network')
  with pytest.raises(StorageError) as error:
    storage.exists(RUN + '/results.json')
  assert f"'{RUN}/results.json'" in str(error.value) and '\n' not in str(error.value)


# ------------------------------------------------------------------ a whole experiment point


def test_one_experiment_point_end_to_end_on_gs(gcs, monkeypatch):
  """The tiny sweep's no-defense point with --workdir=gs://bucket/run, then a rerun
  that reuses it. Checkpoints are orbax's (TensorStore reaches gs:// itself, not
  through epath), so here they go to the fake's folder, after checking that the
  gs:// directory reached the checkpointer unchanged."""
  from mi_jax import data as mi_data
  from mi_jax.experiments import surrogate as experiment
  from mi_jax.train import checkpoint, loop
  from tests.helpers import load_config, mesh_of, synthetic_digits

  images, labels = synthetic_digits(96, seed=0)  # SYNTHETIC (unit test only)
  split = mi_data.ProtocolSplit(images[:64], labels[:64], images[64:], labels[64:])
  monkeypatch.setattr(experiment.mi_data, 'load_sparse_guard', lambda *a, **k: split)
  directories = []

  class FakeGcsCheckpointer(checkpoint.Checkpointer):
    def __init__(self, directory, **kwargs):
      directories.append(directory)
      super().__init__(gcs.local(directory), **kwargs)

  monkeypatch.setattr(loop, 'Checkpointer', FakeGcsCheckpointer)
  config = load_config('tiny')
  with config.unlocked():
    config.sweep.defenses = ('no-defense',)
    config.metrics.judge_scale = None
  [row] = experiment.run(config, RUN, mesh=mesh_of(8))
  assert directories and all(d.startswith(RUN + '/points/no-defense_split_corrected/checkpoints/') for d in directories)
  assert json.loads(storage.read_text(RUN + '/results.json')) == json.loads(json.dumps([row]))
  names = set(storage.listdir(RUN))
  assert {'config.json', 'results.json', 'results.md', 'reconstructions_split_corrected.png', 'points'} <= names
  point = RUN + '/points/no-defense_split_corrected'
  assert {'config.json', 'row.json', 'figure.npz', 'metrics.jsonl'} <= set(storage.listdir(point))
  assert any(r['phase'] == 'result' for r in read_records(point + '/metrics.jsonl'))
  with pytest.raises(FileExistsError, match=f"^{RUN}/results.json exists"):
    experiment.run(config, RUN, mesh=mesh_of(8))
  gcs.object(RUN + '/results.json').unlink()
  monkeypatch.setattr(experiment, 'run_point', lambda *a, **k: pytest.fail('point was rerun'))
  again = experiment.run(config, RUN, mesh=mesh_of(8))
  assert json.dumps(again) == json.dumps(json.loads(json.dumps([row])))
