"""DP-SGD: per-example clipping, noise scale, padding, sharding, accounting
against dp-accounting called directly, and a short end-to-end run."""

from __future__ import annotations

import functools
import json
import math

import dp_accounting
import jax
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from mi_jax.data import ProtocolSplit, to_global_array
from mi_jax.defenses import build_target, dp_sgd
from mi_jax.models.target import TargetNetwork
from mi_jax.train.state import init_train_state, make_optimizer
from mi_jax.train.step import jit_step, make_classifier_step
from mi_jax.utils.metric_writer import MetricWriter
from tests.helpers import load_config, mesh_of, synthetic_digits

HW = 8


def _model():
  return TargetNetwork(image_shape=(HW, HW, 1), num_classes=10, hidden_widths=(16, 16), rngs=nnx.Rngs(0))


def _batch(n, seed=0, real=None):
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (n, HW, HW, 1), dtype=np.uint8)
  labels = rng.integers(0, 10, n).astype(np.int32)
  mask = np.ones(n, bool) if real is None else np.arange(n) < real
  return {'image': images, 'label': labels, 'mask': mask}


def _global_norms(tree):
  return np.sqrt(sum(np.sum(np.asarray(x).reshape(x.shape[0], -1) ** 2, axis=1)
                     for x in jax.tree.leaves(tree)))


def _one_step(tx, batch, *, l2_clip, noise_multiplier, expected_batch_size, rng=0, step=None):
  graphdef, state = init_train_state(_model(), tx)
  step = step or _dp_step(graphdef, tx, l2_clip, noise_multiplier, expected_batch_size)
  new_state, measurements = step(state, batch, jax.random.key(rng))
  return state, new_state, measurements


def _dp_step(graphdef, tx, l2_clip, noise_multiplier, expected_batch_size):
  return jax.jit(dp_sgd.make_dp_classifier_step(
      graphdef, tx, l2_clip=l2_clip, noise_multiplier=noise_multiplier,
      expected_batch_size=expected_batch_size))


def test_per_example_clipped_norms_bounded_and_padding_zero():
  graphdef, state = init_train_state(_model(), optax.sgd(0.1))
  batch = _batch(8, real=6)
  keys = jax.random.split(jax.random.key(0), 8)
  grads_fn = jax.jit(functools.partial(dp_sgd.per_example_grads, graphdef))
  _, _, grads = grads_fn(state['params'], state['model_state'], batch['image'], batch['label'], keys)
  raw = _global_norms(grads)
  clip = float(np.median(raw[:6]))  # half the real rows get clipped
  clipped, norms = dp_sgd.clip_per_example(grads, batch['mask'], l2_clip=clip)
  after = _global_norms(clipped)
  np.testing.assert_allclose(np.asarray(norms), raw, rtol=1e-5)
  assert np.all(after[:6] <= clip * (1 + 1e-5))
  np.testing.assert_allclose(after[:6], np.minimum(raw[:6], clip), rtol=1e-5)
  assert np.all(after[6:] == 0)
  # Each row of the vmapped gradient is that example's own gradient.
  single = grads_fn(state['params'], state['model_state'], batch['image'][2:3], batch['label'][2:3], keys[2:3])[2]
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(single)):
    np.testing.assert_allclose(np.asarray(a[2]), np.asarray(b[0]), rtol=1e-5, atol=1e-7)


def test_no_noise_and_huge_clip_equals_plain_mean_gradient_step():
  tx = optax.sgd(0.5)
  batch = _batch(8)
  state, dp_state, dp_m = _one_step(tx, batch, l2_clip=1e6, noise_multiplier=0.0, expected_batch_size=8)
  graphdef, _ = init_train_state(_model(), tx)
  plain_state, plain_m = jax.jit(make_classifier_step(graphdef, tx))(
      state, {'image': batch['image'], 'label': batch['label']}, jax.random.key(0))
  np.testing.assert_allclose(float(dp_m['loss']), float(plain_m['loss']), rtol=1e-6)
  assert float(dp_m['clipped_fraction']) == 0.0
  for a, b, c in zip(jax.tree.leaves(dp_state['params']), jax.tree.leaves(plain_state['params']),
                     jax.tree.leaves(state['params'])):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
  moved = sum(float(np.abs(np.asarray(b) - np.asarray(c)).max()) for b, c in
              zip(jax.tree.leaves(plain_state['params']), jax.tree.leaves(state['params'])))
  assert moved > 1e-3  # the step did something


