"""Declarative checks of config fields, with one-line errors naming the field.

A *rule* says what one field may hold; a table maps field paths to rules:

    check_fields(config, {
        'train.learning_rate': number(above=0),
        'train.batch_size': integer(low=1),
        'data.dir': optional(TEXT),
    })

raises ``ValueError("train.learning_rate must be a finite number > 0, got inf")``
for the first field that breaks its rule. Numbers must be finite (NaN and ±inf
pass ``>= 0``-style comparisons or fail them silently, so every real rule
checks ``math.isfinite`` first); integers must be ``int`` (not bool, not
1.5). Relations between fields (a batch that fits the data, a layer that
exists) are the callers' business, after the table.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable, Mapping, NamedTuple, Optional, Sequence


class Rule(NamedTuple):
  """``allows(value) -> bool`` and ``text``, what the field must be ('an integer >= 1')."""

  allows: Callable[[Any], bool]
  text: str


def _is_int(value) -> bool:
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value) -> bool:
  return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _bounds_text(low, high, above, below) -> str:
  lower = (f'>= {low}' if low is not None else f'> {above}' if above is not None else None)
  upper = (f'<= {high}' if high is not None else f'< {below}' if below is not None else None)
  if lower and upper:  # an interval: [a, b], (a, b), [a, b), (a, b]
    left = '[' if low is not None else '('
    right = ']' if high is not None else ')'
    return f"in {left}{low if low is not None else above}, {high if high is not None else below}{right}"
  return lower or upper or ''


def _in_bounds(value, low, high, above, below) -> bool:
  return ((low is None or value >= low) and (high is None or value <= high)
          and (above is None or value > above) and (below is None or value < below))


def integer(low: Optional[int] = None, high: Optional[int] = None) -> Rule:
  """An ``int`` (not bool) in ``[low, high]``."""
  bounds = _bounds_text(low, high, None, None)
  return Rule(lambda v: _is_int(v) and _in_bounds(v, low, high, None, None),
              f"an integer {bounds}".rstrip())


def number(*, low=None, high=None, above=None, below=None) -> Rule:
  """A finite real (ints accepted) with inclusive (low/high) or strict (above/below) bounds."""
  bounds = _bounds_text(low, high, above, below)
  return Rule(lambda v: _is_real(v) and _in_bounds(v, low, high, above, below),
              f"a finite number {bounds}".rstrip())


def one_of(options: Sequence) -> Rule:
  options = tuple(options)
  return Rule(lambda v: isinstance(v, str) and v in options, f"one of {options}")


def optional(rule: Rule) -> Rule:
  return Rule(lambda v: v is None or rule.allows(v), f"None or {rule.text}")


def tuple_of(rule: Rule, *, text: str, length: Optional[int] = None, min_length: int = 0) -> Rule:
  """A tuple (or list: JSON has no tuples) whose items all pass ``rule``; ``text`` describes it."""

  def allows(v):
    return (isinstance(v, (tuple, list)) and (length is None or len(v) == length) and len(v) >= min_length
            and all(rule.allows(item) for item in v))

  return Rule(allows, text)


BOOLEAN = Rule(lambda v: isinstance(v, bool), 'True or False')
# Paths and names: an empty string would silently mean "the current directory".
TEXT = Rule(lambda v: isinstance(v, str) and v.strip() != '', 'a non-empty string')


def get_path(config, path: str):
  """``config['a']['b']`` for ``path='a.b'``."""
  node = config
  for part in path.split('.'):
    node = node[part]
  return node


def check_fields(config, rules: Mapping[str, Rule], prefix: str = '') -> None:
  """Raises a one-line ``ValueError`` for the first field of ``rules`` that breaks its rule.

  ``rules`` maps dotted paths under ``config`` to rules; ``prefix`` (e.g.
  'defense.mid') is prepended to the paths in messages when ``config`` is a
  sub-block.
  """
  for path, rule in rules.items():
    name = f'{prefix}.{path}' if prefix else path
    try:
      value = get_path(config, path)
    except (KeyError, AttributeError):
      raise ValueError(f"{name} is missing from the config") from None
    if not rule.allows(value):
      raise ValueError(f"{name} must be {rule.text}, got {value!r}")
