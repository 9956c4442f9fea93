"""The GAN-attack experiment end to end on synthetic digits (tiny config)."""

import json

import numpy as np
import pytest

from mi_jax.experiments import gan_attacks as gan_experiment
from tests.helpers import load_config, mesh_of, synthetic_digits

CONFIG = 'configs/gan_attacks_mnist.py'


@pytest.fixture
def synthetic_data(monkeypatch):
  sets = {'train': synthetic_digits(240, seed=0), 'test': synthetic_digits(80, seed=1)}
  monkeypatch.setattr(gan_experiment.mi_data, 'load', lambda name, split, **k: sets[split])


def _config(**overrides):
  config = load_config('tiny', CONFIG)
  config.unlock()
  config.defenses = ('no-defense',)
  config.evaluation.fid = False
  config.data.private_limit = 32
  config.data.public_limit = 64
  config.data.test_limit = 32
  for key, value in overrides.items():
    target = config
    *path, last = key.split('.')
    for part in path:
      target = target[part]
    target[last] = value
  return config.lock()


def _check_rows(rows, tmp_path, attacks, defenses):
  assert [(r['defense'], r['attack']) for r in rows] == [(d, a) for d in defenses for a in attacks]
  saved = json.loads((tmp_path / 'results.json').read_text())
  assert saved == rows
  for row in rows:
    assert 0.0 <= row['accuracy'] <= 1.0 and row['n_private'] == 32 and row['n_public'] == 64
    assert row['fid'] is None and 'disabled' in row['fid_note']
    assert 0.0 <= row['attack_top1'] <= row['attack_top5'] <= 1.0 and row['knn_distance'] >= 0
    assert 0.0 <= row['attack_top1_unoptimized'] <= row['attack_top5_unoptimized'] <= 1.0
    assert row['judge'] == 'evaluation_cnn_mnist_tiny'
    # 5 classes × 2 (tiny: attacks_per_class, samples_per_class, final); BREP-MI: the classes it could start on.
    assert row['n_reconstructions'] == 5 * 2 - 2 * len(row.get('brep_missing_classes', ()))
  table = (tmp_path / 'results.md').read_text()
  assert '| top-1 unoptimised (%) |' in table and 'KID' in table
  for attack in attacks:
    assert f"| no-defense | {gan_experiment.ATTACK_TITLES[attack]} |" in table
    assert (tmp_path / f'reconstructions_{attack}.png').stat().st_size > 0


def test_tiny_run_writes_rows_table_and_grid_and_resumes(tmp_path, synthetic_data):
  """KEDMI: the path with the most moving parts (target → soft labels → its GAN → attack)."""
  rows = gan_experiment.run(_config(attacks=('kedmi',)), str(tmp_path), mesh=mesh_of(2))
  _check_rows(rows, tmp_path, ('kedmi',), ('no-defense',))
  with pytest.raises(FileExistsError, match='finished run'):
    gan_experiment.run(_config(attacks=('kedmi',)), str(tmp_path), mesh=mesh_of(2))
  # Resume: finished (defense, attack) rows are read back, not recomputed.
  (tmp_path / 'results.json').unlink()
  monkeypatch = pytest.MonkeyPatch()
  with monkeypatch.context() as patch:
    patch.setattr(gan_experiment, 'run_attack', lambda *a, **k: pytest.fail('attack was rerun'))
    again = gan_experiment.run(_config(attacks=('kedmi',)), str(tmp_path), mesh=mesh_of(2))
  assert again == rows


def test_lomma_variant_runs_beside_its_base_attack_from_the_same_latents(tmp_path, synthetic_data):
  config = _config(attacks=('gmi', 'gmi+lomma'), **{'gmi.iterations': 3})
  rows = gan_experiment.run(config, str(tmp_path), mesh=mesh_of(2))
  _check_rows(rows, tmp_path, ('gmi', 'gmi+lomma'), ('no-defense',))
  base, variant = rows
  assert variant['lomma_variant'] == 'both' and variant['lomma_students'] == 1
  assert 0.0 <= variant['lomma_student_agreement'][0] <= 1.0 and variant['lomma_reg_weight'] == 1.0
  # Paired: the same starting latents, hence the same unoptimised baseline.
  assert variant['attack_top1_unoptimized'] == base['attack_top1_unoptimized']
  assert (tmp_path / 'points' / 'no-defense' / 'lomma' / 'student_0').is_dir()


def test_label_only_brep_runs_on_the_gmi_generator_and_reports_its_walk(tmp_path, synthetic_data, monkeypatch):
  seen = []
  real_label_only = gan_experiment.brep_mi.label_only

  def spy(target):  # the experiment hands BREP-MI the argmax wrapper and nothing else
    labels = real_label_only(target)
    seen.append(labels)
    return labels

  monkeypatch.setattr(gan_experiment.brep_mi, 'label_only', spy)
  rows = gan_experiment.run(_config(attacks=('brep',)), str(tmp_path), mesh=mesh_of(2))
  _check_rows(rows, tmp_path, ('brep',), ('no-defense',))
  (row,) = rows
  assert len(seen) == 1
  assert row['brep_point'] == 'last_expansion' and 0.0 <= row['brep_expanded_fraction'] <= 1.0
  assert row['brep_queries_mean'] == row['iterations'] * 33 or row['brep_queries_mean'] <= row['iterations'] * 33
  assert 256 <= row['brep_initial_queries'] <= 512 and row['iterations'] <= 20
  # The 2-step tiny target labels most draws alike: classes it never outputs are not
  # attacked and count as misses over all 5 × 2 attacked rows.
  found = 10 - 2 * len(row['brep_missing_classes'])
  assert row['brep_attacked_rows'] == 10 and row['attack_top1'] <= found / 10
  assert (tmp_path / 'gans' / 'gmi').is_dir()


