"""SG Fig. 4: UMAP of the features after two layers of three small models: umap_fig4.{png,json}.

  python -m experiments.umap_features --config=configs/umap_features.py:small \
      --workdir=results/umap_fig4 [--config.umap.n_points=2000 ...]

All logic lives in :mod:`mi_jax.experiments.umap_features` (the config's
fields: configs/umap_features.py); this file only parses flags. Needs PyPI
umap-learn (the ``figures`` extra). Multi-host: set MI_JAX_DISTRIBUTED=1 to
call ``jax.distributed.initialize()`` first.
"""

from mi_jax.utils.cli import run_experiment

if __name__ == '__main__':
  run_experiment('mi_jax.experiments.umap_features')