def test_noise_std_of_summed_gradient_is_sigma_clip_over_batch():
  # All rows padding: the private gradient is pure noise N(0, σ²C²)/B, and
  # SGD(lr=1) moves every parameter by exactly minus that.
  sigma, clip, expected = 2.0, 0.5, 4
  state, new_state, m = _one_step(optax.sgd(1.0), _batch(8, real=0), l2_clip=clip,
                                  noise_multiplier=sigma, expected_batch_size=expected)
  moves = np.concatenate([(np.asarray(a) - np.asarray(b)).ravel() for a, b in
                          zip(jax.tree.leaves(new_state['params']), jax.tree.leaves(state['params']))])
  assert moves.size > 1000
  target = sigma * clip / expected
  assert abs(moves.std() / target - 1) < 0.05
  assert abs(moves.mean()) < 4 * target / math.sqrt(moves.size)
  assert float(m['batch_size']) == 0.0


def test_padded_examples_change_nothing():
  tx = optax.adam(1e-2)
  a = _batch(8, seed=1, real=5)
  b = dict(a)
  other = _batch(8, seed=2)
  b['image'] = np.concatenate([a['image'][:5], other['image'][5:]])
  b['label'] = np.concatenate([a['label'][:5], other['label'][5:]])
  kw = dict(l2_clip=0.1, noise_multiplier=1.1, expected_batch_size=4)
  kw['step'] = _dp_step(init_train_state(_model(), tx)[0], tx, 0.1, 1.1, 4)
  _, state_a, m_a = _one_step(tx, a, **kw)
  _, state_b, m_b = _one_step(tx, b, **kw)
  for x, y in zip(jax.tree.leaves(state_a['params']), jax.tree.leaves(state_b['params'])):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  for k in m_a:
    np.testing.assert_allclose(float(m_a[k]), float(m_b[k]), rtol=1e-6)
  assert float(m_a['batch_size']) == 5.0
  # The same rows unmasked do change the step.
  _, state_c, _ = _one_step(tx, dict(b, mask=np.ones(8, bool)), **kw)
  assert any(not np.array_equal(np.asarray(x), np.asarray(y)) for x, y in
             zip(jax.tree.leaves(state_a['params']), jax.tree.leaves(state_c['params'])))


def _sharded_steps(n_devices):
  mesh = mesh_of(n_devices)
  tx = optax.adam(1e-2)
  graphdef, state = init_train_state(_model(), tx)
  state = jax.device_put(state, NamedSharding(mesh, P()))
  step = jit_step(dp_sgd.make_dp_classifier_step(graphdef, tx, l2_clip=0.5, noise_multiplier=1.1,
                                                 expected_batch_size=12), state, mesh)
  losses = []
  with jax.set_mesh(mesh):
    for i in range(2):
      batch = to_global_array(_batch(16, seed=i, real=13), mesh)
      state, m = step(state, batch, jax.random.key(3))
      losses.append((float(m['loss']), float(m['clipped_norm_fraction'])))
  return losses, jax.device_get(state['params'])


def test_same_result_on_1_and_8_devices():
  losses_1, params_1 = _sharded_steps(1)
  losses_8, params_8 = _sharded_steps(8)
  np.testing.assert_allclose(losses_1, losses_8, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(params_1), jax.tree.leaves(params_8)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize('accountant', ['pld', 'rdp'])
def test_epsilon_matches_dp_accounting_for_poisson(accountant):
  q, steps, sigma, delta = 0.02, 300, 1.1, 1e-5
  ours = dp_sgd.epsilon_spent(noise_multiplier=sigma, sampling_probability=q, steps=steps,
                              delta=delta, accountant=accountant)
  acc = dp_accounting.pld.PLDAccountant() if accountant == 'pld' else dp_accounting.rdp.RdpAccountant()
  acc.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps)
  assert ours == pytest.approx(acc.get_epsilon(delta), rel=1e-9)
  assert 0 < ours < 10


