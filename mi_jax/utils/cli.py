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

import difflib
import importlib
import os
import re
import sys
from typing import Any, Mapping, Optional

from absl import app, flags, logging
from ml_collections import config_dict, config_flags

from mi_jax.utils import host_devices

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


def _user_errors() -> tuple:
  """What a user can cause or fix (command line, config, data, disk, a busy
  workdir, a run that diverged: its line names the step), printed as one line
  with exit code 2, the README's promise. Anything else is a bug and keeps its
  traceback. Imported when needed: this module must not import JAX before
  ``jax.distributed.initialize()``."""
  from mi_jax.data import DataUnavailableError
  from mi_jax.train.loop import NonFiniteLossError
  from mi_jax.utils.workdir import WorkdirBusyError
  # ValueError covers ConfigError; OSError covers FileExistsError, StorageError
  # (full or read-only disk, unwritable workdir) and CheckpointRestoreError.
  return (DataUnavailableError, ValueError, OSError, NonFiniteLossError, WorkdirBusyError)


def fail(message: str) -> None:
  """``error: <message>`` on stderr (one line) and exit code 2."""
  print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
  sys.exit(2)


def _config_argument(argv) -> Optional[str]:
  """The value of ``--config`` in ``argv`` (``--config=X`` or ``--config X``), or None."""
  for i, arg in enumerate(argv):
    if arg.startswith(('--config=', '-config=')):
      return arg.split('=', 1)[1]
    if arg in ('--config', '-config') and i + 1 < len(argv):
      return argv[i + 1]
  return None


def _override_paths(argv) -> list[str]:
  """The dotted paths of the ``--config.<path>=…`` overrides in ``argv``."""
  paths = []
  for arg in argv:
    found = re.match(r'^--?(?:no)?config\.([^=]+)', arg)
    if found:
      paths.append(found.group(1))
  return paths


def _leaf_paths(config, prefix: str = '') -> list[str]:
  paths = []
  for key in config.keys():
    value = config[key]
    if isinstance(value, config_dict.ConfigDict):
      paths += _leaf_paths(value, f'{prefix}{key}.')
    else:
      paths.append(f'{prefix}{key}')
  return paths


def _has_path(config, path: str) -> bool:
  node = config
  for part in path.split('.'):
    if not isinstance(node, config_dict.ConfigDict) or part not in node:
      return False
    node = node[part]
  return True


def unknown_field_message(config, paths) -> Optional[str]:
  """'unknown config field …; did you mean …?' for the first of ``paths`` not in ``config``, else None."""
  known = _leaf_paths(config)
  for path in paths:
    if not _has_path(config, path):
      nearest = difflib.get_close_matches(path, known, n=1, cutoff=0.5)
      hint = f"did you mean --config.{nearest[0]}?" if nearest else \
          f"the top-level fields are {', '.join(sorted(config.keys()))}"
      return f"unknown config field --config.{path}; {hint}"
  return None


def load_config(config_arg: str):
  """The config of ``--config=<config_arg>`` without any override (a private flag set)."""
  argv = ['prog', f'--config={config_arg}']
  flag_values = flags.FlagValues()
  holder = config_flags.DEFINE_config_file('config', None, 'config', flag_values=flag_values, lock_config=False,
                                           sys_argv=argv)
  flag_values(argv)
  return holder.value


def _flag_error_message(error: Exception, argv) -> str:
  """One line for an error raised while absl parses the command line."""
  config_arg = _config_argument(argv)
  text = str(error)
  if 'Error whilst parsing config file' in text:
    # get_config() raised (e.g. an unknown scale in `:huge`): its own one-line
    # message is the last line of the traceback ml_collections embeds.
    last = [line.strip() for line in text.splitlines() if line.strip()][-1]
    return f"--config={config_arg}: {re.sub(r'^[A-Za-z_.]*(Error|Exception): ', '', last)}"
  if config_arg is not None and not isinstance(error, flags.IllegalFlagValueError):
    try:  # an override of a field the config does not have (ml_collections raises KeyError/AttributeError)
      message = unknown_field_message(load_config(config_arg), _override_paths(argv))
    except Exception:  # the config itself does not load: report the original error
      message = None
    if message:
      return message
  first = next((line.strip() for line in text.splitlines() if line.strip()), '')
  return first if isinstance(error, flags.Error) else f"{type(error).__name__}: {first}"


