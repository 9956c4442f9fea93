"""Expand ``config.sweep`` into one config per (defense, λ, setting, protocol).

λ is swept only for defenses that have one, over ``sweep.lams[<defense with
'_' for '-'>]``; the others get ``lam=None`` in their results rows (their
config keeps the default, which they ignore).
"""

from __future__ import annotations

import itertools


def point_name(defense: str, lam, setting: str, protocol: str) -> str:
  lam_part = '' if lam is None else f"_lam{lam:g}"
  return f"{defense}{lam_part}_{setting}_{protocol}"


def sweep_lams(config, defense: str) -> tuple:
  """The λ values swept for ``defense`` (its key in ``sweep.lams``)."""
  key = defense.replace('-', '_')
  if key not in config.sweep.lams:
    raise ValueError(f"sweep.lams has no entry {key!r} for defense {defense!r}")
  return tuple(config.sweep.lams[key])


def expand(config, uses_lambda) -> list[tuple[str, object]]:
  """[(point_name, config)] in a stable order; a single point when disabled."""
  if not config.sweep.enabled:
    lam = config.defense.lam if uses_lambda(config.defense.name) else None
    return [(point_name(config.defense.name, lam, config.setting, config.protocol), config)]
  points = []
  for protocol, setting, defense in itertools.product(
      config.sweep.protocols, config.sweep.settings, config.sweep.defenses):
    for lam in (sweep_lams(config, defense) if uses_lambda(defense) else (None,)):
      point = config.copy_and_resolve_references()
      with point.unlocked():
        point.protocol, point.setting, point.defense.name = protocol, setting, defense
        if lam is not None:
          point.defense.lam = lam
        point.sweep.enabled = False
      points.append((point_name(defense, lam, setting, protocol), point.lock()))
  return points
