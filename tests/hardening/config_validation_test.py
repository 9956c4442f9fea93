"""Issue 10, items 1-2: every config field is checked before anything is written,
numbers are finite and in range, batches fit the data, and the one-line
message names the config field. In-process (validate_config), so the big
tables take seconds; tests/experiments/surrogate_test.py runs a few through the command
line for the exit code and the empty workdir."""

import copy
import math

import pytest
from ml_collections import config_dict

from mi_jax.experiments import gan_attacks as gan_experiment, surrogate as experiment
from tests.helpers import load_config, mesh_of, synthetic_digits
from tests.utils.cli_test import GAN_OPTIONAL, SG_OPTIONAL

SG = 'configs/sparse_guard_mnist.py'
GAN = 'configs/gan_attacks_mnist.py'
INF, NAN = math.inf, math.nan


def _set(tree: dict, path: str, value) -> None:
  *parents, leaf = path.split('.')
  for part in parents:
    tree = tree[part]
  tree[leaf] = value


def mutated(config, changes: dict):
  """A copy of ``config`` with ``changes`` (dotted path → value) applied, whatever
  their type (a ConfigDict rebuilt from a dict, as a hand-written config would be)."""
  tree = copy.deepcopy(config.to_dict())
  for path, value in changes.items():
    _set(tree, path, value)
  return config_dict.ConfigDict(tree)


def refusal(validate, config, **kwargs) -> str:
  """The message of the ConfigError that ``validate`` raises (one line)."""
  with pytest.raises(experiment.ConfigError) as error:
    validate(config, **kwargs)
  message = str(error.value)
  assert '\n' not in message
  return message


# (changes, the field the message must start with). Every case of the issue's
# items 1 and 2, and more of the same kind.
SG_CASES = [
    ({'defense.lam': INF}, 'defense.lam'),
    ({'defense.tau': INF}, 'defense.tau'),
    ({'defense.dt': INF}, 'defense.dt'),
    ({'defense.tau': NAN}, 'defense.tau'),
    ({'defense.kernel_size': 0}, 'defense.kernel_size'),
    ({'defense.kernel_size': 4}, 'defense.kernel_size'),  # 'same' padding needs an odd kernel
    ({'defense.stride': 0}, 'defense.stride'),
    ({'defense.n_steps': 0}, 'defense.n_steps'),
    ({'defense.features': (4, 0)}, 'defense.features'),
    ({'defense.lateral': 'fast'}, 'defense.lateral'),
    ({'defense.solver': 'ista'}, 'defense.solver'),
    ({'defense.tol': -1.0}, 'defense.tol'),
    ({'defense.tol': 1e-4}, 'defense.tol'),  # with the default solver, 'lca'
    ({'defense.hebbian_eta': NAN}, 'defense.hebbian_eta'),
    ({'defense.transfer.freeze_depth': 99}, 'defense.transfer.freeze_depth'),
    # Split: 2 hidden layers + the head; freezing all 3 leaves nothing to train.
    ({'sweep.enabled': False, 'setting': 'split', 'defense.transfer.freeze_depth': 3}, 'defense.transfer.freeze_depth'),
    ({'model.hidden_width': 0}, 'model.hidden_width'),
    ({'model.hidden_layers.split': 0}, 'model.hidden_layers.split'),
    ({'attack.decoder_hidden': 0}, 'attack.decoder_hidden'),
    ({'train.checkpoint_every_steps': 0}, 'train.checkpoint_every_steps'),
    ({'train.log_every_steps': 0}, 'train.log_every_steps'),
    ({'train.learning_rate': INF}, 'train.learning_rate'),
    ({'train.learning_rate': NAN}, 'train.learning_rate'),
    ({'attack.learning_rate': INF}, 'attack.learning_rate'),
    ({'train.momentum': NAN}, 'train.momentum'),
    ({'train.momentum': 1.0}, 'train.momentum'),
    ({'train.weight_decay': -1.0}, 'train.weight_decay'),
    ({'train.epochs': 1.5}, 'train.epochs'),
    ({'attack.checkpoint_every_seconds': INF}, 'attack.checkpoint_every_seconds'),
    ({'attack.figure_images': 0}, 'attack.figure_images'),
    ({'seed': -1}, 'seed'),
    ({'data.private_fraction': 1.0}, 'data.private_fraction'),
    ({'data.normalization': (0.1, 0.0)}, 'data.normalization'),
    ({'data.normalization': (NAN, 0.3)}, 'data.normalization'),
    ({'data.dir': ''}, 'data.dir'),
    ({'defense.laplace_noise.scale': INF}, 'defense.laplace_noise.scale'),
    ({'defense.gaussian_noise.sigma': NAN}, 'defense.gaussian_noise.sigma'),
    ({'defense.nopeek.weight': INF}, 'defense.nopeek.weight'),
    ({'defense.mid.beta': NAN}, 'defense.mid.beta'),
    ({'defense.mid.std_shift': INF}, 'defense.mid.std_shift'),
    ({'defense.bido.lambda_x': INF}, 'defense.bido.lambda_x'),
    ({'defense.dp_sgd.noise_multiplier': INF}, 'defense.dp_sgd.noise_multiplier'),
    ({'defense.gan_augmentation.gan_learning_rate': INF}, 'defense.gan_augmentation.gan_learning_rate'),
    ({'defense.gan_opt.ewc_lambda': INF}, 'defense.gan_opt.ewc_lambda'),
    ({'defense.transfer.freeze_layers': 'first'}, 'defense.transfer.freeze_layers'),
    ({'sweep.knob_values.sparse_guard': (INF,)}, 'sweep.knob_values.sparse_guard'),
    ({'sweep.knob_values.sparse_guard': ()}, 'sweep.knob_values.sparse_guard'),
    ({'sweep.knob_values.dropout': (0.5,)}, 'sweep.knob_values.dropout'),
    ({'sweep.defenses': ()}, 'sweep.defenses'),
]