def test_plg_trains_its_gan_on_the_targets_pseudo_labels_once_for_both_variants(tmp_path, synthetic_data, monkeypatch):
  trained = []
  real_train = gan_experiment.plg_mi.train_plg_gan

  def spy(**kwargs):
    trained.append(kwargs)
    return real_train(**kwargs)

  monkeypatch.setattr(gan_experiment.plg_mi, 'train_plg_gan', spy)
  config = _config(attacks=('plg', 'plg+lomma'), **{'plg.iterations': 3})
  rows = gan_experiment.run(config, str(tmp_path), mesh=mesh_of(2))
  _check_rows(rows, tmp_path, ('plg', 'plg+lomma'), ('no-defense',))
  assert len(trained) == 1  # one conditional GAN per target serves both variants
  # Default top_n: every public image once (64 public images over 5 private classes).
  assert trained[0]['top_n'] == 64 // 5 and rows[0]['plg_top_n'] == 12
  assert (tmp_path / 'points' / 'no-defense' / 'gans' / 'plg').is_dir()
  base, variant = rows
  assert variant['attack_top1_unoptimized'] == base['attack_top1_unoptimized']  # paired latents
  assert variant['lomma_variant'] == 'both'


@pytest.mark.slow
def test_every_attack_against_two_defenses(tmp_path, synthetic_data):
  rows = gan_experiment.run(_config(defenses=('no-defense', 'sparse-guard')), str(tmp_path), mesh=mesh_of(2))
  _check_rows(rows, tmp_path, ('gmi', 'kedmi', 'ppa'), ('no-defense', 'sparse-guard'))


@pytest.mark.parametrize('override,message', [
    ({'public_classes': (4, 5)}, 'must not overlap'),
    ({'attacks': ('gmi', 'vmi')}, 'attacks must be'),
    ({'ppa.final': 9}, 'ppa needs'),
    ({'gmi.gan_loss': 'kedmi'}, 'gmi.gan_loss'),
    ({'defenses': ('no-defense', 'nope')}, 'defenses must be'),
    # Issue 10: passed validation, then the NaN guard's traceback.
    ({'gan.learning_rate': float('inf')}, 'gan.learning_rate must be a finite number > 0, got inf'),
    ({'gan.batch_size': 128}, 'gan.batch_size must be at most the 64 images of the public set'),
    # Issue 14: class splits beyond a dataset's classes; faces need the identity protocol.
    ({'dataset': 'medical_mnist', 'defense.transfer.public': 'other_classes', 'defense.gan_opt.decoy': False},
     r'must lie in \[0, 6\) \(the classes of medical_mnist\)'),
    ({'dataset': 'celeba'}, "the GAN attacks' CelebA identity protocol is not implemented"),
])
def test_bad_config_fails_with_one_line_and_writes_nothing(tmp_path, override, message):
  with pytest.raises(gan_experiment.ConfigError, match=message) as error:
    gan_experiment.run(_config(**override), str(tmp_path / 'run'), mesh=mesh_of(2))
  assert '\n' not in str(error.value)
  assert not (tmp_path / 'run').exists()


def test_protocol_has_no_class_overlap(synthetic_data):
  split, public_images, public_labels = gan_experiment.load_protocol(_config())
  assert set(np.unique(split.private_labels)) <= {0, 1, 2, 3, 4}
  assert set(np.unique(split.heldout_labels)) <= {0, 1, 2, 3, 4}
  assert set(np.unique(public_labels)) <= {0, 1, 2, 3, 4}  # digits 5–9 remapped for the conditional GAN
  assert len(public_images) == 64 and len(split.private_labels) == 32


def test_white_box_attacker_differentiates_through_forward_only_sparse_layers():
  """A target trained with defense.grad='stop' has zero input gradient; the attacker's graph does not."""
  import jax
  import jax.numpy as jnp
  from flax import nnx
  from mi_jax import defenses
  from mi_jax.train.state import split_model

  # A small λ so the untrained sparse layers' codes are not all zero (no gradient at all).
  config = _config(defenses=('sparse-guard',), **{'defense.lam': 0.01, 'defense.n_steps': 20})
  point = gan_experiment._point_config(config, 'sparse-guard')
  assert point.defense.grad == 'stop' and config.attack_grad == 'unroll'
  graphdef, params, model_state = split_model(defenses.build_target(point, (28, 28, 1), 10, rngs=nnx.Rngs(0)))
  state = {'params': params, 'model_state': model_state}
  trained = gan_experiment.latent.target_logits_fn(graphdef, state)
  attacked = gan_experiment.attack_target_fn(point, 'sparse-guard', graphdef, state, (28, 28, 1))
  x = jax.random.uniform(jax.random.key(0), (2, 28, 28, 1))
  np.testing.assert_allclose(attacked(x), trained(x), rtol=1e-5, atol=1e-5)
  loss = lambda f: jax.grad(lambda x: f(x)[:, 0].sum())(x)
  assert float(jnp.abs(loss(trained)).max()) == 0.0
  assert float(jnp.abs(loss(attacked)).max()) > 0.0


