"""Expand ``config.sweep`` into one config per (defense, knob value, setting, protocol, target seed).

Each defense may have one swept hyperparameter, its *knob* (``Defense.knob``):
λ for the sparse-coding defenses, the noise scale for the noise defenses,
the regulariser weight for NoPeek and MID, the noise multiplier for DP-SGD,
the number of frozen layers for transfer learning. Its values come from
``sweep.knob_values[<defense with '_' for '-'>]``; results rows store the
knob's field name under ``'knob_name'``, its value under ``'knob_value'``
and, as before, under ``'lam'`` (existing readers of results.json use it),
and its symbol under ``'knob'``. Defenses without a knob get None.

``sweep.target_seeds = n`` trains every point's target with the seeds
``config.seed + k``, k < n (initialisation, batch order, attacker seeds;
the data split stays the one ``config.seed`` draws), so a results cell is a
mean ± sd over targets (each row still carries its attacker-seed sd).
Points of the first seed keep their plain name; the others end in
``_seed<seed>``.
"""

from __future__ import annotations

import itertools

from mi_jax.defenses import registry



def _knob(defense: str):
  return registry.get(defense).knob


def has_knob(defense: str) -> bool:
  return _knob(defense) is not None


def knob_symbol(defense: str) -> str:
  knob = _knob(defense)
  return 'λ' if knob is None else knob.symbol


def get_knob(config, defense: str):
  """The knob's current value in ``config`` (None for defenses without one)."""
  knob = _knob(defense)
  return None if knob is None else knob.get(config)


def knob_fields(config, defense: str) -> dict:
  """The row fields that say which knob value a point ran: 'knob_name',
  'knob_value', 'knob' (its symbol) and 'lam' (the value, kept for readers of
  results.json written before the knob had its own name)."""
  knob = _knob(defense)
  value = None if knob is None else knob.get(config)
  return {'lam': value, 'knob': knob_symbol(defense), 'knob_name': None if knob is None else knob.name,
          'knob_value': value}


def point_name(defense: str, lam, setting: str, protocol: str, seed_offset: int = 0, seed: int = 0) -> str:
  lam_part = '' if lam is None else f"_{_knob(defense).name}{lam:g}"
  seed_part = f"_seed{seed}" if seed_offset else ''
  return f"{defense}{lam_part}_{setting}_{protocol}{seed_part}"


def knob_values(config, defense: str) -> tuple:
  """The knob values swept for ``defense`` (its key in ``sweep.knob_values``)."""
  key = defense.replace('-', '_')
  if key not in config.sweep.knob_values:
    raise ValueError(f"sweep.knob_values has no entry {key!r} for defense {defense!r}")
  return tuple(config.sweep.knob_values[key])


def expand(config) -> list[tuple[str, object]]:
  """[(point_name, config)] in a stable order; a single point when disabled."""
  if not config.sweep.enabled:
    name = config.defense.name
    return [(point_name(name, get_knob(config, name), config.setting, config.protocol), config)]
  points = []
  for offset, protocol, setting, defense in itertools.product(
      range(config.sweep.target_seeds), config.sweep.protocols, config.sweep.settings, config.sweep.defenses):
    key = defense.replace('-', '_')
    values = knob_values(config, defense) if has_knob(defense) and key in config.sweep.knob_values else (
        (get_knob(config, defense),))
    for value in values:
      point = config.copy_and_resolve_references()
      with point.unlocked():
        point.protocol, point.setting, point.defense.name = protocol, setting, defense
        point.seed = config.seed + offset
        if value is not None:
          _knob(defense).set(point, value)
        point.sweep.enabled = False
      points.append((point_name(defense, value, setting, protocol, offset, point.seed), point.lock()))
  return points