def parse_flags(argv):
  """absl's flag parsing, with every command-line error as one line and exit code 2.

  A missing config file is caught here (ml_collections would defer it to the
  first use of the config, as a traceback).
  """
  config_arg = _config_argument(argv)
  if config_arg is not None and not os.path.isfile(config_arg.split(':', 1)[0]):
    fail(f"--config={config_arg}: no such config file {config_arg.split(':', 1)[0]!r}")
  try:
    return flags.FLAGS(argv)
  except Exception as error:  # flags.Error, and KeyError/AttributeError for unknown config fields
    fail(_flag_error_message(error, argv))


def run_experiment(module: str) -> None:
  """Defines and parses --config and --workdir, then calls ``<module>.run(config, workdir)``.

  The flags are defined here, not at import, so that importing this module
  (tests, other commands with their own --config) defines no global flag.
  The module is imported only after ``jax.distributed.initialize()``
  (MI_JAX_DISTRIBUTED=1), which must be the first JAX call of a multi-host job.
  Every error a user can cause (command line, config, data, disk, workdir
  lock, a diverged run) ends as one line ``error: …`` with exit code 2.
  """
  # Before anything imports jax (the config file does): one CPU device per
  # core, so the batch-sharded CPU runs use the whole machine.
  host_devices.use_all_cpu_cores()
  config_flag = config_flags.DEFINE_config_file('config', None, 'Experiment config file.', lock_config=True)
  workdir_flag = flags.DEFINE_string('workdir', None, 'Where checkpoints, metrics and results go.')
  flags.mark_flags_as_required(['config', 'workdir'])

  def main(argv):
    del argv
    try:
      check_none_overrides(config_flag.value, flags.FLAGS['config'].override_values)
    except ValueError as error:
      fail(error)
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    initialize_distributed()
    experiment = importlib.import_module(module)
    run_and_report(experiment.run, config_flag.value, workdir_flag.value)

  app.run(main, flags_parser=parse_flags)


def initialize_distributed(environ=os.environ) -> bool:
  """``jax.distributed.initialize`` when ``MI_JAX_DISTRIBUTED=1``; returns whether it ran.

  With ``MI_JAX_COORDINATOR_ADDRESS``, ``MI_JAX_NUM_PROCESSES`` and
  ``MI_JAX_PROCESS_ID`` set (``python -m mi_jax.launch`` sets them) those are
  passed on, and CPU processes use the gloo collectives (XLA:CPU's
  cross-process all-reduce); without them JAX detects the cluster itself
  (TPU pod slices, SLURM, Open MPI). Must run before the first JAX
  computation of the process.
  """
  if environ.get('MI_JAX_DISTRIBUTED') != '1':
    return False
  import jax
  from mi_jax import launch
  if launch.COORDINATOR not in environ:
    jax.distributed.initialize()
    return True
  try:
    processes, process_id = int(environ[launch.NUM_PROCESSES]), int(environ[launch.PROCESS_ID])
  except (KeyError, ValueError):
    fail(f"{launch.NUM_PROCESSES} and {launch.PROCESS_ID} must be integers when {launch.COORDINATOR} is set, "
         f"got {environ.get(launch.NUM_PROCESSES)!r} and {environ.get(launch.PROCESS_ID)!r}")
  if environ.get('JAX_PLATFORMS', '').split(',')[0] == 'cpu':
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(coordinator_address=environ[launch.COORDINATOR], num_processes=processes,
                             process_id=process_id)
  return True


def run_and_report(run, config, workdir: str) -> None:
  """``run(config, workdir)``; an error the user can cause or fix ends as one line, exit code 2."""
  try:
    run(config, workdir)
  except _user_errors() as error:
    fail(error)
