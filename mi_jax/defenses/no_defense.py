"""NO-DEFENSE: the plain target (dense layers on the input), the baseline of every table."""

from mi_jax.defenses.registry import Defense, register

NAME = 'no-defense'

register(Defense(name=NAME, summary='the undefended target: dense layers on the input'))
