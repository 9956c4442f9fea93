"""The shared absl main of the experiment commands: --config, --workdir,
optional multi-host start-up, and one-line errors with exit code 2.

``--config.<field>=None`` sets an optional field (one declared with
``config_dict.placeholder(type)``) to None. ml_collections (1.1) picks an
override's parser from the field's declared type alone, and none of its
int/float/str parsers knows the literal ``None``: an int or float field
rejects it ("invalid literal for int()") and a str field silently becomes
the four-letter string 'None' (so ``--config.data.dir=None`` would read the
directory ./None). :func:`allow_none_overrides` teaches those three parsers
the literal; :func:`check_none_overrides` then refuses None for a field that
is not optional, since a ConfigDict itself accepts None anywhere.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any, Mapping

from absl import app, flags, logging
from ml_collections import config_flags

NONE_LITERAL = 'None'


class _NoneLiteral:
  """Mixin: the literal ``None`` parses to None, anything else as the base parser does."""

  def parse(self, argument):
    if argument == NONE_LITERAL:
      return None
    return super().parse(argument)


class _OptionalInteger(_NoneLiteral, flags.IntegerParser):
  pass


class _OptionalFloat(_NoneLiteral, flags.FloatParser):
  pass


class _OptionalString(_NoneLiteral, flags.ArgumentParser):
  pass


def allow_none_overrides() -> None:
  """Makes ``--config.<field>=None`` give None for int, float and str config fields.

  Changes ml_collections' parser table for the whole process (it has no
  per-flag hook); call it before the flags are parsed. Idempotent.
  """
  for field_type, parser in ((int, _OptionalInteger()), (float, _OptionalFloat()),
                             (str, _OptionalString())):
    config_flags.register_flag_parser_for_type(field_type, parser)


def check_none_overrides(config, overrides: Mapping[str, Any]) -> None:
  """One-line ValueError if a command-line None landed on a field that is not optional.

  ``overrides`` is the config flag's ``override_values`` (dotted path ->
  parsed value). A placeholder keeps its declared type when set to None; a
  plain field's type becomes NoneType, which is how the two are told apart.
  """
  for path, value in overrides.items():
    if value is not None:
      continue
    holder = config
    *parents, field = path.split('.')
    for part in parents:
      holder = holder[part]
    if holder.get_type(field) is type(None):
      raise ValueError(
          f"config.{path} does not accept None; only optional fields "
          f"(declared with config_dict.placeholder) do")


# At import, so that every config flag parsed in this process (run_experiment's, tests') gets it.
allow_none_overrides()


def run_experiment(module: str) -> None:
  """Defines and parses --config and --workdir, then calls ``<module>.run(config, workdir)``.

  The flags are defined here, not at import, so that importing this module
  (tests, other commands with their own --config) defines no global flag.
  The module is imported only after ``jax.distributed.initialize()``
  (MI_JAX_DISTRIBUTED=1), which must be the first JAX call of a multi-host job.
  """
  config_flag = config_flags.DEFINE_config_file('config', None, 'Experiment config file.', lock_config=True)
  workdir_flag = flags.DEFINE_string('workdir', None, 'Where checkpoints, metrics and results go.')
  flags.mark_flags_as_required(['config', 'workdir'])

  def main(argv):
    del argv
    try:
      check_none_overrides(config_flag.value, flags.FLAGS['config'].override_values)
    except ValueError as error:
      print(f"error: {error}", file=sys.stderr)
      sys.exit(2)
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    if os.environ.get('MI_JAX_DISTRIBUTED') == '1':
      import jax
      jax.distributed.initialize()
    from mi_jax.data import DataUnavailableError
    experiment = importlib.import_module(module)
    try:
      experiment.run(config_flag.value, workdir_flag.value)
    except (DataUnavailableError, FileExistsError, ValueError) as error:  # ConfigError is a ValueError
      print(f"error: {error}", file=sys.stderr)
      sys.exit(2)

  app.run(main)
