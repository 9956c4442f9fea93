"""Sweep expansion: points per (target seed, protocol, setting, defense, knob value)."""

from mi_jax.experiments import sweep
from tests.helpers import load_config


def _tiny(**sweep_fields):
  config = load_config('tiny')
  with config.unlocked():
    config.seed = 5
    for key, value in sweep_fields.items():
      config.sweep[key] = value
  return config


def test_one_target_seed_keeps_the_plain_names_and_the_config_seed():
  points = sweep.expand(_tiny())
  assert [name for name, _ in points] == [
      'no-defense_split_corrected', 'sparse-guard_lam0.25_split_corrected']
  assert {point.seed for _, point in points} == {5}


def test_target_seeds_add_a_point_per_seed_first_seed_first():
  points = sweep.expand(_tiny(target_seeds=3, defenses=('no-defense',)))
  assert [(name, point.seed) for name, point in points] == [
      ('no-defense_split_corrected', 5),
      ('no-defense_split_corrected_seed6', 6),
      ('no-defense_split_corrected_seed7', 7)]
  assert all(not point.sweep.enabled for _, point in points)
