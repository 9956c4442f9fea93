"""Sparse-Guard vs. the surrogate inversion attack: one command, one table.

  python -m experiments.sparse_guard --config=configs/sparse_guard_mnist.py:small \
      --workdir=results/sg_mnist_small [--config.defense.lam=0.25 ...]

All logic lives in :mod:`mi_jax.experiments.surrogate`; this file only parses flags.
Multi-host: set MI_JAX_DISTRIBUTED=1 to call ``jax.distributed.initialize()``
first (TPU pods and SLURM/GPU clusters).
"""

from mi_jax.utils.cli import run_experiment

if __name__ == '__main__':
  run_experiment('mi_jax.experiments.surrogate')
