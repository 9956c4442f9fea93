"""The shared absl main of the experiment commands: --config, --workdir,
optional multi-host start-up, and one-line errors with exit code 2."""

from __future__ import annotations

import importlib
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Where checkpoints, metrics and results go.')
flags.mark_flags_as_required(['config', 'workdir'])


def run_experiment(module: str) -> None:
  """Parses the flags and calls ``<module>.run(config, workdir)``.

  The module is imported only after ``jax.distributed.initialize()``
  (MI_JAX_DISTRIBUTED=1), which must be the first JAX call of a multi-host job.
  """

  def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    if os.environ.get('MI_JAX_DISTRIBUTED') == '1':
      import jax
      jax.distributed.initialize()
    from mi_jax.data import DataUnavailableError
    experiment = importlib.import_module(module)
    try:
      experiment.run(_CONFIG.value, _WORKDIR.value)
    except (DataUnavailableError, FileExistsError, ValueError) as error:  # ConfigError is a ValueError
      print(f"error: {error}", file=sys.stderr)
      sys.exit(2)

  app.run(main)
