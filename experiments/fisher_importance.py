"""Fisher-information layer importance of a target (TL-DMI §4): fisher.{json,md,png}.

  python -m experiments.fisher_importance --config=configs/fisher_importance.py:tiny \
      --workdir=/tmp/fisher_tiny [--config.fisher.checkpoint=<run>/checkpoints/target ...]

All logic lives in :mod:`mi_jax.experiments.fisher_importance` (the config's
commands and fields: configs/fisher_importance.py); this file only parses flags.
Multi-host: set MI_JAX_DISTRIBUTED=1 to call ``jax.distributed.initialize()`` first.
"""

from mi_jax.utils.cli import run_experiment

if __name__ == '__main__':
  run_experiment('mi_jax.experiments.fisher_importance')
