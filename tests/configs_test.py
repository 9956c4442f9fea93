"""The configs package: every advertised argument loads (as a module and by
path, as the commands load it) and validates, the argument language's
defaults and one-line errors, and the derived configs are the Sparse-Guard
config plus their own block."""

import itertools

import pytest

from configs import base
from mi_jax.experiments import gan_attacks as gan_experiment
from mi_jax.experiments import surrogate as experiment
from mi_jax.experiments import fisher_importance, umap_features
from mi_jax.utils import cli
from tests.hardening.config_validation_test import _bad_values, _leaves, mutated, refusal
from tests.helpers import ROOT, config_module, load_config

SG = 'configs/sparse_guard_mnist.py'
GRIDS = tuple(config_module(SG).GRIDS)

# Each config file: its validator, whether it takes the grid word, its dataset words.
CONFIGS = {
    SG: (experiment.validate_config, True, tuple(base.NORMALIZATION)),
    'configs/gan_attacks_mnist.py': (gan_experiment.validate_config, False,
                                     config_module('configs/gan_attacks_mnist.py').DATASETS),
    'configs/fisher_importance.py': (fisher_importance.validate_config, False, tuple(base.NORMALIZATION)),
    'configs/umap_features.py': (umap_features.validate_config, False, tuple(base.NORMALIZATION)),
}


def advertised_arguments(takes_grid: bool, datasets) -> list[str]:
  """Every argument configs.base documents for a file: each scale, alone and with each dataset (and grid)."""
  args = list(base.SCALES)
  for scale, dataset in itertools.product(base.SCALES, datasets):
    args.append(f'{scale},{dataset}')
    if takes_grid:
      args += [f'{scale},{dataset},{grid}' for grid in GRIDS]
  return args


CASES = [(path, arg) for path, (_, takes_grid, datasets) in CONFIGS.items()
         for arg in advertised_arguments(takes_grid, datasets)]


@pytest.mark.parametrize('path,arg', CASES)
def test_every_advertised_argument_loads_and_validates(path, arg):
  validate, _, _ = CONFIGS[path]
  config = load_config(arg, path)
  assert config.is_locked
  validate(config, num_devices=8)
  scale, dataset = (arg.split(',') + [base.DEFAULT_DATASET])[:2]
  assert (config.scale, config.dataset, config.data.normalization) == (scale, dataset, base.NORMALIZATION[dataset])


@pytest.mark.parametrize('path', CONFIGS)
def test_the_command_line_loads_the_file_by_path_to_the_same_config(path, monkeypatch):
  # ml_collections' config_flags executes the file by its path, as the commands do from the repository root.
  monkeypatch.chdir(ROOT)
  by_path = cli.load_config(f'{path}:tiny')
  assert by_path.to_json_best_effort() == load_config('tiny', path).to_json_best_effort()


@pytest.mark.parametrize('path', CONFIGS)
def test_omitted_words_are_the_defaults(path):
  _, takes_grid, _ = CONFIGS[path]
  module = config_module(path)
  spelled_out = f'{base.DEFAULT_SCALE},{base.DEFAULT_DATASET}' + (f',{GRIDS[0]}' if takes_grid else '')
  expected = module.get_config(spelled_out).to_dict()
  for short in (None, '', base.DEFAULT_SCALE, f'{base.DEFAULT_SCALE},', f'{base.DEFAULT_SCALE},{base.DEFAULT_DATASET}'):
    config = module.get_config() if short is None else module.get_config(short)
    assert config.to_dict() == expected, short


def _without(config, block: str) -> dict:
  tree = config.to_dict()
  del tree[block]
  return tree


@pytest.mark.parametrize('arg', ['tiny', 'small,fashion_mnist', 'paper'])
def test_fisher_and_umap_configs_are_one_sparse_guard_point_plus_their_block(arg):
  point = mutated(load_config(arg), {'sweep.enabled': False}).to_dict()
  assert _without(load_config(arg, 'configs/umap_features.py'), 'umap') == point
  point['defense']['name'] = 'no-defense'  # TL's analysis ranks the layers of an undefended target
  assert _without(load_config(arg, 'configs/fisher_importance.py'), 'fisher') == point