def _stand_in_judge():
  import types
  w = np.random.default_rng(0).normal(size=(28 * 28, 10))
  return types.SimpleNamespace(
      name='stand-in', test_accuracy=0.5,
      logits=lambda x: np.asarray(x).reshape(len(x), -1) @ w,
      features=lambda x: np.asarray(x).reshape(len(x), -1)[:, :16])


def test_evaluate_uses_the_judge_and_the_shared_metrics():
  """Wiring of attack accuracy, its unoptimised baseline and KNN distance through a (stand-in) judge; FID off."""
  from mi_jax.metrics.attack_success import attack_accuracy
  judge = _stand_in_judge()
  private, labels = synthetic_digits(20, seed=3)
  recon = private[:6].astype(np.float32) / 255.0
  unoptimized = private[6:12].astype(np.float32) / 255.0
  predicted = np.argmax(judge.logits(recon), -1)
  out = gan_experiment.evaluate(recon, predicted, private, labels, judge=judge, judge_note=None,
                                config=_config(), mesh=mesh_of(2), cache={}, unoptimized=unoptimized)
  assert out['attack_top1'] == 1.0 and out['attack_top5'] == 1.0
  want = attack_accuracy(judge.logits(unoptimized), predicted)
  assert (out['attack_top1_unoptimized'], out['attack_top5_unoptimized']) == want and want[0] < 1.0
  assert out['judge'] == 'stand-in' and out['judge_test_accuracy'] == 0.5 and out['fid'] is None
  assert out['kid'] is None and 'disabled' in out['fid_note']
  assert out['knn_distance'] >= 0.0


def test_fid_and_kid_share_one_inception_pass_per_set_and_report_n(monkeypatch):
  from mi_jax.metrics import fid as fid_lib
  from mi_jax.metrics import kid as kid_lib
  project = np.random.default_rng(1).normal(size=(28 * 28, 32))
  calls = []
  project_features = lambda images: np.asarray(images, np.float64).reshape(len(images), -1) @ project

  def features(images, **_):
    calls.append(len(images))
    return project_features(images)

  monkeypatch.setattr(fid_lib, 'inception_features', features)
  config = _config(**{'evaluation.fid': True, 'evaluation.fid_private_limit': None, 'evaluation.kid_subsets': 7})
  private, labels = synthetic_digits(30, seed=3)
  recon = private[:6].astype(np.float32) / 255.0
  cache = {}
  out = gan_experiment.evaluate(recon, labels[:6], private, labels, judge=_stand_in_judge(), judge_note=None,
                                config=config, mesh=mesh_of(2), cache=cache)
  assert calls == [30, 6]  # the private set once, the reconstructions once, for both metrics
  reference, recon_features = project_features(private.astype(np.float32) / 255.0), project_features(recon)
  assert out['fid'] == pytest.approx(fid_lib.fid_from_features(reference, recon_features))
  kid = kid_lib.kid_from_features(reference, recon_features, subsets=7, subset_size=1000, seed=config.seed)
  assert (out['kid'], out['kid_std'], out['kid_subset_size'], out['kid_subsets']) == tuple(kid)
  assert out['fid_n'] == [30, 6] and out['kid_subset_size'] == 6
  gan_experiment.evaluate(recon, labels[:6], private, labels, judge=_stand_in_judge(), judge_note=None,
                          config=config, mesh=mesh_of(2), cache=cache)
  assert calls == [30, 6, 6]  # the second row reads the private features from the cache


def test_results_table_has_the_baseline_and_n_with_every_fid():
  row = dict(dataset='mnist', defense='no-defense', lam=None, knob='λ', attack='gmi', accuracy=0.9,
             attack_top1=0.4, attack_top5=0.9, attack_top1_unoptimized=0.02, attack_top5_unoptimized=0.3,
             knn_distance=12.0, fid=210.5, fid_n=[250, 25], kid=0.0123, kid_std=0.0011, kid_subset_size=25,
             kid_subsets=100, judge='j', judge_test_accuracy=0.99)
  table = gan_experiment.results_markdown([row, {**row, 'attack': 'ppa', 'fid_n': [250, 20]}])
  line = next(l for l in table.splitlines() if l.startswith('| no-defense | GMI'))
  cells = [c.strip() for c in line.strip('|').split('|')]
  assert cells[3:7] == ['40.00', '2.00', '90.00', '30.00']
  assert cells[8] == '210.5 (N = 250 / 25)' and cells[9] == '12.3 ± 1.1'
  assert 'N differs between rows here' in table