@pytest.mark.parametrize('changes,field', SG_CASES, ids=[f'{f}={list(c.values())[-1]!r}' for c, f in SG_CASES])
def test_bad_field_is_refused_naming_it(changes, field):
  config = load_config('tiny')
  experiment.validate_config(config, num_devices=8)  # the shipped config passes
  message = refusal(experiment.validate_config, mutated(config, changes), num_devices=8)
  assert message.startswith(f'{field} '), message


def test_sweep_point_that_cannot_run_is_refused_naming_the_point():
  """The base config is fine; one point of the sweep (split: 2 hidden layers) is not."""
  config = mutated(load_config('small'), {'sweep.defenses': ('no-defense', 'laplace-noise'),
                                          'sweep.knob_values.laplace_noise': (0.5,),
                                          'defense.laplace_noise.layer': 'hidden_4'})
  message = refusal(experiment.validate_config, config, num_devices=8)
  assert message.startswith('defense.laplace_noise.layer must be one of')
  assert message.endswith('(sweep point laplace-noise_scale0.5_split_corrected)')


def test_transfer_freeze_depth_of_a_sweep_is_checked_per_setting():
  config = mutated(load_config('small'), {'sweep.defenses': ('transfer-learning',),
                                          'sweep.knob_values.transfer_learning': (1, 4)})
  message = refusal(experiment.validate_config, config, num_devices=8)
  # End to end has 4 hidden layers + the head (4 is fine there); split has 2 + the head.
  assert message.startswith('defense.transfer.freeze_depth must be below the number of layers')
  assert message.endswith('(sweep point transfer-learning_freeze_depth4_split_corrected)')
  experiment.validate_config(mutated(config, {'sweep.knob_values.transfer_learning': (0, 1, 2)}), num_devices=8)


