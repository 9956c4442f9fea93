"""The defense registry: names, config blocks, validation, build and loss wiring."""

import pytest
from ml_collections import config_dict

from mi_jax import defenses
from mi_jax.train.state import split_model
from tests.defenses import build, defense_config

NEW = ('gaussian-noise', 'laplace-noise', 'nopeek', 'mid', 'bido')


def test_every_name_is_registered_builds_and_validates():
  for name in ('no-defense', *NEW):
    for setting in defenses.SETTINGS:
      config = defense_config(name, setting=setting)
      defenses.validate(config)
      model = build(config)
      _, params, _ = split_model(model)
      assert {'first', 'hidden', 'classifier'} <= set(params)
      assert ('mid' in params) == (name == 'mid')
  assert set(NEW) <= set(defenses.names())
  # Defenses with their own training recipe.
  recipes = {name for name in defenses.names() if defenses.get(name).recipe is not None}
  assert recipes == {'dp-sgd', 'transfer-learning', 'gan-augmentation', 'gan-opt'}
  # The order of grids and tables: the baseline first, then as registered.
  assert defenses.names() == ('no-defense', 'sparse-standard', 'sparse-guard', 'gaussian-noise', 'laplace-noise',
                              'nopeek', 'mid', 'bido', 'dp-sgd', 'transfer-learning', 'gan-augmentation', 'gan-opt',
                              'label-smoothing')


def test_extra_loss_only_for_loss_defenses():
  for name in ('no-defense', 'gaussian-noise', 'laplace-noise', 'sparse-guard'):
    assert defenses.extra_loss_for(defense_config(name)) is None
  for name in ('nopeek', 'mid', 'bido'):
    assert callable(defenses.extra_loss_for(defense_config(name)))


def test_config_blocks_are_lockable_and_named_for_the_sweep_knobs():
  blocks = defenses.config_blocks()
  assert set(blocks) == {'sparse_standard', 'gaussian_noise', 'laplace_noise', 'nopeek', 'mid', 'bido', 'dp_sgd',
                         'transfer', 'gan_augmentation', 'gan_opt', 'label_smoothing'}
  # Sparse-Standard's one (first) sparse layer learns by backprop, as in the
  # SG paper's experiments (footnote 1).
  assert blocks['sparse_standard'].dictionary_update == 'gradient'
  assert all(isinstance(b, config_dict.ConfigDict) for b in blocks.values())
  # Fields the sweep's knobs (each descriptor's Knob) point at.
  assert blocks['gaussian_noise'].sigma == 0.5 and blocks['laplace_noise'].scale == 0.5
  assert blocks['nopeek'].weight == 0.1 and blocks['mid'].beta == 3e-3
  assert blocks['bido'].lambda_x == 0.05 and blocks['bido'].lambda_y == 0.5
  assert blocks['dp_sgd'].noise_multiplier == 1.1 and blocks['transfer'].freeze_depth == 2
  assert blocks['label_smoothing'].alpha == -0.05
  config = defense_config('mid')
  config.lock()
  config.defense.mid.beta = 1e-2  # overridable from the command line
  assert config.defense.mid.bottleneck is None
  config.defense.mid.bottleneck = 16


def test_unknown_name_and_missing_block():
  config = defense_config('no-defense')
  config.defense.name = 'dropout'
  with pytest.raises(ValueError, match='defense.name must be one of'):
    defenses.validate(config)
  with pytest.raises(ValueError, match='defense.name must be one of'):
    build(config)
  bare = defense_config('no-defense')
  del bare.defense['nopeek']
  bare.defense.name = 'nopeek'
  with pytest.raises(ValueError, match='defense.nopeek is missing'):
    defenses.validate(bare)


def test_descriptors_say_what_each_defense_changes():
  assert defenses.get('sparse-guard').knob.symbol == 'λ' and defenses.get('bido').knob is None
  assert defenses.get('transfer-learning').knob.name == 'freeze_depth'
  assert {n for n in defenses.names() if defenses.get(n).sparse_coding} == {'sparse-standard', 'sparse-guard'}
  assert {n for n in defenses.names() if defenses.get(n).post_step} == {'sparse-standard', 'sparse-guard'}
  assert {n for n in defenses.names() if defenses.get(n).target_hooks} == {'gaussian-noise', 'laplace-noise', 'mid'}
  with pytest.raises(ValueError, match="'nopeek' is already registered"):
    defenses.register(defenses.Defense(name='nopeek'))
  with pytest.raises(ValueError, match="config block 'mid' is already taken"):
    defenses.register(defenses.Defense(name='other', block='mid', config_block=dict))
  assert 'other' not in defenses.names()


def test_existing_names_keep_their_api():
  assert defenses.LEAK_OF_SETTING == {'split': 'first', 'end_to_end': 'last_hidden'}
  assert defenses.PROTOCOLS == ('corrected', 'sg_legacy')
