"""White-box GAN-prior attacks (GMI, KEDMI, PPA) vs defended targets: one command, one table.

  python -m experiments.gan_attacks --config=configs/gan_attacks_mnist.py:small \
      --workdir=results/gan_attacks_small [--config.defenses="('no-defense','mid')" ...]

All logic lives in :mod:`mi_jax.gan_experiment`; this file only parses flags.
Multi-host: set MI_JAX_DISTRIBUTED=1 to call ``jax.distributed.initialize()`` first.
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Where checkpoints, metrics and results go.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  if os.environ.get('MI_JAX_DISTRIBUTED') == '1':
    import jax
    jax.distributed.initialize()
  from mi_jax import gan_experiment
  from mi_jax.data import DataUnavailableError
  try:
    gan_experiment.run(_CONFIG.value, _WORKDIR.value)
  except (gan_experiment.ConfigError, DataUnavailableError, FileExistsError, ValueError) as error:
    print(f"error: {error}", file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  app.run(main)