SIZE_CASES = [
    # (changes, sizes, message start)
    ({'train.batch_size': 128}, {'private': 64, 'heldout': 32},
     'train.batch_size must be at most the 64 images of the private set, got 128'),
    # The corrected attack keeps ⌈0.1·32⌉ = 4 held-out images for early stopping.
    ({'attack.batch_size': 32}, {'private': 64, 'heldout': 32},
     'attack.batch_size must be at most the 28 images of the held-out set the attacker trains on'),
    ({'protocol': 'sg_legacy', 'attack.batch_size': 40}, {'private': 64, 'heldout': 32},
     'attack.batch_size must be at most the 32 images of the held-out set, got 40'),
    ({'defense.name': 'gan-augmentation', 'defense.gan_augmentation.gan_batch_size': 128},
     {'private': 64, 'heldout': 32}, 'defense.gan_augmentation.gan_batch_size must be at most the 64 images'),
    ({'defense.name': 'gan-opt', 'defense.gan_opt.gan_batch_size': 12}, {'private': 64, 'heldout': 32},
     'defense.gan_opt.gan_batch_size must be a positive multiple of the 8 devices'),
    ({'defense.name': 'dp-sgd', 'defense.dp_sgd.delta': 0.05}, {'private': 64, 'heldout': 32},
     'defense.dp_sgd.delta must be < 1/n = 0.0156 for the n = 64 private images'),
    ({'defense.name': 'transfer-learning', 'defense.transfer.public_limit': 8}, {'private': 64, 'heldout': 32},
     'train.batch_size must be at most the 8 images of the public set'),
    # Without the loaded data's sizes, the configured limits bound them.
    ({'data.private_limit': 16, 'train.batch_size': 32}, None,
     'train.batch_size must be at most the 16 images of the private set'),
    ({'data.heldout_limit': 8, 'attack.batch_size': 8}, None,
     'attack.batch_size must be at most the 7 images of the held-out set the attacker trains on'),
]


@pytest.mark.parametrize('changes,sizes,message', SIZE_CASES)
def test_batches_must_fit_the_data(changes, sizes, message):
  config = mutated(load_config('tiny'), {'sweep.enabled': False, **changes})
  kwargs = {} if sizes is None else {'sizes': sizes}
  assert refusal(experiment.validate_config, config, num_devices=8, **kwargs).startswith(message)


def test_a_batch_larger_than_the_private_set_fails_before_anything_is_written(tmp_path, monkeypatch):
  """Known only once the data is loaded (no data.private_limit): still before the workdir exists."""
  images, labels = synthetic_digits(96, seed=0)  # SYNTHETIC (unit test only)
  from mi_jax.data import ProtocolSplit
  split = ProtocolSplit(images[:64], labels[:64], images[64:], labels[64:])
  monkeypatch.setattr(experiment.mi_data, 'load_sparse_guard', lambda *a, **k: split)
  config = mutated(load_config('tiny'), {'data.private_limit': None, 'data.heldout_limit': None,
                                         'train.batch_size': 128})
  message = refusal(experiment.run, config, workdir=str(tmp_path / 'run'), mesh=mesh_of(8))
  assert message.startswith('train.batch_size must be at most the 64 images of the private set')
  assert not (tmp_path / 'run').exists()


GAN_CASES = [
    ({'gan.learning_rate': INF}, 'gan.learning_rate'),
    ({'gan.width': 0}, 'gan.width'),
    ({'gan.log_every_steps': 0}, 'gan.log_every_steps'),
    ({'gan.checkpoint_every_steps': 0}, 'gan.checkpoint_every_steps'),
    ({'gmi.momentum': NAN}, 'gmi.momentum'),
    ({'gmi.lam': INF}, 'gmi.lam'),
    ({'gmi.learning_rate': INF}, 'gmi.learning_rate'),
    ({'gmi.n_critic': 0}, 'gmi.n_critic'),
    ({'kedmi.init_log_var': INF}, 'kedmi.init_log_var'),
    ({'kedmi.lam': NAN}, 'kedmi.lam'),
    ({'ppa.transform_flip': 2.0}, 'ppa.transform_flip'),
    ({'ppa.transform_scale': (0.9, 0.8)}, 'ppa.transform_scale'),
    ({'ppa.transform_rotation': INF}, 'ppa.transform_rotation'),
    ({'evaluation.kid_subsets': 0}, 'evaluation.kid_subsets'),
    ({'evaluation.fid_batch_size': 12}, 'evaluation.fid_batch_size'),
    ({'evaluation.figure_attacks': 3}, 'evaluation.figure_attacks'),  # tiny makes 2 per class
    ({'evaluation.fid_private_limit': 3}, 'evaluation.fid_private_limit'),  # < the 5 private classes
    ({'defenses': ('mid', 'mid')}, 'defenses'),
    ({'defenses': ('no-defense', 'nope')}, 'defenses'),
    ({'private_classes': (0, 0, 1)}, 'private_classes'),
    ({'data.public_limit': 16, 'gan.batch_size': 32}, 'gan.batch_size'),
    ({'defense.lam': INF}, 'defense.lam'),  # the shared fields and defense blocks too
    ({'defense.mid.beta': INF}, 'defense.mid.beta'),
    ({'train.weight_decay': -1.0}, 'train.weight_decay'),
]