def own_block_cases():
  """(config path, leaf, a value no field of its type may take) for every leaf of the fisher and umap blocks."""
  for path, block in (('configs/fisher_importance.py', 'fisher'), ('configs/umap_features.py', 'umap')):
    config = load_config('tiny', path)
    optional = {f'{block}.checkpoint', f'{block}.reconstructions'}  # placeholders: None is allowed
    for leaf, field_type in _leaves(config[block], f'{block}.'):
      yield from ((path, leaf, value) for value in _bad_values(field_type, leaf in optional))


@pytest.mark.parametrize('path,leaf,value', own_block_cases())
def test_every_field_of_the_own_block_has_a_rule_that_names_it(path, leaf, value):
  validate, _, _ = CONFIGS[path]
  message = refusal(validate, mutated(load_config('tiny', path), {leaf: value}), num_devices=8)
  assert message.startswith(f'{leaf} '), message


SCALES_TEXT = "('tiny', 'small', 'paper')"
DATASETS_TEXT = ("('mnist', 'fashion_mnist', 'cifar10', 'medical_mnist', 'pathmnist', 'organamnist', "
                 "'bloodmnist', 'dermamnist', 'celeba')")


@pytest.mark.parametrize('path,arg,message', [
    (SG, 'huge', f"config argument scale must be one of {SCALES_TEXT}, got 'huge'"),
    (SG, 'tiny,cifar', f"config argument dataset must be one of {DATASETS_TEXT}, got 'cifar'"),
    (SG, 'small,mnist,every', f"config argument grid must be one of {GRIDS}, got 'every'"),
    (SG, 'mnist', f"config argument scale must be one of {SCALES_TEXT}, got 'mnist'"),
    (SG, 'tiny,all_defenses', f"config argument dataset must be one of {DATASETS_TEXT}, got 'all_defenses'"),
    (SG, 'tiny,mnist,all_defenses,x',
     "config argument 'tiny,mnist,all_defenses,x': word 4 ('x') is past the last position; "
     "this config takes at most 3 words: scale,dataset,grid"),
    ('configs/gan_attacks_mnist.py', 'Tiny', f"config argument scale must be one of {SCALES_TEXT}, got 'Tiny'"),
    # The GAN attacks' class-split protocol has no face form: 'celeba' is not one of its words.
    ('configs/gan_attacks_mnist.py', 'tiny,celeba',
     f"config argument dataset must be one of {DATASETS_TEXT.replace(', ' + repr('celeba'), '')}, got 'celeba'"),
    ('configs/gan_attacks_mnist.py', 'tiny,mnist,all_defenses',
     "config argument 'tiny,mnist,all_defenses': word 3 ('all_defenses') is past the last position; "
     "this config takes at most 2 words: scale,dataset"),
    ('configs/fisher_importance.py', 'small,fashion', f"config argument dataset must be one of {DATASETS_TEXT}, "
     "got 'fashion'"),
    ('configs/umap_features.py', 'tiny,mnist,sparse_guard',
     "config argument 'tiny,mnist,sparse_guard': word 3 ('sparse_guard') is past the last position; "
     "this config takes at most 2 words: scale,dataset"),
])
def test_a_bad_word_is_a_one_line_error_naming_its_position_and_the_words(path, arg, message):
  with pytest.raises(ValueError) as error:
    load_config(arg, path)
  assert str(error.value) == message


def test_the_parser_alone():
  assert base.parse_argument(None) == base.Argument('small', 'mnist', None)
  assert base.parse_argument('paper,fashion_mnist', grids=('a', 'b')) == ('paper', 'fashion_mnist', 'a')
  assert base.parse_argument('tiny,,', grids=('a', 'b')) == ('tiny', 'mnist', 'a')  # empty words are skipped
  assert base.parse_argument('tiny,mnist,b', grids=('a', 'b')).grid == 'b'