def test_epsilon_matches_dp_accounting_for_truncated_and_shuffled():
  n, batch, steps, sigma, delta = 60, 6, 30, 1.1, 1e-4
  ours = dp_sgd.epsilon_spent(noise_multiplier=sigma, sampling_probability=batch / n, steps=steps,
                              delta=delta, accountant='pld', dataset_size=n, truncated_batch_size=8)
  acc = dp_accounting.pld.PLDAccountant()
  acc.compose(dp_accounting.TruncatedSubsampledGaussianDpEvent(n, batch / n, 8, sigma), steps)
  assert ours == pytest.approx(acc.get_epsilon(delta), rel=1e-9)
  # Shuffling: 30 steps of 10 per epoch = 3 passes of Gaussian(σ/2), no amplification.
  shuffled = dp_sgd.epsilon_spent(noise_multiplier=sigma, sampling_probability=batch / n, steps=steps,
                                  delta=delta, accountant='rdp', sampling='shuffle', dataset_size=n)
  acc = dp_accounting.rdp.RdpAccountant()
  acc.compose(dp_accounting.GaussianDpEvent(sigma / 2), 3)
  assert shuffled == pytest.approx(acc.get_epsilon(delta), rel=1e-9)
  assert shuffled > ours  # no amplification claimed for shuffling
  with pytest.raises(ValueError, match="'rdp' cannot account truncated"):
    dp_sgd.epsilon_spent(noise_multiplier=sigma, sampling_probability=batch / n, steps=steps,
                         delta=delta, accountant='rdp', dataset_size=n, truncated_batch_size=8)
  assert dp_sgd.epsilon_spent(noise_multiplier=0.0, sampling_probability=0.1, steps=5,
                              delta=delta, accountant='rdp') == math.inf


def test_calibration_round_trips():
  kw = dict(sampling_probability=0.05, steps=200, delta=1e-5, accountant='rdp')
  sigma = dp_sgd.calibrate_noise_multiplier(target_epsilon=2.0, tol=1e-4, **kw)
  eps = dp_sgd.epsilon_spent(noise_multiplier=sigma, **kw)
  assert eps <= 2.0 and eps == pytest.approx(2.0, abs=2e-3)
  assert dp_sgd.epsilon_spent(noise_multiplier=sigma * 0.98, **kw) > 2.0


def test_poisson_batches_are_pure_random_and_truncated():
  kw = dict(sampling_probability=0.1, max_batch_size=16, seed=3)
  idx, mask = dp_sgd.poisson_batch_indices(100, step=7, **kw)
  idx2, mask2 = dp_sgd.poisson_batch_indices(100, step=7, **kw)
  np.testing.assert_array_equal(idx, idx2)
  np.testing.assert_array_equal(mask, mask2)
  assert idx.shape == mask.shape == (16,)
  assert np.all(idx[~mask] == 0) and len(set(idx[mask])) == mask.sum()
  counts = np.array([dp_sgd.poisson_batch_indices(1000, step=s, sampling_probability=0.02,
                                                  max_batch_size=1000, seed=0)[1].sum() for s in range(400)])
  assert abs(counts.mean() - 20) < 4 * math.sqrt(20 * 0.98 / 400)
  assert abs(counts.var() / (20 * 0.98) - 1) < 0.25  # Binomial, not a fixed size
  # PLD default: B + 4·√(B(1−q)) = 32 + 4·√16 = 48 for B = 32, n = 64; RDP: n.
  assert dp_sgd.default_max_batch_size(dataset_size=64, expected_batch_size=32, accountant='pld') == 48
  assert dp_sgd.default_max_batch_size(dataset_size=64, expected_batch_size=32, accountant='rdp') == 64
  truncated = dp_sgd.poisson_batch_indices(100, step=0, sampling_probability=0.9, max_batch_size=16, seed=0)[1]
  assert truncated.all()


@pytest.mark.parametrize('field, value, message', [
    ('noise_multiplier', -1.0, 'noise_multiplier must be a finite number >= 0'),
    ('l2_clip', 0.0, 'l2_clip must be a finite number > 0'),
    ('delta', 1.0, r'delta must be a finite number in \(0, 1\)'),
    ('target_epsilon', -2.0, 'target_epsilon must be None or a finite number > 0'),
    ('sampling', 'shuffled', r"sampling must be one of \('poisson', 'shuffle'\)"),
    ('accountant', 'gdp', r"accountant must be one of \('pld', 'rdp'\)"),
    ('max_batch_size', 0, 'max_batch_size must be None or an integer >= 1'),
])
def test_validate_names_the_field(field, value, message):
  block = dp_sgd.config_block()
  dp_sgd.validate(block)
  block[field] = value
  with pytest.raises(ValueError, match=f'defense.dp_sgd.{message}'):
    dp_sgd.validate(block)


