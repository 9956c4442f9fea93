"""White-box GAN-prior attacks (GMI, KEDMI, PPA) vs defended targets: one command, one table.

  python -m experiments.gan_attacks --config=configs/gan_attacks_mnist.py:small \
      --workdir=results/gan_attacks_small [--config.defenses="('no-defense','mid')" ...]

All logic lives in :mod:`mi_jax.experiments.gan_attacks`; this file only parses flags.
Multi-host: set MI_JAX_DISTRIBUTED=1 to call ``jax.distributed.initialize()`` first.
"""

from mi_jax.utils.cli import run_experiment

if __name__ == '__main__':
  run_experiment('mi_jax.experiments.gan_attacks')