@pytest.mark.parametrize('changes,field', GAN_CASES, ids=[f'{f}={list(c.values())[-1]!r}' for c, f in GAN_CASES])
def test_bad_gan_experiment_field_is_refused_naming_it(changes, field):
  config = load_config('tiny', GAN)
  gan_experiment.validate_config(config, num_devices=8)
  message = refusal(gan_experiment.validate_config, mutated(config, changes), num_devices=8)
  assert message.startswith(f'{field} '), message


# ------------------------------------------------------------------ coverage


def _leaves(config, prefix=''):
  """(dotted path, declared type) of every leaf."""
  for key in config.keys():
    value = config[key]
    if isinstance(value, config_dict.ConfigDict):
      yield from _leaves(value, f'{prefix}{key}.')
    else:
      yield f'{prefix}{key}', config.get_type(key)


def _bad_values(field_type, optional: bool) -> list:
  """Values no field of this type may take: a field without a rule accepts one of them."""
  bad = [] if optional else [None]
  if field_type is bool:
    return bad + ['garbage', 1]
  if field_type is int:
    return bad + [-1, 1.5, 'garbage']
  if field_type is float:
    return bad + [NAN, INF, -INF, 'garbage']
  if field_type is str:  # paths take any non-empty string
    return bad + ['']
  if field_type is tuple:
    return bad + ['garbage', (None,)]
  raise AssertionError(f'a config field of type {field_type.__name__}: add its bad values here')


# One variant per experiment holds every field (the all_defenses grid adds
# sweep.knob_values entries); the other variants' fields are a subset of it.
EXPERIMENTS = {
    'sparse_guard': (SG, 'small,fashion_mnist,all_defenses', SG_OPTIONAL, experiment.validate_config,
                     ('tiny', 'small', 'paper', 'small,fashion_mnist', 'paper,mnist,all_defenses')),
    'gan_attacks': (GAN, 'tiny', GAN_OPTIONAL, gan_experiment.validate_config,
                    ('small', 'paper', 'tiny,fashion_mnist')),
}


@pytest.mark.parametrize('name', EXPERIMENTS)
def test_every_field_has_a_rule_that_names_it(name):
  """Walks every leaf and sets it to values no field may hold: each must be refused
  by a rule whose message starts with that leaf's path. A field added to a config
  without validation fails here."""
  path, arg, optional, validate, others = EXPERIMENTS[name]
  config = load_config(arg, path)
  validate(config, num_devices=8)
  leaves = dict(_leaves(config))
  unchecked = []
  for leaf, field_type in leaves.items():
    for value in _bad_values(field_type, leaf in optional):
      try:
        validate(mutated(config, {leaf: value}), num_devices=8)
        unchecked.append(f'{leaf}={value!r}: accepted')
      except experiment.ConfigError as error:
        if not str(error).startswith(f'{leaf} '):
          unchecked.append(f'{leaf}={value!r}: refused as {str(error)[:100]!r}')
  assert not unchecked, unchecked
  for other in others:
    variant = load_config(other, path)
    validate(variant, num_devices=8)  # every shipped variant is valid
    assert set(dict(_leaves(variant))) <= set(leaves), other