def test_refuses_batchnorm():
  config = load_config('tiny')
  with config.unlocked():
    config.defense.name = 'sparse-guard'
  with pytest.raises(ValueError, match='BatchNorm statistics'):
    dp_sgd.refuse_batch_stats(build_target(config, (28, 28, 1), 10, rngs=nnx.Rngs(0)))
  dp_sgd.refuse_batch_stats(_model())


def _dp_config(epochs):
  config = load_config('tiny')
  config.unlock()
  config.defense.name = 'dp-sgd'
  config.defense.dp_sgd = dp_sgd.config_block()
  config.defense.dp_sgd.delta = 1e-3  # < 1/n for the 64 synthetic examples
  # RDP: no truncation (batches padded to n = 64), and its accounting takes
  # milliseconds where the truncated-Poisson PLD takes seconds per call.
  config.defense.dp_sgd.accountant = 'rdp'
  config.train.epochs = epochs
  config.train.batch_size = 32  # 2 steps per epoch of the 64 examples
  config.setting, config.model.hidden_width = 'split', 16  # 2 small hidden layers: quick compiles
  config.train.checkpoint_every_steps = 2
  return config


def _split():
  images, labels = synthetic_digits(96, seed=0)
  return ProtocolSplit(images[:64], labels[:64], images[64:], labels[64:])


def test_train_dp_target_runs_accounts_and_resumes(tmp_path):
  mesh, split = mesh_of(8), _split()
  # One run of 2 epochs (4 steps of expected batch 32 from n = 64) ...
  full_dir = str(tmp_path / 'full')
  graphdef, full, extras = dp_sgd.train_dp_target(_dp_config(2), split, mesh=mesh, workdir=full_dir,
                                                  writer=MetricWriter(full_dir))
  assert int(full['step']) == 4
  assert set(extras) == {'dp_epsilon', 'dp_delta', 'dp_noise_multiplier', 'dp_l2_clip'}
  expected_eps = dp_sgd.epsilon_spent(noise_multiplier=1.1, sampling_probability=0.5, steps=4, delta=1e-3,
                                      accountant='rdp')
  assert extras['dp_epsilon'] == pytest.approx(expected_eps, rel=1e-9)
  assert extras['dp_noise_multiplier'] == 1.1 and extras['dp_l2_clip'] == 1.0
  records = [json.loads(line) for line in open(f'{full_dir}/metrics.jsonl')]
  target = [r for r in records if r['phase'] == 'target']
  (dp_record,) = [r for r in records if r['phase'] == 'dp']
  assert dp_record['dp_max_batch_size'] == 64 and dp_record['dp_steps'] == 4
  assert target and all('clipped_fraction' in r for r in target)
  # ... equals 1 epoch, then resuming to 2 epochs in the same workdir.
  split_dir = str(tmp_path / 'resumed')
  dp_sgd.train_dp_target(_dp_config(1), split, mesh=mesh, workdir=split_dir, writer=MetricWriter(split_dir))
  _, resumed, _ = dp_sgd.train_dp_target(_dp_config(2), split, mesh=mesh, workdir=split_dir,
                                         writer=MetricWriter(split_dir))
  steps = [r['step'] for r in map(json.loads, open(f'{split_dir}/metrics.jsonl')) if r['phase'] == 'target']
  assert steps == [1, 2, 3, 4]  # the second call went on from step 2, it did not start over
  for a, b in zip(jax.tree.leaves(jax.device_get(full['params'])), jax.tree.leaves(jax.device_get(resumed['params']))):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  with pytest.raises(ValueError, match='delta must be < 1/n'):
    config = _dp_config(1)
    config.defense.dp_sgd.delta = 0.05
    dp_sgd.train_dp_target(config, split, mesh=mesh, workdir=str(tmp_path / 'bad'), writer=MetricWriter(str(tmp_path / 'bad')))
